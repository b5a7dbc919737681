"""CurricularFace IR-101 (no SE, non-affine output BN1d) and `convert curricularface`
against an independent PyTorch reference with random weights."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.convert.common import ConversionError  # noqa: E402
from interestyle_jax.convert.curricularface import (infer_curricularface,  # noqa: E402
                                                    load_torch_curricularface)
from interestyle_jax.models.curricularface import CurricularFace, load_curricularface  # noqa: E402
from tests.torch_ref.curricularface import RefCurricularFace, randomize  # noqa: E402
from tests.torch_ref.irse import RefArcFace  # noqa: E402
from tests.torch_ref.irse import randomize as randomize_irse  # noqa: E402

TOL = 1e-4  # on unit-norm embeddings: relative and absolute alike
# Tiny stages for speed, and IR-101's real 3/13/30/3 units at a narrow width.
TINY = dict(units=(1, 2, 1, 1), width=8, emb=32)
DEEP = dict(units=(3, 13, 30, 3), width=4, emb=16)


def nchw(x):
  return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def faces(n=3, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def tiny_ref():
  return randomize(RefCurricularFace(**TINY), 3)


@pytest.mark.parametrize('arch', [TINY, DEEP], ids=['tiny', 'ir101_units'])
def test_embedding_parity(arch):
  ref = randomize(RefCurricularFace(**arch), 5)
  net, variables = load_torch_curricularface(ref.state_dict())
  assert isinstance(net, CurricularFace)
  assert (net.mode, net.affine_output, net.width, net.input_size, net.embedding_dim) == (
      'ir', False, arch['width'], 112, arch['emb'])
  if arch is DEEP:  # the standard depth is recognised, not stored as explicit units
    assert (net.num_layers, net.stage_units) == (100, None)
  else:
    assert net.stage_units == arch['units']
  # The non-affine BN1d has running statistics and nothing else; no SE anywhere.
  assert 'output_bn1d' not in variables['params']
  assert set(variables['batch_stats']['output_bn1d']) == {'mean', 'var'}
  assert 'se' not in variables['params']['backbone']['body_0']
  x = faces()
  with torch.no_grad():
    want = ref(nchw(x)).numpy()
  got = np.asarray(net.apply(variables, jnp.asarray(x)))
  assert np.abs(got - want).max() <= TOL
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
  # Different faces give different embeddings (the test would pass on a constant otherwise).
  assert float(got[0] @ got[1]) < 0.999


def test_full_size_ir101_inferred_from_shapes():
  # Shapes only: the real IR-101 (width 64, 512-d) on the meta device allocates nothing.
  with torch.device('meta'):
    sd = RefCurricularFace().state_dict()
  assert sum(1 for k in sd if k.endswith('res_layer.1.weight')) == 49
  assert tuple(sd['output_layer.3.weight'].shape) == (512, 512 * 7 * 7)
  assert infer_curricularface(sd, 'CurricularFace_Backbone.pth') == dict(
      num_layers=100, stage_units=None, width=64, input_size=112, embedding_dim=512,
      mode='ir', affine_output=False)


def test_cli_round_trip(tiny_ref, tmp_path):
  src = str(tmp_path / 'CurricularFace_Backbone.pth')
  torch.save(tiny_ref.state_dict(), src)
  dst = str(tmp_path / 'ckpt' / 'curricularface')
  assert convert_main(['curricularface', src, dst]) == 0
  net, variables = load_curricularface(dst)
  x = faces(2, seed=7)
  with torch.no_grad():
    want = tiny_ref(nchw(x)).numpy()
  assert np.abs(np.asarray(net.apply(variables, jnp.asarray(x))) - want).max() <= TOL
  assert convert_main(['curricularface', src, dst]) == 1  # exists, no --overwrite
  assert convert_main(['curricularface', src, dst, '--overwrite']) == 0


def _assert_nothing_written(tmp_path, dst, keep):
  assert not os.path.exists(dst)
  assert sorted(os.listdir(tmp_path)) == sorted(keep)  # no hidden partial directory


def test_irse_checkpoint_refused(tmp_path, capsys):
  """An ArcFace IR-SE50 state dict names `irse50`, and nothing is written."""
  src = str(tmp_path / 'model_ir_se50.pth')
  torch.save(randomize_irse(RefArcFace((1, 1, 1, 1), 16, 112, 32), 1).state_dict(), src)
  dst = str(tmp_path / 'out')
  assert convert_main(['curricularface', src, dst]) == 1
  err = capsys.readouterr().err
  assert src in err and '`python -m interestyle_jax.convert irse50`' in err
  assert err.count('\n') == 1  # one line
  _assert_nothing_written(tmp_path, dst, ['model_ir_se50.pth'])


def test_curricularface_given_to_irse50_refused(tiny_ref, tmp_path, capsys):
  """The reverse mistake: one line naming `curricularface`, nothing written."""
  src = str(tmp_path / 'CurricularFace_Backbone.pth')
  torch.save(tiny_ref.state_dict(), src)
  dst = str(tmp_path / 'out')
  assert convert_main(['irse50', src, dst]) == 1
  err = capsys.readouterr().err
  assert src in err and '`python -m interestyle_jax.convert curricularface`' in err
  assert err.count('\n') == 1
  _assert_nothing_written(tmp_path, dst, ['CurricularFace_Backbone.pth'])


def test_restyle_checkpoint_refused(tiny_ref, tmp_path, capsys):
  src = str(tmp_path / 'interestyle_ffhq.pt')
  enc = {f'encoder.{k}': v for k, v in tiny_ref.state_dict().items()}
  torch.save({'state_dict': enc, 'latent_avg': torch.zeros(18, 512), 'opts': {'n_iters': 5}},
             src)
  dst = str(tmp_path / 'out')
  assert convert_main(['curricularface', src, dst]) == 1
  err = capsys.readouterr().err
  assert src in err and '`python -m interestyle_jax.convert restyle`' in err
  _assert_nothing_written(tmp_path, dst, ['interestyle_ffhq.pt'])
  # The same without the 'state_dict' wrapper (encoder.* keys at the top).
  with pytest.raises(ConversionError, match='convert restyle'):
    load_torch_curricularface(enc)


def test_mismatching_tensors_listed(tiny_ref, tmp_path, capsys):
  sd = dict(tiny_ref.state_dict())
  del sd['output_layer.4.running_var']
  sd['body.1.res_layer.3.weight'] = torch.zeros(16, 8, 3, 3)
  sd['output_layer.9.weight'] = torch.zeros(3)
  with pytest.raises(ConversionError) as e:
    load_torch_curricularface(sd)
  msg = str(e.value)
  for part in ('CurricularFace IR', 'missing (1)', 'output_bn1d/var', 'unexpected (1)',
               'output_layer.9.weight', 'shape mismatch (1)', 'body.1.res_layer.3.weight'):
    assert part in msg
  src = str(tmp_path / 'bad.pth')
  torch.save(sd, src)
  dst = str(tmp_path / 'out')
  assert convert_main(['curricularface', src, dst]) == 1
  assert 'output_layer.9.weight' in capsys.readouterr().err
  _assert_nothing_written(tmp_path, dst, ['bad.pth'])
  # No embedding head, or no IR trunk at all.
  with pytest.raises(ConversionError, match='output_layer.3.weight'):
    load_torch_curricularface({k: v for k, v in tiny_ref.state_dict().items()
                               if not k.startswith('output_layer')})
  with pytest.raises(ConversionError, match='input_layer.0.weight'):
    load_torch_curricularface({'fc.weight': torch.zeros(2, 2)})


def test_affine_output_bn_is_read_from_shapes():
  """An IR network with an affine BN1d (TreB1eN's affine=True) converts with its scale/bias."""
  ref = randomize(RefCurricularFace(**dict(TINY, affine=True)), 9)
  net, variables = load_torch_curricularface(ref.state_dict())
  assert net.affine_output and set(variables['params']['output_bn1d']) == {'scale', 'bias'}
  x = faces(2)
  with torch.no_grad():
    want = ref(nchw(x)).numpy()
  assert np.abs(np.asarray(net.apply(variables, jnp.asarray(x))) - want).max() <= TOL

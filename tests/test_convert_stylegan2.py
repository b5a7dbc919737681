"""PyTorch StyleGAN2 → Flax: parity with an independent torch reference, CLI, errors."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from interestyle_jax.convert import ConversionError, load_stylegan2, load_torch_stylegan2  # noqa: E402
from interestyle_jax.convert import common  # noqa: E402
from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.models.stylegan2 import noise_shapes  # noqa: E402
from tests.torch_ref.stylegan2 import RefGenerator  # noqa: E402

SD = 64


def make_ref(res, cm, width, seed=0):
  torch.manual_seed(seed)
  return RefGenerator(res, SD, 2, cm=cm, width=width).randomize(seed + 1).eval()


def ref_inputs(ref, batch=2, seed=0):
  g = torch.Generator().manual_seed(seed)
  z = torch.randn(batch, SD, generator=g)
  with torch.no_grad():
    w = ref.mapping(z)[:, None].repeat(1, ref.n_latent, 1)
  return z, w + 0.5 * torch.randn(w.shape, generator=g)


@pytest.mark.parametrize('res,cm,width', [(32, 1, 32), (32, 2, 32), (64, 1, 32), (64, 2, 64)])
def test_parity_const_noise_and_mapping(res, cm, width):
  ref = make_ref(res, cm, width)
  gen, v = load_torch_stylegan2({'g_ema': ref.state_dict()})
  assert (gen.resolution, gen.style_dim, gen.n_mlp, gen.width) == (res, SD, 2, width)
  if res >= 64:
    assert gen.channel_multiplier == cm
  z, w = ref_inputs(ref)
  with torch.no_grad():
    want = ref(w).permute(0, 2, 3, 1).numpy()
    want_w = ref.mapping(z).numpy()
  got = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise_mode='const'))
  assert np.abs(got - want).max() <= 1e-4
  got_w = np.asarray(gen.apply(v, jnp.asarray(z.numpy()), method=gen.mapping))
  assert np.abs(got_w - want_w).max() <= 1e-4
  grouped = gen.clone(modconv_impl='grouped').apply(v, jnp.asarray(w.numpy()))
  assert np.abs(np.asarray(grouped) - want).max() <= 1e-4


def test_parity_explicit_and_no_noise():
  ref = make_ref(32, 2, 32, seed=3)
  gen, v = load_torch_stylegan2(ref.state_dict())  # bare state dict
  _, w = ref_inputs(ref, batch=3, seed=4)
  g = torch.Generator().manual_seed(5)
  noise = [torch.randn(3, 1, s[1], s[2], generator=g) for s in noise_shapes(32)]
  with torch.no_grad():
    want = ref(w, noise=noise).permute(0, 2, 3, 1).numpy()
    want_none = ref(w, noise='none').permute(0, 2, 3, 1).numpy()
  jn = [jnp.asarray(n.permute(0, 2, 3, 1).numpy()) for n in noise]
  got = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise=jn))
  assert np.abs(got - want).max() <= 1e-4
  got_none = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise_mode='none'))
  assert np.abs(got_none - want_none).max() <= 1e-4


@pytest.fixture(scope='module')
def ckpt_file(tmp_path_factory):
  ref = make_ref(32, 2, 32, seed=7)
  path = tmp_path_factory.mktemp('pt') / 'g.pt'
  latent_avg = torch.randn(SD)
  torch.save({'g_ema': ref.state_dict(), 'latent_avg': latent_avg}, path)
  return ref, str(path), latent_avg.numpy()


def test_cli_round_trip(ckpt_file, tmp_path, capsys):
  ref, src, latent_avg = ckpt_file
  dst = tmp_path / 'out'
  assert convert_main(['stylegan2', src, str(dst)]) == 0
  assert 'wrote' in capsys.readouterr().out
  gen, v, lat = load_stylegan2(str(dst))
  np.testing.assert_allclose(np.asarray(lat).reshape(-1), latent_avg, atol=0)
  _, w = ref_inputs(ref)
  with torch.no_grad():
    want = ref(w).permute(0, 2, 3, 1).numpy()
  assert np.abs(np.asarray(gen.apply(v, jnp.asarray(w.numpy()))) - want).max() <= 1e-4
  # The same directory again is refused, --overwrite replaces it.
  assert convert_main(['stylegan2', src, str(dst)]) == 1
  assert 'already exists' in capsys.readouterr().err
  assert convert_main(['stylegan2', src, str(dst), '--overwrite']) == 0


def _assert_fails_cleanly(sd, tmp_path, match, capsys):
  src = tmp_path / 'bad.pt'
  torch.save(sd, src)
  dst = tmp_path / 'out'
  assert convert_main(['stylegan2', str(src), str(dst)]) == 1
  err = capsys.readouterr().err
  for m in match:
    assert m in err, err
  assert not dst.exists()
  assert [p for p in os.listdir(tmp_path) if 'partial' in p] == []
  return err


def test_error_missing_unexpected_and_mismatch(ckpt_file, tmp_path, capsys):
  ref = ckpt_file[0]
  sd = dict(ref.state_dict())
  del sd['convs.1.noise.weight']
  del sd['to_rgbs.0.bias']
  sd['convs.2.extra.weight'] = torch.zeros(3)
  sd['conv1.activate.bias'] = torch.zeros(5)
  err = _assert_fails_cleanly({'g_ema': sd}, tmp_path, [
      'missing (2)', 'params/convs_1/noise/weight', 'params/to_rgbs_0/bias',
      'unexpected (1)', 'convs.2.extra.weight',
      'shape mismatch (1)', 'conv1.activate.bias: checkpoint (5,) vs model (32,)'], capsys)
  assert str(tmp_path / 'bad.pt') in err


def test_error_not_a_generator(tmp_path, capsys):
  _assert_fails_cleanly({'state_dict': {'encoder.x': torch.zeros(1)}}, tmp_path,
                        ['no StyleGAN2 generator found', 'state_dict'], capsys)


def test_error_corrupt_and_missing_file(tmp_path, capsys):
  bad = tmp_path / 'corrupt.pt'
  bad.write_bytes(b'not a checkpoint')
  assert convert_main(['stylegan2', str(bad), str(tmp_path / 'o')]) == 1
  assert 'not a readable PyTorch checkpoint' in capsys.readouterr().err
  assert convert_main(['stylegan2', str(tmp_path / 'nope.pt'), str(tmp_path / 'o')]) == 1
  assert not (tmp_path / 'o').exists()


class _Payload:
  """Unpickling it creates the file at ``path``: code running from a checkpoint."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_malicious_pickle_does_not_run_unless_trusted(ckpt_file, tmp_path, capsys):
  marker = tmp_path / 'ran'
  src = tmp_path / 'evil.pt'
  torch.save({'g_ema': ckpt_file[0].state_dict(), 'payload': _Payload(str(marker))}, src)
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert not marker.exists()
  assert str(src) in err and '--trust_checkpoint' in err and 'refused to unpickle' in err
  assert not (tmp_path / 'o').exists()
  # The explicit opt-in loads the whole pickle (and so runs its code).
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o'), '--trust_checkpoint']) == 0
  assert marker.exists()


def test_training_args_namespace_is_allowed(ckpt_file, tmp_path):
  import argparse
  src = tmp_path / 'rosinality.pt'  # train.py of rosinality's port saves its args
  torch.save({'g_ema': ckpt_file[0].state_dict(), 'args': argparse.Namespace(size=32)}, src)
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o')]) == 0


def test_missing_torch_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match=r'interestyle_jax\[torch\]'):
    common.require_torch()


def test_loading_wrong_kind_is_explained(tmp_path):
  from interestyle_jax import artifacts
  artifacts.save_artifact(str(tmp_path / 'x'), {'a': np.zeros(2)}, {'kind': 'lpips'})
  with pytest.raises(artifacts.ArtifactError, match="holds a 'lpips' model"):
    load_stylegan2(str(tmp_path / 'x'))
  with pytest.raises(artifacts.ArtifactError, match='no model.json'):
    load_stylegan2(str(tmp_path))

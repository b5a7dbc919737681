"""ArcFace IR-SE, ID loss / similarity and the irse50 converter vs a torch reference."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax.models.arcface import (face_crop, id_loss, id_similarity,
                                            load_arcface)

torch = pytest.importorskip('torch')

from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.convert.common import ConversionError  # noqa: E402
from interestyle_jax.convert.irse50 import load_encoder_init, load_torch_arcface  # noqa: E402
from tests.torch_ref.irse import RefArcFace, randomize  # noqa: E402

TOL = 1e-4
UNITS, WIDTH = (1, 1, 2, 1), 16


@pytest.fixture(scope='module')
def ref():
  torch.manual_seed(0)
  return randomize(RefArcFace(UNITS, WIDTH, 112, 32), 1)


@pytest.fixture(scope='module')
def converted(ref):
  return load_torch_arcface(ref.state_dict())


@pytest.fixture(scope='module')
def faces():
  rng = np.random.default_rng(0)
  y = rng.uniform(-1, 1, (3, 256, 256, 3)).astype(np.float32)
  y_hat = np.clip(y + 0.3 * rng.standard_normal(y.shape), -1, 1).astype(np.float32)
  return y_hat, y


def nchw(x):
  return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def restyle_id_loss(net, y_hat, y):
  """ReStyle's IDLoss.forward: crop, adaptive pool to 112, embed, mean(1 - dot)."""
  def feats(x):
    x = torch.nn.functional.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112))
    return net(x)
  with torch.no_grad():
    a, b = feats(nchw(y_hat)), feats(nchw(y))
  return float(np.mean([1 - float(a[i].dot(b[i])) for i in range(a.shape[0])])), (a * b).sum(1)


def test_embedding_parity(ref, converted):
  net, variables = converted
  assert (net.stage_units, net.width, net.input_size, net.embedding_dim) == (UNITS, WIDTH, 112, 32)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(nchw(x)).numpy()
  got = np.asarray(net.apply(variables, jnp.asarray(x)))
  assert np.abs(got - want).max() <= TOL
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_id_loss_and_similarity_match_restyle(ref, converted, faces):
  y_hat, y = faces
  want_loss, want_sim = restyle_id_loss(ref, y_hat, y)
  loss_fn = jax.jit(lambda a, b: id_loss(converted, a, b))
  got = float(loss_fn(y_hat, y))
  assert abs(got - want_loss) <= TOL
  sim = np.asarray(id_similarity(converted, y_hat, y))
  assert sim.shape == (3,) and np.abs(sim - want_sim.numpy()).max() <= TOL
  assert abs(float(loss_fn(y, y))) <= 1e-5
  # Same through a plain embedding function.
  net, variables = converted
  assert abs(float(id_loss(lambda x: net.apply(variables, x), y_hat, y)) - want_loss) <= TOL


def test_id_loss_target_gets_no_gradient(converted, faces):
  y_hat, y = faces
  g_hat, g_y = jax.grad(lambda a, b: id_loss(converted, a, b), argnums=(0, 1))(y_hat, y)
  assert float(jnp.abs(g_hat).max()) > 0
  assert float(jnp.abs(g_y).max()) == 0.0
  # Pixels outside the face box never reach the network.
  assert float(jnp.abs(g_hat[:, :35]).max()) == 0.0
  assert float(jnp.abs(g_hat[:, :, 220:]).max()) == 0.0


def test_face_crop_box():
  x = jnp.zeros((1, 256, 256, 3))
  assert face_crop(x).shape == (1, 188, 188, 3)
  assert face_crop(jnp.zeros((1, 64, 64, 3))).shape == (1, 47, 47, 3)


def test_cli_arcface_and_encoder_init(ref, tmp_path, faces):
  src = str(tmp_path / 'model_ir_se50.pth')
  torch.save(ref.state_dict(), src)
  dst = str(tmp_path / 'arcface')
  assert convert_main(['irse50', src, dst]) == 0
  net, variables = load_arcface(dst)
  y_hat, y = faces
  want_loss, _ = restyle_id_loss(ref, y_hat, y)
  assert abs(float(id_loss((net, variables), y_hat, y)) - want_loss) <= TOL
  assert convert_main(['irse50', src, dst]) == 1  # exists, no --overwrite

  enc_dir = str(tmp_path / 'enc_init')
  args = ['irse50', src, enc_dir, '--as-encoder-backbone', '8', '--style-dim', '32',
          '--encoder-size', '64', '--seed', '3']
  assert convert_main(args) == 0
  enc, ev, size = load_encoder_init(enc_dir)
  assert (enc.n_styles, enc.input_nc, enc.stage_units, size) == (8, 6, UNITS, 64)
  kernel = np.asarray(ev['params']['backbone']['input_conv']['kernel'])
  assert kernel.shape == (3, 3, 6, WIDTH)
  want = ref.input_layer[0].weight.detach().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(kernel[:, :, :3], want)
  assert 0.7 < kernel[:, :, 3:].std() < 1.3  # torch.randn-like extra channels
  np.testing.assert_array_equal(np.asarray(ev['batch_stats']['backbone']['body_2']['res_bn2']['var']),
                                ref.body[2].res_layer[4].running_var.numpy())
  out = enc.apply(ev, jnp.zeros((1, 64, 64, 6)))
  assert out.shape == (1, 8, 32) and bool(jnp.all(jnp.isfinite(out)))
  # Same seed, same weights; another seed, other random parts.
  again = str(tmp_path / 'enc_init2')
  assert convert_main(args[:2] + [again] + args[3:]) == 0
  np.testing.assert_array_equal(np.asarray(load_encoder_init(again)[1]['params']['styles_0']
                                           ['linear']['weight']),
                                np.asarray(ev['params']['styles_0']['linear']['weight']))
  other = str(tmp_path / 'enc_init3')
  assert convert_main(args[:2] + [other] + args[3:-1] + ['4']) == 0
  k3 = np.asarray(load_encoder_init(other)[1]['params']['backbone']['input_conv']['kernel'])
  assert not np.allclose(k3[:, :, 3:], kernel[:, :, 3:])


def test_converter_errors(ref, tmp_path, capsys):
  sd = dict(ref.state_dict())
  del sd['output_layer.4.running_var']
  sd['output_layer.7.weight'] = torch.zeros(2)
  sd['body.1.res_layer.3.weight'] = torch.zeros(WIDTH * 2, WIDTH, 3, 3)
  with pytest.raises(ConversionError) as e:
    load_torch_arcface(sd)
  msg = str(e.value)
  for part in ('missing (1)', 'output_bn1d/var', 'unexpected (1)', 'output_layer.7.weight',
               'shape mismatch (1)', 'body.1.res_layer.3.weight'):
    assert part in msg
  src = str(tmp_path / 'bad.pth')
  torch.save(sd, src)
  dst = tmp_path / 'out'
  assert convert_main(['irse50', src, str(dst)]) == 1
  assert 'output_layer.7.weight' in capsys.readouterr().err
  assert not dst.exists() and os.listdir(tmp_path) == ['bad.pth']  # nothing half-written
  with pytest.raises(ConversionError, match='state_dict'):
    load_torch_arcface({'state_dict': {}, 'opts': {}})
  with pytest.raises(ConversionError, match='output_layer.3.weight'):
    load_torch_arcface({k: v for k, v in ref.state_dict().items()
                        if not k.startswith('output_layer')})

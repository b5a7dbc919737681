"""BackboneEncoder (IR-SE / ResNet-34) and adaptive pooling vs independent references."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax.models.encoder import BackboneEncoder, num_style_convs
from interestyle_jax.models.irse import IRSE_STAGE_UNITS
from interestyle_jax.ops.pooling import adaptive_avg_pool2d, adaptive_pool_matrix

torch = pytest.importorskip('torch')

from interestyle_jax.convert.backbones import infer_backbone  # noqa: E402
from interestyle_jax.convert.common import ConversionError  # noqa: E402
from interestyle_jax.convert.restyle import convert_encoder  # noqa: E402
from tests.torch_ref.irse import RefEncoder, randomize  # noqa: E402

TOL = 1e-4


def numpy_adaptive_pool(x, out_h, out_w):
  """Literal loop over PyTorch's windows, NHWC."""
  b, h, w, c = x.shape
  y = np.zeros((b, out_h, out_w, c), np.float64)
  for i in range(out_h):
    h0, h1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
    for j in range(out_w):
      w0, w1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize('size_in,size_out', [((188, 188), (112, 112)), ((64, 64), (16, 16)),
                                              ((7, 9), (3, 4)), ((3, 5), (5, 2)),
                                              ((10, 10), (10, 10))])
def test_adaptive_pool_matches_numpy_and_torch(size_in, size_out):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2,) + size_in + (3,)).astype(np.float32)
  got = np.asarray(adaptive_avg_pool2d(jnp.asarray(x), size_out))
  assert got.shape == (2,) + size_out + (3,)
  np.testing.assert_allclose(got, numpy_adaptive_pool(x, *size_out), atol=TOL, rtol=0)
  want = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), size_out).permute(0, 2, 3, 1).numpy()
  assert np.abs(got - want).max() <= TOL


def test_adaptive_pool_windows_overlap_and_vary():
  m = adaptive_pool_matrix(188, 112)
  lengths = (m > 0).sum(axis=1)
  assert set(lengths.tolist()) == {2, 3}  # not a fixed-stride resize
  np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
  assert adaptive_avg_pool2d(jnp.ones((5, 5, 1)), 2).shape == (2, 2, 1)  # HWC accepted


def make_pair(backbone, units=(1, 2, 1, 1), width=16, size=64, n_styles=3, sdim=24,
              seed=0):
  torch.manual_seed(seed)
  ref = randomize(RefEncoder(n_styles, sdim, 6, units, width, size // 16, backbone), seed + 1)
  config, enc_size, variables = convert_encoder(ref.state_dict(), 'ref')
  assert enc_size == size
  enc = BackboneEncoder(**json.loads(json.dumps(config)))  # rebuilt as from model.json
  return ref, enc, variables


@pytest.mark.parametrize('backbone,units,size', [('ir_se', (1, 2, 1, 1), 64),
                                                 ('resnet34', (1, 2, 1, 1), 32)])
def test_encoder_parity_eval_and_train(backbone, units, size):
  ref, enc, variables = make_pair(backbone, units, size=size)
  assert (enc.backbone, enc.stage_units, enc.width, enc.n_styles) == (backbone, units, 16, 3)
  x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 6)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    want_eval = ref.eval()(xt).numpy()
  got = np.asarray(enc.apply(variables, jnp.asarray(x)))
  assert got.shape == (2, 3, 24)
  assert np.abs(got - want_eval).max() <= TOL

  # Training mode: batch statistics; running means move with PyTorch's momentum.
  ref.train()
  with torch.no_grad():
    want_train = ref(xt).numpy()
  got_train, upd = enc.apply(variables, jnp.asarray(x), train=True, mutable=['batch_stats'])
  assert np.abs(np.asarray(got_train) - want_train).max() <= TOL
  assert np.abs(want_train - want_eval).max() > 10 * TOL  # the two modes differ
  ref_bn = ref.input_layer[1] if backbone == 'ir_se' else ref.bn1
  flax_bn = 'input_bn' if backbone == 'ir_se' else 'bn1'
  got_mean = np.asarray(upd['batch_stats']['backbone'][flax_bn]['mean'])
  assert np.abs(got_mean - ref_bn.running_mean.numpy()).max() <= TOL


def test_full_size_architectures_match_reference_counts():
  # IR-SE50 at 256 px and ResNet-34: same tensors, sizes as the torch layout.
  for backbone, kwargs in (('ir_se', {}), ('resnet34', {})):
    ref = RefEncoder(18, 512, 6, IRSE_STAGE_UNITS[50] if backbone == 'ir_se' else (3, 4, 6, 3),
                     64, 16, backbone)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith('num_batches_tracked')}
    enc = BackboneEncoder(n_styles=18, backbone=backbone, **kwargs)
    shapes = jax.eval_shape(enc.init, jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 6)))
    leaves = jax.tree_util.tree_leaves(shapes)
    assert len(leaves) == len(sd)
    assert sum(np.prod(l.shape) for l in leaves) == sum(v.numel() for v in sd.values())
    out = jax.eval_shape(enc.apply, shapes, jnp.zeros((2, 256, 256, 6)))
    assert out.shape == (2, 18, 512)
    assert infer_backbone(ref.state_dict())['stage_units'] is None
  assert num_style_convs(16) == 4 and num_style_convs(1) == 1


@pytest.mark.parametrize('depth', [100, 152])
def test_infer_standard_depths(depth):
  ref = RefEncoder(1, 8, 6, IRSE_STAGE_UNITS[depth], 4, 1)
  cfg = infer_backbone(ref.state_dict())
  assert (cfg['num_layers'], cfg['stage_units'], cfg['width']) == (depth, None, 4)


def test_encoder_input_validation():
  enc = BackboneEncoder(n_styles=2, style_dim=8, stage_units=(1, 1, 1, 1), width=16)
  with pytest.raises(ValueError, match='6'):
    enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='divisible by 16'):
    enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 40, 6)))
  with pytest.raises(ValueError, match='backbone'):
    BackboneEncoder(n_styles=2, backbone='vgg').init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 32, 32, 6)))


def test_convert_encoder_reports_every_problem():
  ref, _, _ = make_pair('ir_se')
  sd = dict(ref.state_dict())
  del sd['body.0.res_layer.5.fc1.weight']
  sd['body.0.res_layer.9.weight'] = torch.zeros(3)
  sd['styles.1.linear.weight'] = torch.zeros(5, 24)
  with pytest.raises(ConversionError) as e:
    convert_encoder(sd, 'bad.pt')
  msg = str(e.value)
  assert 'missing (1)' in msg and 'body_0/se/fc1/kernel' in msg
  assert 'unexpected (1)' in msg and 'body.0.res_layer.9.weight' in msg
  assert 'shape mismatch (1)' in msg and 'styles.1.linear.weight' in msg
  with pytest.raises(ConversionError, match='no IR-SE'):
    convert_encoder({'foo.weight': torch.zeros(1)}, 'bad.pt')

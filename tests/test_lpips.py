"""LPIPS-AlexNet v0.1 and the lpips converter vs an independent torch reference."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax.models.lpips import LPIPS, load_lpips, lpips_loss

torch = pytest.importorskip('torch')

from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.convert.common import ConversionError  # noqa: E402
from interestyle_jax.convert.lpips import load_torch_lpips  # noqa: E402
from tests.torch_ref.lpips import RefLPIPS  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope='module')
def ref():
  return RefLPIPS(seed=0)


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  y = np.clip(x + 0.5 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  return x, y


def ref_distance(ref, x, y):
  with torch.no_grad():
    return ref(torch.from_numpy(x).permute(0, 3, 1, 2),
               torch.from_numpy(y).permute(0, 3, 1, 2)).numpy()


def test_parity_and_loss(ref, images):
  net, variables = load_torch_lpips(ref.lins.state_dict(), ref.alexnet.state_dict())
  x, y = images
  want = ref_distance(ref, x, y)
  d = jax.jit(net.apply)(variables, x, y)
  assert d.shape == (3,)
  assert np.abs(np.asarray(d) - want).max() <= TOL
  assert want.min() > 10 * TOL  # a non-trivial comparison
  loss = jax.jit(lambda a, b: lpips_loss(net, variables, a, b))
  assert abs(float(loss(x, y)) - want.mean()) <= TOL
  assert abs(float(loss(x, x))) <= 1e-6
  g = jax.grad(lambda a: lpips_loss(net, variables, a, y))(x)
  assert float(jnp.abs(g).max()) > 0


def test_cli_and_errors(ref, images, tmp_path, capsys):
  lin, alex = str(tmp_path / 'alex.pth'), str(tmp_path / 'alexnet.pth')
  torch.save(ref.lins.state_dict(), lin)
  torch.save(ref.alexnet.state_dict(), alex)
  dst = str(tmp_path / 'lpips')
  assert convert_main(['lpips', lin, dst, '--alexnet', alex]) == 0
  net, variables = load_lpips(dst)
  x, y = images
  d = np.asarray(jax.jit(net.apply)(variables, x, y))
  assert np.abs(d - ref_distance(ref, x, y)).max() <= TOL
  assert convert_main(['lpips', lin, dst, '--alexnet', alex]) == 1  # exists
  assert 'already exists' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert_main(['lpips', lin, str(tmp_path / 'x')])  # --alexnet is required

  # Files swapped: every key of each is listed, nothing written.
  bad = str(tmp_path / 'bad')
  assert convert_main(['lpips', alex, bad, '--alexnet', lin]) == 1
  err = capsys.readouterr().err
  assert 'features.0.weight' in err and 'lin0.model.1.weight' in err and 'missing (5)' in err
  assert not os.path.exists(bad)

  lin_sd = dict(ref.lins.state_dict())
  lin_sd['lin2.model.1.weight'] = torch.zeros(1, 7, 1, 1)
  del lin_sd['lin4.model.1.weight']
  lin_sd['lin5.model.1.weight'] = torch.zeros(1, 3, 1, 1)
  with pytest.raises(ConversionError) as e:
    load_torch_lpips(lin_sd, ref.alexnet.state_dict())
  msg = str(e.value)
  assert 'shape mismatch (1)' in msg and 'lin2.model.1.weight' in msg
  assert 'missing (1)' in msg and 'lin4/kernel' in msg
  assert 'unexpected (1)' in msg and 'lin5.model.1.weight' in msg


def test_narrow_model_and_validation():
  ref = RefLPIPS(channels=(8, 8, 16, 8, 8), seed=1)
  net, variables = load_torch_lpips(ref.lins.state_dict(), ref.alexnet.state_dict())
  assert net.channels == (8, 8, 16, 8, 8)
  rng = np.random.default_rng(2)
  x, y = (rng.uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32) for _ in range(2))
  assert np.abs(np.asarray(jax.jit(net.apply)(variables, x, y))
                - ref_distance(ref, x, y)).max() <= TOL
  with pytest.raises(ValueError, match='LPIPS expects'):
    LPIPS().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 32, 32, 3)))

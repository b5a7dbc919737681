"""Interest-region losses against NumPy, and the λ > 0 paths of the step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax import losses
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.training import step as step_lib


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  y_hat = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  m = rng.uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
  return y_hat, y, m


def test_interest_l2_matches_numpy(data):
  y_hat, y, m = data
  want = ((m * y_hat - m * y) ** 2).reshape(3, -1).mean(axis=1)
  np.testing.assert_allclose(np.asarray(losses.interest_l2(y_hat, y, m)), want, rtol=1e-6)
  # All-ones mask: the whole-image MSE.
  np.testing.assert_allclose(np.asarray(losses.interest_l2(y_hat, y, np.ones_like(m))),
                             ((y_hat - y) ** 2).reshape(3, -1).mean(1), rtol=1e-6)
  # Differences confined to m = 0 cost nothing.
  hard = (m > 0.5).astype(np.float32)
  y2 = y + (1 - hard) * 5.0
  np.testing.assert_allclose(np.asarray(losses.interest_l2(y_hat, y2, hard)),
                             np.asarray(losses.interest_l2(y_hat, y, hard)), rtol=1e-6)


def test_w_norm_is_frobenius_distance_to_average():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(4, 6, 5)).astype(np.float32)
  w_avg = rng.normal(size=(6, 5)).astype(np.float32)
  want = np.sqrt(((w - w_avg) ** 2).sum(axis=(1, 2)))
  np.testing.assert_allclose(np.asarray(losses.w_norm(w, w_avg)), want, rtol=1e-6)


def test_id_distance_and_target_gets_no_gradient(data):
  y_hat, y, _ = data
  embed = lambda x: x.reshape(x.shape[0], -1) / jnp.linalg.norm(
      x.reshape(x.shape[0], -1), axis=1, keepdims=True)
  e1 = y_hat.reshape(3, -1) / np.linalg.norm(y_hat.reshape(3, -1), axis=1, keepdims=True)
  e2 = y.reshape(3, -1) / np.linalg.norm(y.reshape(3, -1), axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(losses.id_distance(embed, y_hat, y)),
                             1 - (e1 * e2).sum(1), rtol=1e-5)
  g_target = jax.grad(lambda t: jnp.sum(losses.id_distance(embed, y_hat, t)))(y)
  g_pred = jax.grad(lambda p: jnp.sum(losses.id_distance(embed, p, y)))(y_hat)
  assert float(jnp.max(jnp.abs(g_target))) == 0.0
  assert float(jnp.max(jnp.abs(g_pred))) > 0.0


def test_terms_are_built_only_when_enabled(data):
  y_hat, y, m = data

  def never(*_):
    raise AssertionError('a disabled loss network was called')

  off = losses.LossWeights(lpips=0.0, id=0.0)
  terms = losses.reconstruction_terms(y_hat, y, m, off, never, never)
  assert set(terms) == {'l2'}
  with pytest.raises(ValueError, match='lpips_path'):
    losses.reconstruction_terms(y_hat, y, m, losses.LossWeights(lpips=0.8, id=0.0))
  with pytest.raises(ValueError, match='id_path'):
    losses.reconstruction_terms(y_hat, y, m, losses.LossWeights(lpips=0.0, id=0.1))
  # The networks see the masked images.
  seen = {}

  def lpips_fn(a, b):
    seen['lpips'] = (np.asarray(a), np.asarray(b))
    return jnp.sum(jnp.abs(a - b), axis=(1, 2, 3))

  on = losses.LossWeights(l2=1.0, lpips=0.8, id=0.0, w_norm=0.5)
  terms = losses.reconstruction_terms(y_hat, y, m, on, lpips_fn)
  np.testing.assert_allclose(seen['lpips'][0], m * y_hat, rtol=1e-6)
  np.testing.assert_allclose(seen['lpips'][1], m * y, rtol=1e-6)
  total = losses.weighted_sum(terms, on)
  np.testing.assert_allclose(np.asarray(total),
                             np.asarray(terms['l2'] + 0.8 * terms['lpips']), rtol=1e-6)
  w = np.zeros((3, 2, 4), np.float32)
  loss, mean_terms = losses.iteration_loss(y_hat, y, m, w, np.ones((2, 4), np.float32), on,
                                           lpips_fn)
  want = np.mean(np.asarray(total)) + 0.5 * np.sqrt(8.0)
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert set(mean_terms) == {'l2', 'lpips', 'w_norm'}
  np.testing.assert_allclose(float(losses.ind_loss(y_hat, y, m, on, lpips_fn)),
                             float(np.mean(np.asarray(total))), rtol=1e-6)


class FakeLPIPS(nn.Module):
  """A parameterised per-image distance with LPIPS's call signature."""

  @nn.compact
  def __call__(self, x, y):
    scale = self.param('scale', nn.initializers.ones, (3,))
    return jnp.mean(jnp.abs(x - y) * scale, axis=(1, 2, 3))


class FakeArcFace(nn.Module):
  """Unit-norm embedding of 16 px crops (``input_size`` as the real ArcFace)."""
  input_size: int = 16

  @nn.compact
  def __call__(self, x):
    e = nn.Dense(8)(x.reshape(x.shape[0], -1))
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def test_step_with_lpips_and_id_networks():
  """The λ > 0 paths of the train step: LPIPS and ID terms enter loss and grads."""
  gen = Generator(16, style_dim=8, n_mlp=1, width=4)
  n = gen.n_styles
  gv = jax.jit(gen.init)(jax.random.PRNGKey(0), jnp.zeros((1, n, 8)))

  class Enc(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return 0.1 * nn.Dense(n * 8)(jnp.mean(x, axis=(1, 2))).reshape(-1, n, 8)

  enc, lp, arc = Enc(), FakeLPIPS(), FakeArcFace()
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1, maxval=1)
  ev = enc.init(jax.random.PRNGKey(2), jnp.zeros((1, 16, 16, 6)))
  frozen = {'generator': gv, 'latent_avg': jnp.zeros((n, 8)),
            'avg_image': jnp.zeros((16, 16, 3)),
            'lpips': lp.init(jax.random.PRNGKey(3), x, x),
            'arcface': arc.init(jax.random.PRNGKey(4), x)}
  batch = {'image': x, 'mask': jnp.ones((2, 16, 16, 1))}
  models = step_lib.Models(enc, gen, lp, arc)
  out = {}
  for lam in (0.0, 1.0):
    cfg = step_lib.StepConfig(
        n_iters=2, sigmas=(1.0, 0.0), encoder_size=16, train_noise_mode='const',
        axis_name=None, weights=losses.LossWeights(l2=1.0, lpips=0.8 * lam, id=0.1 * lam,
                                                   ind=0.0))
    fn = jax.jit(functools.partial(step_lib.loss_and_grads, models=models, cfg=cfg))
    out[lam] = fn(ev['params'], {}, frozen, batch, jax.random.PRNGKey(0))
  grads, _, metrics = out[1.0]
  assert {'lpips', 'id'} <= set(metrics) and not {'lpips', 'id'} & set(out[0.0][2])
  # The last iteration's loss: l2 + 0.8 lpips + 0.1 id (+ the first iteration's).
  assert float(metrics['loss']) > float(out[0.0][2]['loss'])
  assert float(metrics['id']) > 0 and float(metrics['lpips']) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in
             zip(jax.tree.leaves(grads), jax.tree.leaves(out[0.0][0])))

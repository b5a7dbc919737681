"""Uninterest filter: identities and the Gaussian against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax import filter as unf


def numpy_blur(x, sigma, radius, padding='reflect'):
  """Direct 2-D (non-separable) float64 Gaussian correlation."""
  x = np.asarray(x, np.float64)
  if sigma == 0:
    return x
  offs = np.arange(-radius, radius + 1)
  g2 = np.exp(-(offs[:, None] ** 2 + offs[None, :] ** 2) / (2.0 * sigma ** 2))
  g2 /= g2.sum()
  mode = 'reflect' if padding == 'reflect' else 'constant'
  xp = np.pad(x, [(0, 0), (radius, radius), (radius, radius), (0, 0)], mode=mode)
  h, w = x.shape[1:3]
  out = np.zeros_like(x)
  for i, di in enumerate(offs):
    for j, dj in enumerate(offs):
      out += g2[i, j] * xp[:, radius + di:radius + di + h, radius + dj:radius + dj + w]
  return out


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 20, 24, 3)).astype(np.float32)
  m = rng.uniform(0, 1, (2, 20, 24, 1)).astype(np.float32)
  return x, m


@pytest.mark.parametrize('padding', ['reflect', 'zero'])
@pytest.mark.parametrize('sigma', [0.7, 2.0, 3.0])
def test_gaussian_matches_numpy(images, sigma, padding):
  x, _ = images
  radius = unf.kernel_radius(3.0)  # sized for the largest σ, as in training
  got = unf.gaussian_blur(jnp.asarray(x), sigma, radius, padding)
  want = numpy_blur(x, sigma, radius, padding)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_blur_is_lowpass_and_keeps_mean(images):
  x, _ = images
  y = np.asarray(unf.gaussian_blur(jnp.asarray(x), 2.0, 6))
  assert y.std() < 0.5 * x.std()
  # Reflect padding keeps a constant image constant (zero padding would not).
  c = np.full((1, 16, 16, 3), 0.7, np.float32)
  np.testing.assert_allclose(np.asarray(unf.gaussian_blur(jnp.asarray(c), 3.0, 9)), c,
                             atol=1e-6)


def test_sigma_zero_is_exact_identity_with_traced_sigma(images):
  x, m = images
  fn = jax.jit(lambda s: unf.uninterest_filter(jnp.asarray(x), jnp.asarray(m), s,
                                                radius=6))
  np.testing.assert_array_equal(np.asarray(fn(0.0)), x)
  np.testing.assert_array_equal(np.asarray(unf.gaussian_blur(jnp.asarray(x), 0.0, 6)), x)


def test_mask_identities(images):
  x, _ = images
  xj = jnp.asarray(x)
  ones = jnp.ones(x.shape[:3] + (1,))
  zeros = jnp.zeros(x.shape[:3] + (1,))
  blurred = unf.gaussian_blur(xj, 2.0, 6)
  # m = 1 everywhere: nothing is uninterest, so the image passes unchanged.
  np.testing.assert_array_equal(np.asarray(unf.uninterest_filter(xj, ones, 2.0, 6)), x)
  # m = 0 everywhere: the whole image is blurred.
  np.testing.assert_allclose(np.asarray(unf.uninterest_filter(xj, zeros, 2.0, 6)),
                             np.asarray(blurred), atol=1e-7)
  # 'whole' blurs regardless of the mask (the released reference behaviour).
  np.testing.assert_allclose(
      np.asarray(unf.uninterest_filter(xj, ones, 2.0, 6, region='whole')),
      np.asarray(blurred), atol=1e-7)


def test_soft_mask_blends(images):
  x, m = images
  got = unf.uninterest_filter(jnp.asarray(x), jnp.asarray(m), 1.5, 6)
  want = m * x + (1 - m) * numpy_blur(x, 1.5, 6)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_sigma_changes_inside_scan(images):
  """One compiled body, σ from the scanned schedule, equals per-σ calls."""
  x, m = images
  sigmas = jnp.asarray(unf.scaled_sigmas((16, 9, 4, 1, 0), 48))  # (3, 1.69, .75, .19, 0)
  radius = unf.kernel_radius(float(sigmas.max()))

  def body(c, s):
    return c, unf.uninterest_filter(jnp.asarray(x), jnp.asarray(m), s, radius)

  _, outs = jax.lax.scan(body, 0, sigmas)
  for t, s in enumerate(np.asarray(sigmas)):
    want = m * x + (1 - m) * numpy_blur(x, float(s), radius)
    np.testing.assert_allclose(np.asarray(outs[t]), want, atol=2e-6)
  np.testing.assert_array_equal(np.asarray(outs[-1]), x)


def test_schedule_scaling_and_errors(images):
  assert unf.scaled_sigmas((16, 9, 4, 1, 0), 1024) == (64.0, 36.0, 16.0, 4.0, 0.0)
  assert unf.scaled_sigmas((16, 8), 32) == (2.0, 1.0)
  assert unf.kernel_radius(0) == 0 and unf.kernel_radius(2.0) == 6
  x, m = images
  with pytest.raises(ValueError, match='filter region'):
    unf.uninterest_filter(jnp.asarray(x), jnp.asarray(m), 1.0, 3, region='face')
  with pytest.raises(ValueError, match='radius'):
    unf.gaussian_blur(jnp.asarray(x), 10.0, 30)

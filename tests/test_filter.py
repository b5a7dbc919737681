"""Uninterest filter: identities, the Gaussian against NumPy, σ units against PIL."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter
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
  # The release's schedule scaled by 192 / 1024: (3, 1.69, .75, .19, 0) px.
  sigmas = jnp.asarray(unf.sigmas_at_size((16, 9, 4, 1, 0), 192, 1024))
  radius = unf.kernel_radius(float(sigmas.max()))

  def body(c, s):
    return c, unf.uninterest_filter(jnp.asarray(x), jnp.asarray(m), s, radius)

  _, outs = jax.lax.scan(body, 0, sigmas)
  for t, s in enumerate(np.asarray(sigmas)):
    want = m * x + (1 - m) * numpy_blur(x, float(s), radius)
    np.testing.assert_allclose(np.asarray(outs[t]), want, atol=2e-6)
  np.testing.assert_array_equal(np.asarray(outs[-1]), x)


def test_schedule_scaling_and_errors(images):
  # σ in px of the source photos, scaled to the size the filter runs at.
  assert unf.sigmas_at_size((16, 9, 4, 1, 0), 256, 1024) == (4.0, 2.25, 1.0, 0.25, 0.0)
  assert unf.sigmas_at_size((16, 9, 4, 1, 0), 1024, 1024) == (16.0, 9.0, 4.0, 1.0, 0.0)
  assert unf.sigmas_at_size((16, 8), 32, 256) == (2.0, 1.0)
  with pytest.raises(ValueError, match='source_size'):
    unf.sigmas_at_size((1.0,), 256, 0)
  assert unf.kernel_radius(0) == 0 and unf.kernel_radius(2.0) == 6
  x, m = images
  with pytest.raises(ValueError, match='filter region'):
    unf.uninterest_filter(jnp.asarray(x), jnp.asarray(m), 1.0, 3, region='face')
  with pytest.raises(ValueError, match='radius'):
    unf.gaussian_blur(jnp.asarray(x), 10.0, 30)


def _release_photo(seed=0, source=1024):
  """A 1024 px uint8 photo: random 16 px blocks, bilinearly upsampled, plus noise."""
  rng = np.random.default_rng(seed)
  blocks = rng.integers(0, 256, (source // 16, source // 16, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(blocks).resize((source, source), Image.BILINEAR),
                      np.float64)
  noisy = smooth + rng.normal(0.0, 8.0, smooth.shape)
  return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def test_sigma_units_match_the_release_blur_then_resize():
  """σ in source pixels, scaled to 256, reproduces the release's PIL pipeline.

  The release blurs the 1024 px photo with PIL GaussianBlur(radius=r) (PIL's
  radius is σ) and then resizes it to 256 (datasets/images_dataset.py,
  configs/transforms_config.py). Our filter runs on the resized 256 px image
  with σ = r · 256 / 1024. The whole image is compared, borders included:
  PIL's box passes repeat the edge pixel where we mirror, but both keep the
  local mean and the mismatch is confined to a band of about 3σ (≤ 12 px at
  256), so it moves the whole-image mean difference by a fraction of a grey
  level (measured: 16 px in from the border the means are at most 0.21 lower). The old units (σ = r at
  256 px, i.e. four times too wide) must fail, so the test tells them apart.
  """
  photo = _release_photo()
  small = np.asarray(photo.resize((256, 256), Image.BILINEAR), np.float32)
  x = jnp.asarray(small[None])
  mask = jnp.zeros(x.shape[:3] + (1,))
  new = unf.sigmas_at_size((16, 9, 4, 1), 256, 1024)
  for r, sigma in zip((16, 9, 4, 1), new):
    want = np.asarray(photo.filter(ImageFilter.GaussianBlur(r)).resize((256, 256), Image.BILINEAR),
                      np.float32)
    got = np.asarray(unf.uninterest_filter(x, mask, sigma, unf.kernel_radius(sigma),
                                           region='whole'))[0]
    mad = np.abs(got - want).mean()
    assert mad <= 2.5, (r, sigma, mad)
    old = np.asarray(unf.uninterest_filter(x, mask, float(r), unf.kernel_radius(r),
                                           region='whole'))[0]
    mad_old = np.abs(old - want).mean()
    assert mad_old > 5.0, (r, mad_old)


def test_sub_pixel_sigma_is_nearly_the_identity():
  """σ = 0.25 px (the release's r = 1 at 256 px): taps ≈ (3.4e-4, 0.9993, 3.4e-4)."""
  taps = np.asarray(unf.gaussian_taps(0.25, unf.kernel_radius(4.0)))
  centre = len(taps) // 2
  np.testing.assert_allclose(taps[centre - 1:centre + 2], [3.3524e-4, 0.99933, 3.3524e-4],
                             rtol=1e-3)
  assert taps[:centre - 1].max() < 1e-13

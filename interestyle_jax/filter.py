"""Uninterest filter (UnF): Gaussian low-pass of the region outside the mask.

During training the encoder input of refinement iteration t is

    x̃ₜ = m ⊙ x + (1 − m) ⊙ blur_σₜ(x)        (filter_region = 'uninterest')
    x̃ₜ = blur_σₜ(x)                          (filter_region = 'whole', as the
                                                released IntereStyle code did)

with σ decreasing over the iterations.

**Units.** The released code blurs the *full-resolution* photo (FFHQ, 1024 px)
with PIL ``ImageFilter.GaussianBlur(radius=r)`` — PIL's radius is the Gaussian
σ — for r = 16, 9, 4, 1, 0, and only then resizes it to 256 px. A schedule is
therefore given in pixels of the *source* photos and scaled to the size the
filter runs at (:func:`sigmas_at_size`): the release's schedule is
σ = (4, 2.25, 1, 0.25, 0) px on the 256 px encoder input. Blurring after the
resize with the scaled σ matches the release's blur-then-resize to within a
few grey levels (tests/test_filter.py measures it against PIL).

σ below about half a pixel is, for a *sampled* Gaussian, practically the
identity: at σ = 0.25 the taps are (…, 1.3e-14, 3.35e-4, 0.99933, 3.35e-4,
1.3e-14, …), so the last blurred iteration of the paper schedule (r = 1 at
1024 px) moves no pixel of the 256 px image by more than 0.13 % of the value
range (0.34 grey levels). So does the release, in effect: its 4x downscale is itself a low-pass (PIL's antialiased bilinear, a
triangle of σ ≈ 0.41 px at 256), which r = 1 widens only to ≈ 0.48 px; the
measured difference to PIL is the same as for σ = 0 (the identity).

σ is a *traced* value so one compiled ``lax.scan`` body serves every
iteration; the kernel size is static and sized for the largest σ of the
schedule (radius ``ceil(truncate · σ_max)``). A smaller σ uses the same taps
with a narrower Gaussian (the tails are ~0), and σ = 0 is exactly the identity.

Padding is *reflect* (mirror without repeating the edge pixel, like
``torchvision.transforms.GaussianBlur``): zero padding would pull the border of
an image in [-1, 1] towards mid-grey, an artefact the encoder could learn to
key on. ``padding='zero'`` is available for comparison.
"""

import math
from typing import Sequence, Tuple

import jax.numpy as jnp
from jax import lax

FILTER_REGIONS = ('uninterest', 'whole')
PADDINGS = ('reflect', 'zero')
SOURCE_SIZE = 1024  # side of the FFHQ / CelebA-HQ release photos the paper's σ refer to


def sigmas_at_size(sigmas: Sequence[float], image_size: int,
                   source_size: int) -> Tuple[float, ...]:
  """Converts a σ schedule from source-photo pixels to pixels of the filtered image.

  σ_run = σ_source · image_size / source_size: a blur of σ source pixels
  followed by a resize to ``image_size`` is approximately a resize followed by
  a blur of σ_run pixels (the scale of a Gaussian shrinks with the image).

  Args:
    sigmas: per-iteration σ in pixels of the source photos, e.g. the
      release's (16, 9, 4, 1, 0) at 1024 px.
    image_size: side of the images the filter runs on (the encoder size).
    source_size: side of the source photos the σ are given at
      (``SOURCE_SIZE`` = 1024 for FFHQ / CelebA-HQ); must be positive.

  Returns:
    Tuple of float σ in pixels of ``image_size`` images, e.g.
    (4, 2.25, 1, 0.25, 0) for the release's schedule at 256 px.
  """
  if source_size <= 0:
    raise ValueError(f'source_size must be positive, got {source_size}')
  return tuple(float(s) * image_size / source_size for s in sigmas)


def kernel_radius(max_sigma: float, truncate: float = 3.0) -> int:
  """Static half-width of the Gaussian taps able to represent ``max_sigma``.

  Args:
    max_sigma: the largest σ the kernel must hold.
    truncate: number of standard deviations kept (3 keeps 99.7 % of the mass).

  Returns:
    Radius r; the kernel has 2r + 1 taps (r = 0 when ``max_sigma`` is 0).
  """
  if max_sigma < 0:
    raise ValueError(f'sigma must be >= 0, got {max_sigma}')
  return int(math.ceil(truncate * max_sigma))


def gaussian_taps(sigma, radius: int) -> jnp.ndarray:
  """Normalised 1-D Gaussian taps over offsets -radius..radius.

  Args:
    sigma: scalar σ (may be traced); 0 gives the unit impulse.
    radius: static half-width.

  Returns:
    ``[2 * radius + 1]`` float32 taps summing to 1.
  """
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  positive = sigma > 0
  # Keeps the division finite for σ = 0; that branch is replaced below.
  safe = jnp.where(positive, sigma, 1.0)
  g = jnp.exp(-0.5 * jnp.square(offsets / safe))
  g = g / jnp.sum(g)
  impulse = (offsets == 0).astype(jnp.float32)
  return jnp.where(positive, g, impulse)


def _blur_axis(x: jnp.ndarray, taps: jnp.ndarray, radius: int, axis: int,
               padding: str) -> jnp.ndarray:
  """Depthwise 1-D correlation of NHWC ``x`` along spatial ``axis`` (1 or 2)."""
  pad = [(0, 0)] * 4
  pad[axis] = (radius, radius)
  mode = 'reflect' if padding == 'reflect' else 'constant'
  xp = jnp.pad(x, pad, mode=mode)
  channels = x.shape[-1]
  shape = (2 * radius + 1, 1) if axis == 1 else (1, 2 * radius + 1)
  kernel = jnp.broadcast_to(taps.reshape(shape + (1, 1)), shape + (1, channels))
  return lax.conv_general_dilated(
      xp, kernel.astype(x.dtype), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels,
      precision=lax.Precision.HIGHEST)


def gaussian_blur(x: jnp.ndarray, sigma, radius: int,
                  padding: str = 'reflect') -> jnp.ndarray:
  """Separable Gaussian blur of NHWC images with a (possibly traced) σ.

  Args:
    x: ``[B, H, W, C]`` images.
    sigma: scalar σ in pixels; 0 returns ``x`` unchanged (bit-exact).
    radius: static tap half-width, e.g. ``kernel_radius(max σ)``.
    padding: 'reflect' (default) or 'zero'.

  Returns:
    The blurred images, same shape and dtype as ``x``.
  """
  if padding not in PADDINGS:
    raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')
  if radius == 0:
    return x
  if padding == 'reflect' and radius >= min(x.shape[1], x.shape[2]):
    raise ValueError(
        f'reflect padding needs a kernel radius ({radius}) smaller than the '
        f'image ({x.shape[1]}x{x.shape[2]}); lower the largest sigma')
  taps = gaussian_taps(sigma, radius)
  out = _blur_axis(_blur_axis(x, taps, radius, 1, padding), taps, radius, 2, padding)
  # The impulse taps already reproduce x; the select makes σ = 0 bit-exact
  # whatever summation order the convolution uses.
  return jnp.where(jnp.asarray(sigma) > 0, out, x)


def uninterest_filter(x: jnp.ndarray, mask: jnp.ndarray, sigma, radius: int,
                      region: str = 'uninterest',
                      padding: str = 'reflect') -> jnp.ndarray:
  """Low-passes the uninterest region (or the whole image) of ``x``.

  Args:
    x: ``[B, H, W, C]`` images in [-1, 1].
    mask: ``[B, H, W, 1]`` interest mask in [0, 1] (1 = face and hair).
    sigma: scalar σ in pixels (traced allowed); 0 is the identity.
    radius: static tap half-width sized for the largest σ used.
    region: 'uninterest' → m·x + (1 − m)·blur(x); 'whole' → blur(x).
    padding: blur padding, 'reflect' or 'zero'.

  Returns:
    The filtered images x̃, same shape as ``x``.
  """
  if region not in FILTER_REGIONS:
    raise ValueError(f'filter region must be one of {FILTER_REGIONS}, got {region!r}')
  blurred = gaussian_blur(x, sigma, radius, padding)
  if region == 'whole':
    return blurred
  # m·x + (1 − m)·b written as x + (1 − m)(b − x): bit-exact x when b == x
  # (σ = 0) or m == 1, which the blend form is not in floating point.
  return x + (1.0 - mask) * (blurred - x)


"""Upsample, FIR-filter, downsample (upfirdn2d) on NHWC tensors.

Semantics follow the StyleGAN2 definition: insert ``up - 1`` zeros after every
input sample, pad (negative padding crops), convolve with the FIR kernel (a true
convolution, i.e. the kernel is flipped), then keep every ``down``-th sample.
"""

from typing import Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
from jax import lax

IntPair = Union[int, Tuple[int, int]]


def make_kernel(k: Sequence[float]) -> np.ndarray:
  """Builds a normalised 2-D FIR kernel.

  Args:
    k: a 1-D separable kernel (its outer product is used) or a 2-D kernel.

  Returns:
    float32 ``[kh, kw]`` array summing to 1.
  """
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  return k / k.sum()


def _pair(v: IntPair) -> Tuple[int, int]:
  if isinstance(v, (tuple, list)):
    return int(v[0]), int(v[1])
  return int(v), int(v)


def _pad4(pad) -> Tuple[int, int, int, int]:
  """(p0, p1) for both axes, or (x0, x1, y0, y1) as in the PyTorch port."""
  pad = tuple(int(p) for p in pad)
  if len(pad) == 2:
    return pad[0], pad[1], pad[0], pad[1]
  if len(pad) == 4:
    return pad
  raise ValueError(f'pad must have 2 or 4 entries, got {pad}')


def upfirdn2d(x: jnp.ndarray, kernel, up: IntPair = 1, down: IntPair = 1,
              pad=(0, 0)) -> jnp.ndarray:
  """Upsamples, filters and downsamples every channel of ``x``.

  Args:
    x: ``[B, H, W, C]`` input.
    kernel: 2-D FIR kernel ``[kh, kw]`` (used as given, not normalised).
    up: integer upsampling factor, or ``(up_x, up_y)``.
    down: integer downsampling factor, or ``(down_x, down_y)``.
    pad: ``(pad0, pad1)`` applied to both axes after upsampling, or
      ``(pad_x0, pad_x1, pad_y0, pad_y1)``; negative values crop.

  Returns:
    ``[B, H', W', C]`` with ``H' = (H * up_y + pad_y0 + pad_y1 - kh) // down_y + 1``
    (and likewise for ``W'``).
  """
  up_x, up_y = _pair(up)
  down_x, down_y = _pair(down)
  px0, px1, py0, py1 = _pad4(pad)
  kernel = jnp.asarray(kernel, dtype=x.dtype)
  if kernel.ndim != 2:
    raise ValueError(f'kernel must be 2-D, got shape {kernel.shape}')
  kh, kw = kernel.shape
  channels = x.shape[-1]
  # One lax.pad does the zero insertion (interior padding, plus the trailing
  # up-1 zeros after the last sample) and the padding/cropping at once.
  x = lax.pad(x, jnp.zeros((), x.dtype), [
      (0, 0, 0),
      (py0, py1 + up_y - 1, up_y - 1),
      (px0, px1 + up_x - 1, up_x - 1),
      (0, 0, 0),
  ])
  # Correlation with the flipped kernel is the convolution of the definition.
  w = jnp.flip(kernel, (0, 1))[:, :, None, None]
  w = jnp.tile(w, (1, 1, 1, channels))
  return lax.conv_general_dilated(
      x, w, window_strides=(down_y, down_x), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=channels)


def blur(x: jnp.ndarray, kernel, pad, upsample_factor: int = 1) -> jnp.ndarray:
  """FIR blur with the normalised ``kernel`` (scaled by factor**2 after upsampling).

  Args:
    x: ``[B, H, W, C]``.
    kernel: 1-D or 2-D kernel taps, normalised by :func:`make_kernel`.
    pad: padding as in :func:`upfirdn2d`.
    upsample_factor: gain compensation for a preceding zero-insertion upsample.

  Returns:
    The filtered ``x``.
  """
  k = make_kernel(kernel) * (upsample_factor ** 2)
  return upfirdn2d(x, k, pad=pad)


def upsample(x: jnp.ndarray, kernel=(1, 3, 3, 1), factor: int = 2) -> jnp.ndarray:
  """StyleGAN2 ``Upsample``: zero insertion followed by the FIR kernel.

  Args:
    x: ``[B, H, W, C]``.
    kernel: FIR taps.
    factor: integer upsampling factor.

  Returns:
    ``[B, H * factor, W * factor, C]``.
  """
  k = make_kernel(kernel) * (factor ** 2)
  p = k.shape[0] - factor
  pad0 = (p + 1) // 2 + factor - 1
  pad1 = p // 2
  return upfirdn2d(x, k, up=factor, down=1, pad=(pad0, pad1))


def downsample(x: jnp.ndarray, kernel=(1, 3, 3, 1), factor: int = 2) -> jnp.ndarray:
  """StyleGAN2 ``Downsample``: FIR kernel followed by decimation.

  Args:
    x: ``[B, H, W, C]``.
    kernel: FIR taps.
    factor: integer downsampling factor.

  Returns:
    ``[B, H // factor, W // factor, C]``.
  """
  k = make_kernel(kernel)
  p = k.shape[0] - factor
  pad0 = (p + 1) // 2
  pad1 = p // 2
  return upfirdn2d(x, k, up=1, down=factor, pad=(pad0, pad1))

"""Upsample, FIR-filter, downsample (upfirdn2d) on NHWC tensors.

Semantics follow the StyleGAN2 definition: insert ``up - 1`` zeros after every
input sample, pad (negative padding crops), convolve with the FIR kernel (a true
convolution, i.e. the kernel is flipped), then keep every ``down``-th sample.

A separable kernel (every StyleGAN2 kernel: the outer product of 1-D taps) is
applied as two passes of weighted shifted slices, which XLA fuses into
elementwise loops. The generic path, a depthwise ``feature_group_count``
convolution, runs on XLA:CPU at ~0.2 GFLOP/s (its fast convolution kernels do
not take grouped convolutions): the separable form made the 256 px generator's
blur 8x faster forward and 11x faster forward+backward
(``benchmarks/generator.py``).
"""

import functools
from typing import Optional, Sequence, Tuple, Union

import jax
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


def separable_factors(kernel) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """Splits a concrete 2-D kernel into column and row taps, if it is rank one.

  Args:
    kernel: ``[kh, kw]`` array; traced arrays are never split.

  Returns:
    ``(ky [kh], kx [kw])`` with ``outer(ky, kx) == kernel`` (to float32
    rounding), or None when the kernel is traced or not separable.
  """
  try:
    k = np.asarray(kernel, dtype=np.float64)
  except (TypeError, jax.errors.TracerArrayConversionError):
    return None
  if k.ndim != 2 or not np.all(np.isfinite(k)):
    return None
  i, j = np.unravel_index(np.argmax(np.abs(k)), k.shape)
  if k[i, j] == 0:
    return None
  ky, kx = k[:, j], k[i, :] / k[i, j]
  if not np.allclose(np.outer(ky, kx), k, rtol=1e-6, atol=1e-7 * abs(k[i, j])):
    return None
  return ky.astype(np.float32), kx.astype(np.float32)


def _fir_axis(x: jnp.ndarray, taps: np.ndarray, axis: int, up: int, down: int,
              pad0: int, pad1: int) -> jnp.ndarray:
  """upfirdn along one spatial axis with constant 1-D taps (shifted slices)."""
  cfg = [(0, 0, 0)] * x.ndim
  cfg[axis] = (pad0, pad1 + up - 1, up - 1)
  x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
  n = len(taps)
  length = x.shape[axis] - n + 1
  # True convolution: output i sees padded input i + n - 1 - j under tap j.
  out = None
  for j, tap in enumerate(taps[::-1]):
    if tap == 0:
      continue
    term = float(tap) * lax.slice_in_dim(x, j, j + length, axis=axis)
    out = term if out is None else out + term
  if out is None:
    out = jnp.zeros_like(lax.slice_in_dim(x, 0, length, axis=axis))
  if down > 1:
    out = lax.slice_in_dim(out, 0, length, stride=down, axis=axis)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _filter_axis(x: jnp.ndarray, taps: Tuple[float, ...], axis: int, pad0: int,
                 pad1: int) -> jnp.ndarray:
  """``_fir_axis`` without resampling, whose gradient is the same kind of filter.

  JAX's own gradient of the shifted slices is one zero-padded copy of the
  output per tap, each written out in full (four 67 MB buffers per blur of
  the 256 px generator's backward at batch 2); the adjoint filter (the
  reversed taps, complementary padding) fuses into one loop like the forward.
  """
  return _fir_axis(x, np.asarray(taps, np.float32), axis, 1, 1, pad0, pad1)


def _filter_axis_fwd(x, taps, axis, pad0, pad1):
  return _filter_axis(x, taps, axis, pad0, pad1), None


def _filter_axis_bwd(taps, axis, pad0, pad1, _, dy):
  n = len(taps)
  return (_filter_axis(dy, taps[::-1], axis, n - 1 - pad0, n - 1 - pad1),)


_filter_axis.defvjp(_filter_axis_fwd, _filter_axis_bwd)


def _separable(x, taps, axis, up, down, pad0, pad1):
  if up == 1 and down == 1:
    return _filter_axis(x, tuple(float(t) for t in taps), axis, pad0, pad1)
  return _fir_axis(x, taps, axis, up, down, pad0, pad1)


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
  factors = separable_factors(kernel)
  if factors is not None:
    ky, kx = factors
    x = _separable(x, ky, 1, up_y, down_y, py0, py1)
    return _separable(x, kx, 2, up_x, down_x, px0, px1)
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

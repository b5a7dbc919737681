"""Convolutions whose gradients stay on XLA:CPU's fast kernels.

Both are drop-ins for ``lax.conv_general_dilated``
(``nn.Conv(conv_general_dilated=…)``) for NHWC inputs and HWIO kernels.

:func:`canonical_conv` builds its gradients as NHWC/HWIO convolutions itself
(see its docstring). :func:`patch_conv` computes the convolution as one matrix
product over explicit patches, for small feature maps: the ReStyle style
blocks reduce a 16x16 map to 1x1 with stride-2 3x3 convolutions; XLA:CPU's
gradient of such a convolution on a 2x2 or 4x4 map uses a reversed window its
fast kernels do not take and falls back to a naive loop (42 convolutions of
~15 ms per IR-SE50 backward at batch 2). As patches @ kernel the forward and
both gradients are plain matrix products.
"""

import functools
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

Padding = Union[str, Sequence[Tuple[int, int]]]


def _explicit_padding(padding: Padding, kernel: Sequence[int], strides: Sequence[int],
                      in_shape: Sequence[int]):
  if isinstance(padding, str):
    return lax.padtype_to_pads(in_shape, kernel, strides, padding)
  return [tuple(int(v) for v in p) for p in padding]


def patch_conv(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
               padding: Padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count: int = 1,
               batch_group_count: int = 1, precision=None,
               preferred_element_type=None) -> jnp.ndarray:
  """``lax.conv_general_dilated`` for NHWC/HWIO as im2col + matmul.

  Args:
    lhs: ``[B, H, W, C]`` input.
    rhs: ``[kh, kw, C, O]`` kernel.
    window_strides: ``(sh, sw)``.
    padding: 'SAME' / 'VALID' or ``[(top, bottom), (left, right)]``.
    lhs_dilation: must be None or ones.
    rhs_dilation: must be None or ones.
    dimension_numbers: must describe NHWC/HWIO/NHWC (what ``nn.Conv`` passes).
    feature_group_count: must be 1.
    batch_group_count: must be 1.
    precision: passed to the matrix product.
    preferred_element_type: passed to the matrix product.

  Returns:
    ``[B, H', W', O]``, equal to the convolution.
  """
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise ValueError(f'patch_conv takes 2-D convolutions, got {lhs.shape} and {rhs.shape}')
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  if dimension_numbers is not None and lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) != nhwc:
    raise ValueError(f'patch_conv needs NHWC/HWIO/NHWC, got {dimension_numbers}')
  for name, d in (('lhs_dilation', lhs_dilation), ('rhs_dilation', rhs_dilation)):
    if d is not None and any(int(v) != 1 for v in d):
      raise ValueError(f'patch_conv does not support {name}={d}')
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError('patch_conv does not support grouped convolutions')
  kh, kw, c, o = rhs.shape
  sh, sw = (int(v) for v in window_strides)
  pads = _explicit_padding(padding, (kh, kw), (sh, sw), lhs.shape[1:3])
  x = jnp.pad(lhs, [(0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)])
  b, hp, wp, _ = x.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  cols = [lax.slice(x, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)  # [B, ho, wo, kh*kw*C], (i, j, c) order
  return jnp.einsum('bhwk,ko->bhwo', patches, rhs.reshape(kh * kw * c, o),
                    precision=precision, preferred_element_type=preferred_element_type)


def _pads(padding: Padding, kernel, strides, in_shape, lhs_dilation):
  dilated = [(n - 1) * d + 1 for n, d in zip(in_shape, lhs_dilation)]
  return _explicit_padding(padding, kernel, strides, dilated)


def _dilate(x, lhs_dilation):
  """Inserts ``d - 1`` zeros between the spatial samples of NHWC ``x``."""
  if all(d == 1 for d in lhs_dilation):
    return x
  return lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0)] + [(0, 0, d - 1) for d in lhs_dilation] + [(0, 0, 0)])


def _lax_conv(x, w, strides, pads, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
  """NHWC/HWIO ``lax.conv_general_dilated`` with negative padding as a crop.

  XLA:CPU miscomputes some convolutions with a negative low and a positive
  high padding (e.g. ``(-1, 1)`` with a 2-tap kernel reads past the input),
  so negative padding is applied as a slice first.
  """
  if any(d != 1 for d in lhs_dilation) and any(lo < 0 or hi < 0 for lo, hi in pads):
    x, lhs_dilation = _dilate(x, lhs_dilation), (1, 1)
  starts = [0] + [max(0, -lo) for lo, _ in pads] + [0]
  limits = [x.shape[0]] + [n - max(0, -hi) for n, (_, hi) in zip(x.shape[1:3], pads)] + [x.shape[3]]
  if starts != [0] * 4 or limits != list(x.shape):
    x = lax.slice(x, starts, limits)
  pads = [(max(0, lo), max(0, hi)) for lo, hi in pads]
  return lax.conv_general_dilated(x, w, strides, pads, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _phase(n: int, k: int, d: int, pad: Tuple[int, int], r: int):
  """One output phase of a 1-D correlation of an input dilated by ``d``.

  Outputs ``o = d * t + r`` only meet the input samples (not the inserted
  zeros) at taps ``i0, i0 + d, ...``, and tap ``i0 + d * a`` meets sample
  ``t + a + c``.

  Returns:
    ``(i0, number of taps, number of outputs, input crop/pad (lo, hi),
    outputs in all phases)``.
  """
  pl, ph = pad
  out = (n - 1) * d + 1 + pl + ph - k + 1
  i0 = (pl - r) % d
  taps = max(0, -(-(k - i0) // d))
  count = max(0, -(-(out - r) // d))
  c = (r + i0 - pl) // d
  return i0, taps, count, (-c, count + taps - 1 + c - n), out


def _dilated_conv(x, w, lhs_dilation, pads):
  """Stride-1 convolution of an input dilated by ``lhs_dilation``, by phases.

  As one convolution, XLA:CPU correlates the zero-dilated input with the
  whole kernel, so 3 of 4 products (dilation 2) are with zeros: the
  transposed convolutions of the generator's upsampling layers and the input
  gradients of every stride-2 encoder convolution. Each output phase is
  instead a stride-1 convolution of the undilated input with the taps that
  meet real samples; the phases are interleaved afterwards (2.5x faster for
  the 256 px stride-2 input gradient of IR-SE50, 1.4-1.7x for the generator's
  upsampling convolutions, 2-core CPU).
  """
  b, h, wd, _ = x.shape
  kh, kw, _, co = w.shape
  dh, dw = lhs_dilation
  rows = []
  for r in range(dh):
    i0, na, t, hpad, oh = _phase(h, kh, dh, pads[0], r)
    cols = []
    for q in range(dw):
      j0, nb, u, wpad, ow = _phase(wd, kw, dw, pads[1], q)
      th, tw = -(-oh // dh), -(-ow // dw)
      if na and nb and t and u:
        y = _lax_conv(x, w[i0::dh, j0::dw], (1, 1), [hpad, wpad])
        y = jnp.pad(y, [(0, 0), (0, th - t), (0, tw - u), (0, 0)])
      else:
        y = jnp.zeros((b, th, tw, co), x.dtype)
      cols.append(y)
    rows.append(jnp.stack(cols, 3))
  y = jnp.stack(rows, 2).reshape(b, th * dh, tw * dw, co)
  return y[:, :oh, :ow]


def _nhwc_conv(x, w, strides, pads, lhs_dilation):
  if any(d != 1 for d in lhs_dilation) and all(s == 1 for s in strides):
    return _dilated_conv(x, w, lhs_dilation, pads)
  return _lax_conv(x, w, strides, pads, lhs_dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, lhs_dilation):
  return _nhwc_conv(x, w, strides, pads, lhs_dilation)


def _conv_fwd(x, w, strides, pads, lhs_dilation):
  return _nhwc_conv(x, w, strides, pads, lhs_dilation), (x, w)


def _conv_bwd(strides, pads, lhs_dilation, res, dy):
  x, w = res
  kh, kw = w.shape[:2]
  ho, wo = dy.shape[1:3]
  # Input gradient: the (stride-dilated) output gradient correlated with the
  # spatially flipped kernel whose in/out axes are physically swapped, so the
  # convolution is NHWC/HWIO again; the forward's input dilation becomes the
  # stride.
  dx_pads = []
  for n, d, s, k, o, (pl, _) in zip(x.shape[1:3], lhs_dilation, strides, (kh, kw),
                                    (ho, wo), pads):
    dilated = (n - 1) * d + 1
    lo = k - 1 - pl
    dx_pads.append((lo, dilated + k - 1 - lo - ((o - 1) * s + 1)))
  w_t = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
  dx = _nhwc_conv(dy, w_t, lhs_dilation, dx_pads, strides)
  # Kernel gradient: the padded input with channels as the batch and the batch
  # as the features, correlated with the output gradient as a [ho, wo, B, O]
  # kernel dilated by the stride; the far padding is trimmed so exactly kh x kw
  # taps come out.
  xd = _dilate(x, lhs_dilation)
  dw_pads = []
  for n, s, k, o, (pl, ph) in zip(xd.shape[1:3], strides, (kh, kw), (ho, wo), pads):
    span = (o - 1) * s + 1
    dw_pads.append((pl, ph - (n + pl + ph - span + 1 - k)))
  dw = _lax_conv(jnp.transpose(xd, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1),
                 dw_pads, rhs_dilation=strides)
  return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def canonical_conv(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
                   padding: Padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count: int = 1,
                   batch_group_count: int = 1, precision=None,
                   preferred_element_type=None) -> jnp.ndarray:
  """NHWC/HWIO convolution whose gradients are NHWC/HWIO convolutions too.

  JAX differentiates a convolution into convolutions with permuted dimension
  numbers (kernel ``01oi``, batch and feature swapped for the kernel
  gradient). XLA:CPU rewrites those into the NHWC/HWIO form of its fast
  kernels only in the entry computation; inside a ``lax.scan`` body or a
  ``shard_map`` they stay as they are and run as naive loops (116 of 181
  convolutions of the paper train step at T = 1, which then took 9x as long as
  PyTorch's). This op's backward builds the same gradients from explicit
  transposes and canonical convolutions, so no compiler pass is needed.
  Drop-in for ``lax.conv_general_dilated`` (``nn.Conv(conv_general_dilated=…)``).

  Args:
    lhs: ``[B, H, W, C]`` input.
    rhs: ``[kh, kw, C, O]`` kernel.
    window_strides: ``(sh, sw)``.
    padding: 'SAME' / 'VALID' or ``[(lo, hi), (lo, hi)]`` (of the dilated input).
    lhs_dilation: input dilation (a transposed convolution), or None.
    rhs_dilation: must be None or ones.
    dimension_numbers: must describe NHWC/HWIO/NHWC.
    feature_group_count: must be 1.
    batch_group_count: must be 1.
    precision: must be None (the default precision).
    preferred_element_type: must be None or the input dtype.

  Returns:
    ``[B, H', W', O]``, equal to ``lax.conv_general_dilated``.
  """
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  if dimension_numbers is not None and lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) != nhwc:
    raise ValueError(f'canonical_conv needs NHWC/HWIO/NHWC, got {dimension_numbers}')
  if rhs_dilation is not None and any(int(v) != 1 for v in rhs_dilation):
    raise ValueError(f'canonical_conv does not support rhs_dilation={rhs_dilation}')
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError('canonical_conv does not support grouped convolutions')
  if precision is not None or (preferred_element_type is not None
                               and jnp.dtype(preferred_element_type) != lhs.dtype):
    raise ValueError('canonical_conv runs at the default precision in the input dtype')
  strides = tuple(int(v) for v in window_strides)
  dil = (1, 1) if lhs_dilation is None else tuple(int(v) for v in lhs_dilation)
  pads = tuple(tuple(int(v) for v in p)
               for p in _pads(padding, rhs.shape[:2], strides, lhs.shape[1:3], dil))
  return _conv(lhs, rhs, strides, pads, dil)

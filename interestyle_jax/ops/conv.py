"""A convolution computed as one matrix product over explicit patches.

Drop-in for ``lax.conv_general_dilated`` (``nn.Conv(conv_general_dilated=…)``)
for NHWC inputs and HWIO kernels on small feature maps. The ReStyle style
blocks reduce a 16x16 map to 1x1 with stride-2 3x3 convolutions; XLA:CPU's
gradient of such a convolution on a 2x2 or 4x4 map uses a reversed window its
fast kernels do not take and falls back to a naive loop (42 convolutions of
~15 ms per IR-SE50 backward at batch 2). As patches @ kernel the forward and
both gradients are plain matrix products.
"""

from typing import Sequence, Tuple, Union

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

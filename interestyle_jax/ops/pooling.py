"""Adaptive average pooling with PyTorch's variable-window definition.

``torch.nn.functional.adaptive_avg_pool2d`` averages, for output index ``i``,
the input window ``[floor(i * in / out), ceil((i + 1) * in / out))``. Windows
can differ in length and overlap (188 → 112), so this is not a resize. When
``in`` is a multiple of ``out`` the windows tile the input and the op is a
block mean (1024 → 256 is a 4x4 mean), which is computed with a reshape.
"""

from typing import Tuple, Union

import numpy as np
import jax.numpy as jnp


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The ``[out_size, in_size]`` averaging matrix of 1-D adaptive pooling.

  Args:
    in_size: input length.
    out_size: output length (>= 1).

  Returns:
    float32 matrix whose row ``i`` averages the PyTorch window of output ``i``.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'adaptive pooling sizes must be positive, got {in_size}→{out_size}')
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division
    m[i, start:end] = 1.0 / (end - start)
  return m


def _pool_axis(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  if in_size % out_size == 0:
    k = in_size // out_size
    shape = x.shape[:axis] + (out_size, k) + x.shape[axis + 1:]
    return jnp.mean(x.reshape(shape), axis=axis + 1)
  m = jnp.asarray(adaptive_pool_matrix(in_size, out_size), x.dtype)
  out = jnp.tensordot(x, m, axes=[[axis], [1]])  # pooled axis moves last
  return jnp.moveaxis(out, -1, axis)


def adaptive_avg_pool2d(x: jnp.ndarray,
                        output_size: Union[int, Tuple[int, int]]) -> jnp.ndarray:
  """PyTorch ``adaptive_avg_pool2d`` for NHWC arrays.

  Args:
    x: ``[B, H, W, C]`` (or ``[H, W, C]``).
    output_size: ``S`` or ``(S_h, S_w)``.

  Returns:
    ``[B, S_h, S_w, C]`` (or ``[S_h, S_w, C]``).
  """
  if isinstance(output_size, int):
    output_size = (output_size, output_size)
  if x.ndim not in (3, 4):
    raise ValueError(f'adaptive_avg_pool2d expects NHWC or HWC arrays, got {x.shape}')
  h_axis = x.ndim - 3
  x = _pool_axis(x, h_axis, int(output_size[0]))
  return _pool_axis(x, h_axis + 1, int(output_size[1]))

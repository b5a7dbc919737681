"""Bias + leaky ReLU + gain, the StyleGAN2 'fused_leaky_relu'."""

import math
from typing import Optional

import jax
import jax.numpy as jnp


def fused_leaky_relu(x: jnp.ndarray, bias: Optional[jnp.ndarray] = None,
                     negative_slope: float = 0.2,
                     scale: float = math.sqrt(2.0)) -> jnp.ndarray:
  """``leaky_relu(x + bias, negative_slope) * scale``.

  Args:
    x: input whose last axis is the channel axis.
    bias: optional per-channel bias, broadcast over the last axis; it is added
      before the activation.
    negative_slope: slope for negative inputs.
    scale: output gain (sqrt(2) keeps the variance of a unit Gaussian input).

  Returns:
    The activated tensor, same shape as ``x``.
  """
  if bias is not None:
    x = x + bias
  return jax.nn.leaky_relu(x, negative_slope) * scale

"""Euclidean norm whose gradient stays finite at zero."""

import jax.numpy as jnp


def l2_norm(x: jnp.ndarray, axis=-1, keepdims: bool = False) -> jnp.ndarray:
  """``sqrt(sum(x**2))`` over ``axis`` with a zero (not NaN) gradient at x = 0.

  The plain formula's derivative is ``x / |x|`` = 0/0 at an all-zero vector —
  which masked images produce routinely (e.g. a ReLU feature vector inside the
  uninterest region) — and one NaN poisons every parameter. The forward value
  is identical to the plain formula.

  Args:
    x: input.
    axis: reduction axis or axes.
    keepdims: keep the reduced axes.

  Returns:
    The norms.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)

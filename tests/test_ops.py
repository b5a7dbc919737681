"""Ops against direct NumPy implementations of their textbook definitions."""

import math

import jax
import numpy as np
import pytest

from interestyle_jax.ops import downsample, fused_leaky_relu, make_kernel, upfirdn2d, upsample
from interestyle_jax.ops.upfirdn2d import separable_factors


def upfirdn_numpy(x, k, up, down, pad):
  """Loop-level definition: y[n] = sum_j u[n - j] k[j] on the padded, upsampled signal."""
  (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
  b, h, w, c = x.shape
  u = np.zeros((b, h * uy, w * ux, c), x.dtype)
  u[:, ::uy, ::ux] = x
  hp, wp = h * uy + py0 + py1, w * ux + px0 + px1
  padded = np.zeros((b, hp, wp, c), x.dtype)
  for i in range(hp):
    for j in range(wp):
      si, sj = i - py0, j - px0
      if 0 <= si < h * uy and 0 <= sj < w * ux:
        padded[:, i, j] = u[:, si, sj]
  kh, kw = k.shape
  full = np.zeros((b, hp - kh + 1, wp - kw + 1, c), x.dtype)
  for i in range(full.shape[1]):
    for j in range(full.shape[2]):
      acc = 0.0
      for a in range(kh):
        for bb in range(kw):
          # True convolution: output i sees input i + kh - 1 - a under tap a.
          acc = acc + padded[:, i + kh - 1 - a, j + kw - 1 - bb] * k[a, bb]
      full[:, i, j] = acc
  return full[:, ::dy, ::dx]


@pytest.mark.parametrize('up,down,pad', [
    ((1, 1), (1, 1), (1, 2, 1, 2)),
    ((2, 2), (1, 1), (2, 1, 2, 1)),
    ((1, 1), (2, 2), (1, 1, 1, 1)),
    ((3, 2), (1, 2), (0, 2, 1, 0)),
    ((2, 2), (1, 1), (-1, 3, 2, -2)),  # negative padding crops
])
@pytest.mark.parametrize('separable', [False, True])
def test_upfirdn2d_matches_definition(up, down, pad, separable):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  if separable:  # the shifted-slice path; asymmetric taps so the flip matters
    k = np.outer([1.0, -2.0, 0.5], [3.0, 0.0, 1.0, -2.0]).astype(np.float32)
  else:  # the depthwise-convolution path
    k = rng.standard_normal((3, 4)).astype(np.float32)
  assert (separable_factors(k) is not None) == separable
  got = np.asarray(upfirdn2d(x, k, up=up, down=down, pad=pad))
  want = upfirdn_numpy(x, k, up, down, pad)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('up,down,pad', [
    ((1, 1), (1, 1), (1, 2, 1, 2)),  # the blur after StyleGAN2's transposed conv
    ((1, 1), (1, 1), (-1, 3, 2, -2)),
    ((2, 2), (1, 1), (2, 1, 2, 1)),
    ((1, 1), (2, 2), (1, 1, 1, 1)),
])
def test_separable_upfirdn2d_gradient_matches_depthwise_convolution(up, down, pad):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
  k = np.outer([1.0, -2.0, 0.5], [3.0, 0.0, 1.0, -2.0]).astype(np.float32)
  dy = rng.standard_normal(upfirdn_numpy(x, k, up, down, pad).shape).astype(np.float32)
  got = jax.vjp(lambda v: upfirdn2d(v, k, up=up, down=down, pad=pad), x)[1](dy)[0]
  # A traced kernel takes the depthwise-convolution path and JAX's own gradient.
  want = jax.vjp(lambda v, kk: upfirdn2d(v, kk, up=up, down=down, pad=pad), x, k)[1](dy)[0]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_make_kernel_and_resamplers():
  k = make_kernel([1, 3, 3, 1])
  np.testing.assert_allclose(k, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)
  x = np.random.default_rng(1).standard_normal((1, 8, 8, 2)).astype(np.float32)
  up = np.asarray(upsample(x))
  down = np.asarray(downsample(x))
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up, upfirdn_numpy(x, k * 4, (2, 2), (1, 1), (2, 1, 2, 1)), atol=1e-5)
  # A constant image stays constant away from the border (gain compensation).
  ones = np.ones((1, 8, 8, 1), np.float32)
  np.testing.assert_allclose(np.asarray(upsample(ones))[0, 3:-3, 3:-3], 1.0, atol=1e-6)


def test_fused_leaky_relu():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((4, 7)).astype(np.float32)
  b = rng.standard_normal((7,)).astype(np.float32)
  y = x + b
  want = np.where(y >= 0, y, 0.2 * y) * math.sqrt(2)
  np.testing.assert_allclose(np.asarray(fused_leaky_relu(x, b)), want, rtol=1e-6)
  g = jax.grad(lambda v: fused_leaky_relu(v, b).sum())(x)
  np.testing.assert_allclose(np.asarray(g), np.where(y >= 0, 1.0, 0.2) * math.sqrt(2), rtol=1e-6)


def test_l2_norm_value_and_finite_gradient_at_zero():
  from interestyle_jax.ops.norm import l2_norm
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(np.asarray(l2_norm(x, axis=-1)), [5.0, 0.0])
  g = np.asarray(jax.grad(lambda v: l2_norm(v, axis=-1).sum())(x))
  np.testing.assert_allclose(g, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)  # plain sqrt: NaN row


@pytest.mark.parametrize('op', ['canonical', 'patch'])
@pytest.mark.parametrize('size,k,strides,padding,lhs_dilation', [
    ((9, 8), 3, (1, 1), 'SAME', None),
    ((9, 8), 3, (2, 2), [(1, 1), (1, 1)], None),  # IR-SE50's stride-2 conv (polyphase dgrad)
    ((8, 8), 1, (2, 2), 'VALID', None),  # its 1x1 shortcut
    ((7, 6), 3, (2, 1), [(0, 2), (1, 0)], None),
    ((5, 6), 3, (1, 1), [(2, 2), (2, 2)], (2, 2)),  # StyleGAN2's transposed conv
    ((5, 4), 4, (1, 1), [(3, 1), (0, 2)], (2, 2)),  # even kernel, uneven phases
    ((4, 5), 3, (1, 1), [(1, 1), (2, 0)], (3, 2)),
    ((6, 5), 3, (1, 1), [(-1, 2), (1, 1)], (2, 2)),  # negative padding crops
])
def test_convolutions_and_their_gradients_match_lax(op, size, k, strides, padding, lhs_dilation):
  from jax import lax
  from interestyle_jax.ops.conv import canonical_conv, patch_conv
  if op == 'patch' and lhs_dilation is not None:
    pytest.skip('patch_conv takes no input dilation')
  fn = canonical_conv if op == 'canonical' else patch_conv
  rng = np.random.RandomState(0)
  x = rng.randn(2, *size, 3).astype(np.float32)
  w = rng.randn(k, k, 3, 5).astype(np.float32)
  conv = lambda f: (lambda a, b: f(a, b, strides, padding, lhs_dilation=lhs_dilation,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  want, want_vjp = jax.vjp(conv(lax.conv_general_dilated), x, w)
  got, got_vjp = jax.vjp(conv(fn), x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  dy = rng.randn(*want.shape).astype(np.float32)
  for g, r in zip(got_vjp(dy), want_vjp(dy)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4)

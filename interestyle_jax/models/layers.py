"""Equalized-learning-rate layers shared by the generator and the encoders.

Parameters are stored unscaled, as the PyTorch StyleGAN2 port stores them; the
equalized-LR scale ``lr_mul / sqrt(fan_in)`` is applied at run time, so a
converted checkpoint is only transposed and renamed.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from interestyle_jax.ops import fused_leaky_relu
from interestyle_jax.ops.conv import canonical_conv


class EqualLinear(nn.Module):
  """Equalized linear layer.

  Attributes:
    features: output width.
    use_bias: whether to add a bias.
    bias_init: constant the bias starts at (1 for modulation layers).
    lr_mul: learning-rate multiplier (0.01 in the mapping network).
    activation: apply the fused leaky ReLU (bias added before it).
  """
  features: int
  use_bias: bool = True
  bias_init: float = 0.0
  lr_mul: float = 1.0
  activation: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    in_dim = x.shape[-1]
    # Stored [in, out]; PyTorch stores [out, in] (transposed at conversion).
    weight = self.param(
        'weight', lambda k, s: jax.random.normal(k, s) / self.lr_mul,
        (in_dim, self.features))
    out = x @ (weight * (self.lr_mul / math.sqrt(in_dim)))
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.initializers.constant(self.bias_init),
                        (self.features,)) * self.lr_mul
    if self.activation:
      return fused_leaky_relu(out, bias)
    return out if bias is None else out + bias


class EqualConv2d(nn.Module):
  """Equalized 2-D convolution (weights HWIO, NHWC activations).

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    stride: convolution stride.
    padding: symmetric zero padding.
    use_bias: whether to add a bias.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    in_ch = x.shape[-1]
    weight = self.param('weight', nn.initializers.normal(1.0),
                        (k, k, in_ch, self.features))
    scale = 1.0 / math.sqrt(in_ch * k * k)
    out = canonical_conv(
        x, weight * scale, (self.stride, self.stride),
        [(self.padding, self.padding)] * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      out = out + self.param('bias', nn.initializers.zeros, (self.features,))
    return out

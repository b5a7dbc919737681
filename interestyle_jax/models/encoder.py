"""ReStyle-pSp ``BackboneEncoder``: backbone + one GradualStyleBlock per style.

Given ``[x, ŷ]`` (6 channels) the encoder predicts the residual Δ of the W+
latent, ``[B, n_styles, style_dim]``. Parameter layout (conversion is a rename
of ReStyle's ``encoder.*`` keys)::

    params/backbone/...          input_layer.* + body.*  (or conv1/bn1/relu + body.*)
    params/styles_{j}/convs_{k}  styles.{j}.convs.{k}    (k = 0, 2, 4, 6: PyTorch
                                                          interleaves LeakyReLUs)
    params/styles_{j}/linear     styles.{j}.linear       (EqualLinear, [in, out])
"""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from interestyle_jax.models.irse import (RESNET34_STAGE_UNITS, IRSEBackbone,
                                         ResNet34Backbone, conv, irse_stage_units)
from interestyle_jax.models.layers import EqualLinear
from interestyle_jax.ops.conv import patch_conv

BACKBONES = ('ir_se', 'resnet34')


def num_style_convs(map_size: int) -> int:
  """Stride-2 convs a GradualStyleBlock uses to reduce a ``map_size`` map to 1x1.

  Args:
    map_size: spatial size of the backbone output (16 for 256 px input).

  Returns:
    ``max(1, log2(map_size))`` (ReStyle always has at least one conv).
  """
  n = int(round(math.log2(map_size))) if map_size >= 1 else -1
  if n < 0 or 2 ** n != map_size:
    raise ValueError(f'backbone map size must be a power of two, got {map_size} '
                     '(encoder input sizes must be 16 * 2^k, e.g. 256)')
  return max(1, n)


class GradualStyleBlock(nn.Module):
  """Stride-2 3x3 convs (bias, leaky ReLU 0.01) down to 1x1, then EqualLinear.

  Attributes:
    features: conv channels and output width (style_dim).
  """
  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.shape[1] != x.shape[2]:
      raise ValueError(f'GradualStyleBlock needs a square map, got {x.shape}')
    for k in range(num_style_convs(x.shape[1])):
      x = conv(self.features, 3, 2, 1, use_bias=True, name=f'convs_{2 * k}',
               conv_general_dilated=patch_conv)(x)
      x = nn.leaky_relu(x, 0.01)
    x = x.reshape(x.shape[0], -1)
    return EqualLinear(self.features, name='linear')(x)


class BackboneEncoder(nn.Module):
  """ReStyle-pSp BackboneEncoder.

  Attributes:
    n_styles: number of W+ vectors predicted (18 for a 1024 px generator).
    style_dim: latent width.
    input_nc: input channels (6 = [x, ŷ] for ReStyle, 3 for plain pSp).
    backbone: 'ir_se' (faces) or 'resnet34' (other domains).
    num_layers: IR-SE depth, 50/100/152.
    stage_units: units per stage; overrides ``num_layers`` (tiny models).
    width: first-stage channels; the stages use width * (1, 2, 4, 8).
  """
  n_styles: int
  style_dim: int = 512
  input_nc: int = 6
  backbone: str = 'ir_se'
  num_layers: int = 50
  stage_units: Optional[Tuple[int, ...]] = None
  width: int = 64

  def __post_init__(self):
    # JSON round-trips turn tuples into lists; keep the module hashable.
    if self.stage_units is not None and not isinstance(self.stage_units, tuple):
      object.__setattr__(self, 'stage_units', tuple(int(u) for u in self.stage_units))
    super().__post_init__()

  def _backbone(self) -> nn.Module:
    if self.backbone == 'ir_se':
      return IRSEBackbone(irse_stage_units(self.num_layers, self.stage_units),
                          self.width, name='backbone')
    if self.backbone == 'resnet34':
      units = tuple(self.stage_units) if self.stage_units is not None else RESNET34_STAGE_UNITS
      return ResNet34Backbone(units, self.width, name='backbone')
    raise ValueError(f'backbone must be one of {BACKBONES}, got {self.backbone!r}')

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Predicts W+ residuals.

    Args:
      x: ``[B, H, W, input_nc]`` input (H = W = 16 * 2^k, 256 in ReStyle).
      train: batch statistics (and running-average updates; pass
        ``mutable=['batch_stats']``) when True, running statistics when False.

    Returns:
      ``[B, n_styles, style_dim]``.
    """
    if x.ndim != 4 or x.shape[-1] != self.input_nc:
      raise ValueError(f'BackboneEncoder expects [B, H, W, {self.input_nc}] inputs, '
                       f'got {x.shape}')
    if x.shape[1] % 16 or x.shape[1] != x.shape[2]:
      raise ValueError('BackboneEncoder input must be square with a size divisible '
                       f'by 16, got {x.shape[1]}x{x.shape[2]}')
    feats = self._backbone()(x, train)
    styles = [GradualStyleBlock(self.style_dim, name=f'styles_{j}')(feats)
              for j in range(self.n_styles)]
    return jnp.stack(styles, axis=1)

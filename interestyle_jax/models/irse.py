"""IR-SE and ResNet-34 backbones (NHWC), shared by the encoder and ArcFace.

The IR-SE network is the "improved residual" face-recognition ResNet with
squeeze-and-excitation units (InsightFace, TreB1eN's PyTorch port) that
pSp/ReStyle use both as the encoder backbone and, with an output head, as the
ArcFace identity network. ``mode='ir'`` drops the SE gate (``bottleneck_IR``):
the IR-101 of CurricularFace that ReStyle's ID metric uses. ResNet-34 is
torchvision's layout of BasicBlocks as ReStyle's ``ResNetBackboneEncoder``
uses it for non-face domains.

Submodule names encode the PyTorch state-dict layout so that conversion is a
rename: ``body_{i}`` is ``body.{i}``; inside an IR-SE unit ``res_bn1``,
``res_conv1``, ``res_prelu``, ``res_conv2``, ``res_bn2``, ``se`` are
``res_layer.0`` .. ``res_layer.5`` and ``shortcut_conv``/``shortcut_bn`` are
``shortcut_layer.0/1``.

BatchNorm follows PyTorch: eps 1e-5, running-average momentum 0.1 (Flax
``momentum=0.9``); running statistics live in the ``'batch_stats'`` collection
and are used when ``train=False``.
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from interestyle_jax.ops.conv import canonical_conv

# Units per stage for the standard depths (TreB1eN / pSp ``get_blocks``).
IRSE_STAGE_UNITS = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
RESNET34_STAGE_UNITS = (3, 4, 6, 3)
STAGE_MULTIPLIERS = (1, 2, 4, 8)
# Unit types of TreB1eN's Backbone: bottleneck_IR_SE and bottleneck_IR.
IRSE_MODES = ('ir_se', 'ir')
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1


def irse_stage_units(num_layers: int = 50,
                     stage_units: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
  """Units per stage of an IR-SE network.

  Args:
    num_layers: 50, 100 or 152 (ignored when ``stage_units`` is given).
    stage_units: explicit units per stage (4 stages), e.g. (1, 1, 1, 1).

  Returns:
    Tuple of 4 unit counts.
  """
  if stage_units is not None:
    units = tuple(int(u) for u in stage_units)
    if len(units) != 4 or min(units) < 1:
      raise ValueError(f'stage_units must be 4 positive ints, got {stage_units}')
    return units
  if num_layers not in IRSE_STAGE_UNITS:
    raise ValueError(f'IR-SE num_layers must be one of {sorted(IRSE_STAGE_UNITS)}, '
                     f'got {num_layers}')
  return IRSE_STAGE_UNITS[num_layers]


def check_mode(mode: str) -> str:
  """Validates a unit type: 'ir_se' (with SE gate) or 'ir' (without)."""
  if mode not in IRSE_MODES:
    raise ValueError(f'IR mode must be one of {IRSE_MODES}, got {mode!r}')
  return mode


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  """A BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1)."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPS, name=name)


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0,
         use_bias: bool = False, name: Optional[str] = None,
         conv_general_dilated=None) -> nn.Conv:
  """A PyTorch-style Conv2d (explicit symmetric padding, HWIO kernel).

  The convolution is :func:`interestyle_jax.ops.conv.canonical_conv` (its
  gradients stay fast inside a scan or shard_map on CPU) unless
  ``conv_general_dilated`` names another (e.g. ``patch_conv``).
  """
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=[(padding, padding)] * 2, use_bias=use_bias, name=name,
                 conv_general_dilated=conv_general_dilated or canonical_conv)


class PReLU(nn.Module):
  """Per-channel parametric ReLU (PyTorch init 0.25)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    a = self.param('weight', nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, a * x)


class SEModule(nn.Module):
  """Squeeze-and-excitation: global mean → fc → ReLU → fc → sigmoid gate.

  The fcs are bias-free 1x1 convolutions in PyTorch; on a pooled vector they
  are plain matrix products, stored ``[in, out]``.
  """
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2))
    # max(1, .) keeps narrow test models (width < 16) well defined.
    s = nn.relu(nn.Dense(max(1, c // self.reduction), use_bias=False, name='fc1')(s))
    s = nn.sigmoid(nn.Dense(c, use_bias=False, name='fc2')(s))
    return x * s[:, None, None, :]


class BottleneckIRSE(nn.Module):
  """``bottleneck_IR_SE``: BN → conv3x3 → PReLU → conv3x3(stride) → BN → SE,
  plus a shortcut (stride-subsampling when the width is unchanged, else a
  strided 1x1 conv + BN). With ``mode='ir'`` it is ``bottleneck_IR``: the
  same without the SE gate.
  """
  features: int
  stride: int
  mode: str = 'ir_se'

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.shape[-1] == self.features:
      # MaxPool2d(kernel 1, stride s) is plain subsampling.
      shortcut = x[:, ::self.stride, ::self.stride, :]
    else:
      shortcut = conv(self.features, 1, self.stride, name='shortcut_conv')(x)
      shortcut = batch_norm(train, 'shortcut_bn')(shortcut)
    r = batch_norm(train, 'res_bn1')(x)
    r = conv(self.features, 3, 1, 1, name='res_conv1')(r)
    r = PReLU(name='res_prelu')(r)
    r = conv(self.features, 3, self.stride, 1, name='res_conv2')(r)
    r = batch_norm(train, 'res_bn2')(r)
    if check_mode(self.mode) == 'ir_se':
      r = SEModule(name='se')(r)
    return r + shortcut


class IRSEBackbone(nn.Module):
  """Input layer (conv3x3 → BN → PReLU) and the IR-SE body.

  Maps ``[B, H, W, C]`` to ``[B, H/16, W/16, 8 * width]``.

  Attributes:
    stage_units: units per stage (see :func:`irse_stage_units`).
    width: channels of the first stage; stages use width * (1, 2, 4, 8).
    mode: 'ir_se' (units with SE gates) or 'ir' (without).
  """
  stage_units: Tuple[int, ...] = IRSE_STAGE_UNITS[50]
  width: int = 64
  mode: str = 'ir_se'

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = conv(self.width, 3, 1, 1, name='input_conv')(x)
    x = batch_norm(train, 'input_bn')(x)
    x = PReLU(name='input_prelu')(x)
    i = 0
    for units, mult in zip(self.stage_units, STAGE_MULTIPLIERS):
      for u in range(units):
        x = BottleneckIRSE(self.width * mult, 2 if u == 0 else 1, self.mode,
                           name=f'body_{i}')(x, train)
        i += 1
    return x


class BasicBlock(nn.Module):
  """torchvision ResNet BasicBlock (conv3x3 → BN → ReLU → conv3x3 → BN, + skip, ReLU)."""
  features: int
  stride: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    r = conv(self.features, 3, self.stride, 1, name='conv1')(x)
    r = nn.relu(batch_norm(train, 'bn1')(r))
    r = conv(self.features, 3, 1, 1, name='conv2')(r)
    r = batch_norm(train, 'bn2')(r)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.stride, name='downsample_conv')(x)
      x = batch_norm(train, 'downsample_bn')(x)
    return nn.relu(r + x)


class ResNet34Backbone(nn.Module):
  """ReStyle's ``ResNetBackboneEncoder`` trunk: conv7x7/2 → BN → PReLU, then
  torchvision resnet34 ``layer1..layer4`` flattened into ``body`` (no max-pool,
  so 256 px input gives a 16x16 map, as with IR-SE).

  Attributes:
    stage_units: BasicBlocks per stage, (3, 4, 6, 3) for ResNet-34.
    width: channels of the first stage (64).
  """
  stage_units: Tuple[int, ...] = RESNET34_STAGE_UNITS
  width: int = 64

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = conv(self.width, 7, 2, 3, name='conv1')(x)
    x = batch_norm(train, 'bn1')(x)
    x = PReLU(name='relu')(x)  # ReStyle uses a PReLU here, named `relu`.
    i = 0
    for s, (units, mult) in enumerate(zip(self.stage_units, STAGE_MULTIPLIERS)):
      for u in range(units):
        # torchvision: layer1 keeps the resolution, layer2-4 halve it.
        stride = 2 if (u == 0 and s > 0) else 1
        x = BasicBlock(self.width * mult, stride, name=f'body_{i}')(x, train)
        i += 1
    return x

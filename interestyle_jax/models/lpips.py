"""LPIPS v0.1 with the AlexNet trunk (the perceptual loss ReStyle trains with).

distance(x, y) = Σ_l mean_hw( w_l · (n(f_l(x)) − n(f_l(y)))² ), where f_l are
torchvision AlexNet's relu1..relu5 activations of the scaled inputs, n divides
each spatial position by its channel L2 norm (+1e-10), and w_l are the
non-negative 1x1 "lin" weights of the LPIPS v0.1 file.

Parameter layout: ``features_{k}`` is ``features.{k}`` of torchvision's
AlexNet (k = 0, 3, 6, 8, 10), ``lin{l}`` is ``lin{l}.model.1`` of the LPIPS
file (a bias-free 1x1 conv, stored as a ``[C, 1]`` Dense kernel).
"""

from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from interestyle_jax.models.irse import conv
from interestyle_jax.ops.norm import l2_norm

KIND = 'lpips'
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# (torchvision index, channels, kernel, stride, padding, max-pool before it).
ALEXNET_CONVS = ((0, 64, 11, 4, 2, False), (3, 192, 5, 1, 2, True),
                 (6, 384, 3, 1, 1, True), (8, 256, 3, 1, 1, False),
                 (10, 256, 3, 1, 1, False))
ALEXNET_CHANNELS = tuple(c[1] for c in ALEXNET_CONVS)


def normalize_channels(x: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
  """Divides each position's feature vector by its L2 norm plus ``eps``."""
  return x / (l2_norm(x, axis=-1, keepdims=True) + eps)


class AlexNetFeatures(nn.Module):
  """torchvision AlexNet ``features`` up to relu5, returning the 5 relu maps.

  Attributes:
    channels: conv widths (torchvision: 64, 192, 384, 256, 256); narrower
      values give tiny test models.
  """
  channels: Tuple[int, ...] = ALEXNET_CHANNELS

  @nn.compact
  def __call__(self, x: jnp.ndarray):
    feats = []
    for (idx, _, k, s, p, pool), c in zip(ALEXNET_CONVS, self.channels):
      if pool:  # MaxPool2d(3, 2), floor mode, no padding
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
      x = nn.relu(conv(c, k, s, p, use_bias=True, name=f'features_{idx}')(x))
      feats.append(x)
    return feats


class LPIPS(nn.Module):
  """LPIPS-AlexNet v0.1 distance.

  Attributes:
    channels: AlexNet conv widths (see :class:`AlexNetFeatures`).
  """
  channels: Tuple[int, ...] = ALEXNET_CHANNELS

  def __post_init__(self):
    if not isinstance(self.channels, tuple):
      object.__setattr__(self, 'channels', tuple(int(c) for c in self.channels))
    super().__post_init__()

  def setup(self):
    self.net = AlexNetFeatures(self.channels)
    self.lins = [nn.Dense(1, use_bias=False, name=f'lin{l}') for l in range(5)]

  def __call__(self, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Per-image distances.

    Args:
      x: ``[B, H, W, 3]`` images in [-1, 1].
      y: same shape as ``x``.

    Returns:
      ``[B]`` LPIPS distances.
    """
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'LPIPS expects two [B, H, W, 3] arrays, got {x.shape} and {y.shape}')
    shift = jnp.asarray(SHIFT, x.dtype)
    scale = jnp.asarray(SCALE, x.dtype)
    # One trunk pass over both images.
    feats = self.net((jnp.concatenate([x, y], axis=0) - shift) / scale)
    b = x.shape[0]
    total = jnp.zeros((b,), x.dtype)
    for f, lin in zip(feats, self.lins):
      d = jnp.square(normalize_channels(f[:b]) - normalize_channels(f[b:]))
      total = total + jnp.mean(lin(d)[..., 0], axis=(1, 2))
    return total


def lpips_loss(module: LPIPS, variables, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """ReStyle's LPIPS criterion: the batch mean of the per-image distances.

  Args:
    module: an :class:`LPIPS` module.
    variables: its variables (``{'params': …}``).
    x: ``[B, H, W, 3]`` images in [-1, 1].
    y: same shape.

  Returns:
    Scalar loss.
  """
  return jnp.mean(module.apply(variables, x, y))


def load_lpips(path: str):
  """Loads a ``convert lpips`` directory (torch not needed).

  Args:
    path: the model directory.

  Returns:
    ``(LPIPS module, variables)``.
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  meta, tree = artifacts.load_artifact(path, expected_kind=KIND)
  return LPIPS(**meta.get('lpips', {})), tree['lpips']

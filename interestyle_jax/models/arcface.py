"""ArcFace IR-SE50 identity network and the ReStyle ID loss / similarity.

The network is TreB1eN's ``Backbone(input_size=112, num_layers=50,
mode='ir_se')`` (``model_ir_se50.pth``): the IR-SE trunk of
:mod:`interestyle_jax.models.irse` plus an output layer BN2d → dropout →
flatten → Linear(512·7·7, 512) → BN1d, and an L2 normalisation. It is a frozen
loss network, so it always runs in inference mode (running BN statistics, no
dropout).

ID loss (ReStyle ``criteria/id_loss.py``): both images are cropped to the face
box ``[35:223, 32:220]`` of the 256 px frame, adaptive-average-pooled to
112x112 (PyTorch's variable-window pooling, not a resize) and embedded; the
loss is the batch mean of ``1 - cos(e(ŷ), e(y))`` with the target embedding
held constant.
"""

from typing import Any, Callable, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from interestyle_jax.models.irse import BN_EPS, IRSEBackbone, irse_stage_units
from interestyle_jax.ops.norm import l2_norm
from interestyle_jax.ops.pooling import adaptive_avg_pool2d

KIND = 'arcface'
# Face box (rows, cols) of ReStyle's 256 px crop; scaled for other sizes.
FACE_BOX_256 = ((35, 223), (32, 220))

EmbedFn = Callable[[jnp.ndarray], jnp.ndarray]


class ArcFace(nn.Module):
  """IR-SE ArcFace embedding network (inference mode).

  Attributes:
    num_layers: IR-SE depth (50 for ``model_ir_se50.pth``).
    stage_units: units per stage; overrides ``num_layers`` (tiny test models).
    width: first-stage channels (64).
    input_size: input resolution, 112 (the final map is input_size / 16).
    embedding_dim: embedding width (512).
    mode: 'ir_se' (ArcFace IR-SE) or 'ir' (no SE gates: the CurricularFace
      IR-101 of :mod:`interestyle_jax.models.curricularface`).
    affine_output: whether the final BatchNorm1d has a scale and bias
      (TreB1eN's ``affine=True``; ``IR_101`` builds it with ``affine=False``).
  """
  num_layers: int = 50
  stage_units: Optional[Tuple[int, ...]] = None
  width: int = 64
  input_size: int = 112
  embedding_dim: int = 512
  mode: str = 'ir_se'
  affine_output: bool = True

  def __post_init__(self):
    if self.stage_units is not None and not isinstance(self.stage_units, tuple):
      object.__setattr__(self, 'stage_units', tuple(int(u) for u in self.stage_units))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Embeds faces.

    Args:
      x: ``[B, input_size, input_size, 3]`` images in [-1, 1].

    Returns:
      ``[B, embedding_dim]`` unit-norm embeddings.
    """
    if x.ndim != 4 or x.shape[1:] != (self.input_size, self.input_size, 3):
      raise ValueError(f'ArcFace expects [B, {self.input_size}, {self.input_size}, 3] '
                       f'inputs, got {x.shape}')
    units = irse_stage_units(self.num_layers, self.stage_units)
    x = IRSEBackbone(units, self.width, self.mode, name='backbone')(x, False)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name='output_bn')(x)
    # PyTorch flattens NCHW: the linear layer's inputs are ordered (c, h, w).
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = nn.Dense(self.embedding_dim, name='output_linear')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, use_scale=self.affine_output,
                     use_bias=self.affine_output, name='output_bn1d')(x)
    return l2_normalize(x)


def l2_normalize(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  """``x / ||x||`` along ``axis`` (the floor only guards a zero vector)."""
  norm = l2_norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, 1e-12)


def face_crop(images: jnp.ndarray) -> jnp.ndarray:
  """Crops ReStyle's face box, ``[35:223, 32:220]`` at 256 px.

  Args:
    images: ``[B, S, S, 3]``; for S != 256 the box is scaled by S / 256.

  Returns:
    ``[B, h, w, 3]`` crop (188x188 at 256 px).
  """
  size = images.shape[1]
  (r0, r1), (c0, c1) = FACE_BOX_256
  if size != 256:
    r0, r1, c0, c1 = (int(round(v * size / 256)) for v in (r0, r1, c0, c1))
  return images[:, r0:r1, c0:c1, :]


def as_embed_fn(net: Union[EmbedFn, Tuple[nn.Module, Any]]) -> Tuple[EmbedFn, int]:
  """Normalises an ID network argument.

  Args:
    net: ``(ArcFace module, variables)`` or a function mapping
      ``[B, 112, 112, 3]`` images to unit embeddings (an ``input_size``
      attribute on the function overrides 112).

  Returns:
    ``(embed_fn, input_size)``.
  """
  if isinstance(net, tuple) and len(net) == 2 and isinstance(net[0], nn.Module):
    module, variables = net
    return (lambda x: module.apply(variables, x)), module.input_size
  if callable(net):
    return net, getattr(net, 'input_size', 112)
  raise TypeError('expected (ArcFace module, variables) or an embedding function, '
                  f'got {type(net).__name__}')


def id_features(net, images: jnp.ndarray) -> jnp.ndarray:
  """ArcFace embeddings of full frames (crop → adaptive pool → embed).

  Args:
    net: ``(module, variables)`` or an embedding function (see :func:`as_embed_fn`).
    images: ``[B, S, S, 3]`` NHWC images in [-1, 1] (S = 256 in ReStyle).

  Returns:
    ``[B, D]`` unit-norm embeddings.
  """
  embed, size = as_embed_fn(net)
  return embed(adaptive_avg_pool2d(face_crop(images), size))


def id_similarity(net, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Per-image cosine similarity of ArcFace embeddings.

  Args:
    net: ``(module, variables)`` or an embedding function.
    a: ``[B, S, S, 3]`` images in [-1, 1].
    b: same shape as ``a``.

  Returns:
    ``[B]`` cosines in [-1, 1].
  """
  return jnp.sum(id_features(net, a) * id_features(net, b), axis=-1)


def id_loss(net, y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """ReStyle's ID loss: mean over the batch of ``1 - cos(e(ŷ), e(y))``.

  Args:
    net: ``(module, variables)`` or an embedding function.
    y_hat: ``[B, S, S, 3]`` reconstructions in [-1, 1].
    y: ``[B, S, S, 3]`` targets; their embeddings get no gradient.

  Returns:
    Scalar loss.
  """
  target = jax.lax.stop_gradient(id_features(net, y))
  return jnp.mean(1.0 - jnp.sum(id_features(net, y_hat) * target, axis=-1))


def load_arcface(path: str):
  """Loads a ``convert irse50`` directory (torch not needed).

  Args:
    path: the model directory.

  Returns:
    ``(ArcFace module, variables)`` usable as the ``net`` argument above.
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  meta, tree = artifacts.load_artifact(path, expected_kind=KIND)
  return ArcFace(**meta['arcface']), tree['arcface']

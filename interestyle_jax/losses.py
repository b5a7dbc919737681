"""IntereStyle training losses on the interest region.

Every reconstruction term compares m ⊙ ŷ with m ⊙ y (m = interest mask), as
the IntereStyle release does before calling ReStyle's criteria:

* L2: ``mean over pixels and channels of (m ŷ − m y)²`` (``F.mse_loss``),
* LPIPS-AlexNet: per-image distance of the masked images,
* ID: ``1 − cos(e(m ŷ), e(m y))`` with ArcFace embeddings (target stop-grad),
* W-norm (ReStyle, ``start_from_latent_avg``): ``‖w − w_avg‖₂`` over the whole
  ``[n_styles, D]`` latent, per image.

Terms are returned **per image** (``[B]``) so training can take the batch mean
(ReStyle's reduction) and evaluation can weight by a validity mask. LPIPS and
ID are only evaluated when their λ > 0 and a network is supplied, so the
synthetic configuration runs without any pretrained file.
"""

import dataclasses
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp

from interestyle_jax.ops.norm import l2_norm

# Per-image perceptual distance: (a [B,H,W,3], b [B,H,W,3]) -> [B].
DistanceFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
# Unit-norm identity embedding of full frames: [B,H,W,3] -> [B, E].
EmbedFn = Callable[[jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """The λs of the IntereStyle objective (hashable: a static jit argument).

  Attributes:
    l2: interest-region L2 (1.0 in the paper).
    lpips: interest-region LPIPS-AlexNet (0.8).
    id: interest-region ArcFace identity loss (0.1).
    w_norm: ‖w − w_avg‖ regulariser (0 in the paper).
    ind: interest-disentanglement pass (0.05; 0 disables the extra pass).
  """
  l2: float = 1.0
  lpips: float = 0.8
  id: float = 0.1
  w_norm: float = 0.0
  ind: float = 0.05

  @classmethod
  def from_config(cls, loss_config) -> 'LossWeights':
    """Builds the weights from a ``config.loss`` ConfigDict.

    Args:
      loss_config: has fields l2, lpips, id, w_norm, ind.

    Returns:
      LossWeights.
    """
    return cls(l2=float(loss_config.l2), lpips=float(loss_config.lpips),
               id=float(loss_config.id), w_norm=float(loss_config.w_norm),
               ind=float(loss_config.ind))


def interest_l2(y_hat: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Per-image interest-region squared error.

  Args:
    y_hat: ``[B, H, W, C]`` reconstructions.
    y: ``[B, H, W, C]`` targets.
    mask: ``[B, H, W, 1]`` interest mask in [0, 1] (all ones: whole image).

  Returns:
    ``[B]``: mean over pixels and channels of ``(m ŷ − m y)²``.
  """
  return jnp.mean(jnp.square(mask * y_hat - mask * y), axis=(1, 2, 3))


def w_norm(w: jnp.ndarray, w_avg: jnp.ndarray) -> jnp.ndarray:
  """ReStyle's W-norm (start_from_latent_avg): per-image ‖w − w_avg‖₂.

  Args:
    w: ``[B, n_styles, D]`` latents.
    w_avg: ``[n_styles, D]`` or ``[B, n_styles, D]`` average latent.

  Returns:
    ``[B]`` Frobenius norms of ``w − w_avg`` over (n_styles, D).
  """
  d = w - w_avg
  return l2_norm(d, axis=(1, 2))


def id_distance(embed: EmbedFn, y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """Per-image ID loss ``1 − cos(e(ŷ), e(y))``; the target gets no gradient.

  Args:
    embed: unit-norm embedding function of full frames.
    y_hat: ``[B, H, W, 3]`` reconstructions.
    y: ``[B, H, W, 3]`` targets.

  Returns:
    ``[B]`` losses in [0, 2].
  """
  target = jax.lax.stop_gradient(embed(y))
  return 1.0 - jnp.sum(embed(y_hat) * target, axis=-1)


def reconstruction_terms(y_hat: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray,
                         weights: LossWeights,
                         lpips_fn: Optional[DistanceFn] = None,
                         id_embed: Optional[EmbedFn] = None) -> Dict[str, jnp.ndarray]:
  """Interest-region reconstruction terms of one refinement iteration.

  Args:
    y_hat: ``[B, H, W, 3]`` reconstructions at the encoder size.
    y: ``[B, H, W, 3]`` targets (the input image in training).
    mask: ``[B, H, W, 1]`` interest mask.
    weights: the λs; LPIPS / ID are computed only when λ > 0.
    lpips_fn: per-image LPIPS distance (required when ``weights.lpips > 0``).
    id_embed: ArcFace embedding function (required when ``weights.id > 0``).

  Returns:
    dict of ``[B]`` arrays: 'l2' always, 'lpips' and 'id' when enabled.
  """
  ym, yhm = mask * y, mask * y_hat
  terms = {'l2': interest_l2(y_hat, y, mask)}
  if weights.lpips > 0:
    if lpips_fn is None:
      raise ValueError('loss.lpips > 0 needs an LPIPS network (loss.lpips_path)')
    terms['lpips'] = lpips_fn(yhm, ym)
  if weights.id > 0:
    if id_embed is None:
      raise ValueError('loss.id > 0 needs an ArcFace network (loss.id_path)')
    terms['id'] = id_distance(id_embed, yhm, ym)
  return terms


def weighted_sum(terms: Dict[str, jnp.ndarray], weights: LossWeights) -> jnp.ndarray:
  """λ-weighted sum of the terms present (keys l2, lpips, id, w_norm).

  Args:
    terms: dict of per-image (``[B]``) or scalar terms.
    weights: the λs.

  Returns:
    The weighted sum, same shape as the terms.
  """
  lam = {'l2': weights.l2, 'lpips': weights.lpips, 'id': weights.id,
         'w_norm': weights.w_norm}
  total = 0.0
  for k, v in terms.items():
    if k not in lam:
      raise KeyError(f'unknown loss term {k!r}')
    total = total + lam[k] * v
  return total


def iteration_loss(y_hat: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray,
                   w: jnp.ndarray, w_avg: jnp.ndarray, weights: LossWeights,
                   lpips_fn: Optional[DistanceFn] = None,
                   id_embed: Optional[EmbedFn] = None):
  """Batch loss of one refinement iteration (ReStyle ``calc_loss``, masked).

  Args:
    y_hat: ``[B, H, W, 3]`` reconstructions.
    y: ``[B, H, W, 3]`` targets.
    mask: ``[B, H, W, 1]`` interest mask.
    w: ``[B, n_styles, D]`` latents of ``y_hat``.
    w_avg: ``[n_styles, D]`` average latent.
    weights: the λs.
    lpips_fn: per-image LPIPS (when ``weights.lpips > 0``).
    id_embed: ArcFace embedding (when ``weights.id > 0``).

  Returns:
    ``(loss, terms)``: the scalar weighted batch mean and a dict of the batch
    means of each term present.
  """
  terms = reconstruction_terms(y_hat, y, mask, weights, lpips_fn, id_embed)
  if weights.w_norm > 0:
    terms['w_norm'] = w_norm(w, w_avg)
  terms = {k: jnp.mean(v) for k, v in terms.items()}
  return weighted_sum(terms, weights), terms


def ind_loss(y_hat: jnp.ndarray, x: jnp.ndarray, mask: jnp.ndarray,
             weights: LossWeights, lpips_fn: Optional[DistanceFn] = None,
             id_embed: Optional[EmbedFn] = None) -> jnp.ndarray:
  """Interest-disentanglement term before its λ_InD factor.

  The output of the InD pass, G(w + E([x, m ⊙ x])), must reproduce x on the
  interest region: the same λ-weighted reconstruction loss (L2, LPIPS, ID) as
  an ordinary iteration, as the IntereStyle release computes it.

  Args:
    y_hat: ``[B, H, W, 3]`` output of the InD pass.
    x: ``[B, H, W, 3]`` the (unfiltered) input image.
    mask: ``[B, H, W, 1]`` interest mask.
    weights: the λs.
    lpips_fn: per-image LPIPS (when ``weights.lpips > 0``).
    id_embed: ArcFace embedding (when ``weights.id > 0``).

  Returns:
    Scalar batch-mean reconstruction loss (multiply by ``weights.ind``).
  """
  terms = reconstruction_terms(y_hat, x, mask, weights, lpips_fn, id_embed)
  return jnp.mean(weighted_sum(terms, weights))

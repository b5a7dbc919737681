"""Per-image reconstruction metrics, on the whole image and on the interest region.

Every function takes NHWC float images in [-1, 1] and returns one value per
image (``[B]``), so callers can average over a dataset with padding excluded.
With a mask ``m`` (``[B, H, W, 1]`` in [0, 1]) the metric compares ``m ⊙ ŷ``
with ``m ⊙ y``: the definition of IntereStyle's interest-region losses and of
the training run's validation metrics (``training/evaluation.py``), so the
numbers of ``python -m interestyle_jax.evaluate`` and of train.py agree.
Note that the masked MSE is the mean over *all* pixels of ``(m ŷ − m y)²`` (the
loss definition), not a mean over the masked area only.

* ``mse``: mean over pixels and channels of the squared difference.
* ``ssim``: SSIM with an 11x11 Gaussian window (σ 1.5), data range 2.
* ``lpips``: LPIPS-AlexNet distance (needs a ``convert lpips`` network).
* ``id_similarity``: cosine of ArcFace embeddings of ReStyle's face crop
  (needs a ``convert irse50`` network).
* ``latent_mse``: mean squared error of W+ latents.
"""

from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp
from jax import lax

from interestyle_jax import losses
from interestyle_jax.models import arcface

# (module, variables) of a loaded network, as load_lpips / load_arcface return.
Net = Tuple[Any, Any]

IMAGE_METRICS = ('mse', 'ssim', 'lpips', 'id_sim')


def _masked(a: jnp.ndarray, b: jnp.ndarray, mask: Optional[jnp.ndarray]):
  if mask is None:
    return a, b
  return mask * a, mask * b


def mse(a: jnp.ndarray, b: jnp.ndarray, mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Per-image mean squared error.

  Args:
    a: ``[B, H, W, C]`` images.
    b: same shape.
    mask: optional ``[B, H, W, 1]`` interest mask; compares ``m a`` with ``m b``.

  Returns:
    ``[B]`` mean over pixels and channels.
  """
  return losses.interest_l2(a, b, 1.0 if mask is None else mask)


def _ssim(a: jnp.ndarray, b: jnp.ndarray, data_range: float = 2.0,
         win_size: int = 11, sigma: float = 1.5) -> jnp.ndarray:
  """Per-image SSIM (Wang et al. 2004), Gaussian window, valid region only.

  Args:
    a: ``[B, H, W, C]`` images.
    b: same shape.
    data_range: value range (2 for images in [-1, 1]).
    win_size: window side (clipped to the image size, kept odd).
    sigma: Gaussian window σ.

  Returns:
    ``[B]`` SSIM averaged over positions and channels.
  """
  win = min(win_size, a.shape[1], a.shape[2])
  win -= 1 - win % 2
  offs = jnp.arange(win, dtype=jnp.float32) - (win - 1) / 2
  g = jnp.exp(-0.5 * jnp.square(offs / sigma))
  g = g / jnp.sum(g)
  c = a.shape[-1]

  def filt(x):
    for axis in (1, 2):
      shape = (win, 1) if axis == 1 else (1, win)
      k = jnp.broadcast_to(g.reshape(shape + (1, 1)), shape + (1, c))
      x = lax.conv_general_dilated(x, k, (1, 1), 'VALID',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   feature_group_count=c)
    return x

  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_a, mu_b = filt(a), filt(b)
  s_aa = filt(a * a) - mu_a ** 2
  s_bb = filt(b * b) - mu_b ** 2
  s_ab = filt(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / (
      (mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def ssim(a: jnp.ndarray, b: jnp.ndarray, mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Per-image SSIM (Gaussian window 11, σ 1.5, images in [-1, 1]).

  Args:
    a: ``[B, H, W, C]`` images.
    b: same shape.
    mask: optional ``[B, H, W, 1]`` interest mask; compares ``m a`` with ``m b``.

  Returns:
    ``[B]`` SSIM averaged over positions and channels.
  """
  return _ssim(*_masked(a, b, mask))


def lpips(net: Net, a: jnp.ndarray, b: jnp.ndarray,
          mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Per-image LPIPS distance.

  Args:
    net: ``(LPIPS module, variables)`` from ``models.lpips.load_lpips``.
    a: ``[B, H, W, 3]`` images in [-1, 1].
    b: same shape.
    mask: optional ``[B, H, W, 1]`` interest mask; compares ``m a`` with ``m b``.

  Returns:
    ``[B]`` distances.
  """
  module, variables = net
  return module.apply(variables, *_masked(a, b, mask))


def id_similarity(net: Net, a: jnp.ndarray, b: jnp.ndarray,
                  mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Per-image ArcFace identity similarity.

  Args:
    net: ``(ArcFace module, variables)`` from ``models.arcface.load_arcface``.
    a: ``[B, S, S, 3]`` images in [-1, 1] (256 px frames for the real network).
    b: same shape.
    mask: optional ``[B, S, S, 1]`` interest mask; compares ``m a`` with ``m b``.

  Returns:
    ``[B]`` cosine similarities in [-1, 1].
  """
  return arcface.id_similarity(net, *_masked(a, b, mask))


def latent_mse(w: jnp.ndarray, w_true: jnp.ndarray) -> jnp.ndarray:
  """Per-image mean squared error of W+ latents.

  Args:
    w: ``[B, n_styles, D]`` estimated latents.
    w_true: same shape (or broadcastable), the true latents.

  Returns:
    ``[B]`` mean over styles and dimensions.
  """
  return jnp.mean(jnp.square(w - w_true), axis=(-2, -1))


def metric_names(with_lpips: bool, with_id: bool) -> Tuple[str, ...]:
  """Names :func:`image_metrics` returns, whole-image then interest-region.

  Args:
    with_lpips: an LPIPS network is given.
    with_id: an ArcFace network is given.

  Returns:
    e.g. ``('mse', 'mse_interest', 'ssim', 'ssim_interest')``.
  """
  names = []
  for base in IMAGE_METRICS:
    if (base == 'lpips' and not with_lpips) or (base == 'id_sim' and not with_id):
      continue
    names += [base, f'{base}_interest']
  return tuple(names)


def image_metrics(y_hat: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray,
                  lpips_net: Optional[Net] = None,
                  arcface_net: Optional[Net] = None) -> Dict[str, jnp.ndarray]:
  """All image metrics of a batch, on the whole image and on the interest region.

  Args:
    y_hat: ``[B, S, S, 3]`` reconstructions in [-1, 1].
    y: ``[B, S, S, 3]`` targets.
    mask: ``[B, S, S, 1]`` interest masks.
    lpips_net: LPIPS network, or None to skip LPIPS.
    arcface_net: ArcFace network, or None to skip the ID similarity.

  Returns:
    dict name → ``[B]`` with the names of :func:`metric_names`.
  """
  fns = {'mse': mse, 'ssim': ssim}
  if lpips_net is not None:
    fns['lpips'] = lambda a, b, m=None: lpips(lpips_net, a, b, m)
  if arcface_net is not None:
    fns['id_sim'] = lambda a, b, m=None: id_similarity(arcface_net, a, b, m)
  out = {}
  for name, fn in fns.items():
    out[name] = fn(y_hat, y)
    out[f'{name}_interest'] = fn(y_hat, y, mask)
  return out

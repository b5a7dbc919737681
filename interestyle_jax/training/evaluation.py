"""Validation metrics: whole-image and interest-region, as clu collections.

Per held-out image, after T refinement iterations with x̃ = x, const noise and
running BatchNorm statistics (:func:`refine`: the Inverter's own loop,
:func:`interestyle_jax.inference.refine`):

* ``loss``: the training objective's reconstruction part (λ-weighted L2 /
  LPIPS / ID on the interest region, or on the whole image with
  ``loss.region='whole'``, against the *input* x) of the last
  iteration — what a real validation set can compute; it ranks checkpoints.
* ``mse`` / ``mse_interest``: against the target (the clean image when the
  data provides one, else x). ``mse_interest`` uses the loss definition,
  mean over pixels of (m ŷ − m y)²; ``mse_interest_it{t}`` per iteration,
  with it0 the average image ŷ₀ (the no-encoder baseline).
* ``ssim`` / ``ssim_interest``: SSIM (11x11 Gaussian window, σ 1.5) of the
  images / of the masked images.
* ``lpips`` / ``lpips_interest`` and ``id_sim`` / ``id_sim_interest`` when
  the networks are loaded.
* ``latent_mse``: mean squared error of the W+ latent, when the true latent
  is known (synthetic data).

Padding examples (``valid == 0``) are excluded through the metrics' masks.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from interestyle_jax import filter as unf
from interestyle_jax import inference, losses, metrics
from interestyle_jax.ops.pooling import adaptive_avg_pool2d
from interestyle_jax.training.step import Models, StepConfig, perceptual_fns


def refine(encoder_variables, frozen: Dict[str, Any], x: jnp.ndarray, *, models: Models,
           cfg: StepConfig, mask: Optional[jnp.ndarray] = None,
           apply_filter: bool = False):
  """:func:`interestyle_jax.inference.refine` (the Inverter's loop) on training's arguments.

  Args:
    encoder_variables: ``{'params', 'batch_stats'}`` of the encoder.
    frozen: the replicated constants ('generator', 'latent_avg', 'avg_image').
    x: ``[b, S, S, 3]`` images.
    models: the modules.
    cfg: static settings (T, σ, the encoder size).
    mask: interest mask (needed with ``apply_filter``).
    apply_filter: feed the UnF-filtered training inputs x̃ₜ (the training
      image grids); validation and inference use x̃ = x.

  Returns:
    ``(w, x_tilde, y_hats)``: final latents ``[b, n, D]``, the encoder inputs
    ``[T, b, S, S, 3]`` and every iteration's output at the encoder size
    ``[T, b, S, S, 3]``.
  """
  if apply_filter:
    x_tilde = jax.vmap(lambda s: unf.uninterest_filter(
        x, mask, s, cfg.radius, cfg.filter_region, cfg.filter_padding))(
            jnp.asarray(cfg.sigmas, jnp.float32))
  else:
    x_tilde = jnp.broadcast_to(x, (cfg.n_iters,) + x.shape)
  out = inference.refine(models.encoder, models.generator, encoder_variables,
                         frozen['generator'], frozen['latent_avg'],
                         x_tilde if apply_filter else x, cfg.n_iters, cfg.encoder_size,
                         frozen['avg_image'])
  t, b = out.iterations.shape[:2]
  y_hats = adaptive_avg_pool2d(out.iterations.reshape((t * b,) + out.iterations.shape[2:]),
                               cfg.encoder_size).reshape((t, b) + x.shape[1:])
  return out.latents, x_tilde, y_hats


def metric_names(cfg: StepConfig, models: Models, has_latent: bool) -> Tuple[str, ...]:
  """Names of the validation metrics for a setting.

  Args:
    cfg: static step settings.
    models: the modules (LPIPS / ArcFace presence).
    has_latent: whether batches carry the true latent.

  Returns:
    Tuple of metric names.
  """
  names = ['loss', 'mse', 'mse_interest', 'ssim', 'ssim_interest']
  if models.lpips is not None:
    names += ['lpips', 'lpips_interest']
  if models.arcface is not None:
    names += ['id_sim', 'id_sim_interest']
  if has_latent:
    names.append('latent_mse')
  names += [f'mse_interest_it{t}' for t in range(cfg.n_iters + 1)]
  return tuple(names)


def make_collection(names: Sequence[str]):
  """A clu Collection class with one masked Average per name.

  Args:
    names: metric names.

  Returns:
    The Collection subclass.
  """
  return clu_metrics.Collection.create(
      **{n: clu_metrics.Average.from_output(n) for n in names})


def eval_step(state, frozen: Dict[str, Any], batch: Dict[str, jnp.ndarray], *,
              models: Models, cfg: StepConfig, collection):
  """Validation metrics of this device's shard, gathered over ``cfg.axis_name``.

  Args:
    state: the TrainState (fast weights, running BN statistics are used).
    frozen: replicated constants (see ``step.train_step``).
    batch: 'image', 'mask', 'valid' ``[b]``; optional 'target' (clean image)
      and 'latent' (true W+ latent).
    models: the modules.
    cfg: static settings.
    collection: class from :func:`make_collection` with the matching names.

  Returns:
    A replicated ``collection`` instance with the shard sums of all devices.
  """
  x, m = batch['image'], batch['mask']
  target = batch.get('target', x)
  w, _, y_hats = refine(state.encoder_variables, frozen, x, models=models, cfg=cfg)
  y_hat = y_hats[-1]
  lpips_fn, id_embed = perceptual_fns(models, frozen)
  ones = jnp.ones_like(m)
  terms = losses.reconstruction_terms(y_hat, x, cfg.loss_mask(m), cfg.weights, lpips_fn,
                                      id_embed)
  if cfg.weights.w_norm > 0:
    terms['w_norm'] = losses.w_norm(w, frozen['latent_avg'])
  out = {
      'loss': losses.weighted_sum(terms, cfg.weights),
      'mse': losses.interest_l2(y_hat, target, ones),
      'mse_interest': losses.interest_l2(y_hat, target, m),
      'ssim': metrics.ssim(y_hat, target),
      'ssim_interest': metrics.ssim(y_hat, target, m),
  }
  if lpips_fn is not None:
    out['lpips'] = lpips_fn(y_hat, target)
    out['lpips_interest'] = lpips_fn(m * y_hat, m * target)
  if id_embed is not None:
    out['id_sim'] = 1.0 - losses.id_distance(id_embed, y_hat, target)
    out['id_sim_interest'] = 1.0 - losses.id_distance(id_embed, m * y_hat, m * target)
  if 'latent' in batch:
    out['latent_mse'] = jnp.mean(jnp.square(w - batch['latent']), axis=(1, 2))
  # it0 is ŷ₀ = G(w_avg): the score of predicting the average image.
  out['mse_interest_it0'] = losses.interest_l2(
      jnp.broadcast_to(frozen['avg_image'], x.shape), target, m)
  for t in range(cfg.n_iters):
    out[f'mse_interest_it{t + 1}'] = losses.interest_l2(y_hats[t], target, m)
  valid = batch['valid'] > 0
  if cfg.axis_name is None:
    return collection.single_from_model_output(mask=valid, **out)
  return collection.gather_from_model_output(axis_name=cfg.axis_name, mask=valid, **out)


def visualize(state, frozen, batch, *, models: Models, cfg: StepConfig,
              apply_filter: bool) -> Dict[str, jnp.ndarray]:
  """The panels of an image grid (composed on the host by ``interestyle_jax.grids``).

  Args:
    state: the TrainState.
    frozen: replicated constants.
    batch: 'image' ``[b, S, S, 3]`` and 'mask' ``[b, S, S, 1]`` (a few rows),
      optional 'target' ``[b, S, S, 3]`` (the clean image of synthetic data).
    models: the modules.
    cfg: static settings.
    apply_filter: show the UnF-filtered training inputs (train grids) or x̃ = x.

  Returns:
    dict of images in [0, 1]: 'input' and 'mask' ``[b, S, S, 3]``, 'x_tilde'
    and 'y_hat' ``[T, b, S, S, 3]`` (iterations 1..T), and 'target' when the
    batch has one.
  """
  x, m = batch['image'], batch['mask']
  _, x_tilde, y_hats = refine(state.encoder_variables, frozen, x, models=models,
                              cfg=cfg, mask=m, apply_filter=apply_filter)

  def to_unit(images):
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)

  panels = {'input': to_unit(x), 'mask': jnp.broadcast_to(m, x.shape),
            'x_tilde': to_unit(x_tilde), 'y_hat': to_unit(y_hats)}
  if 'target' in batch:
    panels['target'] = to_unit(batch['target'])
  return panels

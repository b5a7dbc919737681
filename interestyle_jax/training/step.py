"""Per-device train / eval / visualisation steps (pure module-level functions).

ReStyle refinement with the IntereStyle additions, for one device's shard of
the batch:

    w₀ = w_avg,  ŷ₀ = pool(G(w_avg, const noise))
    for t = 1..T:   x̃ₜ = UnF_σₜ(x, m);  wₜ = wₜ₋₁ + E([x̃ₜ, ŷₜ₋₁]);  ŷₜ = pool(G(wₜ))

The T iterations are one ``lax.scan``. Each iteration's loss is differentiated
*inside* the scan body with (wₜ₋₁, ŷₜ₋₁) held constant, and the gradients are
summed in the carry, so nothing of iteration t is kept for a later backward
pass: memory does not grow with T, and the sum equals the gradient of the
summed loss (ReStyle calls ``loss.backward()`` once per iteration). With
``loss_iterations='last'`` the first T − 1 iterations run as a forward-only
scan. The optional InD pass then encodes [x, m ⊙ x] from the final latent.

Gradients, BatchNorm statistics and metrics are averaged over the device axis
``'batch'`` with ``lax.pmean``; the functions also run unmapped when
``axis_name`` is None (tests, single-device tools).
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from interestyle_jax import filter as unf
from interestyle_jax import losses
from interestyle_jax.ops.pooling import adaptive_avg_pool2d
from interestyle_jax.training.state import TrainState, apply_gradients

LOSS_ITERATIONS = ('all', 'last')
LOSS_REGIONS = ('interest', 'whole')
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static (hashable) settings of the steps.

  Attributes:
    n_iters: refinement iterations T.
    sigmas: per-iteration filter σ in pixels of the encoder-size image.
    filter_region: 'uninterest' or 'whole'.
    filter_padding: 'reflect' or 'zero'.
    loss_iterations: 'all' or 'last'.
    loss_region: 'interest' (losses on m ⊙ ·) or 'whole' (m ≡ 1 in every
      reconstruction loss, InD included: with σ = 0 and λ_InD = 0 that is
      ReStyle-pSp, the paper's baseline).
    weights: the loss λs.
    encoder_size: side of the encoder input (ŷ is pooled to it).
    train_noise_mode: generator noise while training ('random' in ReStyle).
    axis_name: device axis for pmean (None: unmapped).
    unroll_scan: emit the T iterations of the training scan unrolled (see
      :func:`scan_unroll`).
    dtype: compute dtype of the encoder and generator in the training step
      ('float32' or 'bfloat16'); parameters, optimizer state, BatchNorm
      statistics, latents, the filter and the losses stay float32.
  """
  n_iters: int
  sigmas: Tuple[float, ...]
  filter_region: str = 'uninterest'
  filter_padding: str = 'reflect'
  loss_iterations: str = 'all'
  loss_region: str = 'interest'
  weights: losses.LossWeights = losses.LossWeights()
  encoder_size: int = 256
  train_noise_mode: str = 'random'
  axis_name: Optional[str] = 'batch'
  unroll_scan: bool = False
  dtype: str = 'float32'

  def __post_init__(self):
    if len(self.sigmas) != self.n_iters:
      raise ValueError(f'sigmas has {len(self.sigmas)} entries, n_iters is {self.n_iters}')
    if self.loss_iterations not in LOSS_ITERATIONS:
      raise ValueError(f'loss_iterations must be one of {LOSS_ITERATIONS}, '
                       f'got {self.loss_iterations!r}')
    if self.loss_region not in LOSS_REGIONS:
      raise ValueError(f'loss_region must be one of {LOSS_REGIONS}, got {self.loss_region!r}')
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')

  @property
  def radius(self) -> int:
    """Static blur radius sized for the largest σ."""
    return unf.kernel_radius(max(self.sigmas))

  def loss_mask(self, mask: jnp.ndarray) -> jnp.ndarray:
    """The mask the reconstruction losses use: ``mask``, or ones for 'whole'."""
    return mask if self.loss_region == 'interest' else jnp.ones_like(mask)


@dataclasses.dataclass(frozen=True)
class Models:
  """The linen modules (static); their variables travel separately.

  Attributes:
    encoder: the ReStyle encoder (``__call__(x, train)`` → Δ).
    generator: the frozen StyleGAN2 generator.
    lpips: LPIPS module or None (needs ``frozen['lpips']``).
    arcface: ArcFace module or None (needs ``frozen['arcface']``).
  """
  encoder: nn.Module
  generator: nn.Module
  lpips: Optional[nn.Module] = None
  arcface: Optional[nn.Module] = None


def scan_unroll(setting: str) -> bool:
  """Whether the training scan is unrolled, from ``config.scan_unroll``.

  XLA:CPU rewrites convolutions whose operands are not in the NHWC/HWIO form
  its fast kernels take (every weight gradient, every input gradient with
  JAX's swapped kernel dimensions) into that form only in the entry
  computation, not inside a while loop's body, and the leftovers run as naive
  loops: a rolled ``lax.scan`` made the paper step 4–10x slower on CPU, and
  unrolling was the first fix. The models now use
  :func:`interestyle_jax.ops.conv.canonical_conv`, whose gradients are
  canonical in a rolled loop too (tested), and the rolled loop is the better
  program everywhere: paper step at T = 5 on a 2-core CPU 24.3 s rolled
  against 26.4 s unrolled, compile 34 s against 90 s, and peak memory flat in
  T (XLA temp 2.4 GB rolled; 2.3/3.5/5.1 GB at T = 1/3/5 unrolled, where XLA
  keeps several iterations' buffers live); the 32 px synthetic step is as
  fast and compiles in 20 s instead of 30 s (``benchmarks/train_step.py``).
  'auto' therefore rolls; either way the iterations are one ``lax.scan``.

  Args:
    setting: 'auto' (rolled), 'yes' or 'no'.

  Returns:
    True to unroll.
  """
  if setting == 'auto':
    return False
  if setting not in ('yes', 'no'):
    raise ValueError(f"scan_unroll must be 'auto', 'yes' or 'no', got {setting!r}")
  return setting == 'yes'


def _pmean(tree, axis_name):
  return tree if axis_name is None else lax.pmean(tree, axis_name)


def perceptual_fns(models: Models, frozen: Dict[str, Any]):
  """The optional loss networks as functions of images (training and validation).

  Args:
    models: the modules (``lpips`` / ``arcface`` may be None).
    frozen: the replicated constants holding their variables.

  Returns:
    ``(lpips_fn(a, b) or None, id_embed(x) or None)``.
  """
  lpips_fn = id_embed = None
  if models.lpips is not None:
    lpips_fn = lambda a, b: models.lpips.apply(frozen['lpips'], a, b)
  if models.arcface is not None:
    from interestyle_jax.models import arcface  # pylint: disable=g-import-not-at-top
    net = (models.arcface, frozen['arcface'])
    id_embed = lambda x: arcface.id_features(net, x)
  return lpips_fn, id_embed


def render(models: Models, frozen, w: jnp.ndarray, size: int, noise_mode: str,
           key: Optional[jax.Array] = None) -> jnp.ndarray:
  """G(w) average-pooled (PyTorch adaptive pooling) to the encoder size.

  Args:
    models: the modules.
    frozen: dict with 'generator' variables.
    w: ``[B, n_styles, D]`` latents.
    size: output side.
    noise_mode: 'const', 'random' (needs ``key``) or 'none'.
    key: PRNG key for random noise.

  Returns:
    ``[B, size, size, 3]`` images.
  """
  rngs = {'noise': key} if noise_mode == 'random' else None
  img = models.generator.apply(frozen['generator'], w, noise_mode=noise_mode, rngs=rngs)
  return adaptive_avg_pool2d(img.astype(jnp.float32), size)


def initial_estimate(frozen, batch_size: int):
  """(w₀, ŷ₀): the average latent and its (const-noise, pooled) image.

  Args:
    frozen: dict with 'latent_avg' ``[n_styles, D]`` and 'avg_image' ``[S, S, 3]``.
    batch_size: B.

  Returns:
    ``([B, n_styles, D], [B, S, S, 3])``.
  """
  w_avg, y_avg = frozen['latent_avg'], frozen['avg_image']
  return (jnp.broadcast_to(w_avg, (batch_size,) + w_avg.shape),
          jnp.broadcast_to(y_avg, (batch_size,) + y_avg.shape))


def _cast(tree, dtype):
  """Floating leaves of ``tree`` in ``dtype`` (a no-op for float32)."""
  if jnp.dtype(dtype) == jnp.float32:
    return tree
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _encode(models, params, batch_stats, x_in, y_prev, train: bool,
            dtype: str = 'float32'):
  """Δ = E([x̃, ŷ]) in float32, computed in ``dtype`` (statistics stay float32)."""
  variables = {'params': _cast(params, dtype)}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  inp = _cast(jnp.concatenate([x_in, y_prev], axis=-1), dtype)
  if train and batch_stats:
    delta, updates = models.encoder.apply(variables, inp, train=True,
                                          mutable=['batch_stats'])
    stats = jax.tree.map(lambda new, old: new.astype(old.dtype), updates['batch_stats'],
                         batch_stats)
    return delta.astype(jnp.float32), stats
  return models.encoder.apply(variables, inp, train=train).astype(jnp.float32), batch_stats


def loss_and_grads(params, batch_stats, frozen: Dict[str, Any],
                   batch: Dict[str, jnp.ndarray], rng: jax.Array, *, models: Models,
                   cfg: StepConfig):
  """Summed-iteration (+ InD) loss gradients on one shard, no averaging.

  Args:
    params: encoder parameters (the fast weights).
    batch_stats: encoder BatchNorm statistics.
    frozen: replicated constants: 'generator' variables, 'latent_avg'
      ``[n_styles, D]``, 'avg_image' ``[S, S, 3]``, optional 'lpips'/'arcface'.
    batch: 'image' ``[b, S, S, 3]`` in [-1, 1] and 'mask' ``[b, S, S, 1]``.
    rng: PRNG key of this shard and step (generator noise).
    models: the modules.
    cfg: static settings.

  Returns:
    ``(grads, batch_stats, metrics)``: gradients w.r.t. ``params``, the
    statistics after the T (+1) train-mode encoder passes, and scalar metrics
    (see :func:`train_step`).
  """
  x, m = batch['image'], batch['mask']
  m_loss = cfg.loss_mask(m)
  w_avg = frozen['latent_avg']
  lpips_fn, id_embed = perceptual_fns(models, frozen)
  dt = cfg.dtype
  # The generator runs in the compute dtype; its float32 image is pooled.
  gen_frozen = {'generator': _cast(frozen['generator'], dt)}

  def render_train(w, key):
    return render(models, gen_frozen, _cast(w, dt), cfg.encoder_size,
                  cfg.train_noise_mode, key)

  keys = jax.random.split(rng, cfg.n_iters + 1)
  sigmas = jnp.asarray(cfg.sigmas, jnp.float32)
  radius = cfg.radius

  def forward(params, batch_stats, w_prev, y_prev, x_in, key):
    delta, batch_stats = _encode(models, params, batch_stats, x_in, y_prev, True, dt)
    w = w_prev + delta
    y_hat = render_train(w, key)
    loss, terms = losses.iteration_loss(y_hat, x, m_loss, w, w_avg, cfg.weights,
                                        lpips_fn, id_embed)
    return loss, (terms, w, y_hat, batch_stats)

  grad_fn = jax.value_and_grad(forward, has_aux=True)
  fast = params

  def body(with_grad):
    def step_fn(carry, inputs):
      w_prev, y_prev, batch_stats, grad_sum = carry
      sigma, key = inputs
      x_in = unf.uninterest_filter(x, m, sigma, radius, cfg.filter_region,
                                   cfg.filter_padding)
      if with_grad:
        (loss, (terms, w, y_hat, batch_stats)), g = grad_fn(
            fast, batch_stats, w_prev, y_prev, x_in, key)
        grad_sum = jax.tree.map(jnp.add, grad_sum, g)
      else:
        loss, (terms, w, y_hat, batch_stats) = forward(
            fast, batch_stats, w_prev, y_prev, x_in, key)
      # The next iteration sees (wₜ, ŷₜ) as constants.
      carry = (lax.stop_gradient(w), lax.stop_gradient(y_hat), batch_stats, grad_sum)
      return carry, (loss, terms)
    return step_fn

  w0, y0 = initial_estimate(frozen, x.shape[0])
  zeros = jax.tree.map(jnp.zeros_like, fast)
  carry = (w0, y0, batch_stats, zeros)
  inputs = (sigmas, keys[:cfg.n_iters])
  unroll = True if cfg.unroll_scan else 1
  if cfg.loss_iterations == 'all':
    carry, (it_loss, it_terms) = lax.scan(body(True), carry, inputs, unroll=unroll)
    total = jnp.sum(it_loss)
  else:
    head = jax.tree.map(lambda a: a[:-1], inputs)
    tail = jax.tree.map(lambda a: a[-1], inputs)
    # Forward only: every convolution is already in canonical form, so the
    # head stays a rolled loop whatever cfg.unroll_scan says.
    carry, (h_loss, h_terms) = lax.scan(body(False), carry, head)
    carry, (t_loss, t_terms) = body(True)(carry, tail)
    it_loss = jnp.concatenate([h_loss, t_loss[None]])
    it_terms = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), h_terms, t_terms)
    total = t_loss
  w_last, _, batch_stats, grads = carry

  metrics = {k: v[-1] for k, v in it_terms.items()}
  for t in range(cfg.n_iters):
    metrics[f'l2_it{t + 1}'] = it_terms['l2'][t]

  if cfg.weights.ind > 0:
    def ind_fn(params, batch_stats):
      delta, batch_stats = _encode(models, params, batch_stats, x, m * x, True, dt)
      y_ind = render_train(w_last + delta, keys[-1])
      value = losses.ind_loss(y_ind, x, m_loss, cfg.weights, lpips_fn, id_embed)
      return cfg.weights.ind * value, (value, batch_stats)

    (ind_weighted, (ind_value, batch_stats)), g = jax.value_and_grad(
        ind_fn, has_aux=True)(fast, batch_stats)
    grads = jax.tree.map(jnp.add, grads, g)
    total = total + ind_weighted
    metrics['ind'] = ind_value
  metrics['loss'] = total
  return grads, batch_stats, metrics


def step_rng(rng: jax.Array, step, axis_name: Optional[str]) -> jax.Array:
  """The generator-noise key of one step on one device.

  Args:
    rng: the run's base key.
    step: the optimizer step (traced).
    axis_name: device axis; its index is folded in so devices draw
      different noise (None: unmapped).

  Returns:
    A PRNG key.
  """
  rng = jax.random.fold_in(rng, step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  return rng


def train_step(state: TrainState, frozen: Dict[str, Any], batch: Dict[str, jnp.ndarray],
               rng: jax.Array, *, models: Models, cfg: StepConfig,
               tx: optax.GradientTransformation):
  """One optimizer step on this device's shard (pure; pmean over cfg.axis_name).

  Args:
    state: the replicated TrainState.
    frozen: replicated constants (see :func:`loss_and_grads`).
    batch: this device's 'image' ``[b, S, S, 3]`` and 'mask' ``[b, S, S, 1]``.
    rng: base PRNG key; folded with the step and the device index.
    models: the modules.
    cfg: static settings.
    tx: the optimizer that created ``state.opt_state``.

  Returns:
    ``(new_state, metrics)``; metrics is a dict of device-averaged scalars:
    'loss' (the optimised total), the last iteration's terms ('l2', and
    'lpips', 'id', 'w_norm' when enabled), 'ind' when enabled, and
    'l2_it{t}' for every iteration t = 1..T.
  """
  rng = step_rng(rng, state.step, cfg.axis_name)
  grads, batch_stats, metrics = loss_and_grads(
      state.params.fast, state.batch_stats, frozen, batch, rng, models=models, cfg=cfg)
  grads = _pmean(grads, cfg.axis_name)
  # BatchNorm statistics are per device (as with PyTorch DataParallel); their
  # average keeps the replicas identical.
  batch_stats = _pmean(batch_stats, cfg.axis_name)
  metrics = _pmean(metrics, cfg.axis_name)
  return apply_gradients(state, grads, batch_stats, tx), metrics


def train_metric_names(cfg: StepConfig):
  """Names of the scalars :func:`train_step` returns for ``cfg``.

  Args:
    cfg: static settings.

  Returns:
    Tuple of names.
  """
  w = cfg.weights
  names = ['loss', 'l2']
  names += [k for k, lam in (('lpips', w.lpips), ('id', w.id), ('w_norm', w.w_norm)) if lam > 0]
  if w.ind > 0:
    names.append('ind')
  names += [f'l2_it{t + 1}' for t in range(cfg.n_iters)]
  return tuple(names)

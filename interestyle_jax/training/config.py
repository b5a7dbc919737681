"""The training configuration schema and its validation.

``default_config()`` lists every field train.py understands, with the paper's
values where the paper has one; ``configs/*.py`` start from it. ``validate``
rejects, before anything is compiled, a field that is not in the schema (a
typo in a config file: ``--config.x`` typos are already refused by absl),
NaN / infinite numbers and impossible values or combinations, naming the
offending field and what to change.
"""

import difflib
import math
from typing import Any, Iterator, List, Tuple

import ml_collections
from ml_collections import config_dict

from interestyle_jax import filter as unf
from interestyle_jax import synthetic_families

DATA_SOURCES = ('synthetic', 'folder')
NOISE_MODES = ('const', 'random', 'none')
BACKBONES = ('ir_se', 'resnet34')
LOSS_REGIONS = ('interest', 'whole')


EXPORTS = ('latest', 'best')


class ConfigError(ValueError):
  """A training run refused before it started: invalid config or unusable workdir.

  The message is one line naming the field (or file) and the fix; train.py
  prints it as ``train.py: error: <message>`` without a traceback. Workdir,
  lock, resume and checkpoint refusals subclass it.
  """


def default_config() -> ml_collections.ConfigDict:
  """Every training field with its default (the paper's values).

  Returns:
    A ConfigDict.
  """
  from interestyle_jax.data.pipeline import default_data_config  # pylint: disable=g-import-not-at-top

  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed: encoder init, generator noise, synthetic training data.
  c.num_train_steps = 200_000  # Optimizer steps (one per global batch).
  c.batch_size = 8  # Global batch over all devices and processes.
  c.eval_batch_size = 8  # Global validation batch.
  c.log_every_steps = 100  # Train scalars to TensorBoard / log every N steps.
  c.eval_every_steps = 5_000  # Validation (and best-checkpoint check) every N steps.
  c.checkpoint_every_steps = 5_000  # Checkpoint + inference export every N steps.
  c.image_every_steps = 1_000  # Image grids (input, mask, x̃ₜ and ŷₜ per iteration).
  c.num_grid_images = 4  # Rows per image grid.
  c.max_eval_batches = 0  # Cap on validation batches (0 = the whole test split).
  c.keep_checkpoints = 3  # Latest checkpoints kept (the best one is kept separately).
  c.profile_steps = 0  # Steps traced by clu's Profile hook (0 = no profiling).
  c.dtype = 'float32'  # Train-step compute dtype: 'float32' or 'bfloat16' (params, optimizer, losses stay float32).
  c.remat = False  # Recompute generator blocks in the backward pass (less memory, one more G forward).
  c.scan_unroll = 'auto'  # Unroll the T-iteration scan: 'auto' (rolled: faster, flat memory), 'yes', 'no'.
  c.export = 'latest'  # State WORKDIR/inference holds: 'latest' (last checkpoint) or 'best' (lowest val loss).

  c.model = ml_collections.ConfigDict()
  c.model.generator_path = ''  # `convert stylegan2` dir; '' = the synthetic world's generator.
  c.model.encoder_init_path = ''  # `convert irse50` dir to start the IR-SE backbone from ('' = random).
  c.model.encoder_size = 256  # Encoder input side; G's output is average-pooled to it.
  c.model.n_iters = 5  # ReStyle refinement iterations T per batch.
  c.model.encoder = ml_collections.ConfigDict()
  c.model.encoder.backbone = 'ir_se'  # 'ir_se' (faces) or 'resnet34'.
  c.model.encoder.num_layers = 50  # IR-SE depth (50/100/152).
  c.model.encoder.stage_units = config_dict.placeholder(tuple)  # Units per stage; overrides num_layers.
  c.model.encoder.width = 64  # First-stage channels (64 = IR-SE50).

  c.filter = ml_collections.ConfigDict()
  c.filter.region = 'uninterest'  # 'uninterest': blur outside the mask; 'whole': blur everything.
  c.filter.sigmas = (16.0, 9.0, 4.0, 1.0, 0.0)  # Gaussian σ per iteration, in px of source_size photos.
  c.filter.source_size = 1024  # Side the σ are given at (FFHQ / CelebA-HQ release size); scaled to encoder_size.
  c.filter.padding = 'reflect'  # Blur padding: 'reflect' or 'zero'.

  c.loss = ml_collections.ConfigDict()
  c.loss.l2 = 1.0  # λ interest-region L2.
  c.loss.lpips = 0.8  # λ interest-region LPIPS-AlexNet (needs lpips_path).
  c.loss.id = 0.1  # λ interest-region ArcFace ID loss (needs id_path).
  c.loss.w_norm = 0.0  # λ ‖w − w_avg‖.
  c.loss.ind = 0.05  # λ interest disentanglement pass (0 disables it).
  c.loss.iterations = 'all'  # Iterations carrying loss: 'all' (ReStyle) or 'last' (IntereStyle release).
  c.loss.region = 'interest'  # Reconstruction losses on 'interest' (m ⊙ ·) or 'whole' image (m ≡ 1: ReStyle).
  c.loss.lpips_path = ''  # `convert lpips` dir.
  c.loss.id_path = ''  # `convert irse50` dir (ArcFace for the ID loss).
  c.loss.train_noise_mode = 'random'  # Generator noise while training ('const' for bit-reproducible tests).

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4  # Ranger (RAdam) learning rate.
  c.optim.b1 = 0.95  # RAdam β₁ (Ranger's default).
  c.optim.b2 = 0.999  # RAdam β₂.
  c.optim.eps = 1e-5  # RAdam ε (Ranger's default).
  c.optim.lookahead_k = 6  # Lookahead synchronisation period k.
  c.optim.lookahead_alpha = 0.5  # Lookahead slow step α.
  c.optim.grad_centralization = True  # Ranger's gradient centralisation of ≥2-D weights.

  c.data = default_data_config()  # Folder pipeline fields (interestyle_jax.data.pipeline).
  c.data.source = 'synthetic'  # 'synthetic' (the built-in world) or 'folder' (images/ + masks/).
  c.data.device_prefetch = 0  # The loop shards batches onto the device mesh itself.

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.resolution = 32  # Random generator's output side.
  c.synthetic.style_dim = 64  # Its latent width.
  c.synthetic.n_mlp = 2  # Its mapping depth.
  c.synthetic.width = 16  # Its channels at 4-32 px.
  c.synthetic.channel_multiplier = 1  # Its channel multiplier above 32 px.
  c.synthetic.seed = 0  # Seed of its random weights (fixed: the world is the same every run).
  c.synthetic.truncation = 0.7  # ψ of the sampled training/held-out latents.
  c.synthetic.image_std = 0.5  # Per-channel std its images are calibrated to.
  c.synthetic.mask_softness = 0.7  # σ (px) softening the elliptical mask edge.
  c.synthetic.max_occluders = 2  # Occluders per image, uniform in 0..max.
  c.synthetic.families = ('classic',)  # Uninterest-content families of the training data (synthetic_families.py).
  c.synthetic.test_families = ()  # Families kept out of training, each evaluated at the end (metrics.json).
  c.synthetic.num_heldout = 64  # Held-out images.
  c.synthetic.heldout_seed = 20221  # Held-out set seed (distinct from training data).
  return c


def _unknown_fields(cfg, ref, prefix: str) -> List[str]:
  errors = []
  for key in cfg.keys():
    path = f'{prefix}.{key}'
    if key not in ref:
      close = difflib.get_close_matches(key, list(ref.keys()), n=1)
      hint = f' (did you mean {prefix}.{close[0]}?)' if close else ''
      errors.append(f'{path} is not a known field{hint}')
    elif isinstance(ref[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], ml_collections.ConfigDict):
        errors.append(f'{path} must be a group of fields')
      else:
        errors += _unknown_fields(cfg[key], ref[key], path)
  return errors


def _choice(errors, value, allowed, field):
  if value not in allowed:
    errors.append(f'config.{field}={value!r} must be one of {allowed}')


def _non_finite(cfg, prefix: str) -> Iterator[Tuple[str, Any]]:
  """Yields (dotted field, value) of every NaN / infinite float, also in tuples."""
  for key, value in cfg.items():
    path = f'{prefix}.{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _non_finite(value, path)
      continue
    items = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
      yield path, value


def encoder_sigmas(config: ml_collections.ConfigDict) -> Tuple[float, ...]:
  """The filter's σ per iteration in pixels of the encoder input.

  ``config.filter.sigmas`` are in pixels of the source photos
  (``filter.source_size``); the step blurs encoder-size images.

  Args:
    config: the training config.

  Returns:
    One σ per iteration.
  """
  return tuple(unf.sigmas_at_size(config.filter.sigmas, config.model.encoder_size,
                                  config.filter.source_size))


def validate(config: ml_collections.ConfigDict, device_count: int,
             process_count: int = 1) -> None:
  """Raises ConfigError naming every invalid field.

  Args:
    config: the training config.
    device_count: ``jax.device_count()`` (all processes).
    process_count: ``jax.process_count()`` (named in the batch-split message).
  """
  errors = _unknown_fields(config, default_config(), 'config')
  if errors:
    raise ConfigError('; '.join(errors))
  c = config
  # A NaN slips through every `<= 0` test below (comparisons with NaN are
  # false) and would surface as a NaN loss or a crash deep in setup; the other
  # checks mean nothing until these are fixed.
  errors = [f'{path}={value} must be a finite number'
            for path, value in _non_finite(c, 'config')]
  if errors:
    raise ConfigError('invalid config: ' + '; '.join(errors))
  for field in ('num_train_steps', 'batch_size', 'eval_batch_size', 'log_every_steps',
                'eval_every_steps', 'checkpoint_every_steps', 'image_every_steps',
                'keep_checkpoints', 'num_grid_images'):
    if c[field] <= 0:
      errors.append(f'config.{field}={c[field]} must be positive')
  for field in ('max_eval_batches', 'profile_steps'):
    if c[field] < 0:
      errors.append(f'config.{field}={c[field]} must be >= 0 (0 turns it off)')
  _choice(errors, c.export, EXPORTS, 'export')
  o = c.optim
  if not o.lr > 0:
    errors.append(f'config.optim.lr={o.lr} must be > 0 (the paper uses 1e-4)')
  for field in ('b1', 'b2'):
    if not 0 <= o[field] < 1:
      errors.append(f'config.optim.{field}={o[field]} must be in [0, 1)')
  if not o.eps > 0:
    errors.append(f'config.optim.eps={o.eps} must be > 0 (Ranger uses 1e-5)')
  if o.lookahead_k <= 0:
    errors.append(f'config.optim.lookahead_k={o.lookahead_k} must be >= 1 '
                  '(1 syncs every step; Ranger uses 6)')
  if not 0 < o.lookahead_alpha <= 1:
    errors.append(f'config.optim.lookahead_alpha={o.lookahead_alpha} must be in (0, 1] '
                  '(Ranger uses 0.5)')
  for field in ('batch_size', 'eval_batch_size'):
    if c[field] > 0 and c[field] % device_count:
      where = (f'{device_count} devices' if process_count == 1 else
               f'{device_count} devices of the {process_count} processes')
      errors.append(f'config.{field}={c[field]} is not divisible by the {where}: each '
                    'device takes an equal share; use a multiple of the device count')
  if c.model.n_iters < 1:
    errors.append(f'config.model.n_iters={c.model.n_iters} must be >= 1')
  if len(c.filter.sigmas) != c.model.n_iters:
    errors.append(f'config.filter.sigmas has {len(c.filter.sigmas)} entries but '
                  f'config.model.n_iters={c.model.n_iters}; give one σ per iteration')
  if any(s < 0 for s in c.filter.sigmas):
    errors.append(f'config.filter.sigmas={tuple(c.filter.sigmas)} must be >= 0')
  _choice(errors, c.filter.region, unf.FILTER_REGIONS, 'filter.region')
  _choice(errors, c.filter.padding, unf.PADDINGS, 'filter.padding')
  _choice(errors, c.loss.iterations, ('all', 'last'), 'loss.iterations')
  _choice(errors, c.loss.region, LOSS_REGIONS, 'loss.region')
  for field in ('families', 'test_families'):
    if field == 'families' or c.synthetic[field]:
      try:
        synthetic_families.check_families(c.synthetic[field], f'config.synthetic.{field}')
      except ValueError as e:
        errors.append(str(e))
  _choice(errors, c.loss.train_noise_mode, NOISE_MODES, 'loss.train_noise_mode')
  _choice(errors, c.data.source, DATA_SOURCES, 'data.source')
  _choice(errors, c.scan_unroll, ('auto', 'yes', 'no'), 'scan_unroll')
  _choice(errors, c.dtype, ('float32', 'bfloat16'), 'dtype')
  _choice(errors, c.model.encoder.backbone, BACKBONES, 'model.encoder.backbone')
  size = c.model.encoder_size
  if size < 16 or size % 16:
    errors.append(f'config.model.encoder_size={size} must be a multiple of 16')
  if c.filter.source_size <= 0:
    errors.append(f'config.filter.source_size={c.filter.source_size} must be positive')
  elif len(c.filter.sigmas):
    sig = encoder_sigmas(c)
    radius = unf.kernel_radius(max(max(sig), 0.0))
    if c.filter.padding == 'reflect' and radius >= size:
      errors.append(f'config.filter.sigmas: the largest σ, {max(sig):g} px at '
                    f'config.model.encoder_size={size} (config.filter.source_size='
                    f'{c.filter.source_size}), needs a blur radius {radius} >= {size}')
  for lam in ('l2', 'lpips', 'id', 'w_norm', 'ind'):
    if c.loss[lam] < 0:
      errors.append(f'config.loss.{lam}={c.loss[lam]} must be >= 0')
  if c.loss.lpips > 0 and not c.loss.lpips_path:
    errors.append('config.loss.lpips > 0 needs config.loss.lpips_path (a `convert lpips` '
                  'dir); set config.loss.lpips=0 to train without LPIPS')
  if c.loss.id > 0 and not c.loss.id_path:
    errors.append('config.loss.id > 0 needs config.loss.id_path (a `convert irse50` dir); '
                  'set config.loss.id=0 to train without the ID loss')
  if c.data.source == 'synthetic' and c.synthetic.num_heldout <= 0:
    errors.append(f'config.synthetic.num_heldout={c.synthetic.num_heldout} must be positive '
                  '(the held-out images validation and best/ need)')
  if c.data.source == 'folder':
    if not c.data.train_dir:
      errors.append("config.data.train_dir is required with config.data.source='folder'")
    if c.data.image_size != size:
      errors.append(f'config.data.image_size={c.data.image_size} must equal '
                    f'config.model.encoder_size={size}')
    if not c.data.masks and c.loss.ind > 0:
      errors.append(f'config.data.masks=False (every pixel is interest) leaves the InD pass '
                    f'nothing to disentangle; set config.loss.ind=0 (config.loss.ind='
                    f'{c.loss.ind}): without masks the run is the ReStyle baseline')
  if not c.model.generator_path:
    if c.synthetic.resolution < size:
      errors.append(f'config.model.encoder_size={size} exceeds the synthetic generator '
                    f'resolution config.synthetic.resolution={c.synthetic.resolution}')
    if c.data.source == 'synthetic' and c.synthetic.resolution != size:
      errors.append(f'config.synthetic.resolution={c.synthetic.resolution} must equal '
                    f'config.model.encoder_size={size} for synthetic data')
  if c.model.encoder_init_path and c.model.encoder.backbone != 'ir_se':
    errors.append('config.model.encoder_init_path (ArcFace IR-SE weights) needs '
                  "config.model.encoder.backbone='ir_se'")
  if errors:
    raise ConfigError('invalid config: ' + '; '.join(errors))

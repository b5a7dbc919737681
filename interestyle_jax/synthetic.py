"""A synthetic inversion world: no download, no pretrained file.

* The frozen generator is a small StyleGAN2 with random weights from a fixed
  seed. Its ToRGB layers are rescaled once so that its truncated samples have
  zero mean and a chosen standard deviation per channel: a random network's
  output scale is arbitrary, and without this the "images" could be nearly
  constant (nothing to learn) or far outside [-1, 1].
* A clean image is G(w) for w = w_avg + ψ (mapping(z) − w_avg) (truncation ψ),
  broadcast to W+; the true latent is kept for the latent error.
* Its uninterest region is replaced by procedurally generated out-of-
  distribution content: a soft elliptical interest mask (the "face"), a
  background outside it and occluders over the ellipse border, drawn from one
  of several *families* (gratings, fractal textures, thin marks and text,
  face-coloured shapes, high-frequency patterns, hats and hands: see
  :mod:`interestyle_jax.synthetic_families`). Occluder pixels are uninterest:
  m = m_ellipse · (1 − occluder). Training draws from ``config.synthetic.
  families``; ``test_families`` are kept out of training and evaluated apart.

Training sees only (image, mask), as with real photos; evaluation compares
against the clean generator image ('target') and the true latent ('latent').
Sampling is a pure function of a PRNG key, so batch k of a run is the same
after a restart and the held-out set is fixed by its seed.
"""

import dataclasses
import functools
from typing import Dict, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import filter as unf
from interestyle_jax import synthetic_families as families_lib
from interestyle_jax.models.stylegan2 import Generator


# The config.synthetic fields that define the world's Generator (a checkpoint's
# generator is the world's only if they agree).
GENERATOR_FIELDS = ('resolution', 'style_dim', 'n_mlp', 'channel_multiplier', 'width')


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (sampler cache)
class World:
  """The frozen generator and the constants of the synthetic world.

  Attributes:
    generator: the Generator module.
    variables: its (rescaled) variables ``{'params', 'noises'}``.
    latent_avg: ``[n_styles, D]`` average latent (mean of mapping(z)).
    truncation: ψ of the sampled latents.
    mask_softness: σ (px) of the Gaussian softening the mask edge.
    max_occluders: occluders per image are uniform in 0..max_occluders
      (families with text or shapes draw at least one).
    families: the families of uninterest content the training data draws from.
  """
  generator: Generator
  variables: Dict
  latent_avg: jnp.ndarray
  truncation: float
  mask_softness: float
  max_occluders: int
  families: Tuple[str, ...] = ('classic',)

  @property
  def size(self) -> int:
    return self.generator.resolution


def build_world(cfg) -> World:
  """Creates the random generator and calibrates its output scale.

  Args:
    cfg: ``config.synthetic`` with resolution, style_dim, n_mlp, width,
      channel_multiplier, seed, truncation, image_std, mask_softness,
      max_occluders, families.

  Returns:
    The World.
  """
  gen = Generator(cfg.resolution, style_dim=cfg.style_dim, n_mlp=cfg.n_mlp,
                  width=cfg.width, channel_multiplier=cfg.channel_multiplier)
  # 'rbg' keys: the init compiles several times faster than with threefry.
  key = jax.random.key(cfg.seed, impl='rbg')
  k_init, k_avg, k_cal = jax.random.split(key, 3)
  # jit: op-by-op dispatch of these one-off computations is slower than compiling.
  variables = jax.jit(gen.init)(k_init, jnp.zeros((1, gen.n_styles, cfg.style_dim)))

  @jax.jit
  def calibrate(variables):
    w_avg = gen.apply(variables, 4096, k_avg, method=gen.mean_latent)[0]
    z = jax.random.normal(k_cal, (512, cfg.style_dim))
    w = w_avg + cfg.truncation * (gen.apply(variables, z, method=gen.mapping) - w_avg)
    imgs = gen.apply(variables, w, noise_mode='const')
    mean = jnp.mean(imgs, axis=(0, 1, 2))
    scale = cfg.image_std / jnp.std(imgs, axis=(0, 1, 2))
    return _rescale_rgb(variables, scale, mean), w_avg

  variables, w_avg = calibrate(variables)
  latent_avg = jnp.broadcast_to(w_avg, (gen.n_styles, cfg.style_dim))
  families = families_lib.check_families(cfg.get('families', ('classic',)),
                                         'config.synthetic.families')
  return World(gen, variables, latent_avg, float(cfg.truncation),
               float(cfg.mask_softness), int(cfg.max_occluders), families)


def _rescale_rgb(variables, scale, mean):
  """Makes G's output s·(out − μ) by editing the ToRGB layers only.

  The RGB output is a sum of (upsampled) ToRGB outputs, linear in each ToRGB's
  weight and bias, so scaling every ToRGB weight and bias by s scales the
  output by s exactly; subtracting s·μ from the last bias shifts it exactly.
  """
  params = jax.tree.map(lambda a: a, dict(variables['params']))  # shallow copy
  names = sorted((k for k in params if k.startswith('to_rgbs_')),
                 key=lambda k: int(k.split('_')[-1]))
  names = ['to_rgb1'] + names
  for name in names:
    layer = dict(params[name])
    conv = dict(layer['conv'])
    conv['weight'] = conv['weight'] * scale  # HWIO: scales each output channel
    layer['conv'] = conv
    layer['bias'] = layer['bias'] * scale
    params[name] = layer
  last = dict(params[names[-1]])
  last['bias'] = last['bias'] - scale * mean
  params[names[-1]] = last
  return {**variables, 'params': params}


def _ellipse_mask(key, size: int, softness: float):
  """Soft elliptical interest mask and its centre and semi-axes (unit coords)."""
  k1, k2 = jax.random.split(key)
  cy, cx = 0.5 + jax.random.uniform(k1, (2,), minval=-0.06, maxval=0.06)
  b, a = jax.random.uniform(k2, (2,), minval=jnp.array([0.30, 0.25]),
                            maxval=jnp.array([0.40, 0.33]))
  yy, xx = families_lib.grid(size)
  hard = ((((yy - cy) / b) ** 2 + ((xx - cx) / a) ** 2) <= 1.0).astype(jnp.float32)
  if softness > 0:
    hard = unf.gaussian_blur(hard[None, ..., None], softness,
                             unf.kernel_radius(softness))[0, ..., 0]
  return hard, (cy, cx, b, a)


def sample(world: World, key: jax.Array, n: int,
           families: Optional[Sequence[str]] = None) -> Dict[str, jnp.ndarray]:
  """Draws ``n`` corrupted images with masks, clean targets and true latents.

  Args:
    world: the World.
    key: PRNG key (the batch is a pure function of it).
    n: number of images.
    families: families of uninterest content to draw from, uniformly per
      image (default: the world's training families).

  Returns:
    dict with 'image' ``[n, S, S, 3]`` (corrupted input), 'mask'
    ``[n, S, S, 1]``, 'target' ``[n, S, S, 3]`` (clean G(w)) and 'latent'
    ``[n, n_styles, D]``.
  """
  families = tuple(families or world.families)
  gen, size = world.generator, world.size
  k_z, k_rest = jax.random.split(key)
  z = jax.random.normal(k_z, (n, gen.style_dim))
  w_avg = world.latent_avg[0]
  w = w_avg + world.truncation * (gen.apply(world.variables, z, method=gen.mapping) - w_avg)
  w = jnp.broadcast_to(w[:, None], (n, gen.n_styles, gen.style_dim))
  clean = gen.apply(world.variables, w, noise_mode='const')

  def corrupt(key, img):
    k_m, k_u = jax.random.split(key)
    m_ell, ellipse = _ellipse_mask(k_m, size, world.mask_softness)
    background, alpha, fill = families_lib.draw(k_u, families, img, ellipse,
                                                world.max_occluders)
    x = m_ell[..., None] * img + (1.0 - m_ell[..., None]) * background
    x = alpha[..., None] * fill + (1.0 - alpha[..., None]) * x
    return x, (m_ell * (1.0 - alpha))[..., None]

  x, mask = jax.vmap(corrupt)(jax.random.split(k_rest, n), clean)
  return {'image': x, 'mask': mask, 'target': clean, 'latent': w}


def _to_device_layout(batch, local_devices: int):
  return {k: np.asarray(v).reshape((local_devices, -1) + v.shape[1:])
          for k, v in batch.items()}


def train_iterator(world: World, global_batch: int, seed: int,
                   start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches; batch k is a pure function of (seed, k).

  Every process draws the whole global batch of step k from the same key and
  keeps its own slice, so the batches do not depend on how many processes
  share them: two processes of 2 devices train on the images one process of 4
  devices does (drawing is cheap next to the step: a few small generator
  passes).

  Args:
    world: the World.
    global_batch: images per step over all processes.
    seed: data seed.
    start_step: index of the first batch (resume).

  Yields:
    dicts 'image' ``[local_devices, per_device, S, S, 3]`` and 'mask'
    ``[..., S, S, 1]`` (numpy), this process's slice.
  """
  local = jax.local_device_count()
  per_process = global_batch // jax.process_count()
  lo = jax.process_index() * per_process
  draw = _sampler(world, global_batch)
  # fold_in(·, 0): the key the single-process stream has always used.
  base = jax.random.fold_in(jax.random.key(seed, impl='rbg'), 0)
  step = start_step
  while True:
    b = draw(jax.random.fold_in(base, step))
    yield _to_device_layout({k: np.asarray(b[k])[lo:lo + per_process]
                             for k in ('image', 'mask')}, local)
    step += 1


@functools.lru_cache(maxsize=16)
def _sampler(world: World, n: int, families: Optional[Tuple[str, ...]] = None):
  """One jitted sampler per (world, batch size, families), shared by train and held-out."""
  return jax.jit(lambda key: sample(world, key, n, families))


def heldout_set(world: World, n: int, seed: int, chunk: int = 8,
                families: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
  """The fixed held-out set (same on every process).

  Args:
    world: the World.
    n: number of images.
    seed: held-out seed (keep it different from the training seed).
    chunk: images drawn per call (pass the training batch to reuse its
      compiled sampler).
    families: families of uninterest content (default: the world's training
      families; a held-out family gives the test set of that family).

  Returns:
    numpy dict as :func:`sample` returns.
  """
  families = None if families is None else families_lib.check_families(families)
  draw = _sampler(world, chunk, families)
  key = jax.random.key(seed, impl='rbg')
  parts = [draw(jax.random.fold_in(key, i)) for i in range(-(-n // chunk))]
  return {k: np.concatenate([np.asarray(p[k]) for p in parts])[:n] for k in parts[0]}


def uncovered_masks(world: World, n: int, seed: int, chunk: int = 8) -> np.ndarray:
  """The interest masks of :func:`heldout_set` with nothing over the faces.

  The face ellipse of an image does not depend on its uninterest family, so
  the same draws with the ``classic`` family and no occluders give it; the
  occluded area of held-out image k is ``uncovered[k] - held['mask'][k]``.

  Args:
    world: the World.
    n: number of images.
    seed: the held-out seed.
    chunk: as for :func:`heldout_set` (the same value gives the same images).

  Returns:
    ``[n, S, S, 1]`` masks.
  """
  bare = dataclasses.replace(world, max_occluders=0)
  return heldout_set(bare, n, seed, chunk, families=('classic',))['mask']


def eval_iterator(data: Dict[str, np.ndarray], global_batch: int):
  """One pass over a held-out set, padded to whole batches.

  Args:
    data: numpy dict from :func:`heldout_set`.
    global_batch: images per step over all processes.

  Yields:
    dicts in the ``[local_devices, per_device, …]`` layout with 'valid'
    (0 for padding), this process's share.
  """
  local = jax.local_device_count()
  n = len(data['image'])
  per_process = global_batch // jax.process_count()
  for start in range(0, n, global_batch):
    idx = np.arange(start, start + global_batch)
    valid = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    lo = jax.process_index() * per_process
    idx, valid = idx[lo:lo + per_process], valid[lo:lo + per_process]
    batch = {k: v[idx] for k, v in data.items()}
    batch['valid'] = valid
    yield _to_device_layout(batch, local)

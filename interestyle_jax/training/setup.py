"""Builds what a training run needs from its config.

Generator (converted checkpoint or the synthetic world), encoder and its
initial variables, the optional LPIPS / ArcFace loss networks, the replicated
constants ('frozen'), the static step settings, the device mesh and the data
iterators. Nothing here is jitted; :mod:`interestyle_jax.training.loop` runs it.
"""

import dataclasses
import functools
import itertools
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from interestyle_jax import artifacts, losses, synthetic
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.encoder_init import encoder_init_from_arcface
from interestyle_jax.models.stylegan2 import generator_config, load_stylegan2
from interestyle_jax.ops.pooling import adaptive_avg_pool2d
from interestyle_jax.training.config import ConfigError, encoder_sigmas
from interestyle_jax.training.step import Models, StepConfig, scan_unroll

AXIS = 'batch'


@dataclasses.dataclass
class Setup:
  """Everything built from the config.

  Attributes:
    models: the linen modules.
    frozen: replicated constants: 'generator', 'latent_avg', 'avg_image',
      optional 'lpips' / 'arcface' variables.
    encoder_variables: initial encoder ``{'params', 'batch_stats'}``.
    encoder_kwargs: BackboneEncoder keyword arguments (for the export).
    generator_kwargs: Generator keyword arguments (for the export).
    step_config: static step settings (axis 'batch').
    world: the synthetic World, or None with a converted generator.
    synthetic: the data come from the synthetic world (``config.data.source``;
      decided here once for the iterators, the metrics and the loop).
  """
  models: Models
  frozen: Dict[str, Any]
  encoder_variables: Dict[str, Any]
  encoder_kwargs: Dict[str, Any]
  generator_kwargs: Dict[str, Any]
  step_config: StepConfig
  world: Optional[synthetic.World]
  synthetic: bool = False


def _generator(config):
  if not config.model.generator_path:
    world = synthetic.build_world(config.synthetic)
    return world.generator, world.variables, world.latent_avg, world
  gen, variables, latent_avg = load_stylegan2(config.model.generator_path)
  n, d = gen.n_styles, gen.style_dim
  if latent_avg is None:
    logging.info('%s has no latent_avg; estimating it from 10^5 samples',
                 config.model.generator_path)
    latent_avg = jax.jit(lambda v, k: gen.apply(v, 100_000, k, method=gen.mean_latent))(
        variables, jax.random.PRNGKey(0))
  latent_avg = jnp.asarray(latent_avg, jnp.float32).reshape(-1, d)
  latent_avg = jnp.broadcast_to(latent_avg, (n, d)) if latent_avg.shape[0] == 1 else latent_avg
  return gen, variables, latent_avg, None


def _encoder_init(config, template, n_styles: int, style_dim: int):
  """Encoder variables from config.model.encoder_init_path (arcface/encoder_init/restyle)."""
  path = config.model.encoder_init_path
  meta, tree = artifacts.load_artifact(path, ('arcface', 'encoder_init', 'restyle'))
  if meta['kind'] == 'arcface':
    kwargs, variables = encoder_init_from_arcface(
        meta['arcface'], tree['arcface'], n_styles, 6, style_dim,
        config.model.encoder_size, config.seed)
  else:
    kwargs, variables = meta['encoder'], tree['encoder']
  got = jax.tree.map(jnp.shape, dict(variables))
  want = jax.tree.map(jnp.shape, dict(template))
  if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
    raise ConfigError(
        f'config.model.encoder_init_path={path} holds an encoder {kwargs} whose variables '
        f'do not fit the configured one (config.model.encoder, {n_styles} styles of '
        f'{style_dim}, input {config.model.encoder_size} px)')
  return jax.tree.map(jnp.asarray, dict(variables))


def _perceptual(config):
  lpips_mod = arc_mod = None
  frozen = {}
  if config.loss.lpips > 0:
    from interestyle_jax.models.lpips import load_lpips  # pylint: disable=g-import-not-at-top
    lpips_mod, frozen['lpips'] = load_lpips(config.loss.lpips_path)
  if config.loss.id > 0:
    from interestyle_jax.models.arcface import load_arcface  # pylint: disable=g-import-not-at-top
    arc_mod, frozen['arcface'] = load_arcface(config.loss.id_path)
  return lpips_mod, arc_mod, frozen


def step_config(config, axis_name: Optional[str] = AXIS) -> StepConfig:
  """Static step settings from the config.

  Args:
    config: the training config.
    axis_name: device axis ('batch'), None when unmapped.

  Returns:
    StepConfig with σ scaled to the encoder size.
  """
  return StepConfig(
      n_iters=config.model.n_iters,
      sigmas=encoder_sigmas(config),
      filter_region=config.filter.region, filter_padding=config.filter.padding,
      loss_iterations=config.loss.iterations, loss_region=config.loss.region,
      weights=losses.LossWeights.from_config(config.loss),
      encoder_size=config.model.encoder_size,
      train_noise_mode=config.loss.train_noise_mode, axis_name=axis_name,
      unroll_scan=scan_unroll(config.scan_unroll), dtype=config.dtype)


def build(config) -> Setup:
  """Builds models, variables and constants (host-side, unreplicated).

  Args:
    config: a validated training config.

  Returns:
    A Setup.
  """
  gen, gen_vars, latent_avg, world = _generator(config)
  n, d = gen.n_styles, gen.style_dim
  enc_cfg = config.model.encoder
  encoder_kwargs = dict(n_styles=n, style_dim=d, input_nc=6, backbone=enc_cfg.backbone,
                        num_layers=enc_cfg.num_layers,
                        stage_units=None if enc_cfg.stage_units is None
                        else tuple(int(u) for u in enc_cfg.stage_units),
                        width=enc_cfg.width)
  encoder = BackboneEncoder(**encoder_kwargs)
  size = config.model.encoder_size
  # The 'rbg' generator compiles ~3x faster than threefry for the hundreds of
  # initialiser calls of an init (12 s → 4 s for a tiny IR-SE on CPU).
  rng = jax.random.key(config.seed, impl='rbg')
  enc_vars = jax.jit(encoder.init)(rng, jnp.zeros((1, size, size, 6)))
  enc_vars = dict(enc_vars)
  if config.model.encoder_init_path:
    enc_vars = _encoder_init(config, enc_vars, n, d)
  lpips_mod, arc_mod, frozen = _perceptual(config)
  avg_image = jax.jit(lambda v, w: adaptive_avg_pool2d(
      gen.apply(v, w[None], noise_mode='const'), size)[0])(gen_vars, latent_avg)
  frozen.update(generator=gen_vars, latent_avg=latent_avg, avg_image=avg_image)
  gen_kwargs = generator_config(gen)  # with conv_clamp etc. of NVIDIA generators
  # remat changes how G is differentiated, not its parameters or outputs.
  train_gen = gen.clone(remat=bool(config.remat)) if config.remat else gen
  return Setup(models=Models(encoder, train_gen, lpips_mod, arc_mod), frozen=frozen,
               encoder_variables=enc_vars, encoder_kwargs=encoder_kwargs,
               generator_kwargs=gen_kwargs, step_config=step_config(config), world=world,
               synthetic=config.data.source == 'synthetic')


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices with axis 'batch'."""
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def replicate(tree, mesh: Mesh):
  """Places ``tree`` fully replicated on the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Dict[str, Any], mesh: Mesh) -> Dict[str, jax.Array]:
  """``[local_devices, per_device, …]`` process-local data → global arrays.

  Args:
    batch: this process's share of a batch (NumPy or host-fetchable arrays).
    mesh: the device mesh.

  Returns:
    dict of ``[global_batch, …]`` arrays sharded over 'batch'.
  """
  sharding = NamedSharding(mesh, P(AXIS))
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding, v.reshape((-1,) + v.shape[2:]))
  return out


def train_iterator(config, setup: Setup, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
  """Training batches for ``config.data.source`` starting at ``start_step``.

  Args:
    config: the training config.
    setup: the Setup (its synthetic world).
    start_step: optimizer steps already taken (resume).

  Returns:
    Iterator of process-local ``[local_devices, per_device, …]`` batches.
  """
  if setup.synthetic:
    return synthetic.train_iterator(setup.world, config.batch_size, config.seed, start_step)
  from interestyle_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  # tf.data's position is not checkpointed: a resumed run reshuffles with a
  # seed derived from the step instead of replaying the same order.
  return pipeline.make_train_iterator(config.data, config.batch_size,
                                      seed=config.seed + start_step)


def eval_iterator_fn(config, setup: Setup, families: Optional[Tuple[str, ...]] = None
                     ) -> Callable[[], Iterator[Dict[str, np.ndarray]]]:
  """A function returning a fresh one-pass validation iterator.

  Args:
    config: the training config.
    setup: the Setup.
    families: synthetic data only: the held-out set of these uninterest
      families (default: the training families).

  Returns:
    Callable with no arguments.
  """
  cap = config.max_eval_batches or None
  if setup.synthetic:
    held = synthetic.heldout_set(setup.world, config.synthetic.num_heldout,
                                 config.synthetic.heldout_seed,
                                 # the global batch: the set must not depend on
                                 # the number of processes (nor reuse another sampler)
                                 chunk=config.batch_size,
                                 families=families)
    make = functools.partial(synthetic.eval_iterator, held, config.eval_batch_size)
  else:
    from interestyle_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    make = functools.partial(pipeline.make_eval_iterator, config.data, config.eval_batch_size)
  return lambda: itertools.islice(make(), cap)

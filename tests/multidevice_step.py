"""Run by test_train_step.py in a subprocess with 4 forced CPU devices.

Prints one JSON line comparing the data-parallel train step (jit + shard_map
over 4 devices, pmean) with single-device references on the same global batch.
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from interestyle_jax import losses
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.training import evaluation, loop, setup
from interestyle_jax.training import state as state_lib
from interestyle_jax.training import step as step_lib

SD, RES = 16, 16


class NoBNEncoder(nn.Module):
  """A BatchNorm-free stand-in: the step is then exactly batch-separable."""
  n_styles: int
  style_dim: int

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.leaky_relu(nn.Conv(8, (3, 3), strides=(2, 2))(x), 0.2)
    h = jnp.mean(h, axis=(1, 2))
    return 0.1 * nn.Dense(self.n_styles * self.style_dim)(h).reshape(
        -1, self.n_styles, self.style_dim)


def max_diff(a, b):
  return max(float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 4, jax.devices()
  gen = Generator(RES, style_dim=SD, n_mlp=1, width=4)
  n = gen.n_styles
  gv = jax.jit(gen.init)(jax.random.PRNGKey(0), jnp.zeros((1, n, SD)))
  gv = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 if any(getattr(k, 'key', None) == 'noise' for k in p) else x, gv)
  w_avg = jnp.broadcast_to(jax.jit(lambda v: gen.apply(
      v, 256, jax.random.PRNGKey(2), method=gen.mean_latent))(gv), (n, SD))
  frozen = {'generator': gv, 'latent_avg': w_avg,
            'avg_image': jax.jit(lambda v, w: gen.apply(v, w[None], noise_mode='const')[0])(
                gv, w_avg)}
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (8, RES, RES, 3)).astype(np.float32),
           'mask': (rng.uniform(0, 1, (8, RES, RES, 1)) > 0.3).astype(np.float32)}
  mesh = setup.make_mesh()
  weights = losses.LossWeights(lpips=0, id=0, w_norm=0.1, ind=0.5)
  cfg = step_lib.StepConfig(n_iters=2, sigmas=(1.0, 0.0), weights=weights, encoder_size=RES,
                            train_noise_mode='const', axis_name='batch')
  cfg1 = step_lib.StepConfig(**{**cfg.__dict__, 'axis_name': None})
  tx = state_lib.ranger(1e-3)
  coll = evaluation.make_collection(step_lib.train_metric_names(cfg))
  key = jax.random.PRNGKey(0)
  result = {'devices': jax.device_count()}
  # The global batch in the data contract's [local_devices, per_device, ...] layout.
  local = {k: v.reshape((4, 2) + v.shape[1:]) for k, v in batch.items()}

  # 1) BatchNorm-free encoder: 4 devices == 1 device on the global batch.
  enc = NoBNEncoder(n, SD)
  ev = jax.jit(enc.init)(jax.random.key(1, impl='rbg'), jnp.zeros((1, RES, RES, 6)))
  models = step_lib.Models(enc, gen)
  st = jax.jit(lambda ev: state_lib.create_train_state(ev, tx))(ev)
  single = jax.jit(functools.partial(step_lib.train_step, models=models, cfg=cfg1, tx=tx))
  ref_state, ref_metrics = single(st, frozen, {k: jnp.asarray(v) for k, v in batch.items()},
                                  key)
  par = loop.make_train_fn(models, cfg, tx, mesh, coll)
  st4 = setup.replicate(jax.jit(lambda ev: state_lib.create_train_state(ev, tx))(ev), mesh)
  new4, m4 = par(st4, setup.replicate(frozen, mesh), setup.shard_batch(local, mesh), key)
  result['no_bn_max_param_diff'] = max_diff(new4.params, ref_state.params)
  m4 = m4.compute()
  result['no_bn_max_metric_diff'] = max(abs(float(m4[k]) - float(ref_metrics[k]))
                                        for k in ref_metrics)
  assert result['no_bn_max_metric_diff'] < 1e-5, result
  # Validation: metrics gathered over 4 devices, two padding rows masked out,
  # equal the unmapped metrics of the 6 real images.
  names = evaluation.metric_names(cfg, models, False)
  ecoll = evaluation.make_collection(names)
  ev4 = loop.make_eval_fn(models, cfg, mesh, ecoll)
  valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
  eval_local = dict(local, valid=valid.reshape(4, 2))
  got = ev4(new4, setup.replicate(frozen, mesh), setup.shard_batch(eval_local, mesh)).compute()
  ev1 = jax.jit(functools.partial(evaluation.eval_step, models=models, cfg=cfg1,
                                  collection=ecoll))
  want = ev1(ref_state, frozen, {'image': jnp.asarray(batch['image'][:6]),
                                 'mask': jnp.asarray(batch['mask'][:6]),
                                 'valid': jnp.ones(6)}).compute()
  result['eval_max_diff'] = max(abs(float(got[k]) - float(want[k])) for k in names)

  # 2) The real (BatchNorm) encoder: statistics are per device, as in PyTorch
  # DataParallel; the reference runs the unmapped gradient function on each
  # 2-image shard and averages gradients, statistics and metrics.
  enc = BackboneEncoder(n_styles=n, style_dim=SD, stage_units=(1, 1, 1, 1), width=4)
  ev = jax.jit(enc.init)(jax.random.key(1, impl='rbg'), jnp.zeros((1, RES, RES, 6)))
  models = step_lib.Models(enc, gen)
  grads_fn = jax.jit(functools.partial(step_lib.loss_and_grads, models=models, cfg=cfg1))
  outs = [grads_fn(ev['params'], ev['batch_stats'], frozen,
                   {k: jnp.asarray(v[i]) for k, v in local.items()}, key) for i in range(4)]
  mean = lambda trees: jax.tree.map(lambda *a: sum(a) / len(a), *trees)
  ref_state = jax.jit(lambda ev, g, b: state_lib.apply_gradients(
      state_lib.create_train_state(ev, tx), mean(g), mean(b), tx))(
          ev, [o[0] for o in outs], [o[1] for o in outs])
  par = loop.make_train_fn(models, cfg, tx, mesh, coll)
  st4 = setup.replicate(jax.jit(lambda ev: state_lib.create_train_state(ev, tx))(ev), mesh)
  new4, _ = par(st4, setup.replicate(frozen, mesh), setup.shard_batch(local, mesh), key)
  result['bn_max_param_diff'] = max_diff(new4.params, ref_state.params)
  result['bn_max_stats_diff'] = max_diff(new4.batch_stats, ref_state.batch_stats)

  # 3) Generator noise keys differ per device and per step.
  keys = jax.jit(jax.shard_map(
      lambda s: jax.random.key_data(step_lib.step_rng(key, s, 'batch'))[None],
      mesh=mesh, in_specs=P(), out_specs=P('batch')))
  k0, k1 = np.asarray(keys(jnp.int32(0))), np.asarray(keys(jnp.int32(1)))
  result['noise_differs_per_device'] = bool(
      len({tuple(r) for r in k0}) == 4 and not np.array_equal(k0, k1))
  print(json.dumps(result))


if __name__ == '__main__':
  main()

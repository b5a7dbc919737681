"""The training loop behind ``train.py``: ``train_and_evaluate(config, workdir)``.

Data parallel over every device: the per-device step functions of
:mod:`interestyle_jax.training.step` run under ``jax.shard_map`` on a 1-D
mesh with axis 'batch', inside ``jax.jit`` (``jax.pmap`` is the legacy spelling
of the same thing; JAX's docs direct new code to shard_map). Each process
feeds its own share of the batch; process 0 writes logs, grids, the inference
export and the metrics JSON, and all processes take part in checkpointing.

Outputs in WORKDIR: TensorBoard events (train/eval scalars, steps/s, image
grids), ``checkpoints/`` (latest), ``best/`` (lowest validation loss),
``inference/`` (``load_inverter(WORKDIR)``), ``initial_metrics.json`` (the
step-0 validation) and ``metrics.json`` (final validation, the ratio to step 0
and the average-image baseline). Re-running the same command resumes from the
latest checkpoint.
"""

import functools
import json
import os
import time
from typing import Any, Dict

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import PartitionSpec as P

from interestyle_jax.ops import xla_options
from interestyle_jax.training import checkpointing, evaluation, setup as setup_lib
from interestyle_jax.training import state as state_lib
from interestyle_jax.training import step as step_lib
from interestyle_jax.training.config import validate

INITIAL_METRICS = 'initial_metrics.json'
FINAL_METRICS = 'metrics.json'


def make_train_fn(models, cfg, tx, mesh, collection):
  """jit(shard_map(train_step)) returning the new state and a clu collection.

  Args:
    models: the modules.
    cfg: StepConfig with axis_name 'batch'.
    tx: the optimizer.
    mesh: the device mesh.
    collection: clu Collection class with :func:`step.train_metric_names`.

  Returns:
    ``fn(state, frozen, batch, rng) -> (state, metrics)``; donates ``state``.
  """
  per_device = functools.partial(step_lib.train_step, models=models, cfg=cfg, tx=tx)
  # Gradients are taken inside the per-device function and averaged with an
  # explicit pmean, so no varying-manual-axes bookkeeping is needed.
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(cfg.axis_name), P()),
                          out_specs=(P(), P()), check_vma=False)

  def fn(state, frozen, batch, rng):
    state, scalars = sharded(state, frozen, batch, rng)
    return state, collection.single_from_model_output(**scalars)

  return xla_options.jit(fn, donate_argnums=(0,))


def make_eval_fn(models, cfg, mesh, collection):
  """jit(shard_map(eval_step)) returning a replicated clu collection."""
  per_device = functools.partial(evaluation.eval_step, models=models, cfg=cfg,
                                 collection=collection)
  return xla_options.jit(jax.shard_map(per_device, mesh=mesh,
                                       in_specs=(P(), P(), P(cfg.axis_name)),
                                       out_specs=P(), check_vma=False))


def evaluate(eval_fn, state, frozen, batches, mesh) -> Dict[str, float]:
  """Runs one validation pass and returns the computed averages.

  Args:
    eval_fn: from :func:`make_eval_fn`.
    state: the TrainState.
    frozen: replicated constants.
    batches: iterable of process-local eval batches.
    mesh: the device mesh.

  Returns:
    dict name → float.
  """
  total = None
  for batch in batches:
    m = eval_fn(state, frozen, setup_lib.shard_batch(batch, mesh))
    total = m if total is None else total.merge(m)
  if total is None:
    raise ValueError('the validation set is empty')
  return {k: float(v) for k, v in total.compute().items()}


def _write_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)  # atomic: readers never see a half-written file


def _local_rows(batch, n: int):
  return {k: np.asarray(v).reshape((-1,) + np.asarray(v).shape[2:])[:n]
          for k, v in batch.items() if k in ('image', 'mask')}


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) and evaluates an IntereStyle encoder.

  Args:
    config: the training config (validated here before anything compiles).
    workdir: output directory; an existing checkpoint in it is resumed.

  Returns:
    The final metrics dict written to ``WORKDIR/metrics.json``.
  """
  t_start = time.time()
  validate(config, jax.device_count())
  workdir = os.path.abspath(workdir)
  lead = jax.process_index() == 0
  if lead:
    os.makedirs(workdir, exist_ok=True)
    # The run's full config, so tools (evaluate --data synthetic) can rebuild
    # its world without the command line that started it.
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  writer = metric_writers.create_default_writer(workdir, just_logging=not lead)

  s = setup_lib.build(config)
  cfg, models = s.step_config, s.models
  mesh = setup_lib.make_mesh()
  tx = state_lib.make_optimizer(config.optim)
  state = setup_lib.replicate(
      jax.jit(lambda v: state_lib.create_train_state(v, tx))(s.encoder_variables), mesh)
  frozen = setup_lib.replicate(s.frozen, mesh)
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored
    logging.info('Resumed from %s at step %d', ckpt.latest.directory, int(state.step))
  start = int(state.step)

  train_coll = evaluation.make_collection(step_lib.train_metric_names(cfg))
  names = evaluation.metric_names(cfg, models, config.data.source == 'synthetic')
  eval_coll = evaluation.make_collection(names)
  train_fn = make_train_fn(models, cfg, tx, mesh, train_coll)
  eval_fn = make_eval_fn(models, cfg, mesh, eval_coll)
  vis_fn = xla_options.jit(functools.partial(evaluation.visualize, models=models, cfg=cfg),
                           static_argnames='apply_filter')
  eval_batches = setup_lib.eval_iterator_fn(config, s)
  grid_rows = next(iter(eval_batches()))
  grid_rows = _local_rows(grid_rows, config.num_grid_images)
  noise_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)

  def run_eval(step):
    with report_progress.timed('eval'):
      result = evaluate(eval_fn, state, frozen, eval_batches(), mesh)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in result.items()})
    grid = vis_fn(state, frozen, grid_rows, apply_filter=False)
    writer.write_images(step, {'eval/grid': np.asarray(grid)[None]})
    return result

  def save(step):
    with report_progress.timed('checkpoint'):
      ckpt.save(step, state)
      checkpointing.export_inference(
          workdir, s.encoder_kwargs, s.generator_kwargs, state.encoder_variables,
          s.frozen['generator'], s.frozen['latent_avg'], config.model.encoder_size,
          config.model.n_iters, step)

  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer,
      every_steps=config.log_every_steps, every_secs=None)
  hooks = [report_progress]
  if lead and config.profile_steps > 0:
    # Traces exactly profile_steps steps (no minimum duration), from the 10th.
    hooks.append(periodic_actions.Profile(logdir=workdir,
                                          num_profile_steps=config.profile_steps,
                                          profile_duration_ms=None,
                                          first_profile=start + 10))
  initial_path = os.path.join(workdir, INITIAL_METRICS)
  if start == 0:
    initial = run_eval(0)
    if lead:
      _write_json(initial_path, {'step': 0, 'eval': initial})
  elif os.path.exists(initial_path):
    with open(initial_path) as f:
      initial = json.load(f)['eval']
  else:
    initial = {}

  final = None
  last = config.num_train_steps
  train_iter = setup_lib.train_iterator(config, s, start)
  acc = None
  logging.info('Training steps %d..%d', start + 1, last)
  for step in range(start + 1, last + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      local = next(train_iter)
      state, metrics = train_fn(state, frozen, setup_lib.shard_batch(local, mesh),
                                noise_rng)
    acc = metrics if acc is None else acc.merge(metrics)
    for hook in hooks:
      hook(step)
    if step % config.log_every_steps == 0 or step == last:
      writer.write_scalars(step, {f'train/{k}': float(v) for k, v in acc.compute().items()})
      acc = None
    if step % config.image_every_steps == 0 or step == last:
      grid = vis_fn(state, frozen, _local_rows(local, config.num_grid_images),
                    apply_filter=True)
      writer.write_images(step, {'train/grid': np.asarray(grid)[None]})
    if step % config.eval_every_steps == 0 or step == last:
      final = run_eval(step)
      if ckpt.maybe_save_best(step, state, final['loss']):
        logging.info('New best validation loss %.5f at step %d', final['loss'], step)
    if step % config.checkpoint_every_steps == 0 or step == last:
      save(step)
  if final is None:  # already trained to num_train_steps: re-evaluate only
    final = run_eval(start)
    if not os.path.isdir(os.path.join(workdir, 'inference')):
      save(start)
  ckpt.wait()
  ckpt.close()
  writer.flush()

  report = {'step': int(state.step), 'eval': final, 'initial_eval': initial,
            'wall_time_s': time.time() - t_start, 'devices': jax.device_count()}
  for key in ('mse_interest', 'mse', 'loss', 'latent_mse'):
    if key in final and initial.get(key):
      report[f'{key}_ratio_to_step0'] = final[key] / initial[key]
  if 'mse_interest_it0' in final:
    report['avg_image_mse_interest'] = final['mse_interest_it0']
    report['mse_interest_ratio_to_avg_image'] = (final['mse_interest'] /
                                                 final['mse_interest_it0'])
  if lead:
    _write_json(os.path.join(workdir, FINAL_METRICS), report)
  logging.info('Final metrics: %s', report)
  return report

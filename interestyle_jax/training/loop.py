"""The training loop behind ``train.py``: ``train_and_evaluate(config, workdir)``.

Data parallel over every device: the per-device step functions of
:mod:`interestyle_jax.training.step` run under ``jax.shard_map`` on a 1-D
mesh with axis 'batch', inside ``jax.jit`` (``jax.pmap`` is the legacy spelling
of the same thing; JAX's docs direct new code to shard_map). Each process
feeds its own slice of each step's global batch, which depends on the step
only, not on the process layout (:mod:`interestyle_jax.training.setup`);
process 0 writes logs, grids, the inference export and the metrics JSON, and
all processes take part in checkpointing. A refusal on any process stops all
of them (:mod:`interestyle_jax.training.distributed`), and SIGTERM / SIGINT
save a checkpoint at the next step boundary on every process and end the run
with :class:`~interestyle_jax.training.preemption.Preempted`.

Outputs in WORKDIR: TensorBoard events (train/eval scalars, steps/s, image
grids), ``images/`` (the grids as PNG), ``checkpoints/`` (latest), ``best/``
(lowest validation loss), ``inference/`` (``load_inverter(WORKDIR)``),
``initial_metrics.json`` (the step-0 validation) and ``metrics.json`` (final
validation, the ratio to step 0 and the average-image baseline). Re-running
the same command resumes from the latest checkpoint. The log holds one line
per log interval and per validation and a closing summary (``logs``).
"""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from absl import logging
from clu import periodic_actions
from jax.sharding import PartitionSpec as P

from interestyle_jax import grids
from interestyle_jax.ops import xla_options
from interestyle_jax.training import checkpointing, distributed, evaluation, logs, preemption
from interestyle_jax.training import setup as setup_lib
from interestyle_jax.training import state as state_lib
from interestyle_jax.training import step as step_lib
from interestyle_jax.training import workdir as workdir_lib
from interestyle_jax.training.config import ConfigError, validate

INITIAL_METRICS = 'initial_metrics.json'
FINAL_METRICS = 'metrics.json'
PREEMPTED = 'preempted.json'


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
  workdir_lib.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def _write_preempted(workdir: str, step: int, signum: int, pending_eval: bool,
                     lead: bool) -> None:
  """Records where a preempted run stopped and whether that step's validation is owed."""
  if lead:
    _write_json(os.path.join(workdir, PREEMPTED),
                {'step': int(step), 'signal': signal.Signals(signum).name,
                 'pending_eval': bool(pending_eval)})


def _pending_eval(workdir: str):
  """The step whose validation a preempted run skipped, or None."""
  try:
    with open(os.path.join(workdir, PREEMPTED)) as f:
      record = json.load(f)
    return int(record['step']) if record.get('pending_eval') else None
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _local_rows(batch, n: int):
  return {k: np.asarray(v).reshape((-1,) + np.asarray(v).shape[2:])[:n]
          for k, v in batch.items() if k in ('image', 'mask', 'target')}


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) and evaluates an IntereStyle encoder.

  Args:
    config: the training config (validated here before anything compiles).
    workdir: output directory; an existing checkpoint in it is resumed.

  Returns:
    The final metrics dict written to ``WORKDIR/metrics.json``.

  Raises:
    ConfigError: the run is refused (on every process alike).
    Preempted: SIGTERM or SIGINT stopped the run after saving a checkpoint.
  """
  t_start = time.time()
  logs.quiet_libraries()
  lead = jax.process_index() == 0
  distributed.check_same_config(config)
  with contextlib.ExitStack() as stack:
    refusal = None
    try:
      validate(config, jax.device_count(), jax.process_count())
      workdir = workdir_lib.prepare(workdir, create=lead)
      # One train.py per workdir (process 0 holds the lock for a multi-host job),
      # and a re-run must match the saved run's config, before anything is written.
      stack.enter_context(workdir_lib.lock(workdir, enabled=lead))
      if lead:
        workdir_lib.check_resume(config, workdir)
        # The run's full config, so tools (evaluate --data synthetic) can rebuild
        # its world without the command line that started it.
        workdir_lib.write_config(config, workdir)
    except ConfigError as e:
      refusal = e
    distributed.agree(refusal)  # the other processes would wait in a collective
    return _train_and_evaluate(config, workdir, t_start)


@dataclasses.dataclass
class _Job:
  """What a run holds fixed while its TrainState changes (the loop's helpers take the state).

  Attributes:
    config: the training config.
    workdir: the locked workdir.
    lead: this is process 0, which writes logs, images, JSON and the export.
    setup: the built models, constants and world.
    mesh: the device mesh.
    frozen: the replicated constants.
    writer: the clu metric writer (a no-op on other processes).
    ckpt: the Checkpointer.
    progress: clu's progress reporter (also times evaluations and saves).
    eval_fn: from :func:`make_eval_fn`.
    vis_fn: the jitted image-grid panels.
    eval_batches: a fresh validation iterator per call.
    grid_rows: the validation rows shown in the eval grids.
  """
  config: Any
  workdir: str
  lead: bool
  setup: setup_lib.Setup
  mesh: Any
  frozen: Any
  writer: Any
  ckpt: Any = None
  progress: Any = None
  eval_fn: Any = None
  vis_fn: Any = None
  eval_batches: Any = None
  grid_rows: Any = None

  def export(self, state, step: int, which: str) -> None:
    """Writes WORKDIR/inference from ``state`` ('latest' or 'best')."""
    s = self.setup
    checkpointing.export_inference(
        self.workdir, s.encoder_kwargs, s.generator_kwargs, state.encoder_variables,
        s.frozen['generator'], s.frozen['latent_avg'], self.config.model.encoder_size,
        self.config.model.n_iters, step, extra_meta={'export': which})
    if self.lead:
      logging.info('Exported the %s state (step %d) to %s', which, step,
                   os.path.join(self.workdir, checkpointing.INFERENCE_DIR))

  def evaluate(self, state, step: int, families: Optional[Tuple[str, ...]] = None):
    """One validation pass (of held-out ``families`` if given), logged; returns the averages."""
    batches = (self.eval_batches() if families is None else
               setup_lib.eval_iterator_fn(self.config, self.setup, families)())
    with self.progress.timed('eval'):
      result = evaluate(self.eval_fn, state, self.frozen, batches, self.mesh)
    prefix = 'eval' if families is None else f'eval_{"_".join(families)}'
    self.writer.write_scalars(step, {f'{prefix}/{k}': v for k, v in result.items()})
    if families is None:
      logging.info('%s', logs.format_eval(step, result))
      self.write_grid(state, 'eval', step, self.grid_rows)
    else:
      logging.info('Held-out family %s: %s', ', '.join(families),
                   logs.format_eval(step, result))
    return result

  def write_grid(self, state, kind: str, step: int, rows) -> None:
    """An image grid of ``rows`` to TensorBoard and images/ (process 0 only)."""
    if not self.lead:  # only process 0 writes images: the others skip the computation
      return
    # This process's copy of the replicated state: a local program, no collective.
    local = jax.tree.map(lambda a: a.addressable_data(0), (state, self.frozen))
    panels = self.vis_fn(*local, rows, apply_filter=kind == 'train')
    grid = grids.render(grids.columns(jax.device_get(panels), filtered=kind == 'train'))
    self.writer.write_images(step, {f'{kind}/grid': grid[None]})
    grids.write_png(self.workdir, kind, step, grid)

  def save(self, state, step: int) -> None:
    """The step's checkpoint (every process), and the export with config.export='latest'."""
    with self.progress.timed('checkpoint'):
      if self.ckpt.save(step, state) and self.config.export == 'latest':
        self.export(state, step, 'latest')

  def close(self) -> None:
    self.ckpt.wait()
    self.ckpt.close()
    self.writer.flush()


def _restore(job: _Job, state):
  """The newest intact checkpoint (or ``state``), with inference/ brought up to date."""
  config, ckpt = job.config, job.ckpt
  restored = ckpt.restore_latest(state)  # falls back past damaged checkpoints
  if restored is not None:
    state = restored
    logging.info('Resumed from %s at step %d', ckpt.latest.directory, int(state.step))
  start = int(state.step)
  if start > 0:  # inference/ may be deleted, stale, or hold the other config.export
    want = start if config.export == 'latest' else ckpt.best_step()
    if want is not None and checkpointing.exported(job.workdir) != (config.export, want):
      if config.export == 'latest':
        job.export(state, start, 'latest')
      else:
        best = ckpt.restore_best(state)
        if best is not None:
          job.export(best[1], best[0], 'best')
  return state


def _initial_metrics(job: _Job, state) -> Dict[str, float]:
  """The step-0 validation: run and saved by a new run, read back by a resumed one."""
  start = int(state.step)
  path = os.path.join(job.workdir, INITIAL_METRICS)
  if start == 0:
    initial = job.evaluate(state, 0)
    if job.lead:
      _write_json(path, {'step': 0, 'eval': initial})
    return initial
  if start == _pending_eval(job.workdir):
    # Preempted at this step before its validation: run it now, so the
    # metrics and best/ come out as in an uninterrupted run.
    pending = job.evaluate(state, start)
    job.ckpt.maybe_save_best(start, state, pending['loss'])
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)['eval']


def _train(job: _Job, state, train_fn):
  """Steps from ``state.step`` to num_train_steps; returns ``(state, last validation)``.

  Raises:
    Preempted: after SIGTERM / SIGINT, once the stopping step is saved.
  """
  config, ckpt, s = job.config, job.ckpt, job.setup
  start, last = int(state.step), config.num_train_steps
  hooks = [job.progress]
  if job.lead and config.profile_steps > 0:
    # Traces exactly profile_steps steps (no minimum duration), from the 10th.
    hooks.append(periodic_actions.Profile(logdir=job.workdir,
                                          num_profile_steps=config.profile_steps,
                                          profile_duration_ms=None,
                                          first_profile=start + 10))
  noise_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
  train_iter = setup_lib.train_iterator(config, s, start)
  final = acc = compiled = None
  logging.info('Training steps %d..%d', start + 1, last)
  with preemption.PreemptionWatch(start, ckpt.latest.reached_preemption) as watch:
    for step in range(start + 1, last + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        local = next(train_iter)
        batch = setup_lib.shard_batch(local, job.mesh)
        if compiled is None:  # ahead of time, to free the compiler's memory before it runs
          compiled = xla_options.compile_and_release(train_fn, state, job.frozen, batch,
                                                     noise_rng)
        state, metrics = compiled(state, job.frozen, batch, noise_rng)
      acc = metrics if acc is None else acc.merge(metrics)
      if step % config.log_every_steps == 0 or step == last:
        scalars = {k: float(v) for k, v in acc.compute().items()}
        job.writer.write_scalars(step, {f'train/{k}': v for k, v in scalars.items()})
        job.progress.scalars = scalars  # shown in the progress line
        acc = None
      for hook in hooks:
        hook(step)
      if step < last and watch.reached(step):  # every process stops at this step
        # The step's checkpoint first and alone: the grace period before the
        # kill can be short. A validation due now runs when the run resumes.
        job.save(state, step)
        ckpt.wait()
        _write_preempted(job.workdir, step, watch.signum,
                         pending_eval=step % config.eval_every_steps == 0, lead=job.lead)
        job.close()
        raise preemption.Preempted(step, watch.signum)
      if step % config.image_every_steps == 0 or step == last:
        job.write_grid(state, 'train', step, _local_rows(local, config.num_grid_images))
      if step % config.eval_every_steps == 0 or step == last:
        final = job.evaluate(state, step)
        if ckpt.maybe_save_best(step, state, final['loss']) and job.lead:
          logging.info('New best validation loss %.5g at step %d (best/%d)', final['loss'],
                       step, step)
      if step % config.checkpoint_every_steps == 0 or step == last:
        job.save(state, step)
  return state, final


def _report(state, final, initial, families, t_start: float) -> Dict[str, Any]:
  """The final metrics: validation, its ratios to step 0 and to the average image."""
  report = {'step': int(state.step), 'eval': final, 'initial_eval': initial,
            'wall_time_s': time.time() - t_start, 'devices': jax.device_count()}
  if families:
    report['test_families'] = families
  for key in ('mse_interest', 'mse', 'loss', 'latent_mse'):
    if key in final and initial.get(key):
      report[f'{key}_ratio_to_step0'] = final[key] / initial[key]
  if 'mse_interest_it0' in final:
    report['avg_image_mse_interest'] = final['mse_interest_it0']
    report['mse_interest_ratio_to_avg_image'] = (final['mse_interest'] /
                                                 final['mse_interest_it0'])
  return report


def _train_and_evaluate(config, workdir: str, t_start: float) -> Dict[str, Any]:
  """The run itself, in a locked and checked workdir (see train_and_evaluate)."""
  lead = jax.process_index() == 0
  s = setup_lib.build(config)
  cfg, models = s.step_config, s.models
  mesh = setup_lib.make_mesh()
  tx = state_lib.make_optimizer(config.optim)
  state = setup_lib.replicate(
      jax.jit(lambda v: state_lib.create_train_state(v, tx))(s.encoder_variables), mesh)
  job = _Job(config, workdir, lead, s, mesh, setup_lib.replicate(s.frozen, mesh),
             logs.make_writer(workdir, lead))
  # config.export='best': inference/ follows best/, rewritten when it changes.
  on_best = ((lambda step, best: job.export(best, step, 'best'))
             if config.export == 'best' else None)
  job.ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints, on_new_best=on_best)
  job.progress = logs.ReportProgress(num_train_steps=config.num_train_steps,
                                     writer=job.writer, every_steps=config.log_every_steps,
                                     every_secs=None)
  job.eval_fn = make_eval_fn(
      models, cfg, mesh, evaluation.make_collection(evaluation.metric_names(cfg, models,
                                                                              s.synthetic)))
  job.vis_fn = xla_options.jit(functools.partial(evaluation.visualize, models=models, cfg=cfg),
                               static_argnames='apply_filter')
  job.eval_batches = setup_lib.eval_iterator_fn(config, s)
  job.grid_rows = _local_rows(next(iter(job.eval_batches())), config.num_grid_images)
  train_fn = make_train_fn(models, cfg, tx, mesh,
                           evaluation.make_collection(step_lib.train_metric_names(cfg)))

  state = _restore(job, state)
  start = int(state.step)
  initial = _initial_metrics(job, state)
  state, final = _train(job, state, train_fn)
  if final is None:  # already trained to num_train_steps: re-evaluate only
    final = job.evaluate(state, start)
    # Nothing is saved again (inference/ was brought up to date at start-up),
    # except a best/ lost to damage: this evaluation is the only candidate.
    if job.ckpt.best_step() is None:
      job.ckpt.maybe_save_best(start, state, final['loss'])
  # Uninterest content never seen in training: does the encoder ignore it too?
  families = {family: job.evaluate(state, int(state.step), (family,))
              for family in (config.synthetic.test_families if s.synthetic else ())}
  job.close()

  report = _report(state, final, initial, families, t_start)
  if lead:
    _write_json(os.path.join(workdir, FINAL_METRICS), report)
    if os.path.exists(os.path.join(workdir, PREEMPTED)):
      os.remove(os.path.join(workdir, PREEMPTED))  # the run has finished
    logging.info('%s', logs.format_summary(report, workdir))
  return report

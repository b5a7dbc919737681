"""Train-step throughput and memory versus the number of refinement iterations T.

    python benchmarks/train_step.py --config configs/synthetic.py --batch 8 --iters 1,3,5
    python benchmarks/train_step.py --paper_scale --resolution 1024 --batch 2 --iters 1,3,5 --json

``--paper_scale`` replaces the config's world with the paper's networks at
random weights (no files needed): a config-f StyleGAN2 at ``--resolution``
(256 or 1024) pooled to 256 and an IR-SE50 encoder, interest-region L2 only,
InD off, loss on every iteration unless ``--config.loss.iterations=last``;
``--config.dtype=bfloat16``, ``--config.remat=True`` and
``--config.scan_unroll`` apply.

For every T the full data-parallel train step (jit + shard_map, Ranger update,
InD pass as configured) is compiled and timed on random inputs in a fresh
subprocess, so the process peak RSS belongs to that T alone. Reported per T:

* compile time, steps/s and images/s (median of ``--repeats`` timings of
  ``--steps`` steps),
* ``temp_MiB``: XLA's buffer assignment for the compiled step (live
  temporaries; the part that would grow with T if activations were kept for a
  backward pass through all iterations),
* ``peak_MiB``: device ``memory_stats()['peak_bytes_in_use']`` where the
  backend reports it (GPU/TPU), else the process peak RSS,
* ``GFLOP``: XLA's cost analysis of the compiled step, and ``MFU`` against
  ``--peak_tflops`` (the device's dense peak, e.g. 989 for an H100 in bf16)
  when given.

``--profile DIR`` traces one more step per T with ``jax.profiler`` into
``DIR/T<t>`` (Perfetto/TensorBoard) and writes the compiled HLO to
``DIR/T<t>.hlo``; ``python benchmarks/trace_summary.py DIR/T<t>`` sums the
trace by op name.

``reduce_s`` times the cross-device gradient average alone (``lax.pmean``
over a tree shaped like the encoder's parameters, as in the step). With
``--coordinator_address/--num_processes/--process_id`` the process joins a
multi-process job first (``benchmarks/multiprocess.py`` starts such jobs).

With ``--json`` the last line is one JSON object for the last case run
(``compile_s``, ``step_s``, ``peak_rss_mb``, XLA's memory analysis, …).

Any ``--config.<field>=value`` override of train.py applies.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax
import numpy as np
from ml_collections import config_flags

from common import peak_rss_mb  # benchmarks/ is sys.path[0]
from interestyle_jax.ops import xla_options  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Training config file.')
flags.DEFINE_integer('batch', 8, 'Global batch size.')
flags.DEFINE_string('iters', '1,3,5', 'Comma-separated T values.')
flags.DEFINE_integer('steps', 10, 'Timed steps per repeat (1 with --paper_scale unless given).')
flags.DEFINE_integer('repeats', 3, 'Timing repeats (the median is reported).')
flags.DEFINE_integer('single', 0, 'Internal: run only this T in this process.')
flags.DEFINE_bool('paper_scale', False, 'Paper networks at random weights instead of the '
                  "config's world.")
flags.DEFINE_integer('resolution', 1024, 'Generator resolution with --paper_scale.')
flags.DEFINE_float('peak_tflops', 0.0, 'Device peak TFLOP/s for MFU (0: not reported).')
flags.DEFINE_bool('json', False, 'End with one JSON line for the last case.')
flags.DEFINE_string('coordinator_address', None, 'Internal: join a multi-process job.')
flags.DEFINE_integer('num_processes', None, 'Internal: processes of the job.')
flags.DEFINE_integer('process_id', None, 'Internal: this process.')
flags.DEFINE_string('profile', '', 'Write a jax.profiler trace of one extra step per T to '
                    'DIR/T<t> (open in Perfetto or TensorBoard).')


def schedule(sigmas, t):
  """The config's σ schedule if it has T entries, else T values from max σ down to 0."""
  sigmas = [float(s) for s in sigmas]
  if len(sigmas) == t:
    return tuple(sigmas)
  return tuple(np.linspace(max(sigmas), 0.0, t).tolist()) if t > 1 else (0.0,)


def time_reduction(mesh, params, repeats: int) -> float:
  """Median seconds of the step's cross-device gradient mean, alone."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mean = xla_options.jit(jax.shard_map(lambda g: jax.lax.pmean(g, 'batch'), mesh=mesh,
                                       in_specs=P(), out_specs=P(), check_vma=False))
  jax.block_until_ready(mean(params))
  times = []
  for _ in range(max(3, repeats)):
    t0 = time.time()
    for _ in range(10):
      out = mean(params)
    jax.block_until_ready(out)
    times.append((time.time() - t0) / 10)
  return float(np.median(times))


def run_one(config, t: int):
  """Compiles and times the train step for T = t; returns a result dict."""
  from interestyle_jax.training import evaluation, loop, setup  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  with config.unlocked():
    config.model.n_iters = t
    config.filter.sigmas = schedule(config.filter.sigmas, t)
    config.batch_size = FLAGS.batch
  if FLAGS.paper_scale:
    import paper_scale  # pylint: disable=g-import-not-at-top
    world = paper_scale.jax_world(FLAGS.resolution)
    cfg = paper_scale.step_config(
        t, config.loss.iterations, unroll=step_lib.scan_unroll(config.scan_unroll),
        dtype=config.dtype, noise_mode='random')
    models = world.models
    if config.remat:
      models = step_lib.Models(models.encoder, models.generator.clone(remat=True))
    encoder_variables, frozen, size = world.encoder_variables, world.frozen, 256
  else:
    s = setup.build(config)
    models, cfg = s.models, s.step_config
    encoder_variables, frozen = s.encoder_variables, s.frozen
    size = config.model.encoder_size
  mesh = setup.make_mesh()
  tx = state_lib.make_optimizer(config.optim)
  state = setup.replicate(jax.jit(lambda v: state_lib.create_train_state(v, tx))(
      encoder_variables), mesh)
  frozen = setup.replicate(frozen, mesh)
  coll = evaluation.make_collection(step_lib.train_metric_names(cfg))
  fn = loop.make_train_fn(models, cfg, tx, mesh, coll)
  rng = np.random.default_rng(0)
  local = FLAGS.batch // jax.process_count()
  ldc = jax.local_device_count()
  yy, xx = np.mgrid[:size, :size] / size - 0.5
  mask = ((yy / 0.4) ** 2 + (xx / 0.3) ** 2 <= 1).astype(np.float32)[..., None]
  batch = setup.shard_batch({
      'image': rng.uniform(-1, 1, (ldc, local // ldc, size, size, 3)).astype(np.float32),
      'mask': np.broadcast_to(mask, (ldc, local // ldc, size, size, 1)).copy()}, mesh)
  key = jax.random.PRNGKey(0)
  t0 = time.time()
  compiled = xla_options.compile_and_release(fn, state, frozen, batch, key)
  compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  temp_mib = None if mem is None else mem.temp_size_in_bytes / 2 ** 20
  memory = {} if mem is None else {
      f'xla_{k}_MiB': round(getattr(mem, f'{k}_size_in_bytes') / 2 ** 20, 1)
      for k in ('argument', 'output', 'temp', 'generated_code')
      if hasattr(mem, f'{k}_size_in_bytes')}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gflop = float((cost or {}).get('flops', 0.0)) / 1e9
  state, m = compiled(state, frozen, batch, key)  # warm-up
  jax.block_until_ready(m)
  times = []
  steps = FLAGS.steps if FLAGS['steps'].present or not FLAGS.paper_scale else 1
  for _ in range(FLAGS.repeats):
    t0 = time.time()
    for _ in range(steps):
      state, m = compiled(state, frozen, batch, key)
    jax.block_until_ready(m)
    times.append((time.time() - t0) / steps)
  step_s = float(np.median(times))
  reduce_s = time_reduction(mesh, state.params.fast, FLAGS.repeats)
  if FLAGS.profile:
    trace_dir = os.path.join(FLAGS.profile, f'T{t}')
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state, m = compiled(state, frozen, batch, key)
      jax.block_until_ready(m)
    with open(trace_dir + '.hlo', 'w') as f:  # op names for benchmarks/trace_summary.py
      f.write(compiled.as_text())
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    peak, source = stats['peak_bytes_in_use'] / 2 ** 20, 'device'
  else:
    peak, source = peak_rss_mb(), 'rss'
  rss = peak_rss_mb()
  mfu = gflop / step_s / (FLAGS.peak_tflops * 1e3) if FLAGS.peak_tflops else None
  return {'T': t, 'batch': FLAGS.batch, 'compile_s': round(compile_s, 2),
          'step_s': round(step_s, 4), 'reduce_s': round(reduce_s, 5),
          'processes': jax.process_count(),
          'steps_per_s': round(1 / step_s, 3), 'images_per_s': round(FLAGS.batch / step_s, 2),
          'temp_MiB': None if temp_mib is None else round(temp_mib, 2),
          'peak_MiB': round(peak, 1), 'peak_source': source, 'peak_rss_mb': round(rss, 1),
          'GFLOP': round(gflop, 1), 'MFU': None if mfu is None else round(mfu, 4),
          'loss': float(m.compute()['loss']), 'devices': jax.device_count(),
          'backend': jax.default_backend(), 'dtype': config.dtype, 'remat': bool(config.remat),
          'paper_scale': FLAGS.paper_scale,
          'resolution': FLAGS.resolution if FLAGS.paper_scale else config.synthetic.resolution,
          **memory}


def main(argv):
  if FLAGS.single:
    if FLAGS.num_processes:
      from interestyle_jax.training import distributed  # pylint: disable=g-import-not-at-top
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
    result = run_one(FLAGS.config, FLAGS.single)
    if jax.process_index() == 0:
      print('RESULT ' + json.dumps(result), flush=True)
    return
  results = []
  for t in [int(v) for v in FLAGS.iters.split(',')]:
    cmd = [sys.executable] + sys.argv + [f'--single={t}']
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
    if out.returncode != 0 or not lines:
      sys.exit(f'T={t} failed:\n{out.stderr[-4000:]}')
    results.append(json.loads(lines[-1][len('RESULT '):]))
  print(f"{'T':>3} {'compile_s':>9} {'step_s':>8} {'images/s':>9} {'GFLOP':>8} {'MFU':>6} "
        f"{'temp_MiB':>9} {'peak_MiB':>9}  peak source")
  for r in results:
    print(f"{r['T']:>3} {r['compile_s']:>9} {r['step_s']:>8} {r['images_per_s']:>9} "
          f"{r['GFLOP']:>8} {r['MFU']!s:>6} {r['temp_MiB']!s:>9} {r['peak_MiB']:>9}  "
          f"{r['peak_source']}")
  print(json.dumps(results[-1] if FLAGS.json else results))


if __name__ == '__main__':
  app.run(main)

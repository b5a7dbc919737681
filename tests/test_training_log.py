"""What train.py prints: quiet libraries, one progress line per interval, a summary."""

import logging as py_logging
import os
import re
import subprocess
import sys

import numpy as np
from absl import logging
from PIL import Image

from interestyle_jax import grids
from interestyle_jax.data import tf_setup
from interestyle_jax.training import logs
from tests.test_training_loop import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's Python and C++ line prefix: severity, date, time, thread, file:line].
PREFIX = re.compile(r'^([IWEF])\d{4} [\d:.]+ +\d+ (\S+):\d+\] ')


def test_progress_eval_and_duration_formats():
  scalars = {'loss': 0.123456, 'l2': 0.03, 'ind': 0.2, 'l2_it1': 0.1, 'l2_it2': 0.05,
             'l2_it3': 0.03}
  # 1150 steps left at 4.4 it/s: 261 s.
  assert (logs.format_progress(50, 1200, scalars, 4.4) ==
          'step 50/1200 | loss 0.1235 | l2_it1..3 0.1 0.05 0.03 | 4.4 it/s | ETA 4m')
  assert logs.format_progress(7, None, {}, 2.0) == 'step 7 | 2.0 it/s'
  assert [logs.format_duration(s) for s in (0, 42.4, 150, 3599, 3900)] == [
      '0s', '42s', '2m', '1h00m', '1h05m']
  line = logs.format_eval(400, {'loss': 0.04531, 'mse': 0.3, 'mse_interest': 0.026,
                                'mse_interest_it0': 0.098, 'mse_interest_it1': 0.07,
                                'mse_interest_it2': 0.026, 'latent_mse': 3.18})
  assert line == ('eval step 400 | loss 0.04531 | mse_interest 0.026 | '
                  'mse_interest_it0..2 0.098 0.07 0.026 | latent_mse 3.18')


def test_report_progress_logs_rate_and_losses(caplog):
  progress = logs.ReportProgress(num_train_steps=20, every_steps=5, every_secs=None)
  with caplog.at_level(py_logging.INFO, logger='absl'):
    for step in range(1, 5):
      progress(step, t=0.5 * step)
    progress.scalars = {'loss': 0.5, 'l2_it1': 0.25, 'l2_it2': 0.125}
    progress(5, t=4.5)  # steps 1 -> 5 in 4 s: 1 it/s, 15 steps left
    progress.scalars = {'loss': 0.25}
    for step in range(6, 11):  # 5 steps in 1.25 s: 4 it/s, 9 steps in 5.25 s overall
      progress(step, t=4.5 + 0.25 * (step - 5))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
  assert lines == ['step 5/20 | loss 0.5000 | l2_it1..2 0.25 0.125 | 1.0 it/s | ETA 15s',
                   # The ETA follows the mean rate (10 steps / 1.71 it/s), not the last interval's.
                   'step 10/20 | loss 0.2500 | 4.0 it/s | ETA 6s']


def test_quiet_libraries_filters_by_source_file():
  logs.quiet_libraries()
  logs.quiet_libraries()  # idempotent: one filter
  handler = logging.get_absl_handler()
  assert sum(isinstance(f, logs._QuietPackages) for f in handler.filters) == 1  # pylint: disable=protected-access
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top
  orbax_file = os.path.join(os.path.dirname(orbax.checkpoint.__file__), 'checkpoint_manager.py')

  def record(path, level):
    return py_logging.LogRecord('absl', level, path, 1, 'm', (), None)

  assert not handler.filter(record(orbax_file, py_logging.INFO))
  assert handler.filter(record(orbax_file, py_logging.WARNING))
  assert handler.filter(record(logs.__file__, py_logging.INFO))


def test_filter_cpp_log_follows_tf_cpp_min_log_level():
  text = ('WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'
          'I0000 00:00:1795558227.459745   22499 port.cc:153] oneDNN custom operations are on.\n'
          'I0000 00:00:1795558227.8   22499 cpu_feature_guard.cc:227] This TensorFlow binary\n'
          'To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n'
          'W1124 22:06:30.700219   22499 gpu.cc:10] no GPU\n'
          'E1124 22:06:30.700219   22499 io.cc:3] cannot read\n')
  lines = text.splitlines(keepends=True)
  assert tf_setup.filter_cpp_log(text, 0) == text
  # INFO goes with its continuation line; warnings and errors stay.
  assert tf_setup.filter_cpp_log(text, 1) == lines[4] + lines[5]
  assert tf_setup.filter_cpp_log(text, 2) == lines[5]
  assert tf_setup.filter_cpp_log('plain\n', 3) == 'plain\n'


_PROBE = """
import sys
from absl import app, logging
from interestyle_jax.data.tf_setup import import_tf
import_tf()
from interestyle_jax.training import logs

def main(_):
  if sys.argv[-1] == 'quiet':
    logs.quiet_libraries()
  import jax
  jax.devices()
  logging.info('probed')

app.run(main)
"""


def test_tensorflow_and_backend_probe_notices_are_dropped():
  def run(mode, **env):
    return subprocess.run([sys.executable, '-c', _PROBE, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})

  loud = run('loud', TF_CPP_MIN_LOG_LEVEL='0')
  quiet = run('quiet')
  assert loud.returncode == 0 and quiet.returncode == 0, quiet.stderr[-3000:]
  # The control shows what the filters remove on this machine ...
  assert 'oneDNN' in loud.stderr and "Unable to initialize backend 'tpu'" in loud.stderr
  # ... and the job's start-up order (import_tf, then quiet_libraries before
  # the backends are probed) leaves only its own line.
  assert [l for l in quiet.stderr.splitlines() if l.strip()] == [
      l for l in quiet.stderr.splitlines() if l.endswith('] probed')], quiet.stderr


def test_train_py_log(tmp_path):
  workdir = str(tmp_path / 'run')
  args = [sys.executable, os.path.join(REPO, 'train.py'), '--config',
          os.path.join(REPO, 'configs', 'synthetic.py'), '--workdir', workdir]
  args += [f'--config.{k}={v}' for k, v in TINY.items()]  # 4 steps, T = 2, 16 px
  env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}  # tiny programs: compiling is the cost
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stderr[-5000:]
  lines = out.stderr.splitlines()
  log = out.stderr

  # One progress line per log interval (every 2 steps).
  progress = [l for l in lines if re.search(r'\] step \d+/4 ', l)]
  assert len(progress) == 2, log
  for line, step in zip(progress, (2, 4)):
    assert re.search(rf'\] step {step}/4 \| loss \d+\.\d{{4}} \| l2_it1\.\.2 \S+ \S+ \| '
                     r'\d+\.\d it/s \| ETA \d+s$', line), line
  assert [int(re.search(r'\] eval step (\d+) \|', l).group(1))
          for l in lines if '] eval step ' in l] == [0, 2, 4]

  # No Orbax or clu INFO lines: every INFO line comes from the job's own files.
  sources = {m.group(2) for m in map(PREFIX.match, lines) if m and m.group(1) == 'I'}
  orbax_or_clu = sources & (_py_files('orbax.checkpoint') | _py_files('clu'))
  assert not orbax_or_clu, log
  assert not any('Setting work unit notes' in l or 'Got images' in l for l in lines), log
  assert len(lines) - len(progress) <= 25, log  # was ~190 for this run
  # TensorFlow's oneDNN notice and jax's backend probe are gone too.
  assert 'oneDNN' not in log and 'Unable to initialize backend' not in log, log

  # The closing summary, ending with the TensorBoard command.
  assert re.search(r'\] Done: step 4 in \d+[smh]\S*, held-out interest-region MSE \S+; '
                   r'step 0: \S+ \(ratio \d+\.\d\d\), average image: \S+ \(ratio \d+\.\d\d\)\.$',
                   log, re.M), log
  assert f'Outputs in {workdir}: metrics.json' in log
  assert lines[-1] == f'tensorboard --logdir {workdir}'

  # Grids as PNG: eval (input, mask, ŷ1, ŷ2, target) and train (input, mask,
  # x̃1, ŷ1, x̃2, ŷ2; training batches carry no clean image); 16 px tiles x 8.
  images = os.path.join(workdir, 'images')
  assert sorted(os.listdir(images)) == ['eval_step_0.png', 'eval_step_2.png', 'eval_step_4.png',
                                        'train_step_2.png', 'train_step_4.png']
  tile = 128 + grids.GAP
  for name, n_cols in (('eval_step_4.png', 5), ('train_step_4.png', 6)):
    with Image.open(os.path.join(images, name)) as png:
      grid = np.asarray(png)
    header = grid.shape[0] - (2 * tile - grids.GAP)  # above the 2 image rows
    assert grid.shape[1] == n_cols * tile - grids.GAP and header > 10, (name, grid.shape)
  # The eval grid's last column is the clean target, not the input.
  with Image.open(os.path.join(images, 'eval_step_0.png')) as png:
    grid = np.asarray(png)
  assert not np.array_equal(grid[-128:, :128], grid[-128:, -128:])


def _py_files(package):
  import importlib.util  # pylint: disable=g-import-not-at-top
  names = set()
  for root in importlib.util.find_spec(package).submodule_search_locations:
    for _, _, files in os.walk(root):
      names |= {f for f in files if f.endswith('.py')}
  return names - {'train.py', 'loop.py', 'logs.py'}

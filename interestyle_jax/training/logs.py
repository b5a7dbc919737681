"""What the training job prints: one progress line per log interval, a summary.

Orbax logs every checkpoint save in ~35 INFO lines, clu logs each scalar
write and progress note, and jax reports the backends it probed; at absl's
default verbosity (INFO) that buried the training progress. The job's log now
holds the start-up lines, one line per log interval::

  step 50/1200 | loss 0.3181 | l2_it1..3 0.08497 0.1043 0.1212 | 4.4 it/s | ETA 3m

one line per validation, and a closing summary. Everything stays in
TensorBoard; warnings and errors of every library still reach the log.
"""

import importlib.util
import logging as py_logging
import os
from typing import Any, Dict, Mapping, Optional

from absl import logging
from clu import metric_writers, periodic_actions

# Libraries whose records below WARNING are dropped from the job's log.
QUIET_PACKAGES = ('orbax.checkpoint', 'clu', 'jax', 'jaxlib', 'flax', 'tensorflow')


def _package_dirs(names):
  dirs = []
  for name in names:
    try:
      spec = importlib.util.find_spec(name)
    except ImportError:  # a parent package is missing
      spec = None
    if spec is not None and spec.submodule_search_locations:
      dirs += [os.path.join(os.path.realpath(d), '') for d in spec.submodule_search_locations]
  return tuple(dirs)


class _QuietPackages(py_logging.Filter):
  """Drops records below WARNING whose source file lies in one of ``dirs``.

  By file, not logger name: orbax and clu log through absl's single 'absl'
  logger, so their records carry no name of their own.
  """

  def __init__(self, dirs):
    super().__init__()
    self.dirs = dirs

  def filter(self, record):
    return (record.levelno >= py_logging.WARNING or
            not os.path.realpath(record.pathname).startswith(self.dirs))


def quiet_libraries(packages=QUIET_PACKAGES) -> None:
  """Keeps only warnings and errors of ``packages`` in absl's log (idempotent).

  The filter sits on absl's handler, which every Python logger's records
  reach (absl installs it on the root logger), so it also covers the stdlib
  loggers of jax ("Unable to initialize backend 'tpu'"). Call it before the
  first backend use to catch jax's probe messages.

  Args:
    packages: importable package names (missing ones are skipped).
  """
  handler = logging.get_absl_handler()
  handler.filters = [f for f in handler.filters if not isinstance(f, _QuietPackages)]
  handler.addFilter(_QuietPackages(_package_dirs(packages)))


def make_writer(workdir: str, lead: bool) -> metric_writers.MetricWriter:
  """TensorBoard writer of the job, without clu's line-per-write LoggingWriter.

  Args:
    workdir: where the event files go.
    lead: whether this process writes (process 0); others get a no-op writer.

  Returns:
    A clu MetricWriter.
  """
  if not lead:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def format_duration(seconds: float) -> str:
  """'42s', '3m', '1h05m': the precision an ETA or wall time needs."""
  seconds = max(0.0, seconds)
  if seconds < 60:
    return f'{seconds:.0f}s'
  minutes = int(round(seconds / 60))
  if minutes < 60:
    return f'{minutes}m'
  return f'{minutes // 60}h{minutes % 60:02d}m'


def _per_iteration(scalars: Mapping[str, float], prefix: str, first: int = 1) -> Optional[str]:
  values = []
  while f'{prefix}{first + len(values)}' in scalars:
    values.append(scalars[f'{prefix}{first + len(values)}'])
  if not values:
    return None
  last = first + len(values) - 1
  return f'{prefix}{first}..{last} ' + ' '.join(f'{v:.4g}' for v in values)


def format_progress(step: int, total: Optional[int], scalars: Mapping[str, float],
                    steps_per_sec: float, eta_steps_per_sec: Optional[float] = None) -> str:
  """The per-interval progress line.

  Args:
    step: the step just taken.
    total: the last step of the run (None: unknown, no ETA).
    scalars: train scalars averaged over the interval ('loss', 'l2_it1', …);
      may be empty.
    steps_per_sec: rate over the interval.
    eta_steps_per_sec: rate the ETA assumes (default ``steps_per_sec``).

  Returns:
    ``step 50/1200 | loss 0.3181 | l2_it1..3 0.085 0.104 0.121 | 4.4 it/s | ETA 3m``.
  """
  parts = [f'step {step}/{total}' if total else f'step {step}']
  if 'loss' in scalars:
    parts.append(f'loss {scalars["loss"]:.4f}')
  per_iteration = _per_iteration(scalars, 'l2_it')
  if per_iteration:
    parts.append(per_iteration)
  parts.append(f'{steps_per_sec:.1f} it/s')
  eta_rate = steps_per_sec if eta_steps_per_sec is None else eta_steps_per_sec
  if total and eta_rate > 0:
    parts.append(f'ETA {format_duration((total - step) / eta_rate)}')
  return ' | '.join(parts)


def format_eval(step: int, result: Mapping[str, float]) -> str:
  """One line of validation results.

  Args:
    step: the step evaluated.
    result: the validation averages (``evaluation.metric_names``).

  Returns:
    e.g. ``eval step 400 | loss 0.04531 | mse_interest 0.02597 |
    mse_interest_it0..3 0.0981 0.07 0.045 0.026 | latent_mse 3.18``.
  """
  parts = [f'eval step {step}']
  for key in ('loss', 'mse_interest'):
    parts.append(f'{key} {result[key]:.4g}')
  per_iteration = _per_iteration(result, 'mse_interest_it', first=0)
  if per_iteration:
    parts.append(per_iteration)
  for key in ('ssim_interest', 'lpips_interest', 'id_sim_interest', 'latent_mse'):
    if key in result:
      parts.append(f'{key} {result[key]:.4g}')
  return ' | '.join(parts)


def format_summary(report: Mapping[str, Any], workdir: str) -> str:
  """The closing lines: result against the baselines, wall time, outputs.

  Args:
    report: the dict ``train_and_evaluate`` writes to ``metrics.json``.
    workdir: the workdir (absolute).

  Returns:
    A multi-line message ending with the line ``tensorboard --logdir WORKDIR``.
  """
  final, initial = report['eval'], report.get('initial_eval') or {}
  result = f'held-out interest-region MSE {final["mse_interest"]:.4g}'
  baselines = []
  if initial.get('mse_interest'):
    baselines.append(f'step 0: {initial["mse_interest"]:.4g} '
                     f'(ratio {final["mse_interest"] / initial["mse_interest"]:.2f})')
  if 'avg_image_mse_interest' in report:
    baselines.append(f'average image: {report["avg_image_mse_interest"]:.4g} '
                     f'(ratio {report["mse_interest_ratio_to_avg_image"]:.2f})')
  if baselines:
    result += '; ' + ', '.join(baselines)
  return '\n'.join([
      f'Done: step {report["step"]} in {format_duration(report["wall_time_s"])}, {result}.',
      f'Outputs in {workdir}: metrics.json, checkpoints/, best/, inference/ '
      '(load_inverter), images/ (PNG grids), TensorBoard events; curves and grids:',
      f'tensorboard --logdir {workdir}',
  ])


class ReportProgress(periodic_actions.ReportProgress):
  """clu's ReportProgress that also logs :func:`format_progress`'s line.

  clu still writes ``steps_per_sec`` / ``uptime`` to the writer and sets the
  work-unit notes (a quiet log line when running locally, see
  :func:`quiet_libraries`). Set :attr:`scalars` to the interval's train
  scalars before calling the hook on a log step. The line shows the
  interval's rate; the ETA uses the mean rate since the first call, which
  validations and checkpoints (slow intervals) do not throw around.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.scalars: Dict[str, float] = {}
    self._first = None  # (step, time) of the first call: compiling excluded

  def _apply(self, step: int, t: float):
    if self._first is None:
      self._first = (self._previous_step, self._previous_time)
    steps_per_sec = (step - self._previous_step) / (t - self._previous_time)
    mean_steps_per_sec = (step - self._first[0]) / (t - self._first[1])
    super()._apply(step, t)
    logging.info('%s', format_progress(step, self._num_train_steps, self.scalars,
                                       steps_per_sec, mean_steps_per_sec))

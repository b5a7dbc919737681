"""``python -m interestyle_jax.ablate``: the paper's ablation rows, trained and compared.

    python -m interestyle_jax.ablate --config configs/synthetic.py \\
        --workdir runs/ablation [--variants restyle,masked,unf,interestyle,release_filter] \\
        [--seeds 0,1,2] [--config.<field>=value ...]

Each row is the given config with a few fields changed (see :data:`VARIANTS`),
trained once per seed by the library's training loop into
``WORKDIR/<variant>/seed_<s>`` (a plain train.py workdir: checkpoints,
TensorBoard, metrics.json). Every run is then evaluated on the test sets:

* synthetic data: the world's own held-out set (``own``: the training
  families) and one held-out set per ``config.synthetic.test_families``
  (uninterest content that training never produced);
* folder data (``configs/ffhq.py``): the config's test split (``own``) and
  every ``--test_dirs name=DIR`` (folders with images/ and masks/).

It writes ``ablation.md`` (interest-region MSE at the last iteration, mean ±
std over seeds, and the change against the ReStyle row; then the change of
each row after the masked-loss row against it, paired by seed, per
iteration), ``ablation.json``
(every run's numbers, per iteration) and ``ablation.png`` (interest MSE per
iteration, one panel per test set). Re-running the same command resumes: a
finished run is read back from its metrics.json, an interrupted one resumes
from its last checkpoint, like train.py.
"""

import json
import os
import sys
from typing import Any, Dict, List, Mapping, Sequence

from absl import app, flags, logging
import ml_collections
import numpy as np
from ml_collections import config_flags

from interestyle_jax.data.tf_setup import import_tf

# Paper order: each row adds one piece to the one above; the last swaps the
# paper's uninterest-only filter for the released code's whole-image filter.
VARIANTS = ('restyle', 'masked', 'unf', 'interestyle', 'release_filter')
DESCRIPTIONS = {
    'restyle': 'ReStyle-pSp: whole-image loss, no filter, no InD',
    'masked': '+ interest-region loss',
    'unf': '+ uninterest filter (UnF)',
    'interestyle': '+ InD: IntereStyle (the config as given)',
    'release_filter': "IntereStyle, the release's whole-image filter",
}
RESULTS_MD, RESULTS_JSON, RESULTS_PNG = 'ablation.md', 'ablation.json', 'ablation.png'
OWN = 'own'

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory of the ablation (one train.py workdir per run).')
flags.DEFINE_list('variants', list(VARIANTS), f'Rows to train, from {", ".join(VARIANTS)}.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds (config.seed) per row.')
flags.DEFINE_list('test_dirs', [], 'Folder data: extra test sets NAME=DIR (images/ + masks/).')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration of the full IntereStyle row (configs/*.py).',
    lock_config=True)


def variant_config(config: ml_collections.ConfigDict, variant: str,
                   seed: int) -> ml_collections.ConfigDict:
  """The training config of one row and seed.

  Args:
    config: the full IntereStyle config (the 'interestyle' row).
    variant: one of :data:`VARIANTS`.
    seed: ``config.seed`` of the run.

  Returns:
    A copy of ``config`` with the row's fields changed.

  Raises:
    ValueError: an unknown variant, or a row that would equal the one above it
      (e.g. ``unf`` when the config has no filter).
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose from {", ".join(VARIANTS)}')
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed = seed
  no_filter = tuple(0.0 for _ in c.filter.sigmas)
  if variant in ('restyle', 'masked', 'unf'):
    c.loss.ind = 0.0
  if variant in ('restyle', 'masked'):
    c.filter.sigmas = no_filter
  if variant == 'restyle':
    c.loss.region = 'whole'
    c.loss.iterations = 'all'  # ReStyle back-propagates every iteration
  if variant in ('unf', 'interestyle', 'release_filter'):
    c.loss.region = 'interest'
    if tuple(c.filter.sigmas) == no_filter:
      raise ValueError(f'the {variant!r} row needs an uninterest filter but '
                       'config.filter.sigmas are all 0')
  if variant in ('interestyle', 'release_filter') and c.loss.ind <= 0:
    raise ValueError(f'the {variant!r} row needs InD but config.loss.ind is 0')
  if variant == 'release_filter':
    c.filter.region = 'whole'
  return c


def _run_dir(workdir: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, variant, f'seed_{seed}')


def _finished(run_dir: str, config) -> Dict[str, Any]:
  """The run's metrics.json if it trained to the end and holds every test set, else {}."""
  path = os.path.join(run_dir, 'metrics.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    report = json.load(f)
  if report.get('step') != config.num_train_steps:
    return {}
  if config.data.source == 'synthetic':
    if set(config.synthetic.test_families) - set(report.get('test_families', {})):
      return {}
  return report


def _folder_tests(run_dir: str, test_dirs: Mapping[str, str], batch_size: int
                  ) -> Dict[str, Dict[str, float]]:
  """Evaluates a run's inference export on each ``--test_dirs`` folder."""
  from interestyle_jax import scoring  # pylint: disable=g-import-not-at-top
  from interestyle_jax.data import folder  # pylint: disable=g-import-not-at-top
  from interestyle_jax.inference import load_inverter  # pylint: disable=g-import-not-at-top
  inverter = load_inverter(run_dir)
  out = {}
  for name, root in test_dirs.items():
    skipped: List = []
    pairs = folder.pair_folder(root)
    batches = scoring.folder_batches(root, inverter.encoder_size, batch_size, None, skipped,
                                      pairs=pairs)
    result = scoring.evaluate(inverter, batches, inverter.n_iters, total=len(pairs))
    out[name] = {k: v[-1] for k, v in result['metrics'].items()}
    for t, v in enumerate(result['metrics'].get('mse_interest', [])):
      out[name][f'mse_interest_it{t + 1}'] = v
  return out


def run(config: ml_collections.ConfigDict, workdir: str, variants: Sequence[str],
        seeds: Sequence[int], test_dirs: Mapping[str, str]) -> Dict[str, Any]:
  """Trains (or resumes) every row and seed and collects the test-set results.

  Args:
    config: the full IntereStyle config.
    workdir: the ablation directory.
    variants: rows, in table order.
    seeds: training seeds.
    test_dirs: folder data only: extra test sets ``{name: dir}``.

  Returns:
    ``{'runs': {variant: {seed: {test_set: metrics}}}, ...}`` as written to
    ablation.json.
  """
  from interestyle_jax.training import loop  # pylint: disable=g-import-not-at-top
  configs = {(v, s): variant_config(config, v, s) for v in variants for s in seeds}
  runs: Dict[str, Dict[str, Any]] = {v: {} for v in variants}
  for (variant, seed), c in configs.items():
    run_dir = _run_dir(workdir, variant, seed)
    report = _finished(run_dir, c)
    if report:
      logging.info('%s seed %d: finished earlier (%s)', variant, seed, run_dir)
    else:
      logging.info('%s seed %d: training in %s', variant, seed, run_dir)
      report = loop.train_and_evaluate(c, run_dir)
    tests = {OWN: report['eval'], **report.get('test_families', {})}
    if test_dirs:
      tests.update(_folder_tests(run_dir, test_dirs, c.eval_batch_size))
    runs[variant][str(seed)] = {'tests': tests, 'wall_time_s': report.get('wall_time_s')}
  return {'variants': list(variants), 'seeds': [int(s) for s in seeds],
          'data_source': config.data.source,
          'descriptions': {v: DESCRIPTIONS[v] for v in variants},
          'n_iters': int(config.model.n_iters), 'runs': runs,
          'summary': summarise(runs, int(config.model.n_iters))}


def summarise(runs: Mapping[str, Mapping[str, Any]], n_iters: int) -> Dict[str, Any]:
  """Mean and std over seeds of the interest MSE, per row, test set and iteration.

  Args:
    runs: ``{variant: {seed: {'tests': {test_set: metrics}}}}``.
    n_iters: refinement iterations T.

  Returns:
    ``{variant: {test_set: {'mean', 'std', 'per_iteration_mean',
    'per_iteration_std', 'vs_restyle', 'vs_masked'}}}``; 'vs_restyle' is the
    relative change of the mean against the 'restyle' row (negative = lower
    error); 'vs_masked' (rows after 'masked') is the change against the
    'masked' row paired by seed, per iteration t = 1..T: ``{'mean', 'std'}``
    of the per-seed relative changes mse(row, s) / mse(masked, s) − 1.
  """
  out: Dict[str, Any] = {}
  for variant, seeds in runs.items():
    out[variant] = {}
    tests = list(next(iter(seeds.values()))['tests']) if seeds else []
    for test in tests:
      finals = np.array([r['tests'][test]['mse_interest'] for r in seeds.values()])
      curves = np.array([[r['tests'][test].get(f'mse_interest_it{t}', np.nan)
                          for t in range(n_iters + 1)] for r in seeds.values()])
      out[variant][test] = {
          'mean': float(finals.mean()), 'std': float(finals.std()),
          'per_iteration_mean': curves.mean(0).tolist(),
          'per_iteration_std': curves.std(0).tolist()}
  if 'restyle' in out:
    for variant, tests in out.items():
      for test, cell in tests.items():
        base = out['restyle'].get(test, {}).get('mean')
        cell['vs_restyle'] = None if not base else cell['mean'] / base - 1.0
  if 'masked' in runs:
    for variant in list(runs)[list(runs).index('masked') + 1:]:
      for test, cell in out[variant].items():
        cell['vs_masked'] = paired_change(runs[variant], runs['masked'], test, n_iters)
  return out


def paired_change(row: Mapping[str, Any], base: Mapping[str, Any], test: str,
                  n_iters: int) -> Dict[str, List[float]]:
  """Per-iteration relative change of one row against another, paired by seed.

  Seeds share the data order, the held-out set and the encoder
  initialisation, so the per-seed difference removes most of the seed-to-seed
  spread that the unpaired mean ± std of :func:`format_table` carries.

  Args:
    row: ``{seed: {'tests': {test_set: metrics}}}`` of the row.
    base: the same for the row compared against.
    test: test set name.
    n_iters: T.

  Returns:
    ``{'mean': [T], 'std': [T], 'seeds': n}``: mean and std over the seeds
    both rows have of ``mse_interest_it{t}(row) / mse_interest_it{t}(base) − 1``
    for t = 1..T.
  """
  seeds = [s for s in row if s in base and test in base[s]['tests']]
  change = np.array([[row[s]['tests'][test][f'mse_interest_it{t}'] /
                      base[s]['tests'][test][f'mse_interest_it{t}'] - 1.0
                      for t in range(1, n_iters + 1)] for s in seeds])
  return {'mean': change.mean(0).tolist(), 'std': change.std(0).tolist(), 'seeds': len(seeds)}


def format_table(result: Mapping[str, Any]) -> str:
  """The Markdown table of :func:`run`'s result."""
  summary = result['summary']
  variants = result['variants']
  tests = list(summary[variants[0]])
  synthetic = result.get('data_source', 'synthetic') == 'synthetic'
  own, other = (('own held-out', 'held-out family') if synthetic else
                ('test split', 'test set'))
  head = ['row'] + [(own if t == OWN else f'{other} `{t}`') for t in tests]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for v in variants:
    cells = [result['descriptions'][v]]
    for t in tests:
      c = summary[v][t]
      text = f'{c["mean"]:.4f} ± {c["std"]:.4f}'
      if c.get('vs_restyle') is not None and v != 'restyle':
        text += f' ({100 * c["vs_restyle"]:+.0f}%)'
      cells.append(text)
    lines.append('| ' + ' | '.join(cells) + ' |')
  seeds = ', '.join(str(s) for s in result['seeds'])
  lines.append('')
  lines.append(f'Interest-region MSE after the last of {result["n_iters"]} iterations, '
               f'mean ± std over seeds {seeds}; (±N%): change against the ReStyle row.')
  paired = [v for v in variants if 'vs_masked' in summary[v][tests[0]]]
  if paired:
    n = result['n_iters']
    head = ['row', 'iteration'] + [(own if t == OWN else f'`{t}`') for t in tests]
    lines += ['', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for v in paired:
      for t in range(n):
        cells = [result['descriptions'][v] if t == 0 else '', f'{t + 1}']
        for test in tests:
          c = summary[v][test]['vs_masked']
          cells.append(f'{100 * c["mean"][t]:+.1f} ± {100 * c["std"][t]:.1f}%')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append('Change of the interest-region MSE against the interest-region-loss row '
                 '(+ interest-region loss), paired by seed, per iteration: mean ± std over '
                 f'seeds {seeds} of mse(row) / mse(masked) − 1 (negative = lower error).')
  return '\n'.join(lines)


def plot(result: Mapping[str, Any], path: str) -> None:
  """Writes ablation.png: interest MSE per iteration, one panel per test set."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  summary, variants = result['summary'], result['variants']
  tests = list(summary[variants[0]])
  fig, axes = plt.subplots(1, len(tests), figsize=(3.6 * len(tests), 3.4), squeeze=False,
                           sharey=True)
  x = np.arange(result['n_iters'] + 1)
  for ax, test in zip(axes[0], tests):
    for v in variants:
      mean = np.array(summary[v][test]['per_iteration_mean'])
      std = np.array(summary[v][test]['per_iteration_std'])
      ax.plot(x, mean, marker='o', ms=3, label=v)
      ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    ax.set_title('own held-out' if test == OWN else f'family: {test}', fontsize=10)
    ax.set_xlabel('iteration (0 = average image)')
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('interest-region MSE')
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  tmp = path + '.partial.png'
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def write(result: Mapping[str, Any], workdir: str) -> None:
  """Writes ablation.md / .json / .png into ``workdir`` (each atomically)."""
  from interestyle_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.write_atomic(os.path.join(workdir, RESULTS_JSON), json.dumps(result, indent=2))
  workdir_lib.write_atomic(os.path.join(workdir, RESULTS_MD), format_table(result) + '\n')
  plot(result, os.path.join(workdir, RESULTS_PNG))


def _parse(argv_flags) -> Dict[str, Any]:
  """Checks the flags; raises ConfigError with a one-line message."""
  from interestyle_jax.training.config import ConfigError  # pylint: disable=g-import-not-at-top
  variants = [v.strip() for v in argv_flags.variants if v.strip()]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown or not variants:
    raise ConfigError(f'--variants {",".join(argv_flags.variants)}: unknown {unknown}; '
                      f'choose from {",".join(VARIANTS)}')
  try:
    seeds = [int(s) for s in argv_flags.seeds]
  except ValueError as e:
    raise ConfigError(f'--seeds {",".join(argv_flags.seeds)} must be integers, e.g. 0,1,2') from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f'--seeds {",".join(argv_flags.seeds)} must be distinct integers')
  test_dirs = {}
  for item in argv_flags.test_dirs:
    name, sep, path = item.partition('=')
    if not sep or not name or not path:
      raise ConfigError(f'--test_dirs {item!r} must be NAME=DIR')
    if not os.path.isdir(path):
      raise ConfigError(f'--test_dirs {name}={path}: no such directory')
    test_dirs[name] = path
  config = argv_flags.config
  if test_dirs and config.data.source == 'synthetic':
    raise ConfigError('--test_dirs is for folder data; the synthetic world tests on '
                      'config.synthetic.test_families')
  if 'restyle' not in variants:
    logging.warning('no restyle row: the table shows no change against ReStyle')
  return dict(variants=variants, seeds=seeds, test_dirs=test_dirs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  from interestyle_jax.training import logs  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training.config import ConfigError  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training.preemption import Preempted  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  try:
    args = _parse(FLAGS)
    for v in args['variants']:  # every row's config is checked before the first run
      variant_config(FLAGS.config, v, args['seeds'][0])
    os.makedirs(FLAGS.workdir, exist_ok=True)
    result = run(FLAGS.config, FLAGS.workdir, **args)
  except (ConfigError, ValueError) as e:
    message = ' '.join(str(e).split())
    print(f'ablate: error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)
  except Preempted as p:  # SIGTERM / Ctrl-C: the current row's checkpoint is saved
    print(f'ablate: {p}; re-run the same command to resume', file=sys.stderr, flush=True)
    sys.exit(p.exit_status)
  write(result, FLAGS.workdir)
  print(format_table(result))
  print(f'wrote {os.path.join(FLAGS.workdir, RESULTS_MD)}, {RESULTS_JSON}, {RESULTS_PNG}')


if __name__ == '__main__':
  try:
    import_tf()
  except ImportError as _e:
    print(f'ablate: error: {_e}', file=sys.stderr)
    sys.exit(2)
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)

"""``python -m interestyle_jax.evaluate``: reconstruction metrics of an inverter.

    python -m interestyle_jax.evaluate --checkpoint ckpt/interestyle \\
        --data data/celebahq_test [--lpips ckpt/lpips] [--arcface ckpt/arcface]
    python -m interestyle_jax.evaluate --checkpoint runs/synthetic --data synthetic

For every refinement iteration t = 1..T it reports MSE and SSIM (and LPIPS /
ID similarity when ``--lpips`` / ``--arcface`` give converted networks; the
paper's MTCNN + CurricularFace ID protocol with ``--id_protocol paper``, see
:mod:`interestyle_jax.id_metric`), each
on the whole image and on the interest region (``m ⊙ ŷ`` vs ``m ⊙ y``, see
:mod:`interestyle_jax.metrics`), averaged over the images: a printed table and,
with ``--output``, a JSON file (nothing is written without it). Reconstructions are compared at the encoder size (the generator
output average-pooled, as in training) with const noise and running BatchNorm
statistics: the refinement is ``inference.refine``, the function the training
run's validation and the ``Inverter`` run.

``--data`` is a folder with ``images/`` and ``masks/`` (paired by file stem,
decoded by ``interestyle_jax.data.folder``; the target is the input image), or
``synthetic``: the held-out set of the synthetic training world, rebuilt from
the training config (``WORKDIR/config.json``, or ``--config``), whose targets
are the clean generator images and whose true latents add ``latent_mse``;
``synthetic:FAMILY`` is the same held-out images with the uninterest content
of one family (``synthetic:skin``; families in
:mod:`interestyle_jax.synthetic_families`), e.g. one kept out of training.

The batch is split over all local devices: ``jax.jit`` of ``jax.shard_map``
over a 1-D mesh with axis 'batch'. A progress bar goes to stderr
(``--no_progress`` turns it off). Exit status: 0 on success, 2 for an
unusable checkpoint, network, data folder or argument (the output path is
checked before any work).
"""

import argparse
import functools
import importlib.util
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from interestyle_jax import artifacts, cli_utils, id_metric, metrics, synthetic_families
from interestyle_jax.data import folder
# refine is the Inverter's (and training validation's) loop: they cannot drift apart.
from interestyle_jax import inference
from interestyle_jax.inference import average_image, load_inverter, resolve_model_dir
from interestyle_jax.invert import too_small
from interestyle_jax.ops import xla_options
from interestyle_jax.ops.pooling import adaptive_avg_pool2d

AXIS = 'batch'
CONFIG_FILE = 'config.json'
Batch = Dict[str, np.ndarray]


def make_mesh() -> Mesh:
  """A 1-D mesh over the local devices with axis 'batch'."""
  return Mesh(np.asarray(jax.local_devices()), (AXIS,))


def make_eval_fn(inverter, n_iters: int, mesh: Mesh, lpips_module=None,
                 arcface_module=None, return_images: bool = False):
  """``jit(shard_map(per-device metrics))`` for an inverter.

  Args:
    inverter: an ``inference.Inverter``.
    n_iters: refinement iterations T.
    mesh: device mesh with axis 'batch'.
    lpips_module: LPIPS module (its variables go in ``variables['lpips']``).
    arcface_module: ArcFace module (variables in ``variables['arcface']``).
    return_images: also return 'images', the uint8 generator outputs of every
      iteration ``[T, B, R, R, 3]`` (for the paper ID protocol).

  Returns:
    ``fn(variables, batch) -> {name: [T, B]}`` with ``batch`` holding 'image',
    'mask', 'target' and optionally 'latent'; B must divide over the devices.
  """
  enc, gen, size = inverter.encoder, inverter.generator, inverter.encoder_size

  def per_device(variables, batch):
    out = inference.refine(enc, gen, variables['encoder'], variables['generator'],
                           variables['latent_avg'], batch['image'], n_iters, size,
                           variables['avg_image'])
    t, b = out.iterations.shape[:2]
    y_hat = adaptive_avg_pool2d(out.iterations.reshape((t * b,) + out.iterations.shape[2:]),
                                size)
    # Every iteration is compared with the same target: one batched call.
    rep = lambda a: jnp.broadcast_to(a[None], (t,) + a.shape).reshape((t * b,) + a.shape[1:])
    lp = None if lpips_module is None else (lpips_module, variables['lpips'])
    arc = None if arcface_module is None else (arcface_module, variables['arcface'])
    res = metrics.image_metrics(y_hat, rep(batch['target']), rep(batch['mask']), lp, arc)
    res = {k: v.reshape(t, b) for k, v in res.items()}
    if 'latent' in batch:
      res['latent_mse'] = metrics.latent_mse(out.iteration_latents, batch['latent'][None])
    if return_images:  # rounded as invert's PNGs (editing.to_uint8); uint8 is 1/4 the transfer
      res['images'] = jnp.clip(jnp.round((out.iterations + 1) * 127.5), 0, 255).astype(jnp.uint8)
    return res

  # Metrics are per image, so no collective is needed: out_specs keeps the
  # batch axis sharded and the host averages. check_vma=False: the refinement
  # scan's carry starts from the replicated average latent and becomes
  # batch-varying, which the varying-axes type check rejects.
  return xla_options.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                                       out_specs=P(None, AXIS), check_vma=False))


def folder_batches(root: str, size: int, batch_size: int, limit: Optional[int],
                   skipped: List[Tuple[str, str]], pairs=None) -> Iterator[Batch]:
  """Batches of a paired images/ + masks/ folder at the encoder size.

  Args:
    root: folder with images/ and masks/.
    size: encoder input side (also the minimum image side).
    batch_size: images per batch (the last one is padded, 'valid' 0).
    limit: use only the first N pairs (by stem).
    skipped: receives ``(path, reason)`` of unusable pairs.
    pairs: ``folder.pair_folder(root)`` when the caller has it already.

  Yields:
    dicts 'image' / 'target' float ``[B, S, S, 3]`` in [-1, 1], 'mask'
    ``[B, S, S, 1]`` in [0, 1], 'valid' ``[B]``, and 'read': how many pairs
    were read for this batch, skipped ones included (for progress).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pairs = (folder.pair_folder(root) if pairs is None else pairs)[:limit]
  rows = []
  read = 0

  def emit():
    batch = _pad({'image': np.stack([r[0] for r in rows]).astype(np.float32) / 127.5 - 1.0,
                  'mask': np.stack([r[1] for r in rows]).astype(np.float32) / 255.0},
                 batch_size)
    batch['read'] = read
    batch['path'] = [r[2] for r in rows]  # the photo files, for the paper ID protocol
    return batch

  for pair in pairs:
    read += 1
    try:
      with Image.open(pair.image_path) as img:  # header only: the size
        problem = too_small(img.width, img.height, size)
    except Exception:  # pylint: disable=broad-except
      problem = None  # load_example reports unreadable files with details
    ex = folder.load_example(pair, size) if problem is None else None
    problem = problem or (ex.problem if ex is not None else None)
    if problem:
      skipped.append((pair.image_path, problem))
      continue
    rows.append((ex.image, ex.mask, pair.image_path))
    if len(rows) == batch_size:
      yield emit()
      rows, read = [], 0
  if rows:
    yield emit()


def _pad(batch: Batch, batch_size: int) -> Batch:
  n = len(batch['image'])
  out = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out.setdefault('target', out['image'])
  out['valid'] = (np.arange(batch_size) < n).astype(np.float32)
  return out


def load_training_config(checkpoint: str, config_path: Optional[str] = None):
  """The training config of a workdir (or an explicit config file).

  Args:
    checkpoint: the train.py workdir.
    config_path: a ``configs/*.py`` file (with ``get_config()``) or a JSON
      dump of the config; overrides the workdir's ``config.json``.

  Returns:
    An ``ml_collections.ConfigDict``.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = config_path or os.path.join(checkpoint, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'--data synthetic needs the training config: {checkpoint} has no {CONFIG_FILE}; '
        'pass --config configs/synthetic.py (the file train.py ran with)')
  if path.endswith('.py'):
    spec = importlib.util.spec_from_file_location('training_config', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _workdir_of(checkpoint: str) -> str:
  """The train.py workdir of a checkpoint path (the workdir or its inference/)."""
  model_dir = resolve_model_dir(checkpoint)
  if os.path.abspath(model_dir) == os.path.abspath(checkpoint):
    return os.path.dirname(os.path.abspath(checkpoint))  # WORKDIR/inference was given
  return checkpoint


def synthetic_batches(inverter, config, batch_size: int, limit: Optional[int],
                      family: Optional[str] = None) -> Iterator[Batch]:
  """Batches of the synthetic world's held-out set (clean targets, true latents).

  Args:
    inverter: the inverter (its generator must be the world's).
    config: the training config (``config.synthetic``).
    family: one uninterest family for the held-out images (default: the
      training families).
    batch_size: images per batch.
    limit: use only the first N held-out images.

  Yields:
    dicts 'image', 'mask', 'target', 'latent', 'valid'.
  """
  from interestyle_jax import synthetic  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training.setup import GENERATOR_FIELDS  # pylint: disable=g-import-not-at-top
  if config.model.get('generator_path'):
    raise ValueError('this run trained on a converted generator '
                     f'({config.model.generator_path}), not the synthetic world; '
                     'evaluate it on a folder instead')
  # Architecture first: a mismatch is then reported before the world is built.
  for field in GENERATOR_FIELDS:
    if int(config.synthetic[field]) != int(getattr(inverter.generator, field)):
      raise ValueError(f'the checkpoint\'s generator is not the synthetic world of this '
                       f'config: config.synthetic.{field}={config.synthetic[field]} but the '
                       f'checkpoint has {field}={getattr(inverter.generator, field)}; pass the '
                       'config the run was trained with (--config)')
  world = synthetic.build_world(config.synthetic)
  _check_same_generator(world, inverter)
  # chunk: the draws of train.py's held-out set (training.setup.eval_iterator_fn).
  held = synthetic.heldout_set(world, config.synthetic.num_heldout,
                               config.synthetic.heldout_seed, chunk=config.batch_size,
                               families=None if family is None else (family,))
  held = {k: v[:limit] for k, v in held.items()}
  if world.size != inverter.encoder_size:
    raise ValueError(f'the synthetic images are {world.size} px but the encoder takes '
                     f'{inverter.encoder_size} px')
  for start in range(0, len(held['image']), batch_size):
    yield _pad({k: v[start:start + batch_size] for k, v in held.items()}, batch_size)


def _check_same_generator(world, inverter) -> None:
  """Refuses a checkpoint whose generator is not the synthetic world's."""
  a = jax.tree_util.tree_leaves(world.variables)
  b = jax.tree_util.tree_leaves(inverter.generator_variables)
  same = (len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
          and all(np.allclose(np.asarray(x), np.asarray(y), atol=1e-5) for x, y in zip(a, b)))
  if not same:
    raise ValueError('the checkpoint\'s generator weights are not the synthetic world of '
                     'this config (was the run trained with another config.synthetic.seed '
                     'or image_std?); pass the config the run was trained with (--config)')


def evaluate(inverter, batches, n_iters: int, lpips_net=None, arcface_net=None,
             mesh: Optional[Mesh] = None, total: Optional[int] = None,
             progress: bool = False, paper_id=None) -> Dict[str, Any]:
  """Averages the per-image metrics of every iteration over a dataset.

  Args:
    inverter: an ``inference.Inverter``.
    batches: iterable of dicts 'image', 'mask', 'target', 'valid' (and
      optionally 'latent', and 'read': inputs read for the batch, for the
      progress bar), batch size a multiple of the local device count.
    n_iters: refinement iterations T.
    lpips_net: ``(module, variables)`` or None.
    arcface_net: ``(module, variables)`` or None.
    mesh: device mesh (default: all local devices).
    total: number of inputs, for the progress bar.
    progress: show a tqdm progress bar on stderr.
    paper_id: an ``id_metric.PaperID``: adds the paper protocol's
      ``metrics['id_paper']`` and its counts under ``'id_paper'``.

  Returns:
    ``{'n_images': N, 'n_iters': T, 'metrics': {name: [mean at t = 1..T]}}``.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  mesh = make_mesh() if mesh is None else mesh
  fn = make_eval_fn(inverter, n_iters, mesh, lpips_net and lpips_net[0],
                    arcface_net and arcface_net[0], return_images=paper_id is not None)
  paper = None if paper_id is None else id_metric.PaperIDAccumulator(paper_id, n_iters)
  avg = xla_options.jit(functools.partial(average_image, inverter.generator),
                        static_argnames='encoder_size')(inverter.generator_variables,
                                                inverter.latent_avg,
                                                encoder_size=inverter.encoder_size)
  variables = {'encoder': inverter.encoder_variables, 'generator': inverter.generator_variables,
               'latent_avg': inverter.latent_avg, 'avg_image': avg}
  if lpips_net is not None:
    variables['lpips'] = lpips_net[1]
  if arcface_net is not None:
    variables['arcface'] = arcface_net[1]
  sums: Dict[str, np.ndarray] = {}
  count = 0.0
  bar = tqdm(total=total, unit='img', desc='evaluating', disable=not progress, file=sys.stderr)
  for batch in batches:
    valid = batch.pop('valid')
    read = batch.pop('read', None)
    paths = batch.pop('path', None)
    res = fn(variables, batch)
    images = res.pop('images', None)
    if paper is not None:
      paper.add(images, batch['target'], valid, paths)
    for k, v in res.items():
      # float64 on the host: thousands of images without accumulation drift.
      sums[k] = sums.get(k, 0.0) + np.sum(np.asarray(v, np.float64) * valid[None], axis=1)
    count += float(valid.sum())
    bar.update(int(valid.sum()) if read is None else read)
  bar.close()
  if count == 0:
    raise ValueError('no image could be evaluated')
  order = metrics.metric_names(lpips_net is not None, arcface_net is not None)
  order += tuple(k for k in sorted(sums) if k not in order)  # latent_mse
  out = {'n_images': int(count), 'n_iters': n_iters,
         'metrics': {k: [float(x) for x in sums[k] / count] for k in order}}
  if paper is not None:
    out['id_paper'] = paper.result()
    out['metrics']['id_paper'] = out['id_paper']['mean']  # None where no pair was scored
  return out


def format_table(result: Dict[str, Any]) -> str:
  """The metrics as a text table: one row per metric, one column per iteration.

  Args:
    result: the dict :func:`evaluate` returns.

  Returns:
    The table.
  """
  t = result['n_iters']
  head = f'{"metric":<18}' + ''.join(f'{f"iter {i + 1}":>12}' for i in range(t))
  lines = [head, '-' * len(head)]
  for name, values in result['metrics'].items():
    lines.append(f'{name:<18}' + ''.join('         n/a' if v is None else f'{v:>12.5f}'
                                         for v in values))
  return '\n'.join(lines)


def load_net(flag: str, path: str, kind: str, loader, size: int):
  """Loads an LPIPS / ArcFace directory and checks it can run at the encoder size.

  The check traces the metric with ``jax.eval_shape`` (no computation), so
  variables that do not fit the architecture in model.json fail here, before
  any inversion, instead of in the first evaluated batch.

  Args:
    flag: the option that named it ('--lpips').
    path: the directory.
    kind: 'lpips' or 'arcface' (for messages).
    loader: ``load_lpips`` / ``load_arcface``.
    size: encoder input side (the images the metric will see).

  Returns:
    ``(module, variables)``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    artifacts.ArtifactError: the directory is not a usable model of ``kind``
      (the message names the flag, the directory and the fix).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'{flag} {path} does not exist')
  fix = f'convert it again with `python -m interestyle_jax.convert {kind}`'
  try:
    net = loader(path)
  except artifacts.ArtifactError as e:
    raise artifacts.ArtifactError(f'{flag}: {e}') from e
  except (KeyError, TypeError, ValueError) as e:  # model.json fields the module does not take
    raise artifacts.ArtifactError(f'{flag} {path} is not a usable {kind} model '
                                  f'({type(e).__name__}: {e}); {fix}') from e
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  fn = metrics.lpips if kind == 'lpips' else metrics.id_similarity
  try:
    jax.eval_shape(lambda a: fn(net, a, a), x)
  except Exception as e:  # pylint: disable=broad-except
    # Flax raises its own error types for missing / mis-shaped variables;
    # whatever fails while tracing the metric, the stored model is unusable.
    first = (str(e).strip().splitlines() or [''])[0][:300]
    raise artifacts.ArtifactError(f'{flag} {path}: its variables do not fit the {kind} model '
                                  f'in its model.json ({type(e).__name__}: {first}); {fix}') from e
  return net


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.evaluate', formatter_class=cli_utils.HelpFormatter,
      description='MSE / SSIM / LPIPS / ID similarity of the inversions, whole image and '
                  'interest region, after every refinement iteration. Exit status 2 for an '
                  'unusable checkpoint, network, data folder or argument.')
  p.add_argument('--checkpoint', required=True,
                 help='`convert restyle` directory or train.py workdir')
  p.add_argument('--data', required=True,
                 help="folder with images/ and masks/, 'synthetic' (the held-out set "
                      'of the training world; needs a train.py workdir or --config) or '
                      "'synthetic:FAMILY' (those images with one uninterest family, e.g. "
                      "'synthetic:skin')")
  p.add_argument('--n_iters', type=int, default=None,
                 help="refinement iterations (default: the model's)")
  p.add_argument('--batch_size', type=int, default=8,
                 help='images per step over all local devices (rounded up to a multiple '
                      'of the device count)')
  p.add_argument('--lpips', default=None, help='`convert lpips` directory (adds LPIPS)')
  p.add_argument('--arcface', default=None,
                 help='`convert irse50` directory (adds ID similarity)')
  p.add_argument('--id_protocol', choices=('fast', 'paper'), default='fast',
                 help="ID similarity: 'fast' = --arcface on ReStyle's fixed face box (the "
                      "training loss's network); 'paper' = MTCNN-aligned faces embedded by "
                      'CurricularFace IR-101, as the paper reports (needs --curricularface, '
                      '--mtcnn)')
  p.add_argument('--curricularface', default=None,
                 help='`convert curricularface` directory (--id_protocol paper)')
  p.add_argument('--mtcnn', default=None, help='`convert mtcnn` directory (--id_protocol paper)')
  p.add_argument('--config', default=None,
                 help="training config for --data synthetic (default: WORKDIR/config.json)")
  p.add_argument('--limit', type=int, default=None,
                 help='evaluate only the first N images (default: all)')
  p.add_argument('--output', default=None,
                 help='JSON file to write the results to (default: none, only printed)')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  return p


def _print_skipped(skipped: List[Tuple[str, str]]) -> None:
  for file, reason in skipped:
    print(f'skipped {file}: {reason}', file=sys.stderr)


def main(argv=None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    0 on success, 2 for an unusable checkpoint, network, data or argument.
  """
  args = build_parser().parse_args(argv)
  for name in ('n_iters', 'batch_size', 'limit'):
    value = getattr(args, name)
    if value is not None and value < 1:
      print(f'error: --{name} must be >= 1, got {value}', file=sys.stderr)
      return 2
  problem = id_metric.check_args(args.id_protocol, args.arcface, args.curricularface,
                                 args.mtcnn)
  if problem:
    print(f'error: {problem}', file=sys.stderr)
    return 2
  n_dev = jax.local_device_count()
  batch_size = -(-args.batch_size // n_dev) * n_dev
  skipped: List[Tuple[str, str]] = []
  try:
    if args.output is not None:
      cli_utils.check_output_file(args.output, '--output', example='evaluation.json')
    inverter = load_inverter(args.checkpoint)
    n_iters = args.n_iters or inverter.n_iters
    from interestyle_jax.models.arcface import load_arcface  # pylint: disable=g-import-not-at-top
    from interestyle_jax.models.lpips import load_lpips  # pylint: disable=g-import-not-at-top
    size = inverter.encoder_size
    lpips_net = load_net('--lpips', args.lpips, 'lpips', load_lpips, size) if args.lpips else None
    arcface_net = (load_net('--arcface', args.arcface, 'arcface', load_arcface, size)
                   if args.arcface else None)
    paper_id = (id_metric.load_paper_id(args.curricularface, args.mtcnn)
                if args.id_protocol == 'paper' else None)
    source, _, family = args.data.partition(':')
    if source == 'synthetic' and not os.path.isdir(args.data):
      if family:
        synthetic_families.check_families((family,), f'--data {args.data}')
      config = load_training_config(_workdir_of(args.checkpoint), args.config)
      total = config.synthetic.get('num_heldout')
      total = min(total, args.limit) if total and args.limit else total
      batches = synthetic_batches(inverter, config, batch_size, args.limit, family or None)
    else:
      pairs = folder.pair_folder(args.data)[:args.limit]
      total = len(pairs)
      batches = folder_batches(args.data, size, batch_size, args.limit, skipped, pairs=pairs)
    result = evaluate(inverter, batches, n_iters, lpips_net, arcface_net, total=total,
                      progress=not args.no_progress, paper_id=paper_id)
  except (FileNotFoundError, artifacts.ArtifactError, folder.DataValidationError,
          ValueError) as e:  # OutputPathError is a ValueError
    _print_skipped(skipped)
    print(f'error: {e}', file=sys.stderr)
    return 2
  _print_skipped(skipped)
  result.update(checkpoint=args.checkpoint, data=args.data, devices=n_dev,
                id_protocol=args.id_protocol,
                skipped=[{'file': f, 'reason': r} for f, r in skipped])
  print(format_table(result))
  print(f'{result["n_images"]} image(s), {n_dev} device(s)'
        + (f', {len(skipped)} skipped' if skipped else ''))
  if 'id_paper' in result:
    print(id_metric.format_summary(result['id_paper']))
  if args.output is not None:
    cli_utils.save_json(result, args.output)
    print(f'wrote {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

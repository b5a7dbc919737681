"""Scoring an inverter on a test set: the library behind ``python -m interestyle_jax.evaluate``.

:func:`evaluate` runs the refinement (``inference.refine``, the function of
training's validation and the ``Inverter``) over batches and averages the
per-image metrics of every iteration (:mod:`interestyle_jax.metrics`), on the
whole image and on the interest region. Batches come from a paired
``images/`` + ``masks/`` folder (:func:`folder_batches`) or from the synthetic
world's held-out set rebuilt from a training config (:func:`synthetic_batches`).
The batch is split over the local devices (``jax.jit`` of ``jax.shard_map``,
axis 'batch'). Used by the ``evaluate`` and ``ablate`` commands.
"""

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

from interestyle_jax import artifacts, id_metric, inference, metrics, synthetic
from interestyle_jax.data import folder
from interestyle_jax.inference import average_image, resolve_model_dir
from interestyle_jax.ops import xla_options
from interestyle_jax.ops.pooling import adaptive_avg_pool2d
from interestyle_jax.photos import too_small

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


def workdir_of(checkpoint: str) -> str:
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
  if config.model.get('generator_path'):
    raise ValueError('this run trained on a converted generator '
                     f'({config.model.generator_path}), not the synthetic world; '
                     'evaluate it on a folder instead')
  # Architecture first: a mismatch is then reported before the world is built.
  for field in synthetic.GENERATOR_FIELDS:
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

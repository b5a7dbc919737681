"""TFDS builder for paired images and interest masks read from folders.

Nothing is downloaded: ``download_and_prepare`` reads ``train_dir`` (and
``test_dir``), resizes every pair to ``image_size`` and writes a TFDS dataset
under the ``data_dir`` the caller chooses. The builder config's name is a
fingerprint of the folder paths, the paired file names, the size and the split
rule, so changing any of them prepares a new copy instead of reusing a stale
one. (Editing a file in place keeps its name: delete the prepared copy — the
``data_dir/interest_folder/<config>`` directory — to rebuild.)

Prepare from the command line (optional: the training input pipeline does it
on first use)::

  python -m interestyle_jax.data.folder_builder --train_dir=data/ffhq \
      --test_dir=data/celebahq_test --data_dir=data/tfds
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging as pylogging
import multiprocessing
import os
import sys
from typing import Dict, Iterable, Iterator, List, Optional

from absl import logging

from interestyle_jax.data import folder
from interestyle_jax.data.folder import DataValidationError, Pair
from interestyle_jax.data.tf_setup import import_tf

import_tf()  # before tensorflow_datasets imports TensorFlow itself
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,g-bad-import-order

DATASET_NAME = 'interest_folder'
# Reasons and stems kept in the dataset metadata (the counts are always exact).
MAX_RECORDED = 200
# Below this many pairs a split is decoded in-process: each spawned worker
# re-imports the main module (often TensorFlow and JAX, seconds), which costs
# more than decoding a few hundred images.
MIN_PAIRS_FOR_POOL = 256


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Where the folders are and how to turn them into examples.

  Attributes:
    train_dir: root with ``images/`` and ``masks/`` for the train split.
    test_dir: root for the test split; '' splits ``train_dir`` instead.
    image_size: output side in pixels (images and masks).
    test_fraction: with no ``test_dir``, the share of ``train_dir`` (chosen by
      a hash of the file stem) that forms the test split.
    masks: False: the roots hold ``images/`` only and every mask is all
      interest (the ReStyle baseline).
  """
  train_dir: str = ''
  test_dir: str = ''
  image_size: int = 256
  test_fraction: float = 0.0
  masks: bool = True


def scan(train_dir: str, test_dir: str = '', test_fraction: float = 0.0,
         masks: bool = True) -> Dict[str, List[Pair]]:
  """Lists and pairs the files of each split (cheap: no decoding).

  Args:
    train_dir: train root.
    test_dir: test root, or '' to hold out ``test_fraction`` of ``train_dir``.
    test_fraction: see :class:`FolderConfig`.
    masks: False: images only (see :class:`FolderConfig`).

  Returns:
    ``{'train': pairs, 'test': pairs}``; 'test' is absent when there is none.

  Raises:
    DataValidationError: missing folders or unpaired files (see
      :func:`folder.pair_folder`), or an empty split.
  """
  if not train_dir:
    raise DataValidationError(
        'data.train_dir is empty: set it to a folder holding images/ and masks/ '
        '(e.g. --config.data.train_dir=data/ffhq).')
  train = folder.pair_folder(train_dir, masks)
  if test_dir:
    splits = {'train': train, 'test': folder.pair_folder(test_dir, masks)}
  elif test_fraction > 0:
    tr, te = folder.split_pairs(train, test_fraction)
    splits = {'train': tr, 'test': te}
  else:
    splits = {'train': train}
  for name, pairs in splits.items():
    if not pairs:
      raise DataValidationError(
          f'the {name} split is empty (train_dir={train_dir!r}, test_dir={test_dir!r}, '
          f'test_fraction={test_fraction}); add files or raise test_fraction.')
  return splits


def make_config(train_dir: str, test_dir: str, image_size: int, test_fraction: float,
                splits: Dict[str, List[Pair]], masks: bool = True) -> FolderConfig:
  """Builds the config whose name fingerprints the data it describes.

  Args:
    train_dir: train root.
    test_dir: test root or ''.
    image_size: output side.
    test_fraction: hold-out share used when ``test_dir`` is ''.
    splits: the result of :func:`scan` for these arguments.
    masks: False: images only.

  Returns:
    A FolderConfig named ``s<size>_<hash>``.
  """
  listing = []
  for split, pairs in sorted(splits.items()):
    root = test_dir if (split == 'test' and test_dir) else train_dir
    # Paths relative to the root: the root itself is hashed separately.
    listing.append((split, [(p.stem, os.path.relpath(p.image_path, root),
                             os.path.relpath(p.mask_path, root) if p.mask_path else '')
                            for p in pairs]))
  # Without masks the fingerprint gains a field; with them it is as it always was
  # (datasets prepared before the option existed keep their names).
  extra = () if masks else ('no-masks',)
  tag = folder.fingerprint(_norm(train_dir), _norm(test_dir), image_size,
                           test_fraction if not test_dir else None, listing, *extra)
  return FolderConfig(
      name=f's{image_size}_{tag}',
      description=f'train_dir={train_dir} test_dir={test_dir or "-"} size={image_size}'
                  + ('' if masks else ' masks=none'),
      train_dir=train_dir, test_dir=test_dir, image_size=image_size,
      test_fraction=test_fraction, masks=masks)


def _norm(path: str) -> str:
  return path if (not path or '://' in path) else os.path.abspath(path)


def default_workers() -> int:
  """Processes used to decode and encode while preparing: one per CPU, at most 32."""
  return max(1, min(os.cpu_count() or 1, 32))


def _bounded_map(fn, items: Iterable, workers: int, window: int) -> Iterator:
  """``map(fn, items)`` on a process pool, in order, at most ``window`` ahead.

  Processes, not threads: Pillow holds the GIL while PNG-encoding, which is
  most of the work. 'spawn' because the parent may already run TensorFlow
  threads, which a fork would copy in an undefined state. The window bounds
  memory when the TFDS writer is slower than the workers.

  Spawned workers re-import the main module; where that fails (a script
  without an ``if __name__ == '__main__'`` guard, code piped through stdin)
  the pool breaks and the remaining items are processed in this process.
  """
  items = iter(items)
  if workers > 1:
    ctx = multiprocessing.get_context('spawn')
    pending = collections.deque()  # (item, future)
    try:
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for item in items:
          pending.append((item, pool.submit(fn, item)))
          if len(pending) >= window:
            yield pending[0][1].result()
            pending.popleft()
        while pending:
          yield pending[0][1].result()
          pending.popleft()
    except concurrent.futures.process.BrokenProcessPool as e:
      logging.warning('Worker processes failed to start (%s); preparing in this process. '
                      'Set data.prepare_workers=1 to skip the attempt.', e)
      items = itertools.chain((item for item, _ in pending), items)
  yield from map(fn, items)


class InterestFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Paired images and interest masks from ``ROOT/images`` + ``ROOT/masks``."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images uint8 [S,S,3] and masks uint8 [S,S,1] (255 = interest).'}

  # TFDS looks beside a builder's source for checksum and metadata files. This
  # one downloads nothing and ships none, and finding the source of a class
  # inside a package imports `importlib_resources`, which tensorflow-datasets
  # 4.9 uses without declaring it as a dependency.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, config: FolderConfig,
               splits: Optional[Dict[str, List[Pair]]] = None,
               strict: bool = False, workers: int = 0, **kwargs):
    """Creates the builder.

    Args:
      config: the FolderConfig (see :func:`make_config`).
      splits: pre-computed :func:`scan` result (avoids listing twice); scanned
        lazily from the config when None.
      strict: make unreadable files and all-zero masks errors, not warnings.
      workers: decoding processes while preparing; 0 = :func:`default_workers`,
        1 = decode in this process.
      **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (e.g. data_dir).
    """
    self._splits = splits
    self._strict = strict
    self._workers = workers or default_workers()
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='Face images with interest-region masks (face + hair).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), encoding_format='png'),
            'mask': tfds.features.Image(shape=(s, s, 1), encoding_format='png'),
            'stem': tfds.features.Text(),
        }),
        # Per-split report of skipped files and empty masks, saved with the
        # dataset so that later runs (and `strict`) still see it.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the folders are read in place
    cfg = self.builder_config
    if self._splits is None:
      self._splits = scan(cfg.train_dir, cfg.test_dir, cfg.test_fraction, cfg.masks)
    return {name: self._generate_examples(name, pairs) for name, pairs in self._splits.items()}

  def _generate_examples(self, split: str, pairs: List[Pair]):
    size = self.builder_config.image_size
    skipped, empty, rescaled, non_square, kept = [], [], 0, 0, 0

    load = functools.partial(folder.load_and_encode, size=size)
    workers = self._workers if len(pairs) >= MIN_PAIRS_FOR_POOL else 1
    for ex, record in _bounded_map(load, pairs, workers, window=8 * workers):
      if ex.problem:
        skipped.append(ex.stem + ': ' + ex.problem)
        continue
      if ex.mask_empty:
        empty.append(ex.stem)
      rescaled += ex.mask_rescaled
      non_square += ex.non_square
      kept += 1
      yield ex.stem, record  # pre-encoded PNG bytes are stored as they are
    report = {'num_files': len(pairs), 'num_examples': kept,
              'num_skipped': len(skipped), 'skipped': skipped[:MAX_RECORDED],
              'num_empty_masks': len(empty), 'empty_masks': empty[:MAX_RECORDED],
              'num_rescaled_masks': rescaled, 'num_non_square': non_square}
    self.info.metadata[split] = report
    check_report(split, report, self._strict, folder_hint=self._split_dir(split))

  def _split_dir(self, split: str) -> str:
    cfg = self.builder_config
    return cfg.test_dir if (split == 'test' and cfg.test_dir) else cfg.train_dir


def check_report(split: str, report: dict, strict: bool, folder_hint: str = '') -> None:
  """Logs (or, under ``strict``, raises on) the problems found while preparing.

  Args:
    split: split name, for the messages.
    report: the per-split dict stored in the dataset metadata.
    strict: raise DataValidationError instead of warning.
    folder_hint: the dataset root, for the messages.
  """
  where = f'{split} split ({folder_hint})' if folder_hint else f'{split} split'
  problems = []
  if report['num_skipped']:
    problems.append(
        f'{report["num_skipped"]} of {report["num_files"]} image/mask pairs in the {where} '
        'are unreadable or truncated and were skipped:\n  ' +
        '\n  '.join(report['skipped'][:folder.MAX_LISTED]) +
        ('\n  …' if report['num_skipped'] > folder.MAX_LISTED else '') +
        '\nRe-download or re-export those files, or delete both files of each pair.')
  if report['num_empty_masks']:
    problems.append(
        f'{report["num_empty_masks"]} mask(s) in the {where} are all zero (no interest '
        f'region, so no reconstruction loss): {folder.list_examples(report["empty_masks"])}. '
        'Check the face parser output for those images (make_masks --classes) or remove them.')
  if report.get('num_rescaled_masks'):
    logging.warning('%d mask(s) in the %s store 0/1 instead of 0/255 and were scaled by 255.',
                    report['num_rescaled_masks'], where)
  if report.get('num_non_square'):
    logging.warning('%d image(s) in the %s are not square; they were resized to a square, '
                    'changing their aspect ratio (masks alike, so they stay aligned).',
                    report['num_non_square'], where)
  if strict and problems:
    raise DataValidationError('strict mode (data.strict=True): ' + '\n'.join(problems) +
                              '\nOr set data.strict=False to skip and continue.')
  for p in problems:
    logging.warning('%s', p)
  if report['num_examples'] == 0:
    raise DataValidationError(f'no usable example in the {where}: every pair was skipped.')


class _DropCustomConfigNote(pylogging.Filter):
  """Drops TFDS's 'Using custom data configuration' note.

  Every config of this builder is custom (named after the folders), so the
  note — a full dataclass repr, at WARNING level — says nothing useful.
  """

  def filter(self, record):
    return not str(record.msg).startswith('Using custom data configuration')


@contextlib.contextmanager
def _quiet_custom_config_note():
  logger, note = logging.get_absl_logger(), _DropCustomConfigNote()
  logger.addFilter(note)
  try:
    yield
  finally:
    logger.removeFilter(note)


def prepare(train_dir: str, test_dir: str = '', *, image_size: int = 256, data_dir: str,
            test_fraction: float = 0.0, strict: bool = False, workers: int = 0,
            process_index: int = 0, build: bool = True, masks: bool = True) -> InterestFolder:
  """Validates the folders, prepares the dataset if needed, and returns the builder.

  Pairing errors are raised before any decoding. On an already prepared copy
  the report saved with it is logged again (or raised under ``strict``).

  Args:
    train_dir: train root (``images/`` + ``masks/``).
    test_dir: test root, or '' (see ``test_fraction``).
    image_size: output side in pixels.
    data_dir: where TFDS writes the prepared dataset.
    test_fraction: held-out share of ``train_dir`` when ``test_dir`` is ''.
    strict: unreadable files and all-zero masks are errors.
    workers: decoding processes; 0 = one per CPU (at most 32), 1 = in process.
    process_index: only used to keep the report from being logged by every
      host of a multi-host job.
    build: prepare the dataset when it is missing; False only validates the
      pairing and returns the (possibly unprepared) builder.
    masks: False: the roots hold images/ only; every mask is all interest.

  Returns:
    The prepared builder; ``builder.as_dataset(split)`` reads it.
  """
  if image_size <= 0:
    raise DataValidationError(f'data.image_size must be positive, got {image_size}')
  splits = scan(train_dir, test_dir, test_fraction, masks)
  config = make_config(train_dir, test_dir, image_size, test_fraction, splits, masks)
  with _quiet_custom_config_note():
    builder = InterestFolder(config=config, splits=splits, strict=strict, workers=workers,
                             data_dir=data_dir)
  if builder.is_prepared():
    for split, report in sorted(builder.info.metadata.items()):
      if process_index == 0 or strict:
        check_report(split, report, strict, folder_hint=builder._split_dir(split))  # pylint: disable=protected-access
  elif build:
    logging.info('Preparing %s/%s in %s from %s', DATASET_NAME, config.name, data_dir,
                 config.description)
    builder.download_and_prepare()
  return builder


def main(argv=None) -> int:
  """CLI: validate and prepare a folder dataset; prints the split sizes."""
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog='python -m interestyle_jax.data.folder_builder',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--train_dir', required=True, help='root with images/ and masks/')
  p.add_argument('--test_dir', default='', help="test root ('' = hold out --test_fraction)")
  p.add_argument('--data_dir', required=True, help='where TFDS writes the prepared copy')
  p.add_argument('--image_size', type=int, default=256)
  p.add_argument('--test_fraction', type=float, default=0.0)
  p.add_argument('--strict', action='store_true', help='unreadable files / empty masks are errors')
  p.add_argument('--workers', type=int, default=0, help='decoding processes (0 = one per CPU, 1 = in process)')
  p.add_argument('--no_masks', action='store_true',
                 help='the roots hold images/ only; every mask is all interest')
  a = p.parse_args(argv)
  try:
    b = prepare(a.train_dir, a.test_dir, image_size=a.image_size, data_dir=a.data_dir,
                test_fraction=a.test_fraction, strict=a.strict, workers=a.workers,
                masks=not a.no_masks)
  except DataValidationError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for split, info in b.info.splits.items():
    print(f'{split}: {info.num_examples} examples')
  print(f'prepared in {b.data_dir}')
  return 0


if __name__ == '__main__':
  # Run the CLI from the module imported under its package name: TFDS looks
  # up a builder's package, and a class defined in `__main__` has none.
  from interestyle_jax.data import folder_builder as _module  # pylint: disable=g-import-not-at-top,import-self
  raise SystemExit(_module.main())

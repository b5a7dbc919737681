"""Orbax checkpoints of the TrainState and the exported inference model.

``WORKDIR/checkpoints/<step>``: the latest ``keep`` states (resume point).
``WORKDIR/best/<step>``: the state with the lowest validation loss.
``WORKDIR/inference/``: a ``restyle`` model directory (``model.json`` +
Orbax arrays) that ``interestyle_jax.load_inverter(WORKDIR)`` reads; it holds
the latest or the best state (``config.export``) and is rewritten atomically.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted run never leaves a partial checkpoint behind. It does not
notice a checkpoint damaged afterwards (a truncated file, flipped bytes, a
deleted file): some damage raises deep inside the restore and some restores
wrong numbers silently. So each step directory also gets ``DIGEST_FILE``: the
SHA-256 of every array of the saved state, checked after a restore, and the
size and SHA-256 of every file Orbax wrote for the state, checked *before* it.
The file check keeps Orbax away from a step with a missing or altered file:
its asynchronous reader then fails with thousands of lines of tracebacks from
abandoned reads (and some damage only shows as wrong numbers). A step that
fails either check or the restore is moved to ``WORKDIR/checkpoints_corrupt/``
and the next older one is used.
"""

import glob
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from interestyle_jax import artifacts
from interestyle_jax.training import distributed
from interestyle_jax.training import workdir as workdir_lib
from interestyle_jax.training.config import ConfigError

BEST_METRIC = 'val_loss'
DIGEST_FILE = 'interestyle_digest.json'
CORRUPT_DIR = 'checkpoints_corrupt'
INFERENCE_DIR = 'inference'


class CheckpointError(ConfigError):
  """No checkpoint of a workdir can be restored (one line, with the fix)."""


def state_digest(state) -> Dict[str, str]:
  """SHA-256 of every array of a (replicated) state, by tree path.

  Args:
    state: a pytree of arrays; jax.Arrays must be fully replicated or
      addressable (the TrainState is replicated over the mesh).

  Returns:
    dict path → hex digest of dtype, shape and bytes.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.Array):
      # One local copy: on multi-host jobs the global array is not addressable.
      leaf = leaf.addressable_data(0)
    a = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def _state_item_dir(step_dir: str) -> str:
  """The folder of a step holding the TrainState (StandardSave's single item)."""
  return os.path.join(step_dir, 'default')


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def file_digest(step_dir: str) -> Dict[str, Dict[str, Any]]:
  """Size and SHA-256 of every file of a step's state folder.

  Only the state item's folder is listed: Orbax may rewrite the step's
  top-level metadata after the save, never the arrays.

  Args:
    step_dir: a finished step directory (``checkpoints/<step>``).

  Returns:
    dict path relative to ``step_dir`` → ``{'size', 'sha256'}``; empty when the
    step has no state folder in the expected layout.
  """
  out = {}
  for folder, _, names in os.walk(_state_item_dir(step_dir)):
    for name in sorted(names):
      path = os.path.join(folder, name)
      out[os.path.relpath(path, step_dir)] = {'size': os.path.getsize(path),
                                              'sha256': _file_sha256(path)}
  return out


def check_files(step_dir: str, want: Dict[str, Dict[str, Any]]) -> None:
  """Raises ValueError naming the files of ``step_dir`` missing or changed since the save.

  Args:
    step_dir: the step directory.
    want: ``file_digest(step_dir)`` as recorded at save time.
  """
  missing, changed = [], []
  for rel, meta in sorted(want.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      missing.append(rel)
    elif os.path.getsize(path) != meta['size']:
      changed.append(f'{rel} ({meta["size"]} bytes at save time, now {os.path.getsize(path)})')
  if not missing and not changed:  # only then is reading every byte worth it
    changed = [f'{rel} (content)' for rel, meta in sorted(want.items())
               if _file_sha256(os.path.join(step_dir, rel)) != meta['sha256']]
  if missing or changed:
    parts = []
    if missing:
      parts.append(f'{len(missing)} file(s) missing (first: {missing[0]})')
    if changed:
      parts.append(f'{len(changed)} file(s) changed (first: {changed[0]})')
    raise ValueError(f'{" and ".join(parts)} of the {len(want)} listed in {DIGEST_FILE} at '
                     'save time')


def _first_line(error: BaseException, limit: int = 200) -> str:
  text = str(error).strip().splitlines()
  text = text[0] if text else ''
  if len(text) > limit:
    text = text[:limit] + '…'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """The 'latest' and 'best' checkpoint managers of a workdir.

  Args:
    workdir: the training workdir.
    keep: latest checkpoints to keep.
    on_new_best: called as ``on_new_best(step, state)`` after a new best state
      is saved (the loop exports it when ``config.export == 'best'``).
  """

  def __init__(self, workdir: str, keep: int,
               on_new_best: Optional[Callable[[int, Any], None]] = None):
    self.workdir = os.path.abspath(workdir)
    self.on_new_best = on_new_best
    self.latest = ocp.CheckpointManager(
        os.path.join(self.workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = self._open_best()

  def _open_best(self):
    """The best/ manager; steps whose metrics file is damaged are moved aside.

    Orbax reads every step's metrics when the manager opens, so one damaged
    file would stop the run before anything can fall back.
    """
    path = os.path.join(self.workdir, 'best')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m[BEST_METRIC], best_mode='min',
        keep_checkpoints_without_metrics=False)
    try:
      return ocp.CheckpointManager(path, options=options)
    except Exception as first:  # pylint: disable=broad-except
      moved = []
      for name in sorted(os.listdir(path)):
        metrics = os.path.join(path, name, 'metrics', 'metrics')
        if not name.isdigit() or not os.path.exists(metrics):
          continue
        try:
          with open(metrics) as f:
            float(json.load(f)[BEST_METRIC])
        except Exception as e:  # pylint: disable=broad-except
          src = os.path.join(path, name)
          moved.append((src, self._move_aside(path, int(name), 'best-'), _first_line(e)))
      _barrier('interestyle_best_move_aside')
      if not moved:
        raise CheckpointError(
            f'{path} cannot be opened ({_first_line(first)}); move it aside (or restore '
            'it from a backup) and re-run: a new best checkpoint is kept from the next '
            'validation') from first
      for src, dst, error in moved:
        logging.warning('Best checkpoint %s has a damaged metrics file (%s); moved it to %s',
                        src, error, dst)
      return ocp.CheckpointManager(path, options=options)

  def latest_step(self) -> Optional[int]:
    """Step of the newest complete checkpoint, or None."""
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    """Step of the kept best checkpoint, or None."""
    return self.best.best_step()

  @staticmethod
  def _step_dir(manager, step: int) -> str:
    """``manager`` may also be the manager's directory."""
    root = manager if isinstance(manager, str) else str(manager.directory)
    return os.path.join(root, str(step))

  def _save(self, manager, step: int, state, **kwargs) -> None:
    """Saves ``state`` and, once it is on disk, its digest into the step dir."""
    digest = state_digest(state)
    step_dir = self._step_dir(manager, step)
    try:
      with artifacts.reported_as_one_error(step_dir):
        manager.save(step, args=ocp.args.StandardSave(state), force=True, **kwargs)
        # The digest goes into the finished step directory, so the save must be
        # complete: checkpoints are minutes apart, the wait costs the write time.
        manager.wait_until_finished()
    except artifacts.NoSpaceError:
      if jax.process_index() == 0:  # Orbax leaves the unfinished step's temporary folder
        for leftover in glob.glob(glob.escape(step_dir) + '.orbax-checkpoint-tmp*'):
          shutil.rmtree(leftover, ignore_errors=True)
      raise
    if jax.process_index() == 0 and os.path.isdir(step_dir):  # best/ may have dropped it
      record = {'step': int(step), 'sha256': digest, 'files': file_digest(step_dir)}
      workdir_lib.write_atomic(os.path.join(step_dir, DIGEST_FILE),
                               json.dumps(record, indent=1, sort_keys=True))

  def _restore(self, manager, step: int, template):
    """Restores ``step`` and checks it against its digest; raises if damaged."""
    step_dir = self._step_dir(manager, step)
    path = os.path.join(step_dir, DIGEST_FILE)
    record = None
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      if record.get('files'):  # digests written before the file list have none
        check_files(step_dir, record['files'])
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    with artifacts.quiet_failed_restore():
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    if record is None:
      # Written before digests existed, or the run died between the save and
      # the digest: nothing to compare with, Orbax's own checks only.
      logging.info('%s has no %s; restored without a content check', step_dir, DIGEST_FILE)
      return state
    want = record['sha256']
    got = state_digest(state)
    if got != want:
      bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
      raise ValueError(f'{len(bad)} of {len(want)} arrays differ from the {DIGEST_FILE} '
                       f'written at save time (first: {bad[0]})')
    return state

  def _try_restore(self, manager, step: int, template):
    """``(state, None)``, or ``(None, error)`` when any process failed to restore ``step``.

    Every process must restore the same step: one that fell back alone would
    train from other weights, or wait forever in a collective.
    """
    state = error = None
    try:
      state = self._restore(manager, step, template)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for damaged files
      # (JSONDecodeError, ValueError, plain Exception, FileNotFoundError).
      error = _first_line(e)
    if not distributed.all_true(error is None) and error is None:
      state, error = None, 'restored here, but not on another process of the job'
    return state, error

  def _move_aside(self, manager, step: int, prefix: str) -> str:
    """Moves a damaged step directory to WORKDIR/checkpoints_corrupt/ (kept, not deleted)."""
    src = self._step_dir(manager, step)
    base = os.path.join(self.workdir, CORRUPT_DIR,
                        f'{prefix}{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    dst, n = base, 1
    while os.path.exists(dst):  # the same step moved twice within a second
      dst, n = f'{base}.{n}', n + 1
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.rename(src, dst)
    return dst

  def _restore_newest(self, manager, template, prefix: str):
    """Restores the newest step that is intact, moving newer damaged ones aside.

    Returns:
      ``(step, state, failures)``; ``step`` and ``state`` are None when no step
      restored, and then nothing was moved (``failures``: ``[(dir, error)]``).
    """
    failures: List[Tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
      state, error = self._try_restore(manager, step, template)
      if error is not None:
        failures.append((step, error))
        logging.warning('Checkpoint %s does not restore: %s',
                        self._step_dir(manager, step), error)
        continue
      if failures:
        moved = [(self._step_dir(manager, s), self._move_aside(manager, s, prefix))
                 for s, _ in failures]
        _barrier('interestyle_checkpoint_move_aside')
        manager.reload()  # Orbax caches its step list
        for src, dst in moved:
          if jax.process_index() == 0:  # the one process that moved it
            logging.warning('Moved the damaged checkpoint %s to %s; using step %d', src,
                            dst, step)
      return step, state, failures
    return None, None, failures

  def restore_latest(self, template):
    """Restores the newest intact state with the shardings of ``template``.

    Steps are tried newest first. One that raises or does not match its digest
    is logged; once an older step restores, the damaged newer ones are moved
    to ``WORKDIR/checkpoints_corrupt/<step>-<time>`` (outside Orbax's
    directory, so the run can save those steps again).

    Args:
      template: a TrainState of the right structure, placed as wanted.

    Returns:
      The restored state, or None when there is no checkpoint.

    Raises:
      CheckpointError: there are checkpoints but none restores. Nothing is
        moved then: the same damage on every step more likely means the
        checkpoints do not fit this code or config than that all are corrupt.
    """
    _, state, failures = self._restore_newest(self.latest, template, '')
    if state is None and failures:
      listed = '; '.join(f'{self._step_dir(self.latest, s)}: {e}' for s, e in failures)
      raise CheckpointError(
          f'no checkpoint in {self.latest.directory} restores ({listed}); nothing was '
          f'moved or deleted. If they are damaged, restore {self.latest.directory} from a '
          f'backup, or delete the workdir {self.workdir} (or its checkpoints/ and best/) '
          'to start over; if they were written by another version of the code or config, '
          'run that one')
    return state

  def restore_best(self, template) -> Optional[Tuple[int, Any]]:
    """Restores the kept best state, moving it aside if it is damaged.

    Args:
      template: a TrainState of the right structure, placed as wanted.

    Returns:
      ``(step, state)``, or None when there is no (intact) best checkpoint.
    """
    step = self.best.best_step()
    if step is None:
      return None
    state, error = self._try_restore(self.best, step, template)
    if error is None:
      return step, state
    dst = self._move_aside(self.best, step, 'best-')
    _barrier('interestyle_best_move_aside')
    self.best.reload()
    logging.warning('Best checkpoint %s does not restore (%s); moved it to %s',
                    self._step_dir(self.best, step), error, dst)
    return None

  def save(self, step: int, state) -> bool:
    """Saves ``state`` as the checkpoint of ``step`` (all processes call this).

    Args:
      step: training step.
      state: the TrainState.

    Returns:
      False when ``step`` is already saved (a finished run re-run), else True.
    """
    if step in self.latest.all_steps():
      logging.info('Checkpoint %d already exists; not saved again', step)
      return False
    self._save(self.latest, step, state)
    return True

  def best_value(self) -> Optional[float]:
    """Validation loss of the kept best checkpoint, or None."""
    step = self.best.best_step()
    if step is None:
      return None
    metrics = self.best.metrics(step)
    return None if metrics is None else float(metrics[BEST_METRIC])

  def maybe_save_best(self, step: int, state, val_loss: float) -> bool:
    """Saves ``state`` to best/ when ``val_loss`` beats the kept one.

    Calls ``on_new_best(step, state)`` after saving.

    Args:
      step: training step.
      state: the TrainState.
      val_loss: validation loss at ``step``.

    Returns:
      Whether it was saved.
    """
    best = self.best_value()
    if best is not None and not val_loss < best:
      return False
    if step in (self.best.all_steps() or []):
      return False
    self._save(self.best, step, state, metrics={BEST_METRIC: float(val_loss)})
    if self.on_new_best is not None:
      self.on_new_best(step, state)
    return True

  def wait(self) -> None:
    """Blocks until pending asynchronous writes are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    """Finishes writes and releases the managers."""
    self.latest.close()
    self.best.close()


def exported(workdir: str) -> Optional[Tuple[str, int]]:
  """Which state ``WORKDIR/inference`` holds.

  Args:
    workdir: the training workdir.

  Returns:
    ``(export, step)`` with export 'latest' or 'best' ('latest' for exports
    written before ``config.export`` existed), or None when there is no
    readable export.
  """
  path = os.path.join(os.path.abspath(workdir), INFERENCE_DIR)
  if not os.path.isdir(path):
    return None
  try:
    meta = artifacts.read_meta(path)
    return str(meta.get('export', 'latest')), int(meta['step'])
  except Exception:  # pylint: disable=broad-except
    return None  # unreadable: the caller rewrites it


def export_inference(workdir: str, encoder_kwargs: Dict[str, Any],
                     generator_kwargs: Dict[str, Any], encoder_variables,
                     generator_variables, latent_avg, encoder_size: int, n_iters: int,
                     step: int, extra_meta: Optional[Dict[str, Any]] = None) -> str:
  """Writes ``WORKDIR/inference`` (kind 'restyle') for ``load_inverter``.

  Only process 0 writes; other processes return immediately.

  Args:
    workdir: the training workdir.
    encoder_kwargs: BackboneEncoder keyword arguments.
    generator_kwargs: Generator keyword arguments.
    encoder_variables: ``{'params', 'batch_stats'}`` (fast weights).
    generator_variables: ``{'params', 'noises'}``.
    latent_avg: ``[n_styles, D]``.
    encoder_size: encoder input side.
    n_iters: refinement iterations the encoder was trained with.
    step: training step (recorded in the metadata).
    extra_meta: more JSON fields (the loop records ``export``: 'latest' or 'best').

  Returns:
    The directory path.
  """
  dst = os.path.join(os.path.abspath(workdir), INFERENCE_DIR)
  if jax.process_index() != 0:
    return dst
  to_host = lambda t: jax.tree.map(lambda a: np.asarray(jax.device_get(a)), t)
  tree = {'encoder': to_host(dict(encoder_variables)),
          'generator': to_host(dict(generator_variables)),
          'latent_avg': to_host(latent_avg)}
  enc = dict(encoder_kwargs)
  if enc.get('stage_units') is not None:
    enc['stage_units'] = [int(u) for u in enc['stage_units']]
  meta = {'kind': 'restyle', 'encoder': enc, 'generator': dict(generator_kwargs),
          'encoder_size': int(encoder_size), 'n_iters': int(n_iters), 'step': int(step),
          'source': 'train.py'}
  meta.update(extra_meta or {})
  return artifacts.save_artifact(dst, tree, meta, overwrite=True)

"""Model directories: an Orbax checkpoint of arrays plus a JSON of hyper-parameters.

A directory written by ``python -m interestyle_jax.convert …`` looks like::

    DST/
      model.json      # {"kind": "stylegan2", "format_version": 1, ...}
      variables/      # Orbax (StandardCheckpointer) tree of arrays

Writing goes to a hidden sibling directory
(``.DST.partial-<host>-<pid>-<random>``) that is renamed into place only once
everything is on disk, so a failed or interrupted write leaves no partial DST.
A failed write removes its own sibling; one left by a killed writer is removed
by the next write into the same parent folder (see :func:`remove_stale_partials`).
Reading needs neither torch nor the process that wrote it; a damaged directory
(unreadable ``model.json``, truncated arrays) raises :class:`ArtifactError`.
"""

import contextlib
import errno
import gc
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple

import jax
import numpy as np

FORMAT_VERSION = 1
META_FILE = 'model.json'
VARIABLES_DIR = 'variables'
# At most this many tensors are named in one non-finite warning.
MAX_NAMED = 12

# Warnings (non-finite tensors) go through Python logging so that library
# users can silence or capture them; the command-line tools print them.
logger = logging.getLogger('interestyle_jax.convert')


def _local_checkpointer():
  """A StandardCheckpointer that involves only this process.

  Model directories hold host-local NumPy arrays written by one process (process
  0 in train.py); Orbax's default would wait at a barrier for every process of
  a multi-host job, which never comes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def check_destination(dst: str, overwrite: bool = False) -> str:
  """Refuses an existing output directory unless ``overwrite``.

  Args:
    dst: the output directory.
    overwrite: whether replacing it is allowed.

  Returns:
    The absolute path.
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f'{dst} already exists; choose a new output directory '
                          'or pass overwrite=True (--overwrite on the CLI)')
  return dst


class ArtifactError(ValueError):
  """A model directory is missing, incomplete or of the wrong kind."""


# A writer whose liveness cannot be checked (another host, or the pre-pid name
# format) is presumed dead once its directory has not changed for this long: no
# model write takes a day, and a live one keeps touching its files.
STALE_AFTER_S = 24 * 3600
_PARTIAL_RE = re.compile(r'^\.(?P<name>.+)\.partial-(?:(?P<host>[A-Za-z0-9_.]+)-(?P<pid>[0-9]+)-)?'
                         r'(?P<token>[0-9a-f]{8})(?:\.old)?$')


def _host() -> str:
  # Only [A-Za-z0-9_.]: the name is parsed back by _PARTIAL_RE.
  return re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname() or 'host')


def partial_dir_name(dst: str) -> str:
  """The hidden sibling a write of ``dst`` goes to before its final rename.

  Args:
    dst: the output directory.

  Returns:
    ``PARENT/.NAME.partial-<host>-<pid>-<random>``: host and pid let a later
    write tell a dead writer's leftover from a running one.
  """
  dst = os.path.abspath(dst)
  return os.path.join(os.path.dirname(dst), f'.{os.path.basename(dst)}.partial-{_host()}-'
                                            f'{os.getpid()}-{uuid.uuid4().hex[:8]}')


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # EPERM: it exists, owned by someone else
    return True
  return True


def _newest_mtime(path: str) -> float:
  newest = os.lstat(path).st_mtime
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      try:
        newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
      except OSError:  # removed meanwhile
        pass
  return newest


def remove_stale_partials(parent: str, now: Optional[float] = None) -> List[str]:
  """Cleans up after writers that were killed in ``parent``.

  A write that is killed (SIGKILL, power loss) cannot clean up after itself;
  its ``.NAME.partial-…`` sibling stays. One is stale when its writer ran on
  this host and that process no longer exists, or, when that cannot be checked
  (another host sharing the folder, or an old-style name without a pid), when
  nothing in it changed for :data:`STALE_AFTER_S` seconds. Stale ones are
  deleted, except a ``….old`` directory whose ``NAME`` is missing: the writer
  died between moving the previous model aside and moving the new one in, so
  the previous model is put back. Directories of live writers (this process
  included) are left alone.

  Args:
    parent: the folder holding model directories.
    now: the current time (default ``time.time()``).

  Returns:
    The paths removed or restored.
  """
  now = time.time() if now is None else now
  try:
    names = os.listdir(parent)
  except OSError:
    return []
  cleaned = []
  for name in sorted(names):
    m = _PARTIAL_RE.match(name)
    path = os.path.join(parent, name)
    if not m or not os.path.isdir(path) or os.path.islink(path):
      continue
    if m['pid'] is not None and m['host'] == _host():
      stale = int(m['pid']) != os.getpid() and not _pid_alive(int(m['pid']))
    else:
      try:
        stale = now - _newest_mtime(path) > STALE_AFTER_S
      except OSError:
        continue
    if not stale:
      continue
    dst = os.path.join(parent, m['name'])
    if name.endswith('.old') and not os.path.lexists(dst):
      try:
        os.rename(path, dst)
        cleaned.append(path)
        continue
      except OSError:
        pass  # another writer is restoring it; it is theirs now
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.exists(path):
      cleaned.append(path)
  return cleaned


def save_artifact(dst: str, tree: Dict[str, Any], meta: Dict[str, Any],
                  overwrite: bool = False) -> str:
  """Atomically writes ``tree`` (arrays) and ``meta`` (JSON) to directory ``dst``.

  Args:
    dst: output directory; must not exist unless ``overwrite``.
    tree: nested dict of arrays (Flax variables and extras such as latent_avg).
    meta: JSON-serialisable hyper-parameters; must contain ``'kind'``.
    overwrite: replace an existing ``dst``.

  Returns:
    The absolute path written.
  """
  if 'kind' not in meta:
    raise ValueError("meta must name the artifact 'kind'")
  dst = check_destination(dst, overwrite)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  remove_stale_partials(parent)
  tmp = partial_dir_name(dst)
  old = tmp + '.old'
  try:
    os.makedirs(tmp)
    tree = jax.tree_util.tree_map(np.asarray, tree)
    with reported_as_one_error(dst):
      ckptr = _local_checkpointer()
      ckptr.save(os.path.join(tmp, VARIABLES_DIR), tree)
      ckptr.wait_until_finished()
      ckptr.close()
      with open(os.path.join(tmp, META_FILE), 'w') as f:
        json.dump(dict(meta, format_version=FORMAT_VERSION), f, indent=2, sort_keys=True)
    if os.path.exists(dst):
      os.rename(dst, old)
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    # Put the previous model back if the swap stopped half-way, then drop
    # this write's own partial directory.
    if os.path.isdir(old) and not os.path.exists(dst):
      os.rename(old, dst)
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def _is_abandoned_read_report(unraisable) -> bool:
  """Whether an unraisable report is the echo of a failed Orbax read.

  When one array of a damaged checkpoint fails, Orbax abandons the reads of
  all the others and ends its event loop. Each abandoned read coroutine is
  reported when garbage-collected (with the whole TensorStore spec), and
  TensorStore's completions of the reads still in flight arrive from its own
  threads at the closed loop ("RuntimeError: Event loop is closed").
  """
  code = getattr(unraisable.object, 'cr_code', None)
  if code is not None and 'orbax' in code.co_filename:
    return True
  return _is_closed_loop_report(unraisable)


def _is_closed_loop_report(unraisable) -> bool:
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed')


def _drop_closed_loop_reports() -> None:
  """From now on, drops the closed-loop echoes that arrive after a failed read."""
  previous = sys.unraisablehook
  if getattr(previous, '_drops_closed_loop', False):
    return

  def hook(unraisable):
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook._drops_closed_loop = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


@contextlib.contextmanager
def quiet_failed_restore(settle_s: float = 0.6, limit_s: float = 10.0):
  """Drops the echoes of a failed Orbax restore (or save) run inside the block.

  One missing array file otherwise prints tens of thousands of lines after
  the one-line error the caller reports (``_is_abandoned_read_report``);
  reports of anything else pass through. After a failure it waits until no
  echo has arrived for ``settle_s`` (at most ``limit_s``): TensorStore keeps
  completing reads after the restore has raised. Stragglers later still are
  dropped by a hook left in place that matches only the closed-loop echo.

  Args:
    settle_s: quiet time that ends the wait after a failure.
    limit_s: the longest wait.

  Yields:
    Nothing; exceptions of the block propagate.
  """
  previous = sys.unraisablehook
  dropped = [0]

  def hook(unraisable):
    if _is_abandoned_read_report(unraisable):
      dropped[0] += 1
    else:
      previous(unraisable)

  sys.unraisablehook = hook
  failed = True
  try:
    yield
    failed = False
  finally:
    gc.collect()  # the abandoned coroutines are reported here, under our hook
    if failed:
      start = last_change = time.monotonic()
      seen = dropped[0]
      while time.monotonic() - last_change < settle_s and time.monotonic() - start < limit_s:
        time.sleep(0.05)
        gc.collect()
        if dropped[0] != seen:
          seen, last_change = dropped[0], time.monotonic()
    sys.unraisablehook = previous
    if failed:
      _drop_closed_loop_reports()
    if dropped[0]:
      logger.info('Dropped %d reports of abandoned Orbax reads', dropped[0])


class NoSpaceError(OSError):
  """A write failed because its filesystem is full (one line: the path, the free space, the fix)."""

  def __init__(self, path: str):
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
      probe = os.path.dirname(probe)
    try:
      free = f'{shutil.disk_usage(probe).free / 2 ** 20:.1f} MiB free'
    except OSError:
      free = 'free space unknown'
    super().__init__(errno.ENOSPC, f'no space left on the device holding {path} ({free}): '
                     'free some space or write somewhere else; nothing half-written was kept')

  def __str__(self) -> str:
    return self.strerror


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or an exception it was raised from) is a full filesystem.

  Python raises ``OSError(ENOSPC)``; TensorStore, under Orbax, raises a
  ``ValueError`` whose text says RESOURCE_EXHAUSTED while writing.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if 'No space left on device' in text or ('RESOURCE_EXHAUSTED' in text and 'writ' in text):
      return True
    error = error.__cause__ or error.__context__
  return False


class _DropWriteFailureLogs(logging.Filter):
  """Orbax logs a failed write from each of its threads, tracebacks included."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not ('RESOURCE_EXHAUSTED' in text or 'No space left on device' in text)


@contextlib.contextmanager
def reported_as_one_error(path: str):
  """A full disk inside the block is one :class:`NoSpaceError` naming ``path``.

  Orbax's own reports of the failure (an ERROR log with a traceback from each
  of its writer threads, TensorStore's completions arriving at a closed event
  loop) are dropped: the caller reports the error once. Other errors
  propagate unchanged.

  Args:
    path: what was being written (named in the error).

  Yields:
    Nothing.

  Raises:
    NoSpaceError: the filesystem is full.
  """
  absl_logger = logging.getLogger('absl')
  drop = _DropWriteFailureLogs()
  absl_logger.addFilter(drop)
  try:
    with quiet_failed_restore():
      yield
  except Exception as e:  # pylint: disable=broad-except
    if is_disk_full(e):
      raise NoSpaceError(path) from e
    raise
  finally:
    absl_logger.removeFilter(drop)


def read_meta(path: str) -> Dict[str, Any]:
  """Reads ``model.json`` of a model directory.

  Args:
    path: the model directory.

  Returns:
    The metadata dict.
  """
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isdir(path):
    raise ArtifactError(f'{path} is not a directory; expected one written by '
                        '`python -m interestyle_jax.convert` or train.py')
  if not os.path.isfile(meta_path):
    raise ArtifactError(f'{path} has no {META_FILE}; it was not written by '
                        '`python -m interestyle_jax.convert` (or the write was '
                        'interrupted): convert the checkpoint again')
  try:
    with open(meta_path, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
    raise ArtifactError(f'{meta_path} cannot be read ({type(e).__name__}: {e}); the directory '
                        'is damaged: convert or export the model again') from e
  if not isinstance(meta, dict) or not isinstance(meta.get('kind'), str):
    raise ArtifactError(f'{meta_path} is not a model description (expected a JSON object with '
                        'a "kind" string); convert or export the model again')
  return meta


def non_finite_entries(named_arrays: Iterable[Tuple[str, Any]]
                       ) -> List[Tuple[str, int, int, int]]:
  """Floating-point arrays holding NaN or ±inf.

  Args:
    named_arrays: ``(name, array)`` pairs (numpy or array-likes).

  Returns:
    ``(name, n_nan, n_inf, size)`` for each array with a non-finite value.
  """
  out = []
  for name, arr in named_arrays:
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all():
      continue
    n_nan = int(np.isnan(arr).sum())
    out.append((name, n_nan, int(np.isinf(arr).sum()), int(arr.size)))
  return out


def warn_non_finite(source: str, entries: List[Tuple[str, int, int, int]],
                    when: str = 'converted') -> None:
  """Logs one warning naming every tensor with NaN/inf values (none: no-op).

  A checkpoint from a diverged run (or a corrupt download) converts without
  error, and its NaNs would then silently turn every output into NaN.

  Args:
    source: the file or directory the tensors come from.
    entries: from :func:`non_finite_entries`.
    when: 'converted' or 'loaded', for the message.
  """
  if not entries:
    return
  named = [f'{name} ({n_nan} NaN, {n_inf} inf of {size})'
           for name, n_nan, n_inf, size in entries[:MAX_NAMED]]
  if len(entries) > MAX_NAMED:
    named.append(f'and {len(entries) - MAX_NAMED} more')
  logger.warning(
      '%s: %d tensor(s) hold non-finite values, %s as they are (outputs computed from '
      'them will be NaN): %s. The checkpoint is corrupt or from a diverged run; '
      're-download or re-export it.', source, len(entries), when, '; '.join(named))


def load_artifact(path: str, expected_kind=None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Loads a model directory.

  Args:
    path: directory written by :func:`save_artifact`.
    expected_kind: a kind or tuple of kinds the directory must have.

  Returns:
    ``(meta, tree)`` with the arrays as ``jax.Array``.
  """
  path = os.path.abspath(path)
  meta = read_meta(path)
  if expected_kind is not None:
    kinds = (expected_kind,) if isinstance(expected_kind, str) else tuple(expected_kind)
    if meta.get('kind') not in kinds:
      raise ArtifactError(
          f'{path} holds a {meta.get("kind")!r} model, expected {" or ".join(kinds)}; '
          f'convert the right checkpoint with `python -m interestyle_jax.convert '
          f'{kinds[0]} SRC DST`')
  var_dir = os.path.join(path, VARIABLES_DIR)
  if not os.path.isdir(var_dir):
    raise ArtifactError(f'{path} has no {VARIABLES_DIR}/ checkpoint; convert again')
  ckptr = _local_checkpointer()
  try:
    with quiet_failed_restore():
      tree = ckptr.restore(var_dir)
  except Exception as e:  # pylint: disable=broad-except
    # Orbax / TensorStore report truncated or missing files as ValueError,
    # FileNotFoundError, JSONDecodeError…: all mean "damaged directory".
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
    raise ArtifactError(f'{var_dir} cannot be read ({type(e).__name__}: {first}); the arrays '
                        'are damaged or incomplete (an interrupted copy?): convert or export '
                        'the model again') from e
  finally:
    ckptr.close()
  if not isinstance(tree, dict):
    raise ArtifactError(f'{var_dir} holds no tree of arrays; convert or export the model again')
  # A directory written before the conversion-time warning existed, exported
  # from a diverged run, or edited since may hold NaNs; one host-side pass
  # is cheap next to reading the arrays from disk.
  warn_non_finite(path, non_finite_entries(
      (jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(tree)),
                  when='loaded')
  return meta, jax.tree_util.tree_map(jax.numpy.asarray, tree)

"""Safety checks of a training workdir, run before train.py writes anything.

- :func:`prepare`: the workdir is (or can be made) a directory.
- :func:`lock`: one train.py per workdir. Two runs on one workdir would
  interleave checkpoints, overwrite each other's export and metrics and race
  Orbax's step renames; the second is refused.
- :func:`check_resume`: a re-run resumes the saved encoder, so it must train
  the same model on the same data with the same recipe; fields that only say
  when, how often or how fast things happen may change (:data:`RESUMABLE`).
- :func:`write_config`: ``WORKDIR/config.json``, atomically, once the checks
  passed.

Every refusal is a :class:`WorkdirError` (a ``ConfigError``): one line naming
the file or field and the fix, printed by train.py without a traceback.
"""

import contextlib
import json
import os
import shlex
import socket
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional

from absl import logging

from interestyle_jax import cli_utils
from interestyle_jax.training.config import ConfigError, default_config

CONFIG_FILE = 'config.json'
LOCK_FILE = '.lock'

# Fields a re-run of a workdir may change, and why each is safe: none changes
# the model, the data or the optimisation a step performs, so the resumed run
# still is the run config.json describes. Every other field (model.*,
# synthetic.*, filter.*, loss.*, optim.*, seed, batch_size, dtype, data.source,
# the data roots, image size, test split and augmentation, and any field added
# later until it is listed here) is refused: resuming with it changed would
# continue the saved weights under another world or recipe, or crash in the
# restore with an unrelated shape error.
RESUMABLE = frozenset({
    'num_train_steps',  # How long: extending (or re-evaluating) a run is what resuming is for.
    'log_every_steps',  # When scalars are written.
    'eval_every_steps',  # When validation runs (best/ is chosen among more or fewer points).
    'checkpoint_every_steps',  # When checkpoints are written.
    'image_every_steps',  # When image grids are written.
    'num_grid_images',  # Rows of the image grids.
    'keep_checkpoints',  # How many latest checkpoints Orbax keeps.
    'profile_steps',  # Profiler tracing only.
    'eval_batch_size',  # Validation batching; metrics are per-example means.
    'max_eval_batches',  # Validation cost; note best/ losses before/after cover different sets.
    'scan_unroll',  # The same computation, compiled rolled or unrolled.
    'remat',  # The same gradients, recomputed instead of stored.
    'export',  # Which saved state inference/ holds; re-exported on resume.
    'synthetic.test_families',  # Which held-out families the final evaluation reports.
    'data.num_parallel_calls',  # tf.data parallelism.
    'data.prefetch',  # tf.data read-ahead.
    'data.device_prefetch',  # Device read-ahead.
    'data.prepare_workers',  # Processes preparing the TFDS copy.
    'data.data_dir',  # Where the prepared copy of the same folders is cached.
    'data.strict',  # Whether a bad file stops the run or is skipped with a warning.
    'data.shuffle_buffer',  # Order only; a resumed folder run reshuffles anyway.
})

# Outputs of a previous run that a new run would resume from or overwrite: with
# none of them (a run that died before its first checkpoint) the config may change.
_PREVIOUS_RUN = ('checkpoints', 'best', 'inference', 'metrics.json')


class WorkdirError(ConfigError):
  """The workdir cannot be used as asked (one line, with the fix)."""


def prepare(workdir: str, create: bool = True) -> str:
  """Returns the absolute workdir, refusing a path that cannot be a directory.

  Args:
    workdir: the ``--workdir`` value.
    create: make the directory (process 0 of a job).

  Returns:
    The absolute path.

  Raises:
    WorkdirError: the path (or a parent) is a file, or it cannot be created.
  """
  if not workdir:
    raise WorkdirError('--workdir is empty; give a directory for checkpoints and logs')
  path = os.path.abspath(os.path.expanduser(workdir))
  parent = path
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ''
  if parent and not os.path.isdir(parent):
    what = 'is' if parent == path else f'is under {parent}, which is'
    raise WorkdirError(f'--workdir {path} {what} a file, not a directory; pass a '
                       'directory path (a new one starts a new run)')
  if create:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f'--workdir {path} cannot be created ({e.strerror}); pass a '
                         'writable directory') from e
  return path


# ---------------------------------------------------------------------------
# The lock.


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  except OSError:
    return True  # cannot tell: assume alive (refusing is the safe side)
  return True


def _pid_started_after(pid: int, when: float) -> bool:
  """Whether process ``pid`` started after ``when`` (its PID was reused); Linux only."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # Field 22 (start time in clock ticks since boot) follows the
      # parenthesised command name, which may contain spaces.
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/stat') as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith('btime'))
    return boot + ticks / os.sysconf('SC_CLK_TCK') > when + 2.0
  except (OSError, ValueError, IndexError, StopIteration):
    return False


def _read_lock(path: str) -> Optional[Dict[str, Any]]:
  """The lock's JSON, or None when it is gone; {} when unreadable."""
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return data if isinstance(data, dict) else {}


def _create_lock(path: str, record: Dict[str, Any]) -> bool:
  """Atomically creates ``path`` holding ``record``; False if it exists."""
  # Write a private file, then hard-link it into place: link() fails if the
  # lock exists (like O_EXCL) and the lock never exists half-written.
  tmp = f'{path}.{record["token"]}'
  with open(tmp, 'w') as f:
    json.dump(record, f)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:
    # Filesystems without hard links: O_EXCL (a reader may then briefly see
    # an empty lock, which it treats as held).
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(record, f)
    return True
  finally:
    os.unlink(tmp)


def _held_message(path: str, held: Dict[str, Any]) -> str:
  if not held:
    return (f'{path} exists but is unreadable: another train.py may be starting in '
            f'this workdir. Wait for it, or if no run uses the workdir, delete {path}')
  since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(held.get('started', 0))))
  return (f'another train.py (PID {held.get("pid")} on host {held.get("host")}, since '
          f'{since}) is using this workdir (lock {path}). Wait for it to finish or stop it, '
          f'use another --workdir, or if that run is gone, delete {path}')


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True) -> Iterator[Optional[str]]:
  """Holds ``WORKDIR/.lock`` while the body runs; released on any exit.

  The lock file holds ``{pid, host, started, token}``. A lock of a process on
  this host that is no longer running (killed, machine crash) is taken over
  with a warning. A lock from another host cannot be checked and is refused.

  Args:
    workdir: an existing directory.
    enabled: False on processes other than 0 of a multi-host job (process 0
      holds the lock for the job).

  Yields:
    The lock path, or None when not enabled.

  Raises:
    WorkdirError: another live run holds the lock.
  """
  if not enabled:
    yield None
    return
  path = os.path.join(workdir, LOCK_FILE)
  host = socket.gethostname()
  record = {'pid': os.getpid(), 'host': host, 'started': time.time(),
            'token': uuid.uuid4().hex}
  for _ in range(3):  # a takeover can race with another process's
    if _create_lock(path, record):
      break
    held = _read_lock(path)
    if held is None:  # released meanwhile
      continue
    pid = held.get('pid')
    stale = (held.get('host') == host and isinstance(pid, int) and pid != os.getpid() and
             (not _pid_alive(pid) or _pid_started_after(pid, float(held.get('started', 0)))))
    if not stale:
      raise WorkdirError(_held_message(path, held))
    # Take it over by renaming: of two processes taking over at once only one
    # renames the stale file; the other then finds the winner's lock.
    grave = f'{path}.stale-{record["token"]}'
    try:
      os.rename(path, grave)
    except FileNotFoundError:
      continue
    if _read_lock(grave) != held:  # we renamed a fresh lock: put it back
      try:
        os.link(grave, path)
      except OSError:
        pass
      os.unlink(grave)
      raise WorkdirError(_held_message(path, _read_lock(path) or {}))
    os.unlink(grave)
    logging.warning('Took over the stale lock %s of PID %s on %s (no longer running)',
                    path, pid, host)
  else:
    raise WorkdirError(_held_message(path, _read_lock(path) or {}))
  try:
    yield path
  finally:
    # Remove only our own lock (never one a later run took over).
    if _read_lock(path) == record:
      os.unlink(path)


# ---------------------------------------------------------------------------
# Resume checks.


def _flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def _as_json(config) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _flag(field: str, value) -> str:
  if isinstance(value, list):
    text = '(' + ', '.join(map(str, value)) + (',)' if len(value) == 1 else ')')
  else:
    text = str(value)
  return f'--config.{field}={shlex.quote(text)}'


def previous_run(workdir: str) -> List[str]:
  """Outputs of an earlier run in ``workdir`` that a new run would resume or overwrite.

  Args:
    workdir: the training workdir.

  Returns:
    Their names (empty: nothing to protect).
  """
  found = []
  for name in _PREVIOUS_RUN:
    path = os.path.join(workdir, name)
    if name in ('checkpoints', 'best'):
      if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):
        found.append(name)
    elif os.path.exists(path):
      found.append(name)
  return found


def check_resume(config, workdir: str) -> None:
  """Refuses a re-run whose config differs from the saved run's in a way that matters.

  Compares ``config`` with ``WORKDIR/config.json`` when the workdir holds
  a previous run (:func:`previous_run`). A changed field in :data:`RESUMABLE`
  is logged, one line each; any other changed field is refused. Nothing is
  written.

  Args:
    config: the validated training config.
    workdir: the training workdir.

  Raises:
    WorkdirError: config.json is unreadable, or fields outside RESUMABLE differ.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  outputs = previous_run(workdir)
  if not outputs:
    logging.info('%s has no checkpoint or export: starting over with this config', workdir)
    return
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f'{path} (the config of the run in this workdir) is unreadable ({e}); restore it '
        'from a backup, or use a new --workdir') from e
  new = _flatten(_as_json(config))
  defaults = _flatten(_as_json(default_config()))
  refused = []
  for field in sorted(set(old) | set(new)):
    if field not in new:
      logging.warning('%s: config.%s is no longer a field; ignored', path, field)
      continue
    if field not in old:
      # A field added since the run started: it ran with that field's default.
      was, note = defaults.get(field), ' (its default; not in config.json)'
    else:
      was, note = old[field], ''
    if was == new[field]:
      continue
    if field in RESUMABLE:
      logging.info('Resuming with config.%s changed: %s -> %s', field,
                   json.dumps(was), json.dumps(new[field]))
    else:
      refused.append((field, was, note, new[field]))
  if refused:
    changes = '; '.join(f'config.{f} was {json.dumps(w)}{n}, now {json.dumps(v)}'
                        for f, w, n, v in refused)
    flags = ' '.join(_flag(f, w) for f, w, _, _ in refused)
    raise WorkdirError(
        f'{workdir} holds a run ({", ".join(outputs)}) with another config ({path}): '
        f'{changes}. Resuming would continue its encoder with a different model, data or '
        f'recipe. Use a new --workdir, or restore the old values ({flags})')


def write_atomic(path: str, text: str) -> str:
  """Writes ``text`` to ``path`` through a temporary file and a rename.

  Readers (evaluate, a resumed run, a user's script) never see a
  half-written file, and a crash leaves the previous version.

  Args:
    path: the file.
    text: its whole content.

  Returns:
    ``path``.
  """
  with cli_utils.atomic_file(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)
  return path


def write_config(config, workdir: str) -> str:
  """Writes the run's full config to ``WORKDIR/config.json`` atomically.

  Tools (``evaluate --data synthetic``) rebuild the run's world from it, and
  :func:`check_resume` compares the next re-run with it.

  Args:
    config: the training config.
    workdir: the training workdir.

  Returns:
    The path written.
  """
  return write_atomic(os.path.join(workdir, CONFIG_FILE),
                      config.to_json_best_effort(indent=2, sort_keys=True))

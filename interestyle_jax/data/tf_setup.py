"""Imports TensorFlow for the input pipeline without letting it touch GPUs.

TensorFlow grabs (and pre-allocates) every visible GPU the first time it
initialises its devices; the data pipeline only needs the CPU, and the memory
belongs to JAX. Every module of this package gets TensorFlow through
:func:`import_tf`, which hides the GPUs before anything else can initialise
them.

:func:`import_tf` also keeps TensorFlow's start-up notices out of the log.
TensorFlow 2.21 logs through C++ absl before absl's logging is initialised,
and absl then writes every message to stderr, ignoring
``TF_CPP_MIN_LOG_LEVEL``: each ``import tensorflow`` printed the oneDNN notice
and absl's "before absl::InitializeLog()" banner, twice. The first import therefore runs with stderr captured and passes
on only the lines at or above ``TF_CPP_MIN_LOG_LEVEL`` (0 = all, 1 = warnings,
the default set here, 2 = errors), as TensorFlow documents the variable.
Importing this module stays cheap: TensorFlow loads on the first call.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

# TensorFlow also reads it (for its later, initialised logging) and so does
# XLA inside jaxlib; a value the user exported wins.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

# absl C++ log lines: severity letter, MMDD, time (epoch seconds before
# absl is initialised: "00:00:1795558227.459745"), thread id, file:line].
_CPP_LINE = re.compile(r'^([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\]')
_CPP_SEVERITY = {'I': 0, 'W': 1, 'E': 2, 'F': 3}
_ABSL_BANNER = 'WARNING: All log messages before absl::InitializeLog() is called'

_GPUS_HIDDEN = False
TF_HINT = ('training (train.py, the folder data pipeline, TensorBoard logs) needs TensorFlow, '
           'which `pip install interestyle_jax` leaves out: install the training extra with '
           '`pip install "interestyle_jax[train]"` (from a checkout: `pip install -e ".[train]"`)')


def filter_cpp_log(text: str, min_level: int) -> str:
  """The lines of captured stderr shown at ``TF_CPP_MIN_LOG_LEVEL=min_level``.

  Args:
    text: what the C++ libraries (and anything else) wrote to stderr.
    min_level: 0 keeps everything, 1 drops INFO, 2 also WARNING, 3 also ERROR.

  Returns:
    ``text`` without the dropped C++ messages (a message's continuation
    lines go with it) and, above 0, without absl's pre-initialisation banner.
  """
  kept, keep = [], True
  for line in text.splitlines(keepends=True):
    match = _CPP_LINE.match(line)
    if match:
      keep = _CPP_SEVERITY[match.group(1)] >= min_level
    elif line.startswith(_ABSL_BANNER):
      keep = min_level == 0
    if keep:
      kept.append(line)
  return ''.join(kept)


@contextlib.contextmanager
def _filtered_stderr():
  """Captures file descriptor 2 (C++ writes there) and re-emits the kept lines."""
  try:
    min_level = int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', '0'))
  except ValueError:
    min_level = 0
  if min_level <= 0:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = filter_cpp_log(captured.read().decode('utf-8', errors='replace'), min_level)
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


def import_tf():
  """Imports TensorFlow with GPUs hidden from it and its start-up notices filtered.

  Returns:
    The ``tensorflow`` module.

  Raises:
    ImportError: TensorFlow is not installed (an inference-only install),
      with the command that adds it.
  """
  global _GPUS_HIDDEN
  try:
    if 'tensorflow' in sys.modules:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    else:
      with _filtered_stderr():
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name != 'tensorflow':
      raise
    raise ImportError(TF_HINT) from e
  if not _GPUS_HIDDEN:
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:
      # Devices were already initialised by someone else's TF code; the
      # visible set can no longer change, and there is nothing better to do.
      pass
    # TensorFlow's Python logger: keep an explicit level, else warnings only.
    if tf.get_logger().level == logging.NOTSET:
      tf.get_logger().setLevel(logging.WARNING)
    _GPUS_HIDDEN = True
  return tf

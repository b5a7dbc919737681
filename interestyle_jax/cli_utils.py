"""Shared pieces of the command-line tools: help layout, output-path checks, atomic writes.

The tools (``invert``, ``evaluate``, ``edit``, ``data.make_masks``) check every
output path before loading a model or reading data, so a typo in ``--output``
costs a second, not the results of the whole run.
"""

import argparse
import contextlib
import json
import os
import sys
from typing import Iterable, Sequence

import numpy as np


class HelpFormatter(argparse.HelpFormatter):
  """Appends ``(default: X)`` to option help; keeps multi-line descriptions as written.

  Unlike ``argparse.ArgumentDefaultsHelpFormatter`` it says nothing for
  required options, ``None`` defaults (their help explains what happens),
  on/off switches, and help that already names its default. A description or
  epilog with line breaks (lists, examples) is printed as is; one-line
  descriptions are wrapped to the terminal.
  """

  def _fill_text(self, text, width, indent):
    if '\n' in text.strip():
      return ''.join(indent + line for line in text.splitlines(keepends=True))
    return super()._fill_text(text, width, indent)

  def _get_help_string(self, action):
    text = action.help or ''
    if (action.required or action.default is None or action.default is argparse.SUPPRESS
        or isinstance(action, (argparse._StoreTrueAction,  # pylint: disable=protected-access
                               argparse._StoreFalseAction))  # pylint: disable=protected-access
        or not action.option_strings or 'default' in text or '%(default)' in text):
      return text
    default = action.default
    if isinstance(default, (list, tuple)):
      default = ' '.join(str(v) for v in default)
    elif isinstance(default, str) and default == '':
      default = "'' (none)"
    return f'{text} (default: {str(default).replace("%", "%%")})'


class OutputPathError(ValueError):
  """An output path cannot be written (the message names the flag and the fix)."""


@contextlib.contextmanager
def atomic_file(path: str):
  """Yields a temporary path that replaces ``path`` when the block succeeds.

  A reader never sees a half-written file, and a crash or kill mid-write
  leaves the previous version (or nothing), not a truncated file. The
  temporary file is hidden, in the same folder (so the rename is atomic), and
  removed when the block raises.

  Args:
    path: the file to write; parent directories are created.

  Yields:
    The temporary path to write to (it has no meaningful extension: pass the
    format to writers that infer it from the name).
  """
  path = os.path.abspath(path)
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f'.{name}.tmp-{os.getpid()}')
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.remove(tmp)


def save_json(obj, path: str) -> str:
  """Writes ``obj`` as indented JSON to ``path`` atomically; returns ``path``."""
  with atomic_file(path) as tmp:
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2)
  return path


def save_npy(array, path: str) -> str:
  """Writes ``array`` as ``.npy`` to ``path`` atomically; returns ``path``."""
  with atomic_file(path) as tmp:
    with open(tmp, 'wb') as f:  # a file object: np.save would append .npy to a name
      np.save(f, np.asarray(array))
  return path


def usage_error(message: str) -> int:
  """Prints ``error: <message>`` to stderr and returns exit status 2 (an unusable argument)."""
  print(f'error: {message}', file=sys.stderr)
  return 2


def nearest_existing(path: str) -> str:
  """The path itself or its closest existing ancestor (absolute)."""
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_output_dir(path: str, flag: str) -> str:
  """Checks that ``path`` is, or can be created as, a writable folder.

  Nothing is created: a run that fails later (a bad checkpoint) leaves no
  empty output folder behind.

  Args:
    path: the folder.
    flag: the option that gave it, for messages ('--output').

  Returns:
    The absolute path.

  Raises:
    OutputPathError: a file is in the way, or the folder (or the nearest
      existing ancestor it would be created in) is not writable.
  """
  if not path:
    raise OutputPathError(f'{flag} is empty; give a folder path')
  full = os.path.abspath(path)
  if os.path.exists(full) and not os.path.isdir(full):
    raise OutputPathError(f'{flag} {path} is a file, not a folder; give a folder path '
                          '(created when missing) or move the file away')
  base = nearest_existing(full)
  if not os.path.isdir(base):
    raise OutputPathError(f'{flag} {path} cannot be created: {base} is a file, not a folder; '
                          'choose another path or move that file away')
  if not os.access(base, os.W_OK | os.X_OK):
    what = 'is not writable' if base == full else f'cannot be created: {base} is not writable'
    raise OutputPathError(f'{flag} {path} {what}; choose a folder you can write to or fix '
                          'its permissions')
  return full


def check_output_file(path: str, flag: str, example: str = 'out') -> str:
  """Checks that ``path`` can be written as a file (its folder is created on write).

  Args:
    path: the file.
    flag: the option that gave it, for messages ('--output').
    example: a file name suggested when ``path`` is a folder ('grid.png').

  Returns:
    The absolute path.

  Raises:
    OutputPathError: ``path`` is a folder, a file is in the way of its
      parent folder, or the place is not writable.
  """
  if not path:
    raise OutputPathError(f'{flag} is empty; give a file path')
  full = os.path.abspath(path)
  if os.path.isdir(full) or path.endswith(os.sep):
    raise OutputPathError(f'{flag} {path} is a folder; give a file path, e.g. '
                          f'{os.path.join(path, example)}')
  check_output_dir(os.path.dirname(full), f'{flag} {path}: the folder')
  if os.path.exists(full) and not os.access(full, os.W_OK):
    raise OutputPathError(f'{flag} {path} exists and is not writable; choose another file or '
                          'fix its permissions')
  return full


def check_outputs(out_dir: str, stems: Iterable[str], suffixes: Sequence[str],
                  summary_file: str = 'summary.json') -> None:
  """Checks, before any work, that every output of a command's run can be written.

  Args:
    out_dir: the output folder (``--output``).
    stems: output stems (paths relative to ``out_dir``, no extension).
    suffixes: the files written per stem.
    summary_file: the summary the command writes into ``out_dir``.

  Raises:
    OutputPathError: ``out_dir`` is a file or not writable, a folder stands
      where an output file goes, or a file where a sub-folder of outputs goes.
  """
  stems = list(stems)
  check_output_dir(out_dir, '--output')
  for rel in [summary_file] + [stem + suffix for stem in stems for suffix in suffixes]:
    if os.path.isdir(os.path.join(out_dir, rel)):
      raise OutputPathError(
          f'--output {out_dir} holds a folder {rel} where an output file goes; move it away '
          'or choose another --output')
  for sub in sorted({os.path.dirname(stem) for stem in stems} - {''}):
    check_output_dir(os.path.join(out_dir, sub), f'--output {out_dir}: sub-folder')

"""Shared machinery for PyTorch → Flax conversion.

Torch is imported lazily, only when a ``.pt``/``.pth`` file must be read.
"""

import _compat_pickle
import argparse
import contextlib
import contextvars
import os
import pickle
import pickletools
import tempfile
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import flax
import numpy as np

from interestyle_jax import artifacts, cli_utils

Path = Tuple[str, ...]
# A key mapper returns (flax path, numpy array) for a tensor, IGNORE for a
# tensor that carries no information the Flax model needs, or None when the key
# is not part of the architecture (reported as unexpected).
IGNORE = object()
KeyMapper = Callable[[str, np.ndarray], Any]

TORCH_HINT = ('PyTorch is needed to read .pt/.pth checkpoints: install the '
              'conversion extra with `pip install "interestyle_jax[torch]"` '
              '(or `pip install torch==2.13.0`)')


# The non-finite check lives with the model directories, which warn on load too.
non_finite_entries = artifacts.non_finite_entries
warn_non_finite = artifacts.warn_non_finite
logger = artifacts.logger


class ConversionError(ValueError):
  """A checkpoint does not match the architecture it is converted to."""


class PathError(ValueError):
  """A path given to the converter is unusable (checked before converting)."""


def check_output_location(dst: str) -> str:
  """Checks, before any slow work, that a model directory can be written at ``dst``.

  Missing parent directories are fine (they are created when writing, as
  the README's ``ckpt/...`` destinations need on a fresh checkout); what is
  refused is a destination that can never be written: an existing file (or
  a dangling link) at ``dst``, a file where a parent directory should be,
  or a nearest existing ancestor this process cannot create entries in
  (read-only file system, no permission). Whether an existing *directory*
  may be replaced is ``artifacts.check_destination``'s business.

  Args:
    dst: the output directory as given.

  Returns:
    The absolute path.

  Raises:
    PathError: with a one-line message naming the path and the fix.
  """
  path = os.path.abspath(dst)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise PathError(
        f'output {dst} is an existing file, not a directory: the converter writes a model '
        f'directory (model.json + variables/); give a new directory path, e.g. {dst}.flax')
  anchor = cli_utils.nearest_existing(os.path.dirname(path))
  if not os.path.isdir(anchor):
    raise PathError(
        f'cannot create output {dst}: {anchor} is a file, not a directory; choose an '
        'output path whose parents are directories')
  try:
    # Creating (and removing) an entry is the only test that also covers
    # read-only mounts and root on a permission-less file system.
    os.rmdir(tempfile.mkdtemp(prefix='.interestyle-write-check-', dir=anchor))
  except OSError as e:
    raise PathError(
        f'cannot write output {dst}: {anchor} is not writable ({e.strerror}); choose a '
        'writable location (e.g. under your home directory) or fix its permissions') from e
  return path


def require_torch():
  """Imports torch, or raises an ImportError with the install hint."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(TORCH_HINT) from e
  return torch


# Whether load_torch_checkpoint may unpickle arbitrary objects (run code).
_TRUST = contextvars.ContextVar('trust_checkpoint', default=False)
# Non-tensor objects the published checkpoints hold: rosinality's StyleGAN2
# .pt stores its training ``args`` (an argparse.Namespace).
SAFE_GLOBALS = (argparse.Namespace,)


@contextlib.contextmanager
def trust_checkpoints(trust: bool = True):
  """Within the block, checkpoints are unpickled in full (``--trust_checkpoint``).

  Args:
    trust: False keeps the safe loader.

  Yields:
    None.
  """
  token = _TRUST.set(bool(trust))
  try:
    yield
  finally:
    _TRUST.reset(token)


def checkpoints_trusted() -> bool:
  """Whether the current conversion runs under ``--trust_checkpoint``."""
  return _TRUST.get()


def _allowed(name: str) -> bool:
  """Whether the safe loader accepts global ``name`` (module.qualname)."""
  safe = {f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS}
  return name.startswith('torch.') or name in safe or name == 'collections.OrderedDict'


def pickle_globals(path: str) -> List[str]:
  """The globals (``module.name``) a checkpoint's pickle imports, read without unpickling.

  Reads ``*/data.pkl`` of a zip checkpoint or the file itself (the legacy
  format), opcode by opcode (``pickletools``); nothing is executed.

  Args:
    path: a ``.pt`` / ``.pth`` file.

  Returns:
    The globals in order of appearance, with Python 2 names (pickle
    protocol 2, ``commands.call``) given their Python 3 module
    (``subprocess.call``); empty when the bytes are not a pickle.
  """
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith('data.pkl'))
        data = z.read(name)
    else:
      with open(path, 'rb') as f:
        data = f.read()
  except (OSError, StopIteration, zipfile.BadZipFile):
    return []
  found, strings = [], []
  try:
    for op, arg, _ in pickletools.genops(data):
      if isinstance(arg, str):
        strings.append(arg)
      if op.name == 'GLOBAL':
        module, name = arg.split(' ', 1)
      elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
        module, name = strings[-2], strings[-1]
      else:
        continue
      module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
      module = _compat_pickle.IMPORT_MAPPING.get(module, module)
      found.append(f'{module}.{name}')
  except Exception:  # pylint: disable=broad-except
    pass  # the globals before the damage are still worth naming
  return found


def load_torch_checkpoint(path_or_obj: Union[str, Mapping[str, Any]]) -> Mapping[str, Any]:
  """Loads a PyTorch checkpoint file (or passes a loaded dict through).

  The file is read with ``torch.load(weights_only=True)``: tensors, plain
  containers and :data:`SAFE_GLOBALS` only, so a checkpoint downloaded from
  the internet cannot run code when it is converted. Inside
  :func:`trust_checkpoints` (the CLI's ``--trust_checkpoint``) any pickle is
  loaded.

  Args:
    path_or_obj: path to a ``.pt``/``.pth`` file, or an already loaded dict.

  Returns:
    The loaded object (a dict).

  Raises:
    ConversionError: unreadable file, not a dict, or (safe mode) a pickle
      that holds other Python objects.
  """
  if isinstance(path_or_obj, Mapping):
    return path_or_obj
  torch = require_torch()
  trust = _TRUST.get()
  try:
    if trust:
      obj = torch.load(path_or_obj, map_location='cpu', weights_only=False)
    else:
      with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        obj = torch.load(path_or_obj, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise
  except pickle.UnpicklingError as e:
    # Garbage bytes fail the safe unpickler too; only a global outside the
    # allowed ones means Python objects. torch words its refusal differently
    # from version to version, so the file's own pickle opcodes decide.
    unsafe = [] if trust else [g for g in pickle_globals(path_or_obj) if not _allowed(g)]
    if not unsafe:
      lines = [l.strip() for l in str(e).splitlines() if l.strip()]
      first = next((l for l in lines if 'Unsupported' in l), lines[0] if lines else '')
      raise ConversionError(f'{path_or_obj}: not a readable PyTorch checkpoint '
                            f'(UnpicklingError: {first})') from e
    raise ConversionError(
        f'{path_or_obj}: refused to unpickle it: besides tensors it holds Python objects '
        f'({", ".join(unsafe[:3])}), and loading those can run arbitrary code. If you trust '
        'where the file comes from, re-run with --trust_checkpoint.') from e
  except Exception as e:  # torch raises many types for a corrupt file
    raise ConversionError(f'{path_or_obj}: not a readable PyTorch checkpoint '
                          f'({type(e).__name__}: {e})') from e
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path_or_obj}: expected a dict (state dict or checkpoint), '
                          f'got {type(obj).__name__}')
  return obj


def to_numpy(t) -> np.ndarray:
  """A torch tensor (or array-like) as a float32/int numpy array."""
  if hasattr(t, 'detach'):
    t = t.detach().cpu()
    if t.is_floating_point():
      t = t.float()
    t = t.numpy()
  a = np.asarray(t)
  if a.dtype == np.float64:
    a = a.astype(np.float32)
  return a


def sub_state_dict(sd: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
  """Entries of ``sd`` under ``prefix`` (e.g. 'encoder.'), prefix removed."""
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def assign_state_dict(template: Mapping[str, Any], sd: Mapping[str, Any],
                      mapper: KeyMapper, what: str,
                      source: Optional[str] = None,
                      check_finite: bool = True) -> Dict[str, Any]:
  """Fills a Flax variable tree from a state dict, checking every key and shape.

  Tensors holding NaN or inf are converted as they are, with a warning that
  names them (:func:`warn_non_finite`).

  Args:
    template: nested dict of arrays or ShapeDtypeStructs (e.g. from
      ``jax.eval_shape(module.init, …)``) that defines the expected tree.
    sd: the PyTorch state dict.
    mapper: maps each (key, numpy array) to (flax path, array), IGNORE or None.
    what: architecture name for error messages.
    source: file name for error messages.
    check_finite: warn about NaN / inf tensors.

  Returns:
    A nested dict with the same structure as ``template`` holding numpy arrays.

  Raises:
    ConversionError: listing every missing key, unexpected key and shape
      mismatch at once.
  """
  expected = flax.traverse_util.flatten_dict(_unfreeze(template))
  filled: Dict[Path, np.ndarray] = {}
  torch_keys: Dict[Path, str] = {}
  unexpected, mismatched = [], []
  mismatched_paths = set()
  for key, value in sd.items():
    arr = to_numpy(value)
    mapped = mapper(key, arr)
    if mapped is IGNORE:
      continue
    if mapped is None:
      unexpected.append(f'{key} {tuple(arr.shape)}')
      continue
    path, arr = mapped
    path = tuple(path)
    if path not in expected:
      unexpected.append(f'{key} {tuple(arr.shape)} (-> {"/".join(path)})')
      continue
    want = tuple(expected[path].shape)
    if tuple(arr.shape) != want:
      mismatched.append(f'{key}: checkpoint {tuple(arr.shape)} vs model {want} '
                        f'(at {"/".join(path)})')
      mismatched_paths.add(path)
      continue
    filled[path] = arr.astype(expected[path].dtype)
    torch_keys[path] = str(key)
  missing = ['/'.join(p) for p in expected if p not in filled and p not in mismatched_paths]
  if missing or unexpected or mismatched:
    lines = [f'{source + ": " if source else ""}checkpoint does not match the {what} '
             'architecture inferred from it:']
    for title, items in (('missing', missing), ('unexpected', unexpected),
                         ('shape mismatch', mismatched)):
      if items:
        lines.append(f'  {title} ({len(items)}):')
        lines.extend(f'    {x}' for x in items)
    lines.append('Is this the right kind of checkpoint for this converter?')
    raise ConversionError('\n'.join(lines))
  if check_finite:
    warn_non_finite(source or what, non_finite_entries(
        (torch_keys[p], a) for p, a in filled.items()))
  return flax.traverse_util.unflatten_dict(filled)


def _unfreeze(tree):
  if isinstance(tree, flax.core.FrozenDict):
    return flax.core.unfreeze(tree)
  return tree


def count_indexed(keys: Iterable[str], prefix: str, suffix: str) -> int:
  """Number of distinct integers N with ``prefix + N + suffix`` in ``keys``."""
  idx = set()
  for k in keys:
    if k.startswith(prefix) and k.endswith(suffix):
      mid = k[len(prefix):len(k) - len(suffix)]
      if mid.isdigit():
        idx.add(int(mid))
  return len(idx)

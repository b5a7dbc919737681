"""Reads NVIDIA network pickles (StyleGAN2-ADA / StyleGAN3 ``.pkl``) as data.

A snapshot such as ``network-snapshot-000000.pkl`` or NVIDIA's released
``ffhq.pkl`` is a plain :mod:`pickle` of ``{'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}``. Every network object in it is saved by
``torch_utils.persistence``: the pickle calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta``
holds the Python *source* of the module that defined the class
(``module_src``), the class name and the object's ``__dict__`` (``state``:
``_parameters``, ``_buffers``, ``_modules`` and plain attributes). A plain
``pickle.load`` executes ``module_src``, i.e. whatever code the file carries.

:func:`load_network_pickle` instead unpickles with a restricted
:class:`pickle.Unpickler` that knows a short list of globals and turns each
persistent object into a :class:`PersistentObject` (class name + state,
``module_src`` kept as an inert string). Tensors are rebuilt by torch's own
weights-only loader (each storage is embedded as a small legacy
``torch.save`` stream); numbers, strings, containers and ``EasyDict`` are
data. Any other global — ``os.system``, ``builtins.exec``, a class of a fork
— is refused, naming it. ``--trust_checkpoint`` (:func:`trust_checkpoints`)
is the only way to unpickle in full, which needs NVIDIA's code importable.
"""

import builtins
import collections
import io
import pickle
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from interestyle_jax.convert.common import ConversionError, checkpoints_trusted, require_torch

# torch.save's legacy (non-zip) format starts with this pickled magic number.
_LEGACY_TORCH_MAGIC = 0x1950a86a20f9469cfc6c
_ZIP_MAGIC = b'PK\x03\x04'


class PersistentObject:
  """One ``torch_utils.persistence`` object, as data; its source is never run.

  Attributes:
    class_name: the class name in the pickled module (``'SynthesisLayer'``).
    state: the object's ``__dict__`` (``_parameters``, ``_buffers``,
      ``_modules`` and plain attributes).
    module_src: the embedded Python source, kept only as a string.
  """

  def __init__(self, class_name: str, state: Mapping[str, Any], module_src: str = ''):
    self.class_name = class_name
    self.state = state
    self.module_src = module_src

  def __repr__(self):
    return f'PersistentObject({self.class_name})'

  def children(self) -> Dict[str, 'PersistentObject']:
    """Sub-modules by attribute name (``_modules``)."""
    return dict(self.state.get('_modules') or {})

  def attr(self, name: str, default: Any = None) -> Any:
    """A plain attribute of the object (``conv_clamp``, ``architecture``, …)."""
    return self.state.get(name, default)


class EasyDict(dict):
  """Stand-in for ``dnnlib.util.EasyDict`` (a dict; attribute access not needed)."""


def file_format(path: str) -> str:
  """Tells a PyTorch checkpoint from a network pickle by the file's first bytes.

  Args:
    path: the file.

  Returns:
    'torch_zip' (``torch.save``, the default since PyTorch 1.6),
    'torch_legacy' (older ``torch.save``), 'pickle' (anything else that
    starts like a pickle: NVIDIA's ``.pkl``) or 'unknown'.
  """
  with open(path, 'rb') as f:
    head = f.read(64)
  if head.startswith(_ZIP_MAGIC):
    return 'torch_zip'
  if not head.startswith(b'\x80'):
    return 'unknown'
  # Protocol 2 LONG1 of 10 bytes: the legacy torch.save magic number.
  magic = _LEGACY_TORCH_MAGIC.to_bytes(10, 'little')
  if head[2:4] == b'\x8a\x0a' and head[4:14] == magic:
    return 'torch_legacy'
  return 'pickle'


def is_network_pickle(path: str) -> bool:
  """Whether ``path`` is a plain pickle (NVIDIA ``.pkl``) rather than a ``torch.save`` file."""
  return file_format(path) == 'pickle'


def _check(cond: bool, what: str):
  if not cond:
    raise pickle.UnpicklingError(f'unexpected arguments to {what}')


def _rebuild_persistent(meta):
  _check(isinstance(meta, dict) and meta.get('type') == 'class'
         and isinstance(meta.get('class_name'), str) and isinstance(meta.get('state'), dict),
         'torch_utils.persistence._reconstruct_persistent_obj')
  src = meta.get('module_src')
  return PersistentObject(meta['class_name'], meta['state'], src if isinstance(src, str) else '')


def _torch_globals(torch) -> Dict[Tuple[str, str], Callable]:
  """The torch functions a pickled tensor calls, each behind argument checks."""

  def load_storage(data):
    _check(isinstance(data, (bytes, bytearray)), 'torch.storage._load_from_bytes')
    # The embedded storage is a legacy torch.save stream: torch reads it with
    # its own restricted (weights-only) unpickler.
    return torch.load(io.BytesIO(bytes(data)), map_location='cpu', weights_only=True)

  def is_ints(v):
    return isinstance(v, (tuple, list, torch.Size)) and all(isinstance(i, int) for i in v)

  def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                     metadata=None):
    del requires_grad, metadata  # gradients and hooks are never restored
    _check(isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage))
           and isinstance(offset, int) and is_ints(size) and is_ints(stride)
           and not hooks, 'torch._utils._rebuild_tensor_v2')
    return torch._utils._rebuild_tensor_v2(  # pylint: disable=protected-access
        storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, state
    _check(isinstance(data, torch.Tensor) and not hooks, 'torch._utils._rebuild_parameter')
    return data

  def rebuild_from_type(func, new_type, args, state):
    del state
    _check(func in (rebuild_tensor, rebuild_parameter)
           and new_type in (torch.Tensor, torch.nn.Parameter) and isinstance(args, tuple),
           'torch._utils._rebuild_from_type_v2')
    return func(*args)

  found = {
      ('torch.storage', '_load_from_bytes'): load_storage,
      ('torch._utils', '_rebuild_tensor_v2'): rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): rebuild_parameter,
      ('torch._utils', '_rebuild_from_type_v2'): rebuild_from_type,
      ('torch', 'Size'): torch.Size,
      ('torch', 'device'): torch.device,
      ('torch._tensor', 'Tensor'): torch.Tensor,
      ('torch', 'Tensor'): torch.Tensor,
      ('torch.nn.parameter', 'Parameter'): torch.nn.Parameter,
  }
  for name in dir(torch):
    if isinstance(getattr(torch, name, None), torch.dtype):
      found[('torch', name)] = getattr(torch, name)
  return found


def _numpy_scalar(dtype, data=None):
  _check(isinstance(dtype, np.dtype) and not dtype.hasobject
         and isinstance(data, (bytes, bytearray)) and len(data) == dtype.itemsize,
         'numpy scalar')
  return np.frombuffer(bytes(data), dtype)[0]


class _NdarrayName:
  """What ``numpy.ndarray`` unpickles to: a name for ``_reconstruct``, not a callable."""


def _numpy_reconstruct(cls, shape, typecode):
  _check(cls is _NdarrayName, 'numpy _reconstruct')
  return np.ndarray.__new__(np.ndarray, shape, typecode)


def _latin1_bytes(text, encoding='latin1'):
  # Protocol 2 stores bytes as _codecs.encode(str, 'latin1').
  _check(isinstance(text, str) and encoding in ('latin1', 'latin-1'), '_codecs.encode')
  return text.encode('latin1')


def _numpy_frombuffer(buf, dtype, shape, order):
  # Protocol 5 stores arrays as numpy's _frombuffer(bytes, dtype, shape, order).
  _check(isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) and isinstance(dtype, np.dtype)
         and not dtype.hasobject and isinstance(shape, tuple)
         and all(isinstance(n, int) for n in shape) and order in ('C', 'F'),
         'numpy _frombuffer')
  return np.frombuffer(bytes(buf), dtype).reshape(shape, order=order).copy()


_SAFE = {
    ('_codecs', 'encode'): _latin1_bytes,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _rebuild_persistent,
    ('dnnlib.util', 'EasyDict'): EasyDict,
    ('dnnlib', 'EasyDict'): EasyDict,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): builtins.set,
    ('builtins', 'frozenset'): builtins.frozenset,
    ('__builtin__', 'set'): builtins.set,
    ('__builtin__', 'frozenset'): builtins.frozenset,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): _NdarrayName,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy.core.numeric', '_frombuffer'): _numpy_frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _numpy_frombuffer,
}

# Globals that mean a known kind of file this reader does not take.
_HINTS = {
    'dnnlib.tflib.network': 'a TensorFlow StyleGAN2 pickle; convert it to a PyTorch one '
                            "with NVIDIA's stylegan2-ada-pytorch legacy.py first",
}


class RefusedGlobal(pickle.UnpicklingError):
  """The pickle names a global outside the safe list."""

  def __init__(self, module: str, name: str):
    super().__init__(f'{module}.{name}')
    self.module, self.name = module, name


class SafeUnpickler(pickle.Unpickler):
  """Unpickles tensors, numbers, strings, containers and persistence metadata only."""

  def __init__(self, file, torch):
    super().__init__(file)
    self._globals = dict(_SAFE)
    self._globals.update(_torch_globals(torch))

  def find_class(self, module, name):
    fn = self._globals.get((module, name))
    if fn is None:
      raise RefusedGlobal(module, name)
    return fn

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('persistent ids (a torch.save stream, not a network pickle)')


def _as_data(obj: Any, torch) -> Any:
  """Trusted unpickling: real modules → PersistentObject trees (tensors kept)."""
  if isinstance(obj, torch.nn.Module):
    state = dict(obj.__dict__)
    state['_modules'] = collections.OrderedDict(
        (k, _as_data(v, torch)) for k, v in obj._modules.items())  # pylint: disable=protected-access
    return PersistentObject(type(obj).__name__, state)
  if isinstance(obj, dict):
    return {k: _as_data(v, torch) for k, v in obj.items()}
  return obj


def load_network_pickle(path: str) -> Dict[str, Any]:
  """Reads a network pickle as data (or, with ``--trust_checkpoint``, in full).

  Args:
    path: the ``.pkl`` file.

  Returns:
    The top-level dict (``'G_ema'``, ``'G'``, …) with every network as a
    :class:`PersistentObject` tree whose tensors are ``torch.Tensor``.

  Raises:
    ConversionError: a global outside the safe list (named), a file that is
      not a pickle of a dict, or (trusted) NVIDIA's code not importable.
  """
  torch = require_torch()
  with open(path, 'rb') as f:
    if checkpoints_trusted():
      try:
        obj = _as_data(pickle.load(f), torch)  # runs the file's code: the user's choice
      except ImportError as e:
        raise ConversionError(
            f"{path}: --trust_checkpoint unpickles the file with NVIDIA's own code, which "
            f'is not importable here ({e}); put stylegan2-ada-pytorch (or stylegan3) on '
            'PYTHONPATH, or leave out --trust_checkpoint (the default reader needs no '
            'NVIDIA code)') from e
      except Exception as e:  # pylint: disable=broad-except
        raise ConversionError(f'{path}: unpickling failed ({type(e).__name__}: {e})') from e
    else:
      try:
        obj = SafeUnpickler(f, torch).load()
      except RefusedGlobal as e:
        hint = _HINTS.get(e.module)
        if hint:
          raise ConversionError(f'{path}: refused global {e}: {hint}') from e
        raise ConversionError(
            f'{path}: refused to unpickle global {e}: the safe reader rebuilds only tensors, '
            'numbers, strings, containers and the torch_utils.persistence layout of NVIDIA '
            'network pickles, and never runs their embedded code. If you trust where the '
            'file comes from, re-run with --trust_checkpoint (needs NVIDIA\'s code on '
            'PYTHONPATH).') from e
      except Exception as e:  # pylint: disable=broad-except
        first = (str(e).strip().splitlines() or [''])[0][:200]
        raise ConversionError(f'{path}: not a readable network pickle '
                              f'({type(e).__name__}: {first})') from e
  if not isinstance(obj, dict):
    raise ConversionError(f'{path}: expected a pickled dict of networks (G, D, G_ema, …), '
                          f'got {type(obj).__name__}')
  return obj


def named_tensors(node: PersistentObject, prefix: str = '') -> Iterator[Tuple[str, Any]]:
  """``(dotted name, tensor)`` of every parameter and buffer, as a state dict names them.

  Args:
    node: a module tree.
    prefix: prepended to the names.

  Yields:
    ``('synthesis.b4.conv1.weight', tensor)``, … (None entries skipped).
  """
  for group in ('_parameters', '_buffers'):
    for name, value in (node.state.get(group) or {}).items():
      if value is not None:
        yield prefix + name, value
  for name, child in node.children().items():
    if isinstance(child, PersistentObject):
      yield from named_tensors(child, f'{prefix}{name}.')


def find(node: PersistentObject, dotted: str) -> Optional[PersistentObject]:
  """The sub-module at ``'synthesis.b8.conv0'``, or None."""
  for part in dotted.split('.') if dotted else ():
    node = node.children().get(part) if isinstance(node, PersistentObject) else None
  return node if isinstance(node, PersistentObject) else None

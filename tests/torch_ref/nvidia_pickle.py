"""Writes network pickles in NVIDIA's ``torch_utils.persistence`` layout (test-only).

A real snapshot is ``pickle.dump({'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'})`` where every network object reduces to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta =
{'type': 'class', 'version': 6, 'module_src': <source of its module>,
'class_name': ..., 'state': obj.__dict__}`` and keyword arguments are
``dnnlib.util.EasyDict``. This writer produces the same byte-level layout
from any ``torch.nn.Module`` tree, with a ``module_src`` of the test's choice,
by standing in for those two modules only while it pickles.
"""

import contextlib
import pickle
import sys
import types

import torch

PERSISTENCE_VERSION = 6


def _reconstruct_persistent_obj(meta):  # never called: only pickled by name
  raise RuntimeError(f'stand-in for torch_utils.persistence, not for unpickling ({meta})')


class EasyDict(dict):
  """Pickled by name as dnnlib.util.EasyDict."""


@contextlib.contextmanager
def _stand_in_modules():
  made = {}
  for name, attrs in (('torch_utils', {}),
                      ('torch_utils.persistence',
                       {'_reconstruct_persistent_obj': _reconstruct_persistent_obj}),
                      ('dnnlib', {}), ('dnnlib.util', {'EasyDict': EasyDict})):
    if name in sys.modules:
      raise RuntimeError(f'{name} is importable here; the stand-in would shadow it')
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    made[name] = mod
  saved = (_reconstruct_persistent_obj.__module__, EasyDict.__module__)
  _reconstruct_persistent_obj.__module__ = 'torch_utils.persistence'
  EasyDict.__module__ = 'dnnlib.util'
  sys.modules.update(made)
  try:
    yield
  finally:
    for name in made:
      sys.modules.pop(name, None)
    _reconstruct_persistent_obj.__module__, EasyDict.__module__ = saved


def _easy(value):
  if isinstance(value, dict):
    return EasyDict({k: _easy(v) for k, v in value.items()})
  return value


class _Pickler(pickle.Pickler):

  def __init__(self, file, protocol, module_src):
    super().__init__(file, protocol=protocol)
    self.module_src = module_src

  def reducer_override(self, obj):
    if not isinstance(obj, torch.nn.Module):
      return NotImplemented
    state = dict(obj.__dict__)
    if '_init_kwargs' in state:
      state['_init_kwargs'] = _easy(state['_init_kwargs'])
    meta = dict(type='class', version=PERSISTENCE_VERSION, module_src=self.module_src,
                class_name=type(obj).__name__, state=state)
    return _reconstruct_persistent_obj, (meta,)


def dump(snapshot, path, module_src='# the network module source would be here\n',
         protocol=3):
  """Pickles ``snapshot`` (a dict of networks and settings) as NVIDIA does.

  Args:
    snapshot: e.g. ``{'G': g, 'D': d, 'G_ema': g_ema, 'augment_pipe': None,
      'training_set_kwargs': {...}}``; modules become persistent objects.
    path: output file.
    module_src: the source every persistent object embeds.
    protocol: pickle protocol (NVIDIA's snapshots: Python's default, 3 or 4).
  """
  with _stand_in_modules(), open(path, 'wb') as f:
    _Pickler(f, protocol, module_src).dump(
        {k: (_easy(v) if k == 'training_set_kwargs' else v) for k, v in snapshot.items()})

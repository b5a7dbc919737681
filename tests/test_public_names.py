"""Every name the README and the notebook import from interestyle_jax exists.

The imports are read out of the files themselves, so a moved function that
keeps no re-export at its documented address fails here, not in a user's
Colab session.
"""

import importlib
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FROM = re.compile(r'^\s*from (interestyle_jax[\w.]*) import \(?([\w, ]+)\)?')
_IMPORT = re.compile(r'^\s*import (interestyle_jax[\w.]*)')
_ATTR = re.compile(r'\binterestyle_jax\.(\w+)\(')


def _code_lines():
  with open(os.path.join(REPO, 'README.md')) as f:
    yield from (('README.md', l) for l in f.read().splitlines())
  with open(os.path.join(REPO, 'notebooks', 'quickstart.ipynb')) as f:
    nb = json.load(f)
  for cell in nb['cells']:
    if cell['cell_type'] == 'code':
      yield from (('quickstart.ipynb', l) for l in ''.join(cell['source']).splitlines())


def _imports():
  found = set()
  for where, line in _code_lines():
    m = _FROM.match(line)
    if m:
      for name in m.group(2).split(','):
        if name.strip():
          found.add((where, m.group(1), name.strip().split(' as ')[0]))
      continue
    m = _IMPORT.match(line)
    if m:
      found.add((where, m.group(1), None))
    for name in _ATTR.findall(line):  # interestyle_jax.load_inverter(...)
      found.add((where, 'interestyle_jax', name))
  return sorted(found, key=lambda t: (t[0], t[1], t[2] or ''))


IMPORTS = _imports()


def test_the_documents_import_something():
  # The regexes must keep finding the documented imports (they are the test).
  modules = {m for _, m, _ in IMPORTS}
  assert {'interestyle_jax.convert', 'interestyle_jax.align', 'interestyle_jax.invert',
          'interestyle_jax.id_metric'} <= modules, modules


@pytest.mark.parametrize('where,module,name', IMPORTS,
                         ids=[f'{w}:{m}:{n}' for w, m, n in IMPORTS])
def test_documented_import(where, module, name):
  mod = importlib.import_module(module)
  if name is not None:
    assert hasattr(mod, name) or importlib.util.find_spec(f'{module}.{name}'), (
        f'{where} imports {name} from {module}, which has no such name')

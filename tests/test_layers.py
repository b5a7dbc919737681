"""The package's floors: commands stand on the library, and no import runs upward.

Read from the source with ``ast`` (imports inside functions included): a
command module never imports another command, ``ops`` imports nothing of the
package above it, ``models`` only ``ops`` and ``artifacts`` (their loaders
read model directories), and the library imports neither ``training`` nor a
command.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'interestyle_jax')

# The modules run as `python -m interestyle_jax.…` (and train.py).
COMMANDS = {'interestyle_jax.align', 'interestyle_jax.invert', 'interestyle_jax.edit',
            'interestyle_jax.evaluate', 'interestyle_jax.ablate',
            'interestyle_jax.convert.__main__', 'interestyle_jax.data.make_masks'}
# Saving and loading model directories: below the models, whose load_* use it.
STORAGE = {'interestyle_jax.artifacts'}


def _modules():
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return out


def _imports(path, module):
  """The interestyle_jax modules ``path`` imports (``from x import y`` gives x.y if a module)."""
  tree = ast.parse(open(path).read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative
        parts = module.split('.')[:-node.level]
        base = '.'.join(parts + ([base] if base else []))
      names.add(base)
      names.update(f'{base}.{a.name}' for a in node.names)
  return {n for n in names if n.startswith('interestyle_jax')}


MODULES = _modules()
IMPORTS = {m: _imports(p, m) & set(MODULES) for m, p in MODULES.items()}


def _floor(module):
  if module in COMMANDS:
    return 'command'
  if module in STORAGE:
    return 'storage'
  for prefix in ('ops', 'models', 'training'):
    if module.startswith(f'interestyle_jax.{prefix}'):
      return prefix
  return 'library'


ALLOWED = {  # what each floor may import
    'ops': {'ops'},
    'storage': {'ops'},
    'models': {'ops', 'storage', 'models'},
    'library': {'ops', 'storage', 'models', 'library'},
    'training': {'ops', 'storage', 'models', 'library', 'training'},
    'command': {'ops', 'storage', 'models', 'library', 'training'},
}


def test_the_walk_finds_the_package():
  assert 'interestyle_jax.invert' in IMPORTS and 'interestyle_jax.ops.conv' in IMPORTS
  assert 'interestyle_jax.photos' in IMPORTS['interestyle_jax.invert']


@pytest.mark.parametrize('module', sorted(MODULES))
def test_imports_stay_on_their_floor(module):
  floor = _floor(module)
  bad = sorted(m for m in IMPORTS[module] - {module, 'interestyle_jax'}
               if _floor(m) not in ALLOWED[floor])
  assert not bad, f'{module} ({floor}) imports {bad}'

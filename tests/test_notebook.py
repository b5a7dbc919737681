"""notebooks/quickstart.ipynb runs top to bottom on CPU (nbclient, real kernel).

The checkpoint is a real (2-step) ``train.py`` workdir on the synthetic config,
shared with test_evaluate; the notebook reads it from INTERESTYLE_CHECKPOINT.
"""

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from interestyle_jax import editing
from interestyle_jax.invert import read_image
from tests import tiny_checkpoint as tc

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK = os.path.join(tc.REPO, 'notebooks', 'quickstart.ipynb')
TIMEOUT = 300  # seconds per cell


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'trained', tc.make_trained_workdir)


def _run(env, tmp_path, monkeypatch):
  for k, v in env.items():
    monkeypatch.setenv(k, v)  # the kernel inherits this process's environment
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name='python3',
                                   resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  return nb


def _outputs(nb):
  text, images = [], []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.get('name') == 'stdout':
        text.append(out['text'])
      if 'image/png' in out.get('data', {}):
        png = base64.b64decode(out['data']['image/png'])
        images.append(np.asarray(Image.open(io.BytesIO(png)).convert('RGB')))
  return ''.join(text), images


def test_notebook_runs_with_the_train_py_checkpoint(trained, tmp_path, monkeypatch):
  """A photo from a path; no direction given, so the random demo direction is used.

  The generated-image helper runs too (the style-mixing partner).
  """
  photo = str(tmp_path / 'photo.png')
  Image.fromarray(tc.photos(1, 40)[0]).save(photo)
  monkeypatch.delenv('INTERESTYLE_DIRECTION', raising=False)
  monkeypatch.delenv('INTERESTYLE_TORCH_CHECKPOINT', raising=False)
  nb = _run({'INTERESTYLE_CHECKPOINT': trained, 'INTERESTYLE_IMAGE': photo,
             'PYTHONPATH': tc.REPO}, tmp_path, monkeypatch)
  text, images = _outputs(nb)
  assert f'{trained}: 32 px generator, W+ = [8, 64]' in text
  assert 'iteration 3: MSE to the input' in text
  # photo, iterations strip (input + 3), edits (5 strengths), mix row (3),
  # interpolation row (5); 256 px tiles, 2 px apart.
  assert [im.shape[1] for im in images] == [256 * k + 2 * (k - 1) for k in (1, 4, 5, 3, 5)]
  shown = editing.resize(read_image(photo, 32)[None], 256)[0]
  np.testing.assert_array_equal(images[0], shown)
  np.testing.assert_array_equal(images[1][:, :256], shown)  # the strip starts with the input
  edits = images[2]
  np.testing.assert_array_equal(edits[:, 2 * 258:2 * 258 + 256],  # strength 0 …
                                images[3][:, :256])  # … is the inversion (mix row, column 1)


def test_notebook_is_clean_and_installs_only_when_missing():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.get('outputs') and c.get('execution_count') is None for c in code)
  install = code[0].source
  # %pip runs only when the package cannot be imported.
  assert "find_spec('interestyle_jax') is None" in install and '%pip install' in install
  lines = install.splitlines()
  pip_line = next(i for i, l in enumerate(lines) if '%pip' in l)
  assert lines[pip_line].startswith('  ')  # inside the if-block
  assert any("os.environ.get('INTERESTYLE_CHECKPOINT'" in c.source for c in code)

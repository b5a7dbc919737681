"""notebooks/quickstart.ipynb runs top to bottom on CPU (nbclient, real kernel).

The first execution is the notebook's default path on a fresh machine, minus
the clone and install (``INTERESTYLE_REPO_DIR`` points at this checkout, which
is importable through PYTHONPATH): it trains the synthetic model itself
(``INTERESTYLE_TRAIN_FLAGS`` shortens train.py to 2 steps) and inverts the
most occluded held-out image of the synthetic world. The second one reuses
that workdir as ``INTERESTYLE_CHECKPOINT`` with a photo from a path.

Also here: inference works without TensorFlow installed (the light install
that Colab and ``pip install interestyle_jax`` get).
"""

import base64
import io
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from interestyle_jax import editing
from interestyle_jax.invert import read_image
from tests import tiny_checkpoint as tc

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK = os.path.join(tc.REPO, 'notebooks', 'quickstart.ipynb')
TIMEOUT = 400  # seconds per cell (the training cell compiles train.py's step)
TILE = 256


def _run(env, cwd, monkeypatch):
  for k in ('INTERESTYLE_CHECKPOINT', 'INTERESTYLE_TORCH_CHECKPOINT', 'INTERESTYLE_IMAGE',
            'INTERESTYLE_DIRECTION', 'INTERESTYLE_WORKDIR', 'INTERESTYLE_TRAIN_FLAGS',
            'INTERESTYLE_REPO_URL'):
    monkeypatch.delenv(k, raising=False)
  base = {'INTERESTYLE_REPO_DIR': tc.REPO, 'PYTHONPATH': tc.REPO}
  for k, v in dict(base, **env).items():
    monkeypatch.setenv(k, v)  # the kernel inherits this process's environment
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name='python3',
                                   resources={'metadata': {'path': str(cwd)}})
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


def _tiles(row):
  """The 256 px tiles of a one-row grid (2 px apart)."""
  n = (row.shape[1] + 2) // (TILE + 2)
  return [row[:TILE, i * (TILE + 2):i * (TILE + 2) + TILE] for i in range(n)]


@pytest.fixture(scope='module')
def trained_by_notebook(tmp_path_factory, monkeypatch_module):
  """The notebook's default path: it trains the synthetic model, then inverts."""
  tmp = tmp_path_factory.mktemp('nb_train')
  workdir = str(tmp / 'synthetic')
  nb = _run({'INTERESTYLE_WORKDIR': workdir,
             'INTERESTYLE_TRAIN_FLAGS': ' '.join(tc.TRAIN_ARGS)}, tmp, monkeypatch_module)
  return nb, workdir


@pytest.fixture(scope='module')
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


def test_notebook_trains_and_inverts_an_occluded_heldout_image(trained_by_notebook):
  nb, workdir = trained_by_notebook
  text, images = _outputs(nb)
  assert os.path.isfile(os.path.join(workdir, 'metrics.json'))
  assert 'step 2/2' in text and 'Done:' in text  # train.py's progress reached the notebook
  assert f'{workdir}: 32 px generator, W+ = [8, 64]' in text
  m = re.search(r'input: held-out image (\d+) of the synthetic world', text)
  assert m, text
  assert 'iteration 3: MSE to the clean image, interest region' in text
  # input | mask | clean target; the iterations strip (input + 3); edits; mix; interpolation.
  assert [im.shape[1] for im in images] == [TILE * k + 2 * (k - 1) for k in (3, 4, 5, 3, 5)]
  shown, mask, target = _tiles(images[0])

  # The same held-out image, rebuilt here from the run's config.
  from interestyle_jax import evaluate, synthetic
  config = evaluate.load_training_config(workdir)
  world = synthetic.build_world(config.synthetic)
  held = synthetic.heldout_set(world, 16, config.synthetic.heldout_seed, config.batch_size)
  k = int(m.group(1))
  u8 = lambda x: np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
  want = editing.resize(u8(held['image'][k])[None], TILE)[0]
  np.testing.assert_array_equal(shown, want)
  np.testing.assert_array_equal(_tiles(images[1])[0], want)  # the strip starts with it
  # It is occluded: its mask has a hole where the image differs from the clean target
  # inside the face ellipse (the occluder), and the mask tile is that mask.
  np.testing.assert_array_equal(target, editing.resize(u8(held['target'][k])[None], TILE)[0])
  want_mask = np.rint(np.asarray(held['mask'][k, ..., 0]) * 255).astype(np.uint8)
  want_mask = editing.resize(np.repeat(want_mask[None, ..., None], 3, -1), TILE)[0]
  np.testing.assert_array_equal(mask, want_mask)
  bare = synthetic.uncovered_masks(world, 16, config.synthetic.heldout_seed, config.batch_size)
  covered = np.asarray(bare[k] - held['mask'][k])
  assert covered.sum() > 5, 'the default input has no occluder over the interest region'
  # Strength 0 of the edit row is the inversion (first column of the mix row).
  np.testing.assert_array_equal(_tiles(images[2])[2], _tiles(images[3])[0])


def test_notebook_with_a_checkpoint_and_a_photo(trained_by_notebook, tmp_path, monkeypatch):
  """A photo from a path, a given checkpoint (no training); a random demo direction."""
  _, workdir = trained_by_notebook
  photo = str(tmp_path / 'photo.png')
  Image.fromarray(tc.photos(1, 40)[0]).save(photo)
  nb = _run({'INTERESTYLE_CHECKPOINT': workdir, 'INTERESTYLE_IMAGE': photo}, tmp_path,
            monkeypatch)
  text, images = _outputs(nb)
  assert 'step ' not in text  # nothing trained
  assert f'input: {photo}' in text and 'iteration 3: MSE to the input' in text
  assert [im.shape[1] for im in images] == [TILE * k + 2 * (k - 1) for k in (1, 4, 5, 3, 5)]
  shown = editing.resize(read_image(photo, 32)[None], TILE)[0]
  np.testing.assert_array_equal(images[0], shown)
  np.testing.assert_array_equal(_tiles(images[1])[0], shown)


def test_notebook_is_clean_and_installs_only_when_missing():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.get('outputs') and c.get('execution_count') is None for c in code)
  setup = code[0].source
  # No invented repository URL: empty unless the user (or the environment) sets it.
  assert "REPO_URL = os.environ.get('INTERESTYLE_REPO_URL', '')" in setup
  assert 'github.com/' not in ''.join(c.source for c in nb.cells).replace(
      'github.com/OWNER/REPO', '')
  lines = setup.splitlines()
  clone = next(i for i, l in enumerate(lines) if "'git', 'clone'" in l)
  pip = next(i for i, l in enumerate(lines) if "'pip', 'install'" in l)
  # Both run only when needed: clone inside `if REPO_DIR is None`, pip inside `if not installed()`.
  assert lines[clone].startswith('  ') and lines[pip].startswith('  ')
  assert any(l == 'if REPO_DIR is None:' for l in lines[:clone])
  assert any(l == 'if not installed():' for l in lines[:pip])
  # The accelerator build is taken from pyproject.toml's jax range.
  pin = re.search(r'"jax(>=[^"]+)"', open(os.path.join(tc.REPO, 'pyproject.toml')).read())
  assert pin and pin.group(1).startswith('>=0.')
  assert "f'jax[cuda12]{JAX_SPEC}'" in setup


# TensorFlow, TFDS and TensorBoard made unimportable as if not installed: a
# None entry in sys.modules makes `import` raise ModuleNotFoundError and
# importlib.util.find_spec return None (etils / orbax probe for TensorFlow that
# way). Then everything an inference-only user runs.
NO_TF = textwrap.dedent('''
    import sys

    BLOCKED = ('tensorflow', 'tensorflow_datasets', 'tensorboard')
    for name in BLOCKED:
      sys.modules[name] = None
    import os
    import numpy as np
    from PIL import Image
    import interestyle_jax
    from interestyle_jax import edit, editing, evaluate, invert
    from tests import folder_fixtures as ff
    from tests import tiny_checkpoint as tc

    tmp = sys.argv[1]
    ckpt = tc.make_restyle_dir(os.path.join(tmp, 'model'))
    inv = interestyle_jax.load_inverter(ckpt)
    out = inv.invert(tc.photos(2))
    assert out.images.shape[0] == 2 and np.isfinite(np.asarray(out.images)).all()
    os.makedirs(os.path.join(tmp, 'photos'))
    Image.fromarray(tc.photos(1)[0]).save(os.path.join(tmp, 'photos', 'a.png'))
    assert invert.main(['--checkpoint', ckpt, '--input', os.path.join(tmp, 'photos'),
                        '--output', os.path.join(tmp, 'out')]) == 0
    assert edit.main(['interpolate', '--checkpoint', ckpt,
                      '--source', os.path.join(tmp, 'out', 'a.npy'),
                      '--target', os.path.join(tmp, 'photos', 'a.png'), '--steps', '3',
                      '--output', os.path.join(tmp, 'lerp.png')]) == 0
    ff.write_folder(os.path.join(tmp, 'data'), range(2), 32)
    assert evaluate.main(['--checkpoint', ckpt, '--data', os.path.join(tmp, 'data'),
                          '--batch_size', '2', '--no_progress',
                          '--output', os.path.join(tmp, 'eval.json')]) == 0
    loaded = sorted(m for m, v in sys.modules.items() if m.split('.')[0] in BLOCKED and v)
    assert not loaded, loaded
    print('inference without tensorflow: ok')
''')


def test_inference_needs_no_tensorflow(tmp_path):
  """load_inverter, invert (API and CLI), edit and evaluate run with TensorFlow uninstallable."""
  out = subprocess.run([sys.executable, '-c', NO_TF, str(tmp_path)], cwd=tc.REPO,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=tc.REPO))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert 'inference without tensorflow: ok' in out.stdout
  for f in ('out/a.png', 'lerp.png', 'eval.json'):
    assert os.path.isfile(tmp_path / f), f


def test_train_py_without_tensorflow_names_the_extra(tmp_path):
  """An inference-only install running train.py gets the install command, not a traceback."""
  code = ("import runpy, sys\nsys.modules['tensorflow'] = None\n"
          f"sys.argv = ['train.py', '--config', 'configs/synthetic.py', '--workdir', {str(tmp_path)!r}]\n"
          "runpy.run_path('train.py', run_name='__main__')\n")
  out = subprocess.run([sys.executable, '-c', code], cwd=tc.REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith('train.py: error: training')
  assert 'pip install "interestyle_jax[train]"' in out.stderr
  assert not os.listdir(tmp_path)

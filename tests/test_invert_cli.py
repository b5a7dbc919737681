"""``python -m interestyle_jax.invert`` on a tiny random checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import interestyle_jax
from interestyle_jax import editing
from interestyle_jax.invert import find_inputs, main as invert_main, read_image
from tests import tiny_checkpoint as tc

S = tc.SIZE


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'restyle', tc.make_restyle_dir)


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('photos')
  imgs = tc.photos(4, 48)
  (root / 'sub').mkdir()
  (root / '.hidden').mkdir()
  Image.fromarray(imgs[0]).save(root / 'a.png')
  Image.fromarray(imgs[1]).save(root / 'sub' / 'b.jpg', quality=95)
  Image.fromarray(imgs[2][:, :, 0], 'L').save(root / 'gray.png')  # grey → RGB
  Image.fromarray(imgs[3]).save(root / 'a.jpg')  # same stem as a.png
  Image.fromarray(imgs[3][:20, :40]).save(root / 'small.png')
  (root / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
  (root / 'notes.txt').write_text('not an image')
  Image.fromarray(imgs[0]).save(root / '.hidden' / 'c.png')
  return str(root)


def test_find_inputs(photo_dir):
  inputs, ignored = find_inputs(photo_dir)
  stems = [s for _, s in inputs]
  # a.jpg sorts first and keeps the plain stem; a.png must not overwrite it.
  assert stems == ['a', 'a_png', 'broken', 'gray', 'small', os.path.join('sub', 'b')]
  assert [os.path.basename(f) for f in ignored] == ['notes.txt']
  one = os.path.join(photo_dir, 'a.png')
  assert find_inputs(one) == ([(one, 'a')], [])
  with pytest.raises(FileNotFoundError, match='does not exist'):
    find_inputs(os.path.join(photo_dir, 'nope'))


def test_invert_folder(model_dir, photo_dir, tmp_path, capsys):
  out = str(tmp_path / 'out')
  rc = invert_main(['--checkpoint', model_dir, '--input', photo_dir, '--output', out,
                    '--batch_size', '3', '--no_progress'])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert sorted(summary['inverted']) == sorted(['a', 'a_png', 'gray', os.path.join('sub', 'b')])
  reasons = {os.path.basename(s['file']): s['reason'] for s in summary['skipped']}
  assert set(reasons) == {'broken.png', 'small.png'}
  assert 'unreadable image' in reasons['broken.png']
  assert 'image is 40x20' in reasons['small.png'] and 'minimum is 32 px' in reasons['small.png']
  assert 'skipped' in captured.err and 'broken.png' in captured.err
  assert 'ignored 1 file(s)' in captured.out and 'inverted 4 of 6' in captured.out

  inv = interestyle_jax.load_inverter(model_dir)
  for stem, name in (('a_png', 'a.png'), ('a', 'a.jpg'), ('sub/b', 'sub/b.jpg')):
    recon = np.asarray(Image.open(os.path.join(out, stem + '.png')))
    strip = np.asarray(Image.open(os.path.join(out, stem + '_iterations.png')))
    w = np.load(os.path.join(out, stem + '.npy'))
    assert recon.shape == (tc.RES, tc.RES, 3) and w.shape == (tc.N_STYLES, tc.STYLE_DIM)
    assert strip.shape == (S, (1 + tc.N_ITERS) * (S + 2) - 2, 3)
    # The same image inverted alone (batches are padded; BN uses running
    # statistics, so batch mates must not matter).
    x = read_image(os.path.join(photo_dir, name), S)
    ref = inv.invert(x)
    np.testing.assert_allclose(w, np.asarray(ref.latents[0]), atol=1e-5)
    assert np.abs(recon.astype(int) - editing.to_uint8(ref.images[0]).astype(int)).max() <= 1
    np.testing.assert_array_equal(strip[:, :S], x)  # the input comes first
    last = editing.resize(np.asarray(ref.iterations[-1]), S)[0]
    assert np.abs(strip[:, -S:].astype(int) - last.astype(int)).max() <= 1


def test_nothing_inverted_and_errors(model_dir, photo_dir, tmp_path, capsys):
  out = str(tmp_path / 'out')
  broken = os.path.join(photo_dir, 'broken.png')
  assert invert_main(['--checkpoint', model_dir, '--input', broken, '--output', out,
                      '--no_progress']) == 1
  err = capsys.readouterr().err
  assert 'nothing could be inverted' in err and 'unreadable image' in err
  assert not os.path.exists(os.path.join(out, 'summary.json'))
  small = os.path.join(photo_dir, 'small.png')
  assert invert_main(['--checkpoint', model_dir, '--input', small, '--output', out,
                      '--no_progress']) == 1
  assert 'smaller than the encoder input 32x32: the minimum is 32 px' in capsys.readouterr().err
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert invert_main(['--checkpoint', model_dir, '--input', str(empty), '--output', out]) == 1
  assert 'no .png/.jpg/.jpeg/.webp file' in capsys.readouterr().err
  lpips_dir = tc.make_lpips_dir(str(tmp_path / 'lpips'))
  assert invert_main(['--checkpoint', lpips_dir, '--input', small, '--output', out]) == 2
  assert "'lpips' model, expected restyle" in capsys.readouterr().err
  assert invert_main(['--checkpoint', str(tmp_path), '--input', small, '--output', out]) == 2
  assert 'inference/model.json' in capsys.readouterr().err
  assert invert_main(['--checkpoint', model_dir, '--input', small, '--output', out,
                      '--batch_size', '0']) == 2
  assert '--batch_size must be >= 1' in capsys.readouterr().err


def test_module_entry_point(model_dir, photo_dir, tmp_path):
  """``python -m interestyle_jax.invert`` runs as a script, with its progress bar."""
  out = str(tmp_path / 'out')
  cmd = [sys.executable, '-m', 'interestyle_jax.invert', '--checkpoint', model_dir,
         '--input', os.path.join(photo_dir, 'a.png'), '--output', out, '--n_iters', '1']
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tc.REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'inverting' in res.stderr and '1/1' in res.stderr  # tqdm
  assert json.load(open(os.path.join(out, 'summary.json')))['n_iters'] == 1
  assert os.path.exists(os.path.join(out, 'a.npy'))

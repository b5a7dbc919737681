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
from interestyle_jax import photos
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
  found = find_inputs(photo_dir)
  stems = [s for _, s in found.inputs]
  # a.jpg sorts first and keeps the plain stem; a.png must not overwrite it.
  assert stems == ['a', 'a_png', 'broken', 'gray', 'small', os.path.join('sub', 'b')]
  assert [os.path.basename(f) for f in found.ignored] == ['notes.txt']
  assert found.duplicates == []
  one = os.path.join(photo_dir, 'a.png')
  assert find_inputs(one) == ([(one, 'a')], [], [], [])
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


@pytest.fixture()
def linked_dir(tmp_path):
  """Photos with a symlink cycle, a second link to a sub-folder and to a photo.

  ``sub/b.png`` is 48x40 (not square); ``outside`` is a real folder elsewhere
  reached only through the link ``ext``.
  """
  root = tmp_path / 'linked'
  imgs = tc.photos(4, 48, seed=5)
  (root / 'sub').mkdir(parents=True)
  Image.fromarray(imgs[0]).save(root / 'a.png')
  Image.fromarray(imgs[1][:40]).save(root / 'sub' / 'b.png')
  Image.fromarray(imgs[2]).save(root / 'zz.png')
  outside = tmp_path / 'outside'
  outside.mkdir()
  Image.fromarray(imgs[3]).save(outside / 'c.png')
  os.symlink('.', root / 'self')  # the reported cycle
  os.symlink('..', root / 'sub' / 'up')  # a cycle through the parent
  os.symlink('sub', root / 'alias')  # sorts before sub: must not rename its outputs
  os.symlink('zz.png', root / 'aa_link.png')  # sorts before zz.png
  os.symlink(str(outside), root / 'ext')
  return str(root)


def test_find_inputs_visits_every_real_folder_and_file_once(linked_dir, tmp_path):
  found = find_inputs(linked_dir)
  # Walk order: a folder's files, then its sub-folders.
  assert [s for _, s in found.inputs] == ['a', 'zz', os.path.join('ext', 'c'),
                                          os.path.join('sub', 'b')]
  assert sorted(os.path.relpath(f, linked_dir) for f in found.duplicates) == [
      'aa_link.png', 'alias', 'self', os.path.join('sub', 'up')]
  # An output folder inside the input folder is not searched (earlier outputs).
  out = os.path.join(linked_dir, 'out')
  os.makedirs(out)
  Image.fromarray(tc.photos(1, 48)[0]).save(os.path.join(out, 'a.png'))
  assert [s for _, s in find_inputs(linked_dir, exclude=out).inputs] == [
      'a', 'zz', os.path.join('ext', 'c'), os.path.join('sub', 'b')]


def test_invert_cycle_once_each_and_warns_when_squashing(model_dir, linked_dir, tmp_path,
                                                          capsys):
  out = tmp_path / 'out'
  rc = invert_main(['--checkpoint', model_dir, '--input', linked_dir, '--output', str(out),
                    '--batch_size', '3', '--no_progress'])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  summary = json.load(open(out / 'summary.json'))
  assert summary['inverted'] == ['a', 'zz', os.path.join('ext', 'c'), os.path.join('sub', 'b')]
  written = sorted(os.path.relpath(os.path.join(r, f), out)
                   for r, _, fs in os.walk(out) for f in fs)
  assert len(written) == 1 + 3 * 4 and not any('self' in w or 'alias' in w for w in written)
  assert 'ignored 4 symlink(s) to images or folders already searched' in captured.out
  # One warning line naming the squashed file and its size.
  lines = [l for l in captured.err.splitlines() if 'squashed' in l]
  assert len(lines) == 1 and 'squashed 1 non-square image(s) to 32x32' in lines[0]
  assert os.path.join('sub', 'b.png') + ' (48x40)' in lines[0]
  assert summary['squashed'] == [{'file': os.path.join(linked_dir, 'sub', 'b.png'),
                                  'size': [48, 40]}]


def test_output_paths_are_checked_before_any_work(model_dir, photo_dir, tmp_path, capsys,
                                                  monkeypatch):
  from interestyle_jax import inference

  def no_loading(path):
    raise AssertionError('the checkpoint was loaded before the output was checked')

  monkeypatch.setattr(inference, 'load_inverter', no_loading)
  one = os.path.join(photo_dir, 'a.png')
  a_file = tmp_path / 'taken'
  a_file.write_text('x')
  cases = [
      (str(a_file), f'--output {a_file} is a file, not a folder'),
      (str(a_file / 'sub'), f'{a_file} is a file, not a folder'),
  ]
  blocked = tmp_path / 'blocked'
  (blocked / 'a.png').mkdir(parents=True)  # a folder where the reconstruction goes
  cases.append((str(blocked), 'holds a folder a.png where an output file goes'))
  for out, message in cases:
    # A missing checkpoint too: the output is reported first, nothing is loaded.
    assert invert_main(['--checkpoint', str(tmp_path / 'nope'), '--input', one,
                        '--output', out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and err.startswith('error: '), err
  assert os.listdir(blocked) == ['a.png']


def _damaged_copy(model_dir, dst, damage):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(model_dir, dst)
  meta_path = os.path.join(dst, 'model.json')
  meta = json.load(open(meta_path))
  if damage == 'invalid json':
    open(meta_path, 'w').write('{"kind": "restyle", "encoder": ')
  elif damage == 'wrong kind':
    json.dump(dict(meta, kind='lpips'), open(meta_path, 'w'))
  elif damage == 'unknown field':
    meta['generator']['colour'] = 1
    json.dump(meta, open(meta_path, 'w'))
  elif damage == 'wrong width':
    meta['encoder']['width'] = 16
    json.dump(meta, open(meta_path, 'w'))
  elif damage == 'missing field':
    del meta['generator']
    json.dump(meta, open(meta_path, 'w'))
  elif damage == 'truncated variables':
    tc.truncate_arrays(str(dst))
  return str(dst)


@pytest.mark.parametrize('damage,message', [
    ('invalid json', 'model.json cannot be read (JSONDecodeError'),
    ('wrong kind', "holds a 'lpips' model, expected restyle"),
    ('unknown field', "unexpected keyword argument 'colour'"),
    ('wrong width', 'encoder variables do not fit the architecture in model.json'),
    ('missing field', "lacks its 'generator' entry"),
    ('truncated variables', 'variables cannot be read'),
])
def test_unusable_checkpoint_is_one_line_and_exit_2(model_dir, photo_dir, tmp_path, capsys,
                                                    damage, message):
  bad = _damaged_copy(model_dir, tmp_path / 'bad', damage)
  out = tmp_path / 'out'
  assert invert_main(['--checkpoint', bad, '--input', os.path.join(photo_dir, 'a.png'),
                      '--output', str(out), '--no_progress']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
  assert message in err and 'bad' in err
  assert not out.exists()


def test_help_shows_defaults_and_snake_case_flags(capsys):
  from interestyle_jax.invert import build_parser
  parser = build_parser()
  for action in parser._actions:  # pylint: disable=protected-access
    for flag in action.option_strings:
      if flag not in ('-h', '--help'):
        assert flag.startswith('--') and '-' not in flag[2:], flag
  text = ' '.join(parser.format_help().split())  # unwrapped
  assert '(default: 4)' in text  # --batch_size
  assert "(default: the model's" in text


def test_named_pipe_is_skipped_never_opened(model_dir, photo_dir, tmp_path):
  """A FIFO named like a photo would block open() until a writer comes: it is skipped."""
  src = tmp_path / 'with_fifo'
  src.mkdir()
  Image.open(os.path.join(photo_dir, 'a.png')).save(src / 'a.png')
  os.mkfifo(src / 'fifo.png')
  found = photos.find_inputs(str(src))
  assert [s for _, s in found.inputs] == ['a']
  assert [(os.path.basename(f), r) for f, r in found.not_files] == [
      ('fifo.png', photos.NOT_A_FILE)]
  with pytest.raises(photos.ImageError, match='not a regular file'):
    photos.read_image(str(src / 'fifo.png'), S)
  out = str(tmp_path / 'out')
  base = [sys.executable, '-m', 'interestyle_jax.invert', '--checkpoint', model_dir,
          '--no_progress', '--n_iters', '1']
  # A timeout, not a hang, if the pipe were opened.
  res = subprocess.run(base + ['--input', str(src), '--output', out], capture_output=True,
                       text=True, timeout=300, cwd=tc.REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f'skipped {src / "fifo.png"}: not a regular file' in res.stderr
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert summary['inverted'] == ['a']
  assert [os.path.basename(s['file']) for s in summary['skipped']] == ['fifo.png']
  res = subprocess.run(base + ['--input', str(src / 'fifo.png'), '--output', out],
                       capture_output=True, text=True, timeout=300, cwd=tc.REPO)
  assert res.returncode == 2 and 'Traceback' not in res.stderr
  assert 'is not a regular file' in res.stderr.strip().splitlines()[-1]


def test_exif_orientation_is_applied_before_inverting(model_dir, tmp_path):
  """A portrait stored sideways with EXIF orientation 6 is inverted upright."""
  face = tc.photos(1, 48, seed=3)[0][:, 8:40]  # 48 x 32: portrait, so the turn shows
  upright, turned = str(tmp_path / 'in' / 'upright.png'), str(tmp_path / 'in' / 'turned.png')
  os.makedirs(os.path.dirname(upright))
  Image.fromarray(face).save(upright)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
  Image.fromarray(np.ascontiguousarray(np.rot90(face))).save(turned, exif=exif)
  a, size_a = photos.read_image_sized(upright, S)
  b, size_b = photos.read_image_sized(turned, S)
  assert size_a == size_b == (32, 48)  # width x height as displayed
  np.testing.assert_array_equal(b, a)
  out = str(tmp_path / 'out')
  assert invert_main(['--checkpoint', model_dir, '--input', str(tmp_path / 'in'), '--output',
                      out, '--no_progress']) == 0
  np.testing.assert_array_equal(np.load(os.path.join(out, 'turned.npy')),
                                np.load(os.path.join(out, 'upright.npy')))

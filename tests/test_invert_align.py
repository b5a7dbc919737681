"""``python -m interestyle_jax.align`` and ``python -m interestyle_jax.invert --align`` on real photos.

MTCNN is the real one (facenet-pytorch's weights from the installed package,
see tests/test_align.py); the inverter is the tiny random model of
tests/tiny_checkpoint.py (32 px), which is all the plumbing needs.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from interestyle_jax import align, face_align
from interestyle_jax.data import folder
from interestyle_jax.invert import main as invert_main
from tests import tiny_checkpoint as tc
from tests.test_align import ASTRONAUT, detector, mtcnn_dir  # noqa: F401  (fixtures)

skdata = pytest.importorskip('skimage.data')

SIZE = 128  # aligned side for the align CLI tests: geometry does not need 1024 here
TWO_FACES = np.concatenate([ASTRONAUT, ASTRONAUT[:, ::-1]], axis=1)  # 512 x 1024, two faces


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('raw')
  (root / 'sub').mkdir()
  Image.fromarray(ASTRONAUT).save(root / 'astronaut.png')
  Image.fromarray(TWO_FACES).save(root / 'sub' / 'two.png')
  Image.fromarray(skdata.coffee()).save(root / 'coffee.png')  # no face
  (root / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (root / 'notes.txt').write_text('not an image')
  return str(root)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'restyle', tc.make_restyle_dir)


def _run_align(*args):
  return align.main(['--quiet', *args])


# ----------------------------------------------------------------------------- align CLI


def test_align_folder(mtcnn_dir, detector, photo_dir, tmp_path, capsys):
  out = str(tmp_path / 'aligned')
  rc = align.main(['--mtcnn', mtcnn_dir, '--input', photo_dir, '--output', out,
                   '--size', str(SIZE)])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  written = sorted(os.path.relpath(os.path.join(d, f), out)
                   for d, _, files in os.walk(out) for f in files)
  assert written == ['astronaut.png', 'sub/two_0.png', 'sub/two_1.png', 'summary.json']

  # Each file is the FFHQ alignment of that face (PNG is lossless).
  faces = detector.detect(ASTRONAUT)
  expected = face_align.ffhq_align(ASTRONAUT, faces.landmarks[0], SIZE)
  np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, 'astronaut.png'))),
                                expected)
  two = detector.detect(TWO_FACES)
  for k in range(2):
    np.testing.assert_array_equal(
        np.asarray(Image.open(os.path.join(out, 'sub', f'two_{k}.png'))),
        face_align.ffhq_align(TWO_FACES, two.landmarks[k], SIZE))

  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert summary['size'] == SIZE and summary['faces'] == 3
  by_file = {os.path.relpath(p['file'], photo_dir): p for p in summary['photos']}
  assert sorted(by_file) == ['astronaut.png', 'coffee.png', 'sub/two.png']
  (face,) = by_file['astronaut.png']['faces']
  assert face['output'] == 'astronaut.png' and face['prob'] > 0.99
  np.testing.assert_allclose(face['box'], faces.boxes[0], atol=0.01)
  np.testing.assert_allclose(face['landmarks'], faces.landmarks[0], atol=0.01)
  assert by_file['astronaut.png']['size'] == [512, 512]
  pair = by_file['sub/two.png']['faces']
  assert [f['output'] for f in pair] == ['sub/two_0.png', 'sub/two_1.png']
  # The photo and its mirror: one face in each half, largest first.
  assert sorted(f['box'][0] < 512 for f in pair) == [False, True]
  areas = [(f['box'][2] - f['box'][0]) * (f['box'][3] - f['box'][1]) for f in pair]
  assert areas[0] >= areas[1]
  assert by_file['coffee.png']['faces'] == []
  assert [os.path.relpath(f, photo_dir) for f in summary['no_face']] == ['coffee.png']
  assert [os.path.basename(s['file']) for s in summary['skipped']] == ['broken.jpg']
  assert 'unreadable image' in summary['skipped'][0]['reason']

  assert 'no face found in' in captured.err and 'coffee.png' in captured.err
  assert 'skipped' in captured.err and 'broken.jpg' in captured.err
  assert 'ignored 1 file(s) without an image extension' in captured.out
  assert 'aligned 3 face(s) from 2 of 4 photo(s)' in captured.out
  assert f'{os.path.join(photo_dir, "sub", "two.png")}: 2 face(s) ->' in captured.out


def test_align_no_face_exits_1(mtcnn_dir, photo_dir, tmp_path, capsys):
  out = tmp_path / 'out'
  assert _run_align('--mtcnn', mtcnn_dir, '--input', os.path.join(photo_dir, 'coffee.png'),
                    '--output', str(out)) == 1
  err = capsys.readouterr().err
  assert 'no face found in any photo' in err
  summary = json.load(open(out / 'summary.json'))  # says which photos had none
  assert summary['faces'] == 0 and len(summary['no_face']) == 1
  assert _run_align('--mtcnn', mtcnn_dir, '--input', os.path.join(photo_dir, 'broken.jpg'),
                    '--output', str(tmp_path / 'out2')) == 1
  assert 'no readable' in capsys.readouterr().err


def test_align_argument_errors(mtcnn_dir, model_dir, photo_dir, tmp_path, capsys):
  """Exit 2 with one `error:` line naming the path and the fix, before any photo is read."""
  out = tmp_path / 'out'
  photo = os.path.join(photo_dir, 'astronaut.png')

  def error(*args):
    assert _run_align(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    assert not out.exists()  # nothing written, no empty folder left
    return lines[0]

  empty = tmp_path / 'empty'
  empty.mkdir()
  msg = error('--mtcnn', str(empty), '--input', photo, '--output', str(out))
  assert f'--mtcnn {empty}' in msg and 'convert mtcnn' in msg
  msg = error('--mtcnn', model_dir, '--input', photo, '--output', str(out))  # a restyle model
  assert f'--mtcnn {model_dir}' in msg and 'mtcnn' in msg.split(':', 2)[2]
  msg = error('--mtcnn', mtcnn_dir, '--input', str(tmp_path / 'nope'), '--output', str(out))
  assert 'nope does not exist' in msg
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  msg = error('--mtcnn', mtcnn_dir, '--input', photo, '--output', str(blocker))
  assert f'--output {blocker} is a file' in msg
  msg = error('--mtcnn', mtcnn_dir, '--input', photo, '--output', str(out), '--size', '0')
  assert '--size must be >= 1' in msg


def test_face_stems_never_overwrite():
  taken = {'b', 'b_0'}  # photos b.jpg (two faces) and b_0.jpg
  assert align.face_stems('b', 2, taken) == ['b_0-2', 'b_1']
  assert align.face_stems('b_0', 1, taken) == ['b_0']
  assert align.face_stems('c', 3, taken) == ['c_0', 'c_1', 'c_2']
  assert align.face_stems('d', 0, taken) == []


def test_read_photo_applies_exif_orientation(tmp_path):
  """A camera photo stored on its side with EXIF orientation 6 is read upright."""
  path = str(tmp_path / 'camera.jpg')
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
  Image.fromarray(np.ascontiguousarray(np.rot90(ASTRONAUT))).save(path, exif=exif, quality=95)
  upright = align.read_photo(path)
  assert upright.shape == ASTRONAUT.shape
  assert np.abs(upright.astype(int) - ASTRONAUT).mean() < 4
  with pytest.raises(align.PhotoError, match='unreadable image'):
    align.read_photo(__file__)


def test_align_module_entry_point(mtcnn_dir, tmp_path):
  """``python -m interestyle_jax.align`` as a script (the README's example)."""
  src = tmp_path / 'photos'
  src.mkdir()
  Image.fromarray(ASTRONAUT).save(src / 'astronaut.png')
  cmd = [sys.executable, '-m', 'interestyle_jax.align', '--mtcnn', mtcnn_dir,
         '--input', str(src), '--output', str(tmp_path / 'aligned'), '--size', '256']
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tc.REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  assert '1 face(s) ->' in res.stdout
  out = np.asarray(Image.open(tmp_path / 'aligned' / 'astronaut.png'))
  assert out.shape == (256, 256, 3)


# ----------------------------------------------------------------------------- invert --align


def test_invert_align_end_to_end(mtcnn_dir, detector, model_dir, photo_dir, tmp_path, capsys):
  import interestyle_jax  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'inv')
  rc = invert_main(['--checkpoint', model_dir, '--align', '--mtcnn', mtcnn_dir,
                    '--input', photo_dir, '--output', out, '--batch_size', '2', '--no_progress'])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert summary['inverted'] == ['astronaut', 'sub/two_0', 'sub/two_1']
  reasons = {os.path.basename(s['file']): s['reason'] for s in summary['skipped']}
  assert reasons['coffee.png'] == 'no face found (MTCNN)'
  assert 'unreadable image' in reasons['broken.jpg']
  assert [f['output'] for f in summary['faces']] == [
      'astronaut_aligned.png', 'sub/two_0_aligned.png', 'sub/two_1_aligned.png']
  assert 'inverted 3 face(s) from 2 of 4 photo(s)' in captured.out
  assert 'no face found (MTCNN)' in captured.err

  inv = interestyle_jax.load_inverter(model_dir)
  lm = detector.detect(ASTRONAUT).landmarks[0]
  aligned = np.asarray(Image.open(os.path.join(out, 'astronaut_aligned.png')))
  # Aligned at the generator's resolution (32 px for the tiny model).
  np.testing.assert_array_equal(aligned, face_align.ffhq_align(ASTRONAUT, lm, tc.RES))
  recon = np.asarray(Image.open(os.path.join(out, 'astronaut.png')))
  latent = np.load(os.path.join(out, 'astronaut.npy'))
  assert recon.shape == (tc.RES, tc.RES, 3) and latent.shape == (tc.N_STYLES, tc.STYLE_DIM)
  # The reconstruction is the inversion of that aligned crop.
  ref = inv.invert(folder.resize_image(aligned, tc.SIZE))
  np.testing.assert_allclose(latent, np.asarray(ref.latents[0]), atol=1e-5)
  strip = np.asarray(Image.open(os.path.join(out, 'astronaut_iterations.png')))
  np.testing.assert_array_equal(strip[:, :tc.SIZE], folder.resize_image(aligned, tc.SIZE))
  for name in ('two_0', 'two_1'):
    for suffix in ('.png', '_aligned.png', '_iterations.png', '.npy'):
      assert os.path.isfile(os.path.join(out, 'sub', name + suffix))


def test_invert_align_errors(mtcnn_dir, model_dir, photo_dir, tmp_path, capsys):
  out = str(tmp_path / 'inv')
  coffee = os.path.join(photo_dir, 'coffee.png')
  assert invert_main(['--checkpoint', model_dir, '--align', '--input', coffee,
                      '--output', out]) == 2
  err = capsys.readouterr().err
  assert '--align needs --mtcnn DIR' in err and 'convert mtcnn' in err
  assert invert_main(['--checkpoint', model_dir, '--mtcnn', mtcnn_dir, '--input', coffee,
                      '--output', out]) == 2
  assert 'add --align' in capsys.readouterr().err
  assert invert_main(['--checkpoint', model_dir, '--align', '--mtcnn', str(tmp_path),
                      '--input', coffee, '--output', out]) == 2
  assert f'--mtcnn {tmp_path}' in capsys.readouterr().err
  assert not os.path.exists(out)
  # A photo without a face: nothing inverted, exit 1, the reason given.
  assert invert_main(['--checkpoint', model_dir, '--align', '--mtcnn', mtcnn_dir,
                      '--input', coffee, '--output', out, '--no_progress']) == 1
  err = capsys.readouterr().err
  assert 'no face found (MTCNN)' in err and 'nothing could be inverted' in err

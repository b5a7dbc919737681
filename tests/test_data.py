"""Folder dataset, TFDS builder and input pipeline (CPU, generated folders)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from interestyle_jax.data import folder
from interestyle_jax.data import pipeline
from interestyle_jax.data.folder import DataValidationError
from tests import folder_fixtures as ff

N_TRAIN, N_TEST, SIZE = 22, 7, 16


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A prepared train/test folder pair shared by the pipeline tests."""
  root = tmp_path_factory.mktemp('ds')
  train = ff.write_folder(str(root / 'train'), range(N_TRAIN), SIZE)
  test = ff.write_folder(str(root / 'test'), range(100, 100 + N_TEST), SIZE, ext='jpg')
  # JPEG test images: lossy, but the pipeline must still read them.
  return ff.data_config(train, test, str(root / 'tfds'))


def take(it, n):
  return [next(it) for _ in range(n)]


# ----------------------------------------------------------------- builder


def test_builder_shapes_dtypes_and_report(dataset):
  from interestyle_jax.data import folder_builder
  b = folder_builder.prepare(dataset.train_dir, dataset.test_dir, image_size=SIZE,
                             data_dir=dataset.data_dir)
  assert b.info.splits['train'].num_examples == N_TRAIN
  assert b.info.splits['test'].num_examples == N_TEST
  ex = next(iter(b.as_dataset('train').take(1)))
  assert ex['image'].shape == (SIZE, SIZE, 3) and ex['image'].dtype.name == 'uint8'
  assert ex['mask'].shape == (SIZE, SIZE, 1) and ex['mask'].dtype.name == 'uint8'
  i = int(ex['stem'].numpy())
  np.testing.assert_array_equal(ex['image'].numpy(), ff.image_for(i, SIZE))  # PNG: lossless
  np.testing.assert_array_equal(ex['mask'].numpy()[..., 0], ff.mask_for(i, SIZE))
  report = b.info.metadata['train']
  assert report['num_examples'] == N_TRAIN and report['num_skipped'] == 0


def test_any_size_grayscale_rgba_formats(tmp_path):
  root = tmp_path / 'mixed'
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 40, 3), np.uint8)
  half = np.zeros((40, 40), np.uint8)
  half[:, :20] = 255
  Image.fromarray(rgb).save(root / 'images' / 'big.png')
  Image.fromarray(half).save(root / 'masks' / 'big.png')
  Image.fromarray(rgb[..., 0]).save(root / 'images' / 'gray.png')  # L
  Image.fromarray(half[::2, ::2]).save(root / 'masks' / 'gray.png')  # mask at half resolution
  rgba = np.concatenate([rgb[:30], np.full((30, 40, 1), 7, np.uint8)], -1)
  Image.fromarray(rgba, 'RGBA').save(root / 'images' / 'rgba.webp', lossless=True)
  Image.fromarray(half[:30]).save(root / 'masks' / 'rgba.png')  # non-square 40x30
  Image.fromarray(rgb).save(root / 'images' / 'photo.JPEG', quality=95)
  Image.fromarray(half).convert('RGB').save(root / 'masks' / 'photo.png')  # RGB mask
  # 0/1 mask (a common mistake) is rescaled, not read as almost empty.
  Image.fromarray(rgb).save(root / 'images' / 'zeroone.png')
  Image.fromarray(half // 255).save(root / 'masks' / 'zeroone.png')
  from interestyle_jax.data import folder_builder
  b = folder_builder.prepare(str(root), image_size=20, data_dir=str(tmp_path / 'tfds'))
  got = {e['stem'].decode(): e for e in b.as_dataset('train').as_numpy_iterator()}
  assert sorted(got) == ['big', 'gray', 'photo', 'rgba', 'zeroone']
  for e in got.values():
    assert e['image'].shape == (20, 20, 3) and e['mask'].shape == (20, 20, 1)
    # Every mask is "left half": resizing kept it aligned (the antialiasing
    # kernel only softens the two columns at the edge).
    np.testing.assert_array_equal(e['mask'][:, :9, 0], 255)
    np.testing.assert_array_equal(e['mask'][:, 11:, 0], 0)
  g = got['gray']['image'].astype(int)
  np.testing.assert_array_equal(g[..., 0], g[..., 1])
  np.testing.assert_array_equal(g[..., 0], g[..., 2])
  # RGBA: alpha dropped, colours kept (lossless WebP, non-square resize).
  want = np.asarray(Image.fromarray(rgb[:30]).resize((20, 20), Image.BILINEAR))
  np.testing.assert_array_equal(got['rgba']['image'], want)
  report = b.info.metadata['train']
  assert report['num_rescaled_masks'] == 1 and report['num_non_square'] == 1


def test_image_resize_is_antialiased():
  # A one-pixel checkerboard shrunk 4x must average to grey, not alias to
  # black/white as point sampling or a non-widened bilinear kernel would.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  out = folder.resize_image(np.repeat(board[..., None], 3, -1), 16).astype(float)
  assert np.abs(out - 127.5).max() < 20
  mask = folder.resize_mask(board, 16)
  assert mask.shape == (16, 16, 1) and np.abs(mask.astype(float) - 127.5).max() < 20


# ---------------------------------------------------------------- pipeline


def test_train_batches_shapes_ranges_and_flip_alignment(dataset):
  it = pipeline.make_train_iterator(dataset, global_batch_size=4, seed=0)
  flipped = unflipped = 0
  for b in take(it, 12):
    img, m = np.asarray(b['image']), np.asarray(b['mask'])
    assert img.shape == (1, 4, SIZE, SIZE, 3) and img.dtype == np.float32
    assert m.shape == (1, 4, SIZE, SIZE, 1) and m.dtype == np.float32
    assert -1.0 <= img.min() and img.max() <= 1.0 and 0.0 <= m.min() and m.max() <= 1.0
    # Red channel was drawn from the mask: equal iff transformed together.
    np.testing.assert_allclose((img[..., 0] + 1) / 2, m[..., 0], atol=1e-6)
    for idx, mm in zip(ff.index_of(img).ravel(), m.reshape(-1, SIZE, SIZE)):
      want = ff.mask_for(int(idx), SIZE) / 255.0
      if np.array_equal(mm, want):
        unflipped += 1
      else:
        np.testing.assert_array_equal(mm, want[:, ::-1])
        flipped += 1
  assert flipped > 5 and unflipped > 5


def test_train_deterministic_given_seed(dataset):
  def first(seed):
    return [np.asarray(b['image']) for b in
            take(pipeline.make_train_iterator(dataset, 4, seed), 8)]  # > 1 epoch
  a, b, c = first(3), first(3), first(4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_local_device_axis_and_batch_divisibility(dataset):
  it = pipeline.make_train_iterator(dataset, 8, 0, local_device_count=2)
  b = next(it)
  assert b['image'].shape == (2, 4, SIZE, SIZE, 3) and b['mask'].shape == (2, 4, SIZE, SIZE, 1)
  assert isinstance(b['image'], np.ndarray)  # simulated devices: no device prefetch
  with pytest.raises(ValueError, match='global_batch_size=6.*multiple of.*4'):
    pipeline.make_train_iterator(dataset, 6, 0, process_count=2, process_index=0,
                                 local_device_count=2)


def test_train_shards_disjoint_and_cover(dataset):
  seen = []
  for pi in range(2):
    it = pipeline.make_train_iterator(dataset, 4, 0, process_index=pi, process_count=2)
    # 60 batches of 2 = 120 draws from an 11-example shard: all of it shows up.
    seen.append({int(i) for b in take(it, 60) for i in ff.index_of(b['image']).ravel()})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(N_TRAIN))  # 22 = 2 x 11: nothing dropped


def test_eval_shards_padding_and_valid(dataset):
  per_host, counts = [], []
  for pi in range(3):
    batches = list(pipeline.make_eval_iterator(dataset, 6, process_index=pi, process_count=3))
    counts.append(len(batches))
    ids = []
    for b in batches:
      v = np.asarray(b['valid'])
      assert v.shape == (1, 2) and v.dtype == np.float32 and set(v.ravel()) <= {0.0, 1.0}
      img, m = np.asarray(b['image']), np.asarray(b['mask'])
      assert img.shape == (1, 2, SIZE, SIZE, 3)
      assert (img[v == 0] == 0).all() and (m[v == 0] == 0).all()
      ids += list(ff.index_of(img)[v == 1])
    per_host.append(ids)
  # 7 examples over 3 hosts: shards 3/2/2, each host yields ceil(3/2)=2 batches.
  assert counts == [2, 2, 2]
  assert sorted(len(x) for x in per_host) == [2, 2, 3]
  flat = [i for x in per_host for i in x]
  assert sorted(flat) == list(range(100, 100 + N_TEST))  # disjoint and complete
  # More hosts than examples: the last host only pads, in step with the rest.
  last = list(pipeline.make_eval_iterator(dataset, 8, process_index=7, process_count=8))
  assert [np.asarray(b['valid']).tolist() for b in last] == [[[0.0]]]


def test_eval_single_host_pads_last_batch(dataset):
  batches = list(pipeline.make_eval_iterator(dataset, 4))
  assert [np.asarray(b['valid']).tolist() for b in batches] == [[[1, 1, 1, 1]], [[1, 1, 1, 0]]]
  again = list(pipeline.make_eval_iterator(dataset, 4))
  np.testing.assert_array_equal(np.asarray(batches[0]['image']), np.asarray(again[0]['image']))
  # Repeated evals reuse the builder instead of listing the folders again.
  assert pipeline.load_builder(dataset) is pipeline.load_builder(dataset)


def test_test_fraction_split_and_missing_test_split(tmp_path):
  train = ff.write_folder(str(tmp_path / 'all'), range(40), 8)
  tr, te = folder.split_pairs(folder.pair_folder(train), 0.25)
  assert {p.stem for p in tr}.isdisjoint(p.stem for p in te) and len(tr) + len(te) == 40
  assert 3 <= len(te) <= 18
  assert folder.split_pairs(folder.pair_folder(train), 0.25)[1] == te  # stable
  c = ff.data_config(train, image_size=8, test_fraction=0.25)
  n = sum(np.asarray(b['valid']).sum() for b in pipeline.make_eval_iterator(c, 2))
  assert n == len(te)
  with pytest.raises(ValueError, match='no test split'):
    pipeline.make_eval_iterator(ff.data_config(train, image_size=8), 2)


def test_import_does_not_load_tensorflow():
  code = ('import sys, interestyle_jax.data, interestyle_jax.data.make_masks; '
          'assert "tensorflow" not in sys.modules, "TF imported eagerly"')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))


# -------------------------------------------------------------- validation


def test_mismatch_lists_missing_stems_on_both_sides(tmp_path):
  root = ff.write_folder(str(tmp_path / 'd'), range(10), 8)
  for i in (8, 9):
    os.remove(os.path.join(root, 'masks', f'{i:05d}.png'))
  Image.fromarray(ff.mask_for(0, 8)).save(os.path.join(root, 'masks', 'orphan.png'))
  with pytest.raises(DataValidationError) as e:
    pipeline.make_train_iterator(ff.data_config(root, image_size=8), 2, 0)
  msg = str(e.value)
  assert '00008, 00009' in msg and 'orphan' in msg and os.path.join(root, 'masks') in msg
  assert 'make_masks' in msg  # says how to fix it


def test_missing_subfolder_duplicate_stem_and_bad_source(tmp_path):
  root = ff.write_folder(str(tmp_path / 'd'), range(3), 8)
  with pytest.raises(DataValidationError, match='images/images does not exist.*parent folder'):
    folder.pair_folder(str(tmp_path / 'd' / 'images'))
  os.makedirs(tmp_path / 'e' / 'images')
  with pytest.raises(DataValidationError, match='e/masks does not exist'):
    folder.pair_folder(str(tmp_path / 'e'))
  Image.fromarray(ff.image_for(0, 8)).save(os.path.join(root, 'images', '00000.jpg'))
  with pytest.raises(DataValidationError, match='(?s)more than once.*00000.jpg, .*00000.png'):
    folder.pair_folder(root)
  with pytest.raises(ValueError, match="source='nope'"):
    pipeline.make_train_iterator(ff.data_config(root, image_size=8, source='nope'), 2, 0)
  with pytest.raises(DataValidationError, match='train_dir is empty'):
    pipeline.make_train_iterator(ff.data_config('', data_dir=str(tmp_path / 't')), 2, 0)


def test_corrupt_files_skipped_and_counted_or_strict_error(tmp_path, caplog):
  root = ff.write_folder(str(tmp_path / 'd'), range(12), 8)
  ff.truncate(os.path.join(root, 'images', '00003.png'))
  with open(os.path.join(root, 'masks', '00005.png'), 'wb') as f:
    f.write(b'not a png at all')
  strict = ff.data_config(root, image_size=8, strict=True, data_dir=str(tmp_path / 's'))
  with pytest.raises(DataValidationError, match='(?s)strict.*2 of 12.*00003.*00005'):
    pipeline.make_train_iterator(strict, 2, 0)
  lenient = ff.data_config(root, image_size=8)
  with caplog.at_level(logging.WARNING):
    it = pipeline.make_train_iterator(lenient, 2, 0)
  assert '2 of 12' in caplog.text and '00003' in caplog.text
  ids = {int(i) for b in take(it, 15) for i in ff.index_of(b['image']).ravel()}
  assert ids == set(range(12)) - {3, 5}
  # Switching to strict on the already-prepared copy still fails.
  with pytest.raises(DataValidationError, match='2 of 12'):
    pipeline.make_train_iterator(ff.data_config(root, image_size=8, strict=True), 2, 0)


def test_all_zero_mask_warned_or_strict_error(tmp_path, caplog):
  root = ff.write_folder(str(tmp_path / 'd'), range(6), 8)
  for stem in ('00001', '00004'):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, 'masks', f'{stem}.png'))
  with caplog.at_level(logging.WARNING):
    pipeline.make_eval_iterator(ff.data_config(root, image_size=8, test_fraction=0.5), 2)
  assert 'all zero' in caplog.text and '00001' in caplog.text and '00004' in caplog.text
  with pytest.raises(DataValidationError, match='all zero.*00001, 00004'):
    pipeline.make_train_iterator(
        ff.data_config(root, image_size=8, strict=True, data_dir=str(tmp_path / 's')), 2, 0)


def test_too_few_examples_for_batch(tmp_path):
  root = ff.write_folder(str(tmp_path / 'd'), range(3), 8)
  with pytest.raises(ValueError, match='needs at\\s+least one batch of 4'):
    pipeline.make_train_iterator(ff.data_config(root, image_size=8), 4, 0)


def test_worker_processes_prepare_the_same_data(tmp_path, monkeypatch):
  from interestyle_jax.data import folder_builder
  monkeypatch.setattr(folder_builder, 'MIN_PAIRS_FOR_POOL', 0)
  root = ff.write_folder(str(tmp_path / 'd'), range(9), 8)
  ff.truncate(os.path.join(root, 'images', '00002.png'))
  got = []
  for workers in (1, 2):
    b = folder_builder.prepare(root, image_size=8, data_dir=str(tmp_path / f't{workers}'),
                               workers=workers)
    got.append(sorted((e['stem'], e['image'].tobytes(), e['mask'].tobytes())
                      for e in b.as_dataset('train').as_numpy_iterator()))
    assert b.info.metadata['train']['num_skipped'] == 1
  assert len(got[0]) == 8 and got[0] == got[1]


_TWO_PROCESS_WORKER = r'''
import json
import sys
import jax
pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=pid)
import numpy as np
from interestyle_jax.data import pipeline
from tests import folder_fixtures as ff
c = ff.data_config(root + '/train', root + '/test', root + '/tfds', image_size=8)
it = pipeline.make_train_iterator(c, 4, 0)
train = sorted({int(i) for _ in range(20) for i in ff.index_of(next(it)['image']).ravel()})
ev = [ff.index_of(np.asarray(b['image']))[np.asarray(b['valid']) == 1].tolist()
      for b in pipeline.make_eval_iterator(c, 4)]
print('RESULT', json.dumps([jax.process_count(), train, ev]), flush=True)
'''


def test_real_two_process_job(tmp_path):
  """jax.distributed with two CPU processes: one prepares, both read disjoint shards."""
  import socket
  ff.write_folder(str(tmp_path / 'train'), range(10), 8)
  ff.write_folder(str(tmp_path / 'test'), range(100, 105), 8)
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = str(s.getsockname()[1])
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = [subprocess.Popen([sys.executable, '-c', _TWO_PROCESS_WORKER, str(i), port,
                             str(tmp_path)], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  results = []
  for p, out in zip(procs, outs):
    lines = [l for l in out.splitlines() if l.startswith('RESULT')]
    if p.returncode or not lines:
      if 'gloo' in out.lower() and 'not' in out.lower():
        pytest.skip('this jaxlib has no CPU (gloo) collectives')
      pytest.fail(f'worker failed (rc={p.returncode}):\n{out[-3000:]}')
    results.append(json.loads(lines[0][len('RESULT'):]))
  (n0, train0, eval0), (n1, train1, eval1) = results
  assert n0 == n1 == 2
  assert not set(train0) & set(train1) and set(train0) | set(train1) == set(range(10))
  assert len(eval0) == len(eval1) == 2  # same number of eval batches on both hosts
  flat = sorted(i for e in (eval0, eval1) for b in e for i in b)
  assert flat == list(range(100, 105))
  assert len(os.listdir(tmp_path / 'tfds' / 'interest_folder')) == 1  # prepared once


def test_prepare_cli(tmp_path):
  root = ff.write_folder(str(tmp_path / 'd'), range(5), 8)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, '-m', 'interestyle_jax.data.folder_builder', '--train_dir', root,
         '--data_dir', str(tmp_path / 'tfds'), '--image_size', '8', '--workers', '2']
  out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'train: 5 examples' in out.stdout
  os.remove(os.path.join(root, 'masks', '00001.png'))
  out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'no mask' in out.stderr

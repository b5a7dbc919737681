"""Mask maker: class conventions, part/label inputs, dilation and softening.

The references here are plain-Python loops over pixels (no NumPy filtering,
no SciPy), written from the definitions rather than from the implementation.
"""

import math
import os

import numpy as np
import pytest
from PIL import Image

from interestyle_jax.data import make_masks as mm
from interestyle_jax.data import mask_ops

# Default interest classes by id, written out by hand from the two published
# orders (face-parsing.PyTorch and CelebAMask-HQ's g_mask.py).
DEFAULT_IDS_FACE_PARSING = [1, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17]
DEFAULT_IDS_CELEBAMASK_HQ = [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]


def ref_dilate(mask, radius):
  h, w = len(mask), len(mask[0])
  r = int(math.floor(radius))
  out = [[False] * w for _ in range(h)]
  for y in range(h):
    for x in range(w):
      for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
          yy, xx = y + dy, x + dx
          if dy * dy + dx * dx <= radius * radius and 0 <= yy < h and 0 <= xx < w \
              and mask[yy][xx]:
            out[y][x] = True
  return out


def ref_soften(mask, sigma):
  """2-D (not separable) Gaussian over ±ceil(4σ) with clamped (edge) indices."""
  h, w = len(mask), len(mask[0])
  rad = max(1, math.ceil(4 * sigma))
  taps = {(dy, dx): math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
          for dy in range(-rad, rad + 1) for dx in range(-rad, rad + 1)}
  norm = sum(taps.values())
  out = [[0.0] * w for _ in range(h)]
  for y in range(h):
    for x in range(w):
      s = 0.0
      for (dy, dx), t in taps.items():
        s += t * mask[min(max(y + dy, 0), h - 1)][min(max(x + dx, 0), w - 1)]
      out[y][x] = s / norm
  return out


def random_mask(seed, h=13, w=17, p=0.06):
  return np.random.default_rng(seed).random((h, w)) < p


def test_conventions_and_default_classes():
  assert mm.FACE_PARSING[17] == 'hair' and mm.CELEBAMASK_HQ[13] == 'hair'
  assert len(mm.FACE_PARSING) == len(mm.CELEBAMASK_HQ) == 19
  assert set(mm.FACE_PARSING) == set(mm.CELEBAMASK_HQ)
  classes = mm.parse_classes(mm.DEFAULT_CLASSES)
  assert mm.class_ids(classes, 'face_parsing') == DEFAULT_IDS_FACE_PARSING
  assert mm.class_ids(classes, 'celebamask_hq') == DEFAULT_IDS_CELEBAMASK_HQ
  assert mm.parse_classes('brows,hat') == ('hat', 'l_brow', 'r_brow')
  with pytest.raises(ValueError, match="unknown class 'beard'"):
    mm.parse_classes('hair,beard')


@pytest.mark.parametrize('radius,shape', [(0, (13, 17)), (1, (13, 17)), (1.5, (13, 17)),
                                          (2.3, (13, 17)), (3, (13, 17)), (5, (4, 9))])
def test_dilate_matches_disk_reference(radius, shape):
  m = random_mask(int(radius * 10), *shape)
  m[0, 0] = m[-1, -1] = True  # corners exercise the borders
  want = np.array(ref_dilate(m.tolist(), radius))
  np.testing.assert_array_equal(mask_ops.dilate(m, radius), want)


@pytest.mark.parametrize('sigma', [0.7, 1.6])
def test_soften_matches_2d_reference(sigma):
  m = random_mask(7, 11, 9, 0.3).astype(float)
  want = np.array(ref_soften(m.tolist(), sigma))
  np.testing.assert_allclose(mask_ops.soften(m, sigma), want, atol=1e-12)
  full = mask_ops.soften(np.ones((6, 6)), sigma)
  np.testing.assert_allclose(full, 1.0)  # edge replication: no fade at borders


def write_png(path, arr, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr), mode).save(path)


def read(path):
  return np.asarray(Image.open(path))


def label_map(seed, h=20, w=24):
  return np.random.default_rng(seed).integers(0, 19, (h, w)).astype(np.uint8)


def test_label_maps_union_hard_and_conventions(tmp_path):
  labels = {f'{i:05d}': label_map(i) for i in range(3)}
  for stem, lab in labels.items():
    write_png(str(tmp_path / 'in' / f'{stem}.png'), lab)
  out = tmp_path / 'out'
  for conv, ids in (('face_parsing', DEFAULT_IDS_FACE_PARSING),
                    ('celebamask_hq', DEFAULT_IDS_CELEBAMASK_HQ)):
    assert mm.main(['--input_dir', str(tmp_path / 'in'), '--output_dir', str(out / conv),
                    '--convention', conv, '--dilate', '0', '--sigma', '0', '--size', '0',
                    '--workers', '2']) == 0
    for stem, lab in labels.items():
      want = np.array([[255 if v in ids else 0 for v in row] for row in lab.tolist()])
      np.testing.assert_array_equal(read(out / conv / f'{stem}.png'), want)


def test_parts_nested_folders_dilate_and_soften(tmp_path):
  h = w = 16
  hair = np.zeros((h, w), bool)
  hair[:3, 4:12] = True
  skin = np.zeros((h, w), bool)
  skin[5:11, 5:10] = True
  hat = np.zeros((h, w), bool)
  hat[0:2, :] = True  # not a default class: must not appear
  for stem, sub in (('00000', '0'), ('02001', '1')):
    for part, arr in (('hair', hair), ('skin', skin), ('hat', hat)):
      # CelebAMask-HQ part files are 3-channel 0/255 PNGs in numbered folders.
      write_png(str(tmp_path / 'anno' / sub / f'{stem}_{part}.png'),
                np.repeat(arr[..., None] * np.uint8(255), 3, -1))
  write_png(str(tmp_path / 'anno' / '1' / '02001_l_lip.png'), np.zeros((h, w), np.uint8))
  out = tmp_path / 'out'
  assert mm.main(['--input_dir', str(tmp_path / 'anno'), '--output_dir', str(out),
                  '--dilate', '1.5', '--sigma', '0.8', '--size', '0',
                  '--stem_format', '{id}']) == 0
  assert sorted(os.listdir(out)) == ['0.png', '2001.png']
  union = (hair | skin).tolist()
  soft = ref_soften([[float(v) for v in row] for row in ref_dilate(union, 1.5)], 0.8)
  want = np.array([[round(v * 255) for v in row] for row in soft])
  got = read(out / '2001.png').astype(int)
  assert np.abs(got - want).max() <= 1  # rounding of float sums
  assert got[0, 0] == 0 and got[1, 8] == 255


def test_size_scales_parameters_to_output_pixels(tmp_path):
  lab = np.zeros((32, 32), np.uint8)
  lab[12:20, 12:20] = 17  # hair
  write_png(str(tmp_path / 'in' / 'a.png'), lab)
  out = tmp_path / 'out'
  assert mm.main(['--input_dir', str(tmp_path / 'in'), '--output_dir', str(out),
                  '--dilate', '2', '--sigma', '0', '--size', '16']) == 0
  got = read(out / 'a.png')
  assert got.shape == (16, 16)
  # 2 output px = 4 input px: the 8x8 input square (4x4 at output) grows to
  # about 8x8 output pixels, not 6x6.
  rows = (got > 127).any(1).sum()
  assert rows == 8, got


def test_unreadable_colour_and_out_of_range_inputs_are_skipped(tmp_path, capsys):
  for i in range(3):
    write_png(str(tmp_path / 'in' / f'{i}.png'), label_map(i))
  with open(tmp_path / 'in' / '0.png', 'rb') as f:
    data = f.read()
  with open(tmp_path / 'in' / '0.png', 'wb') as f:
    f.write(data[:len(data) // 2])  # truncated
  colour = np.zeros((8, 8, 3), np.uint8)
  colour[..., 0] = 200
  write_png(str(tmp_path / 'in' / 'vis.png'), colour)
  write_png(str(tmp_path / 'in' / 'binary.png'), np.full((8, 8), 255, np.uint8))
  write_png(str(tmp_path / 'in' / 'bg.png'), np.zeros((8, 8), np.uint8))
  out = tmp_path / 'out'
  assert mm.main(['--input_dir', str(tmp_path / 'in'), '--output_dir', str(out),
                  '--format', 'labels', '--size', '0']) == 0
  err = capsys.readouterr().err
  assert 'skipped 3 unreadable' in err
  assert '0: ' in err and 'vis: ValueError' in err and 'binary: ValueError' in err
  assert 'colour image' in err and 'holds value 255' in err
  assert '1 mask(s) are all zero' in err and 'bg' in err
  assert sorted(os.listdir(out)) == ['1.png', '2.png', 'bg.png']


def test_auto_format_and_cli_errors(tmp_path, capsys):
  write_png(str(tmp_path / 'p' / '7_hair.png'), np.full((4, 4), 255, np.uint8))
  write_png(str(tmp_path / 'p' / '7_neck_l.png'), np.full((4, 4), 255, np.uint8))
  fmt, jobs = mm.find_jobs(str(tmp_path / 'p'), 'auto')
  assert fmt == 'parts' and jobs[0].stem == '7' and set(jobs[0].source) == {'hair', 'neck_l'}
  write_png(str(tmp_path / 'l' / '7.png'), np.zeros((4, 4), np.uint8))
  assert mm.find_jobs(str(tmp_path / 'l'), 'auto')[0] == 'labels'
  assert mm.main(['--input_dir', str(tmp_path / 'empty_nothing'), '--output_dir',
                  str(tmp_path / 'o')]) == 2
  assert 'empty_nothing is not a folder' in capsys.readouterr().err
  (tmp_path / 'empty').mkdir()
  assert mm.main(['--input_dir', str(tmp_path / 'empty'), '--output_dir',
                  str(tmp_path / 'o')]) == 2
  assert 'no .png file' in capsys.readouterr().err
  assert mm.main(['--input_dir', str(tmp_path / 'p'), '--output_dir', str(tmp_path / 'o'),
                  '--classes', 'wings']) == 2
  assert "unknown class 'wings'" in capsys.readouterr().err
  assert not (tmp_path / 'o').exists()


def test_match_dir_keeps_only_the_images_present(tmp_path, capsys):
  for i in range(5):
    write_png(str(tmp_path / 'anno' / str(i // 2) / f'{i:05d}_skin.png'),
              np.full((4, 4), 255, np.uint8))
  for i in (1, 3):
    write_png(str(tmp_path / 'imgs' / f'{i}.png'), np.zeros((4, 4, 3), np.uint8))
  argv = ['--input_dir', str(tmp_path / 'anno'), '--output_dir', str(tmp_path / 'out'),
          '--size', '0', '--match_dir', str(tmp_path / 'imgs')]
  assert mm.main(argv + ['--stem_format', '{id}']) == 0
  assert sorted(os.listdir(tmp_path / 'out')) == ['1.png', '3.png']
  assert mm.main(argv) == 2  # '00001' does not match '1': told to fix --stem_format
  assert 'have no parsing input: 1, 3' in capsys.readouterr().err


def test_celebahq_split(tmp_path):
  from interestyle_jax.data import celebahq_split as cs
  hq = tmp_path / 'CelebAMask-HQ'
  (hq / 'CelebA-HQ-img').mkdir(parents=True)
  rows = [(0, 119613, '119614.jpg'), (1, 99094, '099095.jpg'), (2, 200121, '200122.jpg'),
          (3, 182637, '182638.jpg'), (4, 170000, '170001.jpg')]
  (hq / 'CelebA-HQ-to-CelebA-mapping.txt').write_text(
      'idx         orig_idx    orig_file  \n' +
      ''.join(f'{a:<12d}{b:<12d}{c}\n' for a, b, c in rows))
  # CelebA's partition: test from 182638.jpg (1-based), val from 162771.jpg.
  part = {c: (2 if b >= 182637 else 1 if b >= 162770 else 0) for _, b, c in rows}
  (tmp_path / 'list_eval_partition.txt').write_text(
      ''.join(f'{c} {v}\n' for c, v in sorted(part.items())))
  for i, _, _ in rows:
    (hq / 'CelebA-HQ-img' / f'{i}.jpg').write_bytes(b'jpeg')
  out = tmp_path / 'test' / 'images'
  assert cs.main(['--celebamask_hq_dir', str(hq), '--partition_file',
                  str(tmp_path / 'list_eval_partition.txt'), '--output_dir', str(out)]) == 0
  assert sorted(os.listdir(out)) == ['2.jpg', '3.jpg']
  assert (out / '2.jpg').read_bytes() == b'jpeg'


def _one_line_error(capsys) -> str:
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1, err
  return err


def test_id_format_refuses_non_numeric_stems_before_writing(tmp_path, capsys):
  for stem in ('00001', '00002', 'extra', 'notes'):
    write_png(str(tmp_path / 'in' / f'{stem}.png'), label_map(1))
  out = tmp_path / 'out'
  assert mm.main(['--input_dir', str(tmp_path / 'in'), '--output_dir', str(out),
                  '--stem_format', '{id}', '--workers', '1']) == 2
  err = _one_line_error(capsys)
  assert str(tmp_path / 'in' / 'extra.png') in err and "stem 'extra'" in err
  assert 'and 1 more input(s)' in err and "--stem_format='{stem}'" in err
  assert not out.exists()  # nothing written, not even the numeric ones


def test_id_format_collisions_are_refused_naming_both_files(tmp_path, capsys):
  face = np.zeros((8, 8), np.uint8)
  face[2:6, 2:6] = 1  # skin
  write_png(str(tmp_path / 'in' / '0042.png'), face)
  write_png(str(tmp_path / 'in' / '42.png'), np.zeros((8, 8), np.uint8))  # would win: all zero
  write_png(str(tmp_path / 'in' / '7.png'), face)
  out = tmp_path / 'out'
  argv = ['--input_dir', str(tmp_path / 'in'), '--output_dir', str(out), '--size', '0']
  assert mm.main(argv + ['--stem_format', '{id}']) == 2
  err = _one_line_error(capsys)
  assert str(tmp_path / 'in' / '0042.png') in err and str(tmp_path / 'in' / '42.png') in err
  assert 'same output name 42.png' in err and "'{stem}'" in err
  assert not out.exists()
  # Parts spread over sub-folders, and case-only differences (merged by
  # case-insensitive file systems), collide too.
  write_png(str(tmp_path / 'anno' / '0' / '00042_hair.png'), face)
  write_png(str(tmp_path / 'anno' / '1' / '42_skin.png'), face)
  assert mm.main(['--input_dir', str(tmp_path / 'anno'), '--output_dir', str(out),
                  '--stem_format', '{id}']) == 2
  err = _one_line_error(capsys)
  assert str(tmp_path / 'anno' / '0' / '00042_hair.png') in err
  assert str(tmp_path / 'anno' / '1' / '42_skin.png') in err
  write_png(str(tmp_path / 'case' / 'A.png'), face)
  write_png(str(tmp_path / 'case' / 'a.png'), face)
  assert mm.main(['--input_dir', str(tmp_path / 'case'), '--output_dir', str(out)]) == 2
  assert 'same output name' in _one_line_error(capsys)
  assert not out.exists()
  # The default '{stem}' keeps them apart.
  assert mm.main(argv) == 0
  assert sorted(os.listdir(out)) == ['0042.png', '42.png', '7.png']


def test_duplicate_part_files_and_bad_formats_are_refused(tmp_path, capsys):
  hair = np.full((4, 4), 255, np.uint8)
  write_png(str(tmp_path / 'anno' / '0' / '00001_hair.png'), hair)
  write_png(str(tmp_path / 'anno' / '1' / '00001_hair.png'), np.zeros((4, 4), np.uint8))
  out = tmp_path / 'out'
  assert mm.main(['--input_dir', str(tmp_path / 'anno'), '--output_dir', str(out)]) == 2
  err = _one_line_error(capsys)
  assert "both the 'hair' part of image '00001'" in err
  assert str(tmp_path / 'anno' / '0' / '00001_hair.png') in err
  write_png(str(tmp_path / 'l' / '3.png'), np.zeros((4, 4), np.uint8))
  for fmt, message in (('{stem', 'is not a valid format'), ('{name}', 'uses {name}'),
                       ('a/{stem}', 'not a plain file name')):
    assert mm.main(['--input_dir', str(tmp_path / 'l'), '--output_dir', str(out),
                    '--stem_format', fmt]) == 2
    assert message in _one_line_error(capsys)
  assert not out.exists()


def test_output_dir_checked_before_any_mask(tmp_path, capsys):
  for i in range(3):
    write_png(str(tmp_path / 'in' / f'{i}.png'), label_map(i))
  taken = tmp_path / 'taken'
  taken.write_text('x')
  argv = ['--input_dir', str(tmp_path / 'in'), '--size', '0']
  assert mm.main(argv + ['--output_dir', str(taken)]) == 2
  assert f'--output_dir {taken} is a file, not a folder' in _one_line_error(capsys)
  assert mm.main(argv + ['--output_dir', str(taken / 'masks')]) == 2
  assert 'is a file, not a folder' in _one_line_error(capsys)
  out = tmp_path / 'out'
  (out / '1.png').mkdir(parents=True)  # a folder where a mask goes
  assert mm.main(argv + ['--output_dir', str(out)]) == 2
  assert 'holds a folder 1.png where a mask goes' in _one_line_error(capsys)
  assert os.listdir(out) == ['1.png']  # 0.png and 2.png were not written either


def test_help_shows_defaults_and_snake_case_flags():
  parser = mm.build_parser()
  for action in parser._actions:  # pylint: disable=protected-access
    for flag in action.option_strings:
      if flag not in ('-h', '--help'):
        assert flag.startswith('--') and '-' not in flag[2:], flag
  text = ' '.join(parser.format_help().split())
  for default in ('(default: face,hair)', '(default: 5.0)', '(default: 2.5)', '(default: 256)',
                  '(default: {stem})', '(default: face_parsing)'):
    assert default in text, default

"""Latent editing: directions, style mixing, interpolation, grids and the edit CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import interestyle_jax
from interestyle_jax import editing
from interestyle_jax.edit import main as edit_main
from tests import tiny_checkpoint as tc

N, D = tc.N_STYLES, tc.STYLE_DIM


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'restyle', tc.make_restyle_dir)


@pytest.fixture(scope='module')
def latents():
  rng = np.random.default_rng(0)
  return rng.standard_normal((2, N, D)).astype(np.float32)


def test_direction_strength_zero_is_identity_and_layers(latents):
  d = np.random.default_rng(1).standard_normal(D).astype(np.float32)
  out = np.asarray(editing.apply_direction(latents, d, [0.0, 2.0, -1.0]))
  assert out.shape == (3, 2, N, D)
  np.testing.assert_array_equal(out[0], latents)  # exactly the input
  np.testing.assert_allclose(out[1], latents + 2.0 * d, rtol=1e-6, atol=1e-6)
  part = np.asarray(editing.apply_direction(latents, d, [2.0], layers='2:5'))[0]
  np.testing.assert_array_equal(part[:, :2], latents[:, :2])
  np.testing.assert_array_equal(part[:, 5:], latents[:, 5:])
  np.testing.assert_allclose(part[:, 2:5], latents[:, 2:5] + 2.0 * d, rtol=1e-6, atol=1e-6)
  # [1, D] (InterFaceGAN's layout) and [n_styles, D] are accepted.
  per_style = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(editing.apply_direction(latents[0], d[None], [1.0]))[0],
                             latents[:1] + d, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(editing.apply_direction(latents, per_style, [0.5]))[0],
                             latents + 0.5 * per_style, rtol=1e-6, atol=1e-6)


def test_direction_errors(latents):
  with pytest.raises(ValueError, match=r'shape \(17,\).*\[8, 16\].*expected \[16\] or \[8, 16\]'):
    editing.apply_direction(latents, np.zeros(D + 1), [1.0])
  with pytest.raises(ValueError, match=r'shape \(9, 16\)'):
    editing.check_direction(np.zeros((N + 1, D)), N, D)
  with pytest.raises(ValueError, match='0 <= start < stop <= 8'):
    editing.apply_direction(latents, np.zeros(D), [1.0], layers='4:9')
  for bad in ('5:3', '1-3', 'a:b'):
    with pytest.raises(ValueError, match='START:STOP|start < stop|integers'):
      editing.parse_layers(bad, N)
  assert editing.parse_layers(':3', N) == (0, 3) and editing.parse_layers('6:', N) == (6, N)
  with pytest.raises(ValueError, match='W\\+ latents'):
    editing.apply_direction(np.zeros(D), np.zeros(D), [1.0])


def test_load_direction_npy_pt_and_errors(tmp_path):
  d = np.arange(D, dtype=np.float32)[None]  # [1, D] as InterFaceGAN saves
  np.save(tmp_path / 'd.npy', d)
  np.testing.assert_array_equal(editing.load_direction(str(tmp_path / 'd.npy')), d)
  torch = pytest.importorskip('torch')
  torch.save(torch.from_numpy(d), tmp_path / 'd.pt')
  np.testing.assert_array_equal(editing.load_direction(str(tmp_path / 'd.pt')), d)
  torch.save({'direction': torch.from_numpy(d)}, tmp_path / 'dict.pt')
  np.testing.assert_array_equal(editing.load_direction(str(tmp_path / 'dict.pt')), d)
  torch.save({'a': torch.zeros(2), 'b': torch.zeros(2)}, tmp_path / 'two.pt')
  with pytest.raises(ValueError, match='2 tensors'):
    editing.load_direction(str(tmp_path / 'two.pt'))
  (tmp_path / 'd.txt').write_text('0 1')
  with pytest.raises(ValueError, match='.npy, .pt or .pth'):
    editing.load_direction(str(tmp_path / 'd.txt'))
  with pytest.raises(FileNotFoundError):
    editing.load_direction(str(tmp_path / 'missing.npy'))


def test_mix_and_interpolate(latents):
  a, b = latents[:1], latents[1:]
  np.testing.assert_array_equal(np.asarray(editing.mix(a, a, '2:6')), a)  # same source
  m = np.asarray(editing.mix(a, b, '2:6'))
  np.testing.assert_array_equal(m[:, 2:6], b[:, 2:6])
  np.testing.assert_array_equal(m[:, :2], a[:, :2])
  np.testing.assert_array_equal(m[:, 6:], a[:, 6:])
  np.testing.assert_array_equal(np.asarray(editing.mix(a, b, None)), b)
  with pytest.raises(ValueError, match='cannot mix'):
    editing.mix(a, latents, '0:2')
  path = np.asarray(editing.interpolate(a, b, 5))
  assert path.shape == (5, 1, N, D)
  np.testing.assert_array_equal(path[0], a)  # endpoints bit for bit
  np.testing.assert_array_equal(path[-1], b)
  np.testing.assert_allclose(path[2], (a + b) / 2, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='at least 2 steps'):
    editing.interpolate(a, b, 1)


def test_image_grid_and_render(model_dir, latents):
  tiles = np.zeros((2, 3, 4, 4, 3), np.uint8)
  for r in range(2):
    for c in range(3):
      tiles[r, c] = 10 * (3 * r + c + 1)
  grid = editing.image_grid(tiles, pad=1)
  assert grid.shape == (2 * 5 - 1, 3 * 5 - 1, 3)
  assert grid[5, 10, 0] == 10 * (3 + 2 + 1) and grid[4, 0, 0] == 255  # tile (1, 2), padding
  assert editing.image_grid(tiles[0], tile=8).shape == (8, 3 * 10 - 2, 3)
  f = np.array([[-1.0, 0.0, 1.0, 2.0]]).reshape(1, 1, 4, 1)
  np.testing.assert_array_equal(editing.to_uint8(f).ravel(), [0, 128, 255, 255])
  inv = interestyle_jax.load_inverter(model_dir)
  w = np.concatenate([latents, latents[:1] * 0.5])  # 3 latents, batch 2: one padded call
  got = editing.render(inv.generator, inv.generator_variables, w, batch_size=2)
  want = jax.jit(lambda v, x: inv.generator.apply(v, x, noise_mode='const'))(
      inv.generator_variables, jnp.asarray(w))
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def _grid_latents(out_png):
  return np.load(os.path.splitext(out_png)[0] + '.npy')


def test_edit_cli(model_dir, latents, tmp_path, capsys):
  src, tgt = str(tmp_path / 'a.npy'), str(tmp_path / 'b.npy')
  np.save(src, latents[0])
  np.save(tgt, latents[1][None])  # [1, n, D] is accepted too
  photo = str(tmp_path / 'photo.png')
  Image.fromarray(tc.photos(1, 40)[0]).save(photo)
  direction = str(tmp_path / 'dir.npy')
  np.save(direction, np.ones(D, np.float32))
  common = ['--checkpoint', model_dir, '--tile', '16', '--save_latents']

  out = str(tmp_path / 'dir.png')
  assert edit_main(['direction', *common, '--input', src, photo, '--direction', direction,
                    '--strengths', '-1', '0', '2', '--layers', '0:3', '--output', out]) == 0
  lat = _grid_latents(out)
  assert lat.shape == (2, 3, N, D)
  np.testing.assert_array_equal(lat[0, 1], latents[0])  # strength 0 column: the source
  inv = interestyle_jax.load_inverter(model_dir)
  from interestyle_jax.invert import read_image
  w_photo = np.asarray(inv.invert(read_image(photo, tc.SIZE)).latents[0])
  np.testing.assert_allclose(lat[1, 1], w_photo, atol=1e-6)  # the photo's inversion
  np.testing.assert_allclose(lat[0, 2, :3], latents[0, :3] + 2.0, atol=1e-5)
  np.testing.assert_array_equal(lat[0, 2, 3:], latents[0, 3:])
  assert Image.open(out).size == (3 * 18 - 2, 2 * 18 - 2)

  out = str(tmp_path / 'mix.png')
  assert edit_main(['mix', *common, '--source', src, '--target', src, '--layers', '0:4', '4:',
                    '--output', out]) == 0
  lat = _grid_latents(out)
  assert lat.shape == (1, 4, N, D)
  for col in range(4):  # mixing a latent with itself changes nothing
    np.testing.assert_array_equal(lat[0, col], latents[0])
  img = np.asarray(Image.open(out))
  np.testing.assert_array_equal(img[:, 18 * 2:18 * 2 + 16], img[:, :16])  # rendered alike

  out = str(tmp_path / 'lerp.png')
  assert edit_main(['interpolate', *common, '--source', src, '--target', tgt, '--steps', '4',
                    '--output', out]) == 0
  lat = _grid_latents(out)
  np.testing.assert_array_equal(lat[0, 0], latents[0])
  np.testing.assert_array_equal(lat[0, -1], latents[1])
  capsys.readouterr()


def test_edit_cli_errors(model_dir, tmp_path, capsys):
  src = str(tmp_path / 'a.npy')
  np.save(src, np.zeros((N, D), np.float32))
  bad_dir = str(tmp_path / 'big.npy')
  np.save(bad_dir, np.zeros(512, np.float32))
  out = str(tmp_path / 'x.png')
  base = ['--checkpoint', model_dir, '--output', out]
  assert edit_main(['direction', *base, '--input', src, '--direction', bad_dir]) == 2
  assert 'direction has shape (512,)' in capsys.readouterr().err
  assert edit_main(['mix', *base, '--source', src, '--target', src, '--layers', '3:12']) == 2
  assert '0 <= start < stop <= 8' in capsys.readouterr().err
  np.save(str(tmp_path / 'wrong.npy'), np.zeros((N + 1, D), np.float32))
  assert edit_main(['interpolate', *base, '--source', src,
                    '--target', str(tmp_path / 'wrong.npy')]) == 2
  assert 'takes [8, 16] W+ latents' in capsys.readouterr().err
  assert edit_main(['interpolate', *base, '--source', src, '--target', src, '--steps', '1']) == 2
  assert '--steps must be >= 2' in capsys.readouterr().err
  small = str(tmp_path / 'small.png')
  Image.fromarray(tc.photos(1, 20)[0]).save(small)
  assert edit_main(['interpolate', *base, '--source', src, '--target', small]) == 2
  assert 'the minimum is 32 px on each side' in capsys.readouterr().err
  lpips_dir = tc.make_lpips_dir(str(tmp_path / 'lpips'))
  assert edit_main(['mix', '--checkpoint', lpips_dir, '--output', out, '--source', src,
                    '--target', src, '--layers', '0:2']) == 2
  assert "'lpips' model, expected restyle" in capsys.readouterr().err
  assert not os.path.exists(out)

"""Latent editing: directions, style mixing, interpolation, grids and the edit CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import interestyle_jax
from interestyle_jax import edit as edit_lib
from interestyle_jax import editing, grids
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
  Image.fromarray(tc.photos(1, 48)[0][:40]).save(photo)  # 48x40: squashed, with a warning
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
  grid = np.asarray(Image.open(out))
  labels = ['input', '-1 @ 0:3', '0 (inversion)', '+2 @ 0:3']
  header = grids.label_header(labels, 16)
  assert grid.shape == (header.shape[0] + 2 * 18 - 2, 4 * 18 - 2, 3)
  np.testing.assert_array_equal(grid[:header.shape[0]], header)  # the column labels
  body = grid[header.shape[0]:]
  assert (body[:16, :16] == edit_lib.NO_PHOTO).all()  # row 0 is a .npy latent: no photo
  np.testing.assert_array_equal(  # row 1's input column: the photo as the encoder saw it
      body[18:34, :16], editing.resize(read_image(photo, tc.SIZE)[None], 16)[0])
  err = capsys.readouterr().err
  assert 'squashed 1 non-square image(s) to 32x32' in err and f'{photo} (48x40)' in err

  out = str(tmp_path / 'mix.png')
  assert edit_main(['mix', *common, '--source', src, '--target', src, '--layers', '0:4', '4:',
                    '--output', out]) == 0
  lat = _grid_latents(out)
  assert lat.shape == (1, 4, N, D)
  for col in range(4):  # mixing a latent with itself changes nothing
    np.testing.assert_array_equal(lat[0, col], latents[0])
  img = np.asarray(Image.open(out))
  header = grids.label_header(['source input', 'target input', 'source', 'target',
                               'layers 0:4', 'layers 4:'], 16)
  np.testing.assert_array_equal(img[:header.shape[0]], header)
  body = img[header.shape[0]:]
  assert body.shape == (16, 6 * 18 - 2, 3)
  assert (body[:, :16] == edit_lib.NO_PHOTO).all() and (body[:, 18:34] == edit_lib.NO_PHOTO).all()
  for col in range(3, 6):  # rendered alike
    np.testing.assert_array_equal(body[:, 18 * col:18 * col + 16], body[:, 36:52])

  out = str(tmp_path / 'lerp.png')
  assert edit_main(['interpolate', *common, '--source', src, '--target', tgt, '--steps', '4',
                    '--output', out]) == 0
  lat = _grid_latents(out)
  np.testing.assert_array_equal(lat[0, 0], latents[0])
  np.testing.assert_array_equal(lat[0, -1], latents[1])
  header = grids.label_header(['source input', 'target input', 't = 0', 't = 0.33',
                               't = 0.67', 't = 1'], 16)
  np.testing.assert_array_equal(np.asarray(Image.open(out))[:header.shape[0]], header)
  capsys.readouterr()


def test_edit_cli_errors(model_dir, tmp_path, capsys):
  src = str(tmp_path / 'a.npy')
  np.save(src, np.zeros((N, D), np.float32))
  bad_dir = str(tmp_path / 'big.npy')
  np.save(bad_dir, np.zeros(512, np.float32))
  out = str(tmp_path / 'x.png')
  base = ['--checkpoint', model_dir, '--output', out]
  assert edit_main(['direction', *base, '--input', src, '--direction', bad_dir]) == 2
  assert f'the direction {bad_dir} has shape (512,)' in capsys.readouterr().err
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


def test_load_direction_refuses_anything_but_one_finite_direction(tmp_path):
  bad = np.arange(D, dtype=np.float32)
  bad[3], bad[5] = np.nan, np.inf
  np.save(tmp_path / 'nan.npy', bad)
  with pytest.raises(ValueError, match=r'nan.npy holds 2 non-finite value\(s\) of 16 '
                                       r'\(1 NaN, 1 inf\)'):
    editing.load_direction(str(tmp_path / 'nan.npy'))
  np.save(tmp_path / 'cube.npy', np.zeros((2, 3, 4), np.float32))
  with pytest.raises(ValueError, match=r'cube.npy holds .* shape \(2, 3, 4\), which no '
                                       'direction has'):
    editing.load_direction(str(tmp_path / 'cube.npy'))
  np.save(tmp_path / 'obj.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match='obj.npy is not a readable .npy array'):
    editing.load_direction(str(tmp_path / 'obj.npy'))
  with open(tmp_path / 'zip.npy', 'wb') as f:
    np.savez(f, a=np.zeros(D), b=np.ones(D))
  with pytest.raises(ValueError, match='zip.npy holds several arrays'):
    editing.load_direction(str(tmp_path / 'zip.npy'))
  np.save(tmp_path / 'text.npy', np.array(['smile']))
  with pytest.raises(ValueError, match='not real numbers'):
    editing.load_direction(str(tmp_path / 'text.npy'))


def _stylegan2_like(torch):
  """The layout of rosinality's stylegan2-ffhq-config-f.pt (g, d, g_ema, latent_avg, args)."""
  import argparse  # pylint: disable=g-import-not-at-top
  g = {'style.1.weight': torch.randn(D, D), 'conv1.conv.weight': torch.randn(1, 4, 4, 3, 3)}
  return {'g': g, 'd': {'convs.0.0.weight': torch.randn(4, 3, 1, 1)}, 'g_ema': dict(g),
          'latent_avg': torch.randn(D), 'args': argparse.Namespace(size=32, latent=D)}


def test_load_direction_refuses_checkpoints(tmp_path):
  torch = pytest.importorskip('torch')
  path = str(tmp_path / 'stylegan2.pt')
  torch.save(_stylegan2_like(torch), path)
  with pytest.raises(ValueError, match=r'stylegan2.pt holds 6 tensors \(g.style.1.weight, '
                                       r'.*model checkpoint or state dict'):
    editing.load_direction(path)
  torch.save({'latent_avg': torch.randn(D)}, tmp_path / 'avg.pt')
  with pytest.raises(ValueError, match="avg.pt holds only 'latent_avg'.*not an editing"):
    editing.load_direction(str(tmp_path / 'avg.pt'))
  torch.save(torch.nn.Linear(D, D).state_dict(), tmp_path / 'sd.pt')
  with pytest.raises(ValueError, match=r'sd.pt holds 2 tensors \(weight, bias\)'):
    editing.load_direction(str(tmp_path / 'sd.pt'))
  torch.save({'name': 'smile'}, tmp_path / 'none.pt')
  with pytest.raises(ValueError, match='none.pt holds 0 tensors, not one direction'):
    editing.load_direction(str(tmp_path / 'none.pt'))
  d = torch.randn(1, D)
  torch.save({'boundary': [d], 'attribute': 'smile'}, tmp_path / 'nested.pt')  # one tensor
  np.testing.assert_array_equal(editing.load_direction(str(tmp_path / 'nested.pt')), d.numpy())
  inf = d.clone()
  inf[0, 0] = float('inf')
  torch.save(inf, tmp_path / 'inf.pt')
  with pytest.raises(ValueError, match=r'inf.pt holds 1 non-finite value\(s\)'):
    editing.load_direction(str(tmp_path / 'inf.pt'))
  (tmp_path / 'junk.pt').write_bytes(b'not a torch file')
  with pytest.raises(ValueError, match='junk.pt is not a readable tensor file'):
    editing.load_direction(str(tmp_path / 'junk.pt'))


def test_edit_cli_refuses_checkpoint_direction_and_nan_latent(model_dir, tmp_path, capsys):
  torch = pytest.importorskip('torch')
  src = str(tmp_path / 'a.npy')
  np.save(src, np.zeros((N, D), np.float32))
  ckpt = str(tmp_path / 'stylegan2.pt')
  torch.save(_stylegan2_like(torch), ckpt)
  out = tmp_path / 'x.png'
  base = ['--checkpoint', model_dir, '--output', str(out)]
  assert edit_main(['direction', *base, '--input', src, '--direction', ckpt]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: direction file {ckpt} holds 6 tensors') and err.count('\n') == 1
  nan = np.zeros((N, D), np.float32)
  nan[2, :3] = np.nan
  np.save(tmp_path / 'nan.npy', nan)
  assert edit_main(['interpolate', *base, '--source', src,
                    '--target', str(tmp_path / 'nan.npy')]) == 2
  err = capsys.readouterr().err
  assert f'latent {tmp_path / "nan.npy"} holds 3 non-finite value(s)' in err
  assert err.count('\n') == 1
  assert not out.exists()


def test_edit_output_checked_before_loading(tmp_path, capsys, monkeypatch):
  from interestyle_jax import inference

  def no_loading(path):
    raise AssertionError('the checkpoint was loaded before --output was checked')

  monkeypatch.setattr(inference, 'load_inverter', no_loading)
  src = str(tmp_path / 'a.npy')
  np.save(src, np.zeros((N, D), np.float32))
  (tmp_path / 'grid.npy').mkdir()  # where --save_latents would write
  cases = [([str(tmp_path)], 'is a folder; give a file path'),
           ([str(tmp_path / 'grid')], 'cannot write a file without extension images'),
           ([str(tmp_path / 'grid.png'), '--save_latents'], '--save_latents: the file'),
           ([str(tmp_path / 'a.npy' / 'g.png')], 'is a file, not a folder')]
  for output, message in cases:
    assert edit_main(['mix', '--checkpoint', 'nope', '--source', src, '--target', src,
                      '--layers', '0:2', '--output', *output]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and err.startswith('error: '), err


def test_edit_help_shows_defaults():
  from interestyle_jax.edit import build_parser
  parser = build_parser()
  subs = parser._subparsers._group_actions[0].choices  # pylint: disable=protected-access
  for q in [parser, *subs.values()]:
    for action in q._actions:  # pylint: disable=protected-access
      for flag in action.option_strings:
        if flag not in ('-h', '--help'):
          assert flag.startswith('--') and '-' not in flag[2:], flag
  text = ' '.join(subs['direction'].format_help().split())
  assert '(default: -3.0 -1.5 0.0 1.5 3.0)' in text and '(default: 256)' in text
  assert '(default: 8)' in ' '.join(subs['interpolate'].format_help().split())


def test_edit_unusable_checkpoint_is_one_line_exit_2(model_dir, tmp_path, capsys):
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  src = str(tmp_path / 'a.npy')
  np.save(src, np.zeros((N, D), np.float32))
  bad = tmp_path / 'bad'
  shutil.copytree(model_dir, bad)
  meta = json.load(open(bad / 'model.json'))
  meta['generator']['style_dim'] = 2 * D  # arrays of another architecture
  json.dump(meta, open(bad / 'model.json', 'w'))
  out = tmp_path / 'x.png'
  assert edit_main(['mix', '--checkpoint', str(bad), '--source', src, '--target', src,
                    '--layers', '0:2', '--output', str(out)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: {bad} is not a usable restyle model') and err.count('\n') == 1
  (bad / 'model.json').write_text('{"kind": ')
  assert edit_main(['mix', '--checkpoint', str(bad), '--source', src, '--target', src,
                    '--layers', '0:2', '--output', str(out)]) == 2
  err = capsys.readouterr().err
  assert 'model.json cannot be read' in err and err.count('\n') == 1
  assert not out.exists()

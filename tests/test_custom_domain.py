"""Your own domain end to end: a converted NVIDIA .pkl generator + configs/custom.py on a
tiny folder of non-face images; and folders without masks (the ReStyle baseline)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')

from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.data import folder  # noqa: E402
from interestyle_jax.training import config as config_lib  # noqa: E402
from tests.torch_ref import nvidia_pickle  # noqa: E402
from tests.torch_ref import stylegan2_ada as ref_ada  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO, 'train.py')
CUSTOM = os.path.join(REPO, 'configs', 'custom.py')
SIZE = 32  # encoder input; the 64 px generator is pooled to it


def custom_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location('custom_config', CUSTOM)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def write_objects(root, n, seed, masks=True):
  """Non-face 'photos': a coloured shape (the interest) on stripes, with a bar across it."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, 'images'))
  if masks:
    os.makedirs(os.path.join(root, 'masks'))
  yy, xx = np.mgrid[:48, :48]
  for i in range(n):
    img = np.zeros((48, 48, 3), np.uint8)
    img[...] = ((xx + yy * rng.integers(1, 4)) % 12 < 6)[..., None] * rng.integers(0, 255, 3)
    cy, cx, r = rng.integers(16, 32, 2).tolist() + [int(rng.integers(8, 14))]
    shape = (np.abs(yy - cy) + np.abs(xx - cx) < r) if i % 2 else ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    img[shape] = rng.integers(0, 255, 3)
    bar = np.abs(xx - rng.integers(10, 38)) < 2  # an occluder: not interest
    img[bar] = 255
    name = f'obj{i:03d}'
    Image.fromarray(img).save(os.path.join(root, 'images', f'{name}.jpg'))
    if masks:
      Image.fromarray(((shape & ~bar) * 255).astype(np.uint8)).save(
          os.path.join(root, 'masks', f'{name}.png'))
  return root


def test_custom_config_trains_with_a_converted_pkl(tmp_path):
  ref = ref_ada.Generator(16, 16, 64, channel_base=256, channel_max=16, mapping_layers=2,
                          num_fp16_res=2, conv_clamp=256).randomize(1).eval()
  pkl = tmp_path / 'network-snapshot-000100.pkl'
  nvidia_pickle.dump({'G': ref, 'G_ema': ref, 'augment_pipe': None}, pkl)
  gen_dir = tmp_path / 'ckpt' / 'my-gan'
  assert convert_main(['stylegan2', str(pkl), str(gen_dir)]) == 0

  train = write_objects(str(tmp_path / 'train'), 16, seed=0)
  test = write_objects(str(tmp_path / 'test'), 4, seed=1)
  workdir = tmp_path / 'run'
  cmd = [sys.executable, TRAIN_PY, '--config', CUSTOM, '--workdir', str(workdir),
         f'--config.model.generator_path={gen_dir}', f'--config.data.train_dir={train}',
         f'--config.data.test_dir={test}', f'--config.data.data_dir={tmp_path / "tfds"}',
         f'--config.model.encoder_size={SIZE}', f'--config.data.image_size={SIZE}',
         '--config.model.encoder.stage_units=(1,1,1,1)', '--config.model.encoder.width=8',
         '--config.model.n_iters=2', '--config.filter.sigmas=(8.0,0.0)',
         '--config.filter.source_size=64', '--config.loss.lpips=0',
         '--config.num_train_steps=2', '--config.batch_size=4', '--config.eval_batch_size=4',
         '--config.log_every_steps=1', '--config.eval_every_steps=2',
         '--config.checkpoint_every_steps=2', '--config.image_every_steps=2',
         '--config.data.shuffle_buffer=16', '--config.data.prepare_workers=1']
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
  report = json.loads((workdir / 'metrics.json').read_text())
  assert report['step'] == 2
  assert math.isfinite(report['eval']['loss']) and math.isfinite(report['eval']['mse_interest'])

  # The exported inverter holds the converted generator, clamp and channels included
  # (its images match NVIDIA's layout: tests/test_convert_pkl.py).
  from interestyle_jax.inference import load_inverter
  inv = load_inverter(str(workdir))
  g = inv.generator
  assert (g.resolution, g.style_dim, g.conv_clamp) == (64, 16, 256.0)
  assert g.channels_per_resolution() == {4: 16, 8: 16, 16: 16, 32: 8, 64: 4}
  np.testing.assert_array_equal(np.asarray(inv.latent_avg)[0], ref.mapping.w_avg.numpy())
  const = inv.generator_variables['params']['input']['input']
  np.testing.assert_array_equal(np.asarray(const)[0], ref.synthesis.b4.const.detach().numpy()
                                .transpose(1, 2, 0))


def test_folder_without_masks_is_all_interest(tmp_path):
  root = write_objects(str(tmp_path / 'plain'), 3, seed=2, masks=False)
  with pytest.raises(folder.DataValidationError, match='masks does not exist'):
    folder.pair_folder(root)
  pairs = folder.pair_folder(root, masks=False)
  assert [p.stem for p in pairs] == ['obj000', 'obj001', 'obj002']
  ex = folder.load_example(pairs[0], 16)
  assert ex.problem is None and ex.image.shape == (16, 16, 3)
  assert ex.mask.shape == (16, 16, 1) and (ex.mask == 255).all()

  c = custom_config()
  c.data.masks = False
  with pytest.raises(config_lib.ConfigError, match='config.data.masks=False .* set config.loss.ind=0'):
    config_lib.validate(c, 1)
  c.loss.ind = 0.0
  config_lib.validate(c, 1)  # the ReStyle baseline is a valid run


def test_mask_flag_names_its_own_prepared_copy(tmp_path):
  from interestyle_jax.data import folder_builder
  root = write_objects(str(tmp_path / 'both'), 3, seed=3)
  with_masks = folder_builder.scan(root)
  without = folder_builder.scan(root, masks=False)
  a = folder_builder.make_config(root, '', 16, 0.0, with_masks)
  b = folder_builder.make_config(root, '', 16, 0.0, without, masks=False)
  assert a.name != b.name and a.masks and not b.masks

"""ReStyle checkpoint conversion and iterative inversion vs a PyTorch reference loop."""

import os
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import interestyle_jax
from interestyle_jax import artifacts
from interestyle_jax.inference import Inverter

torch = pytest.importorskip('torch')

from interestyle_jax.convert import common  # noqa: E402
from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.convert.common import ConversionError  # noqa: E402
from interestyle_jax.convert.restyle import load_torch_restyle  # noqa: E402
from tests.torch_ref.restyle import make_checkpoint, make_models, ref_invert  # noqa: E402

TOL = 1e-4
ENC = 64  # encoder input size of the tiny model (generator: 32 px)


@pytest.fixture(scope='module')
def models():
  enc, gen = make_models(res=32, sdim=32, units=(1, 1, 1, 1), width=16, enc_size=ENC)
  g = torch.Generator().manual_seed(9)
  latent_avg = 0.3 * torch.randn(32, generator=g)  # [D], as some checkpoints store it
  return enc, gen, latent_avg


@pytest.fixture(scope='module')
def converted(models, tmp_path_factory):
  enc, gen, latent_avg = models
  root = tmp_path_factory.mktemp('restyle')
  src = str(root / 'restyle.pt')
  torch.save(make_checkpoint(enc, gen, latent_avg), src)
  dst = str(root / 'model')
  assert convert_main(['restyle', src, dst]) == 0
  return src, dst


@pytest.fixture(scope='module')
def photos():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (2, ENC, ENC, 3), dtype=np.uint8)


def test_two_iteration_inversion_matches_torch(models, converted, photos):
  enc, gen, latent_avg = models
  inv = interestyle_jax.load_inverter(converted[1])
  assert (inv.encoder_size, inv.n_iters) == (ENC, 2)  # n_iters from opts
  x = photos.astype(np.float32) / 127.5 - 1
  want_img, want_w, want_all = ref_invert(enc, gen, latent_avg[None].repeat(8, 1),
                                          torch.from_numpy(x).permute(0, 3, 1, 2), 2, ENC)
  out = inv.invert(photos, n_iters=2)  # uint8 in
  assert out.images.shape == (2, 32, 32, 3) and out.latents.shape == (2, 8, 32)
  assert out.iterations.shape == (2, 2, 32, 32, 3)
  err_img = np.abs(np.asarray(out.images) - want_img.permute(0, 2, 3, 1).numpy()).max()
  err_w = np.abs(np.asarray(out.latents) - want_w.numpy()).max()
  err_1 = np.abs(np.asarray(out.iterations[0]) - want_all[0].permute(0, 2, 3, 1).numpy()).max()
  assert max(err_img, err_w, err_1) <= TOL, (err_img, err_w, err_1)
  # The refinement does something: iteration 1 and 2 differ.
  assert float(jnp.abs(out.iterations[1] - out.iterations[0]).max()) > 1e-2
  # Float input in [-1, 1] gives the same answer (same compiled program).
  again = inv.invert(jnp.asarray(x), n_iters=2)
  assert float(jnp.abs(again.images - out.images).max()) <= 1e-5


def test_latent_avg_stored_per_style_and_in_memory_api(models, converted):
  meta, tree = artifacts.load_artifact(converted[1], 'restyle')
  assert np.asarray(tree['latent_avg']).shape == (8, 32)
  assert meta['encoder']['stage_units'] == [1, 1, 1, 1] and meta['encoder']['input_nc'] == 6
  assert meta['generator']['resolution'] == 32 and meta['opts']['output_size'] == 32
  enc, gen, latent_avg = models
  ckpt = make_checkpoint(enc, gen, latent_avg[None].repeat(8, 1))  # [n_styles, D] form
  meta2, tree2 = load_torch_restyle(ckpt)
  np.testing.assert_array_equal(tree2['latent_avg'], np.asarray(tree['latent_avg']))
  inv = Inverter.from_tree(meta2, tree2)
  assert inv.latent_avg.shape == (8, 32)


def test_resize_single_image_and_training_workdir(converted, tmp_path, photos):
  workdir = tmp_path / 'workdir'
  shutil.copytree(converted[1], workdir / 'inference')
  inv = interestyle_jax.load_inverter(str(workdir))
  big = np.zeros((128, 96, 3), np.uint8) + np.array([10, 128, 250], np.uint8)  # HWC
  x = inv.preprocess(big)
  assert x.shape == (1, ENC, ENC, 3)
  np.testing.assert_allclose(np.asarray(x[0, 5, 7]), np.array([10, 128, 250]) / 127.5 - 1,
                             atol=1e-5)
  out = inv.invert(big, n_iters=1)
  assert out.images.shape == (1, 32, 32, 3) and out.iterations.shape == (1, 1, 32, 32, 3)


def test_input_errors(converted, tmp_path):
  inv = interestyle_jax.load_inverter(converted[1])
  with pytest.raises(ValueError, match='channels-first'):
    inv.invert(np.zeros((1, 3, ENC, ENC), np.uint8))
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    inv.invert(np.zeros((1, ENC, ENC, 4), np.uint8))
  with pytest.raises(ValueError, match='127.5'):
    inv.invert(np.full((1, ENC, ENC, 3), 200.0, np.float32))
  with pytest.raises(ValueError, match='n_iters'):
    inv.invert(np.zeros((1, ENC, ENC, 3), np.uint8), n_iters=0)
  with pytest.raises(FileNotFoundError, match='convert restyle'):
    interestyle_jax.load_inverter(str(tmp_path / 'nope'))
  with pytest.raises(artifacts.ArtifactError, match='inference/model.json'):
    interestyle_jax.load_inverter(str(tmp_path))
  wrong = tmp_path / 'wrong'
  artifacts.save_artifact(str(wrong), {'lpips': {'a': np.zeros(1)}}, {'kind': 'lpips'})
  with pytest.raises(artifacts.ArtifactError, match="'lpips' model, expected restyle"):
    interestyle_jax.load_inverter(str(wrong))


def test_converter_errors(models, tmp_path, capsys):
  enc, gen, latent_avg = models
  ckpt = make_checkpoint(enc, gen, latent_avg)
  sd = dict(ckpt['state_dict'])
  del sd['encoder.styles.3.linear.bias']
  del sd['decoder.convs.1.conv.weight']
  sd['encoder.body.0.res_layer.5.fc3.weight'] = torch.zeros(1)
  sd['decoder.extra'] = torch.zeros(1)
  sd['face_pool.weight'] = torch.zeros(2)
  sd['encoder.styles.0.convs.0.bias'] = torch.zeros(5)
  src = str(tmp_path / 'bad.pt')
  torch.save(dict(ckpt, state_dict=sd), src)
  dst = tmp_path / 'out'
  assert convert_main(['restyle', src, str(dst)]) == 1
  err = capsys.readouterr().err
  for part in ('styles_3/linear/bias', 'convs_1/conv/weight', 'res_layer.5.fc3.weight',
               'extra', 'face_pool.weight', 'styles.0.convs.0.bias: checkpoint (5,)'):
    assert part in err, part
  assert not dst.exists() and sorted(os.listdir(tmp_path)) == ['bad.pt']  # no partial dir

  with pytest.raises(ConversionError, match='latent_avg'):
    load_torch_restyle({k: v for k, v in ckpt.items() if k != 'latent_avg'})
  with pytest.raises(ConversionError, match='latent_avg has shape'):
    load_torch_restyle(dict(ckpt, latent_avg=torch.zeros(3, 32)))
  with pytest.raises(ConversionError, match='state_dict'):
    load_torch_restyle(gen.state_dict())  # a bare generator is not a ReStyle checkpoint
  # Encoder predicting the wrong number of styles for the generator.
  enc4 = {k: v for k, v in ckpt['state_dict'].items() if not k.startswith('encoder.styles.')
          or int(k.split('.')[2]) < 4}
  with pytest.raises(ConversionError, match='4 styles'):
    load_torch_restyle(dict(ckpt, state_dict=enc4))


def test_existing_dst_and_missing_torch(converted, tmp_path, monkeypatch, capsys):
  src, dst = converted
  assert convert_main(['restyle', src, dst]) == 1
  assert 'already exists' in capsys.readouterr().err
  monkeypatch.setitem(sys.modules, 'torch', None)  # torch not installed
  with pytest.raises(ImportError, match='pip install'):
    common.load_torch_checkpoint(src)
  assert convert_main(['restyle', src, str(tmp_path / 'new')]) == 1
  assert 'pip install' in capsys.readouterr().err
  assert not (tmp_path / 'new').exists()

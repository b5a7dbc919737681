"""configs/ffhq.py (the paper) and configs/ffhq_release.py (the released code).

Each preset's recipe fields are pinned, so a regression in a preset fails
here; then each compiles and trains at reduced size. Every network the config
reads is replaced by a random-weight model directory of the same kind that the
converters write (StyleGAN2, LPIPS, ArcFace), the encoder and the generator
are shrunk, and the data is a small generated folder; the λs, T = 5, σ
schedule (scaled to the reduced size through ``filter.source_size``), filter
region, loss iterations, InD and Ranger stay as configured. The networks, the
folders and their prepared TFDS copy are built once for both presets, and the
module compiles without most XLA optimisations (the programs are tiny and
compiling them is most of the cost: this halves the module's time on 2 CPU
cores).
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax import artifacts
from interestyle_jax.models.arcface import ArcFace
from interestyle_jax.models.lpips import LPIPS
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.training import config as config_lib
from interestyle_jax.training import loop
from interestyle_jax.training import setup as setup_lib
from tests import folder_fixtures as ff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
PRESETS = ('ffhq', 'ffhq_release')

# What each preset must say. ffhq: the paper (uninterest-region blur, InD);
# ffhq_release: seungjun-moon/interestyle as released (whole-image blur, the
# InD pass commented out). Both: σ in px of the 1024 px photos, loss on the
# last iteration only, λ L2/LPIPS/ID = 1/0.8/0.1, Ranger lr 1e-4, batch 8.
RECIPES = {
    'ffhq': dict(region='uninterest', iterations='last', ind=0.05),
    'ffhq_release': dict(region='whole', iterations='last', ind=0.0),
}
SIGMAS = (16.0, 9.0, 4.0, 1.0, 0.0)
SOURCE_SIZE = 1024
# README's `convert` destinations.
PATHS = dict(generator_path='ckpt/stylegan2-ffhq', encoder_init_path='ckpt/encoder_init',
             lpips_path='ckpt/lpips', id_path='ckpt/arcface')


def _preset(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _random_networks(root):
  key = jax.random.PRNGKey(0)
  g_kwargs = dict(resolution=SIZE, style_dim=32, n_mlp=2, width=16)
  gen = Generator(**g_kwargs)
  g_vars = jax.jit(gen.init)(key, jnp.zeros((1, gen.n_styles, 32)))
  latent_avg = jax.jit(lambda v, k: gen.apply(v, 256, k, method=gen.mean_latent))(g_vars, key)
  artifacts.save_artifact(os.path.join(root, 'g'), {'generator': g_vars, 'latent_avg': latent_avg},
                          {'kind': 'stylegan2', 'generator': g_kwargs})
  # Full-width AlexNet LPIPS, not tests/tiny_checkpoint's narrow one: its many
  # channels are what produced the all-zero feature vectors of the NaN bug.
  lp = LPIPS()
  lp_vars = jax.jit(lp.init)(key, jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, SIZE, SIZE, 3)))
  artifacts.save_artifact(os.path.join(root, 'lpips'), {'lpips': lp_vars},
                          {'kind': 'lpips', 'lpips': {}})
  a_kwargs = dict(stage_units=[1, 1, 1, 1], width=8, embedding_dim=16)
  arc = ArcFace(**a_kwargs)
  a_vars = jax.jit(arc.init)(key, jnp.zeros((1, 112, 112, 3)))
  artifacts.save_artifact(os.path.join(root, 'arcface'), {'arcface': a_vars},
                          {'kind': 'arcface', 'arcface': a_kwargs})


@pytest.fixture(scope='module')
def world(unoptimised_xla, tmp_path_factory):
  """Random networks, train/test folders and a shared TFDS dir, built once."""
  del unoptimised_xla
  root = str(tmp_path_factory.mktemp('paper_world'))
  _random_networks(root)
  ff.write_folder(os.path.join(root, 'train'), range(8), SIZE)
  ff.write_folder(os.path.join(root, 'test'), range(100, 104), SIZE)
  return root


@pytest.mark.parametrize('name', PRESETS)
def test_preset_recipe(name):
  c = _preset(name)
  config_lib.validate(c, 8)
  recipe = RECIPES[name]
  assert (c.filter.region, c.loss.iterations, c.loss.ind) == (
      recipe['region'], recipe['iterations'], recipe['ind'])
  assert tuple(c.filter.sigmas) == SIGMAS and c.filter.source_size == SOURCE_SIZE
  assert c.model.n_iters == 5 and c.model.encoder_size == 256
  assert (c.loss.l2, c.loss.lpips, c.loss.id, c.loss.w_norm) == (1.0, 0.8, 0.1, 0.0)
  assert c.optim.lr == 1e-4 and c.batch_size == 8
  assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.95, 0.999, 1e-5)
  assert (c.optim.lookahead_k, c.optim.lookahead_alpha, c.optim.grad_centralization) == (
      6, 0.5, True)
  assert (c.model.generator_path, c.model.encoder_init_path, c.loss.lpips_path,
          c.loss.id_path) == tuple(PATHS.values())
  # The release's blur: PIL radius r at 1024 px = σ r/4 on the 256 px encoder input.
  assert setup_lib.step_config(c).sigmas == (4.0, 2.25, 1.0, 0.25, 0.0)


def test_source_size_is_validated():
  c = _preset('ffhq')
  c.filter.source_size = 0
  with pytest.raises(config_lib.ConfigError, match=r'config\.filter\.source_size=0 must be positive'):
    config_lib.validate(c, 1)
  # σ are source pixels: σ 16 of a 16 px source is 256 px at the 256 px encoder
  # input, a blur radius of 768, too wide for reflect padding.
  c.filter.source_size = 16
  with pytest.raises(config_lib.ConfigError, match=r'config\.filter\.source_size=16\).*radius'):
    config_lib.validate(c, 1)


@pytest.mark.parametrize('name', PRESETS)
def test_preset_runs_steps_at_reduced_size(name, world, tmp_path):
  root = world
  c = _preset(name)
  c.model.generator_path = os.path.join(root, 'g')
  c.model.encoder_init_path = ''
  c.model.encoder.stage_units = (1, 1, 1, 1)
  c.model.encoder.width = 8
  c.model.encoder_size = SIZE
  c.loss.lpips_path = os.path.join(root, 'lpips')
  c.loss.id_path = os.path.join(root, 'arcface')
  c.data.train_dir = os.path.join(root, 'train')
  c.data.test_dir = os.path.join(root, 'test')
  c.data.data_dir = os.path.join(root, 'tfds')  # prepared by the first preset, reused
  c.data.image_size = SIZE
  c.data.shuffle_buffer = 8
  c.batch_size = 4
  c.eval_batch_size = 4
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.image_every_steps = 2
  # The schedule follows the size: 1024 px σ at 32 px.
  assert setup_lib.step_config(c).sigmas == (0.5, 0.28125, 0.125, 0.03125, 0.0)
  work = str(tmp_path / 'work')
  result = loop.train_and_evaluate(c, work)
  assert result['step'] == 2
  report = json.load(open(os.path.join(work, 'metrics.json')))
  # Finite after training steps: masked images give all-zero feature vectors,
  # whose plain-sqrt norm gradient was NaN and poisoned every parameter.
  for k in ('lpips_interest', 'id_sim_interest', 'mse_interest', 'loss'):
    assert np.isfinite(report['eval'][k]), k
  assert os.path.isfile(os.path.join(work, 'inference', artifacts.META_FILE))

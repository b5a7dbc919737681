"""configs/ffhq.py (the paper setting) compiles and trains at reduced size.

Every network the paper config reads is replaced by a random-weight model
directory of the same kind that the converters write (StyleGAN2, LPIPS,
ArcFace), the encoder and the generator are shrunk, and the data is a small
generated folder; the λs, T = 5, σ schedule, InD and Ranger stay as configured.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts
from interestyle_jax.models.arcface import ArcFace
from interestyle_jax.models.lpips import LPIPS
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.training import loop
from tests import folder_fixtures as ff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def _paper_config():
  spec = importlib.util.spec_from_file_location('ffhq', os.path.join(REPO, 'configs', 'ffhq.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _random_networks(root):
  key = jax.random.PRNGKey(0)
  g_kwargs = dict(resolution=SIZE, style_dim=32, n_mlp=2, width=16)
  gen = Generator(**g_kwargs)
  g_vars = gen.init(key, jnp.zeros((1, gen.n_styles, 32)))
  latent_avg = gen.apply(g_vars, 256, key, method=gen.mean_latent)
  artifacts.save_artifact(os.path.join(root, 'g'), {'generator': g_vars, 'latent_avg': latent_avg},
                          {'kind': 'stylegan2', 'generator': g_kwargs})
  # Full-width AlexNet LPIPS, not tests/tiny_checkpoint's narrow one: its many
  # channels are what produced the all-zero feature vectors of the NaN bug.
  lp = LPIPS()
  lp_vars = lp.init(key, jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, SIZE, SIZE, 3)))
  artifacts.save_artifact(os.path.join(root, 'lpips'), {'lpips': lp_vars},
                          {'kind': 'lpips', 'lpips': {}})
  a_kwargs = dict(stage_units=[1, 1, 1, 1], width=8, embedding_dim=16)
  arc = ArcFace(**a_kwargs)
  a_vars = arc.init(key, jnp.zeros((1, 112, 112, 3)))
  artifacts.save_artifact(os.path.join(root, 'arcface'), {'arcface': a_vars},
                          {'kind': 'arcface', 'arcface': a_kwargs})


def test_paper_config_runs_steps_at_reduced_size(tmp_path):
  root = str(tmp_path)
  _random_networks(root)
  ff.write_folder(os.path.join(root, 'train'), range(8), SIZE)
  ff.write_folder(os.path.join(root, 'test'), range(100, 104), SIZE)
  c = _paper_config()
  # What the paper config fixes, and this test keeps.
  assert c.model.n_iters == 5 and (c.loss.lpips, c.loss.id, c.loss.ind) == (0.8, 0.1, 0.05)
  c.model.generator_path = os.path.join(root, 'g')
  c.model.encoder_init_path = ''
  c.model.encoder.stage_units = (1, 1, 1, 1)
  c.model.encoder.width = 8
  c.model.encoder_size = SIZE
  c.loss.lpips_path = os.path.join(root, 'lpips')
  c.loss.id_path = os.path.join(root, 'arcface')
  c.data.train_dir = os.path.join(root, 'train')
  c.data.test_dir = os.path.join(root, 'test')
  c.data.data_dir = os.path.join(root, 'tfds')
  c.data.image_size = SIZE
  c.data.shuffle_buffer = 8
  c.batch_size = 4
  c.eval_batch_size = 4
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.image_every_steps = 2
  result = loop.train_and_evaluate(c, os.path.join(root, 'work'))
  assert result['step'] == 2
  report = json.load(open(os.path.join(root, 'work', 'metrics.json')))
  # Finite after training steps: masked images give all-zero feature vectors,
  # whose plain-sqrt norm gradient was NaN and poisoned every parameter.
  for k in ('lpips_interest', 'id_sim_interest', 'mse_interest', 'loss'):
    assert np.isfinite(report['eval'][k]), k
  assert os.path.isfile(os.path.join(root, 'work', 'inference', artifacts.META_FILE))

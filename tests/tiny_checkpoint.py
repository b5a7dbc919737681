"""Tiny random-weight model directories for the invert / evaluate / edit tests.

``make_restyle_dir`` writes a kind-'restyle' directory exactly as
``convert restyle`` and train.py do (``model.json`` + Orbax arrays): a 32 px
generator with 8 styles of width 16 and a one-unit-per-stage IR-SE encoder at
32 px. ``make_lpips_dir`` / ``make_arcface_dir`` write narrow LPIPS and ArcFace
networks in the layout of ``convert lpips`` / ``convert irse50``.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax import artifacts
from interestyle_jax.models.arcface import ArcFace
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.lpips import LPIPS
from interestyle_jax.models.stylegan2 import Generator

RES = 32  # generator output side
SIZE = 32  # encoder input side
STYLE_DIM = 16
N_STYLES = 8  # 2 * log2(32) - 2
N_ITERS = 3
GENERATOR = dict(resolution=RES, style_dim=STYLE_DIM, n_mlp=1, channel_multiplier=1, width=8)
ENCODER = dict(n_styles=N_STYLES, style_dim=STYLE_DIM, input_nc=6, backbone='ir_se',
               stage_units=[1, 1, 1, 1], width=8)


def make_restyle_dir(path: str, seed: int = 0, n_iters: int = N_ITERS) -> str:
  """Writes a random tiny 'restyle' model directory; returns ``path``."""
  k_gen, k_enc, k_avg = jax.random.split(jax.random.PRNGKey(seed), 3)
  gen = Generator(**GENERATOR)
  gen_vars = jax.jit(gen.init)(k_gen, jnp.zeros((1, N_STYLES, STYLE_DIM)))
  enc_vars = random_variables(BackboneEncoder(**ENCODER), np.random.default_rng(seed),
                              jnp.zeros((1, SIZE, SIZE, 6)))
  w_avg = jax.jit(lambda v, k: gen.apply(v, 256, k, method=gen.mean_latent))(gen_vars, k_avg)[0]
  tree = {'encoder': enc_vars, 'generator': dict(gen_vars),
          'latent_avg': jnp.broadcast_to(w_avg, (N_STYLES, STYLE_DIM))}
  meta = {'kind': 'restyle', 'encoder': ENCODER, 'generator': GENERATOR,
          'encoder_size': SIZE, 'n_iters': n_iters}
  return artifacts.save_artifact(path, tree, meta)


def random_variables(module, rng, *inputs):
  """Random variables of ``module`` filled from the shapes alone.

  ``init`` of these networks takes many seconds to run or compile on a busy
  CPU; the tests need finite, moderate outputs, not Flax's exact initialisers:
  BatchNorm scale / running variance 1, biases and running means 0, PReLU
  slopes 0.25, kernels N(0, 1 / fan_in), EqualLinear weights N(0, 1) (the
  layer scales itself), style heads 10x smaller (small residuals, as a
  trained encoder's are).
  """
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']") or name.endswith("['var']"):
      return np.ones(s.shape, np.float32)
    if name.endswith("['bias']") or name.endswith("['mean']"):
      return np.zeros(s.shape, np.float32)
    if 'prelu' in name:
      return np.full(s.shape, 0.25, np.float32)
    std = 1.0 if name.endswith("['weight']") else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
    if 'styles_' in name:
      std *= 0.1
    return (std * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_lpips_dir(path: str, seed: int = 1) -> str:
  """Writes a narrow random LPIPS directory (lin weights made non-negative)."""
  x = jnp.zeros((1, SIZE, SIZE, 3))
  params = random_variables(LPIPS(channels=(8,) * 5), np.random.default_rng(seed), x, x)['params']
  # LPIPS v0.1 lin weights are non-negative, so distances are >= 0.
  params = {k: (jax.tree_util.tree_map(jnp.abs, v) if k.startswith('lin') else v)
            for k, v in params.items()}
  return artifacts.save_artifact(path, {'lpips': {'params': params}},
                                 {'kind': 'lpips', 'lpips': {'channels': [8] * 5}})


def make_arcface_dir(path: str, seed: int = 2) -> str:
  """Writes a narrow random ArcFace directory (16 px input, 32-d embedding)."""
  kwargs = dict(stage_units=[1, 1, 1, 1], width=8, input_size=16, embedding_dim=32)
  variables = random_variables(ArcFace(**kwargs), np.random.default_rng(seed),
                               jnp.zeros((1, 16, 16, 3)))
  return artifacts.save_artifact(path, {'arcface': dict(variables)},
                                 {'kind': 'arcface', 'arcface': kwargs})


def truncate_arrays(model_dir: str) -> None:
  """Cuts the largest file under ``model_dir/variables`` (the array data) in half."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(model_dir, 'variables'))
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'rb') as f:
    data = f.read()
  with open(biggest, 'wb') as f:
    f.write(data[:len(data) // 2])


def photos(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
  """Smooth random uint8 photos ``[n, size, size, 3]`` (not pure noise)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing='ij')
  out = []
  for _ in range(n):
    a, b, c = rng.uniform(0.5, 4.0, 3)
    img = np.stack([np.sin(a * 6 * xx + c), np.cos(b * 6 * yy), np.sin(a * xx * b * yy * 9)], -1)
    img = img + 0.2 * rng.standard_normal(img.shape)
    out.append(np.clip(img * 127.5 + 127.5, 0, 255).astype(np.uint8))
  return np.stack(out)


# One copy per pytest session (keyed by its base temp dir), shared by the
# invert / evaluate / edit / notebook tests: building costs seconds of compile.
_SHARED = {}


def shared(tmp_path_factory, name: str, make) -> str:
  """``make(path)`` once per session; returns the path.

  Args:
    tmp_path_factory: pytest's factory (its base temp dir keys the cache).
    name: cache entry / directory name.
    make: function writing the directory.

  Returns:
    The directory.
  """
  key = (str(tmp_path_factory.getbasetemp()), name)
  if key not in _SHARED:
    _SHARED[key] = make(str(tmp_path_factory.mktemp(name) / 'model'))
  return _SHARED[key]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO, 'train.py')
SYNTHETIC_CONFIG = os.path.join(REPO, 'configs', 'synthetic.py')
# Two optimizer steps of the embedded synthetic config: the real train.py
# workdir layout (inference/, metrics.json) at the least compile time. The
# held-out set keeps its default size and seed, so configs/synthetic.py
# rebuilds exactly the set the run's metrics.json was computed on.
# One held-out family of the config's three: each is a held-out set of its own
# to draw and evaluate at the end of the run.
TRAIN_ARGS = ('--config.num_train_steps=2', '--config.eval_every_steps=2',
              '--config.checkpoint_every_steps=2', '--config.image_every_steps=2',
              '--config.log_every_steps=2', '--config.loss.ind=0',
              '--config.synthetic.test_families=("skin",)')


def make_trained_workdir(path: str) -> str:
  """Runs a 2-step ``train.py`` on the synthetic config into ``path``.

  Skips the calling test when train.py / configs/synthetic.py are missing.
  """
  if not (os.path.exists(TRAIN_PY) and os.path.exists(SYNTHETIC_CONFIG)):
    pytest.skip('train.py / configs/synthetic.py are not in this checkout')
  cmd = [sys.executable, TRAIN_PY, '--config', SYNTHETIC_CONFIG, '--workdir', path,
         *TRAIN_ARGS]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return path

"""The training loop: resume, train.py end to end, config validation."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from interestyle_jax import artifacts
from interestyle_jax.training import config as config_lib
from interestyle_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Overrides shrinking configs/synthetic.py to seconds (16 px world, T = 2).
TINY = {
    'num_train_steps': 4, 'batch_size': 4, 'eval_batch_size': 8, 'log_every_steps': 2,
    'eval_every_steps': 2, 'checkpoint_every_steps': 2, 'image_every_steps': 2,
    'num_grid_images': 2, 'model.encoder_size': 16, 'model.n_iters': 2,
    'model.encoder.width': 4, 'filter.sigmas': (16.0, 0.0), 'synthetic.resolution': 16,
    'synthetic.style_dim': 16, 'synthetic.width': 8, 'synthetic.n_mlp': 1,
    'synthetic.num_heldout': 8, 'data.image_size': 16,
    # One held-out family, not the config's three: each family is its own
    # held-out set to draw and evaluate at the end of every run.
    'synthetic.test_families': ('skin',),
}


@pytest.fixture(scope='module', autouse=True)
def fast_compiles(tmp_path_factory):
  """Unoptimised XLA and a compilation cache shared by the runs of this module.

  Every run of the loop builds new jitted functions; the persistent cache lets
  later runs (and the train.py subprocess, through the environment) reuse the
  executables of the first one.
  """
  cache = str(tmp_path_factory.mktemp('jax_cache'))
  names = ('jax_disable_most_optimizations', 'jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  old = {n: jax.config.values[n] for n in names}
  new = dict(zip(names, (True, cache, 0, 0)))
  for n, v in new.items():
    jax.config.update(n, v)
  env = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1', 'JAX_COMPILATION_CACHE_DIR': cache,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  old_env = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  for k, v in old_env.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs',
                                                                    f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def tiny_config(**overrides):
  c = load_config('synthetic')
  for key, value in {**TINY, **overrides}.items():
    node = c
    *path, leaf = key.split('.')
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def encoder_params(workdir):
  meta, tree = artifacts.load_artifact(os.path.join(workdir, 'inference'), 'restyle')
  return meta, tree['encoder']


def test_resume_continues_exactly(tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  loop.train_and_evaluate(tiny_config(), straight)
  first = loop.train_and_evaluate(tiny_config(num_train_steps=2), resumed)
  assert first['step'] == 2
  _, params_at_2 = encoder_params(resumed)
  initial_before = open(os.path.join(resumed, loop.INITIAL_METRICS)).read()
  second = loop.train_and_evaluate(tiny_config(), resumed)  # same dir, 4 steps
  assert second['step'] == 4
  # Resumed from the step-2 checkpoint (no second step-0 evaluation) ...
  assert open(os.path.join(resumed, loop.INITIAL_METRICS)).read() == initial_before
  assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['2', '4']
  # ... and continued exactly as the uninterrupted run (same data, noise, state).
  meta, a = encoder_params(straight)
  _, b = encoder_params(resumed)
  assert meta['step'] == 4
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(params_at_2), jax.tree.leaves(b)))
  # Re-running a finished job only re-evaluates (nothing is saved again).
  again = loop.train_and_evaluate(tiny_config(), resumed)
  assert again['step'] == 4
  np.testing.assert_allclose(again['eval']['loss'], second['eval']['loss'], rtol=1e-6)
  assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['2', '4']
  # Every run released the workdir lock and left intact checkpoints only.
  assert not os.path.exists(os.path.join(resumed, '.lock'))
  assert not os.path.exists(os.path.join(resumed, 'checkpoints_corrupt'))


def _cli(workdir, *extra):
  args = [sys.executable, os.path.join(REPO, 'train.py'), '--config',
          os.path.join(REPO, 'configs', 'synthetic.py'), '--workdir', workdir]
  for key, value in TINY.items():
    args.append(f'--config.{key}={value}')
  return subprocess.run(args + list(extra), cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def test_train_py_end_to_end(tmp_path):
  workdir = str(tmp_path / 'run')
  out = _cli(workdir, '--config.num_train_steps=3')
  assert out.returncode == 0, out.stderr[-5000:]
  report = json.load(open(os.path.join(workdir, loop.FINAL_METRICS)))
  assert report['step'] == 3
  for key in ('mse_interest', 'mse', 'ssim_interest', 'latent_mse', 'mse_interest_it0',
              'mse_interest_it2', 'loss'):
    assert np.isfinite(report['eval'][key]), key
  assert 'mse_interest_ratio_to_step0' in report
  assert os.listdir(os.path.join(workdir, 'best'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '3']
  # The exported model is what load_inverter reads.
  from interestyle_jax.inference import load_inverter  # pylint: disable=g-import-not-at-top
  inv = load_inverter(workdir)
  res = inv.invert(np.zeros((2, 16, 16, 3), np.float32))
  assert res.images.shape == (2, 16, 16, 3) and res.iterations.shape[0] == 2
  # TensorBoard got scalars, the progress rate and image grids.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'tensors': 0})
  acc.Reload()
  tags = set(acc.Tags()['tensors'])
  assert {'train/loss', 'train/l2_it1', 'eval/mse_interest', 'steps_per_sec',
          'train/grid', 'eval/grid'} <= tags, tags


def test_config_file_typos_and_impossible_combinations():
  config_lib.validate(load_config('synthetic'), 1)
  ffhq = load_config('ffhq')
  config_lib.validate(ffhq, 8)
  assert ffhq.model.n_iters == 5 and tuple(ffhq.filter.sigmas) == (16, 9, 4, 1, 0)
  assert (ffhq.loss.l2, ffhq.loss.lpips, ffhq.loss.id, ffhq.loss.ind) == (1.0, 0.8, 0.1, 0.05)
  assert ffhq.optim.lr == 1e-4 and ffhq.batch_size == 8

  def fails(match, devices=1, **overrides):
    c = tiny_config(**overrides)
    with pytest.raises(config_lib.ConfigError, match=match):
      config_lib.validate(c, devices)

  c = tiny_config()
  with c.unlocked():
    c.loss.lpipss = 0.8
  with pytest.raises(config_lib.ConfigError, match=r'config\.loss\.lpipss .*lpips'):
    config_lib.validate(c, 1)
  fails(r'config\.batch_size=4 is not divisible by the 3 devices', devices=3)
  fails(r'config\.filter\.sigmas has 3 entries .*n_iters=2', **{'filter.sigmas': (1., 2., 3.)})
  fails(r'config\.filter\.region', **{'filter.region': 'face'})
  fails(r'config\.loss\.iterations', **{'loss.iterations': 'first'})
  fails(r'config\.loss\.lpips_path', **{'loss.lpips': 0.8})
  fails(r'config\.data\.source', **{'data.source': 'imagenet'})
  fails(r'config\.model\.encoder_size', **{'model.encoder_size': 24})


def test_train_py_rejects_bad_config_before_compiling(tmp_path):
  out = _cli(str(tmp_path / 'bad'), '--config.loss.iterations=first')
  # One line, no traceback, exit status 2 (as argparse's usage errors).
  assert out.returncode == 2, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      "train.py: error: invalid config: config.loss.iterations='first' must be one of")
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')
  out = _cli(str(tmp_path / 'typo'), '--config.loss.lpipss=1')
  assert out.returncode != 0 and 'lpipss' in out.stderr

"""Synthetic uninterest families, held-out family evaluation and the ablation command."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from interestyle_jax import ablate, synthetic
from interestyle_jax import synthetic_families as families_lib
from interestyle_jax.training import config as config_lib
from tests.test_training_loop import REPO, TINY, fast_compiles, tiny_config  # pylint: disable=unused-import

N = 16


@pytest.fixture(scope='module')
def world():
  cfg = config_lib.default_config().synthetic
  cfg.resolution, cfg.style_dim, cfg.width, cfg.n_mlp = 16, 16, 8, 1
  return synthetic.build_world(cfg)


@pytest.fixture(scope='module')
def samples(world):
  return {f: synthetic.heldout_set(world, N, 7, chunk=N, families=(f,))
          for f in families_lib.FAMILIES}


def test_every_family_keeps_the_interest_region_and_covers_part_of_it(samples):
  for family, s in samples.items():
    x, m, clean = s['image'], s['mask'][..., 0], s['target']
    # Where the mask is 1 the input is the clean generator image, exactly.
    inside = m > 0.999
    assert inside.sum() > 0.04 * inside.size, family
    np.testing.assert_allclose(x[inside], clean[inside], atol=3e-3, err_msg=family)
    # Outside the face the content is not the generator's.
    outside = m < 1e-3
    assert np.mean(np.abs(x[outside] - clean[outside])) > 0.1, family
    assert np.all((m >= 0) & (m <= 1)), family


def _ellipses(world, key):
  """The face ellipses ``[N, S, S]`` that ``synthetic.sample(world, key, N)`` draws.

  Vmapped as there: 'rbg' bits are not the same in and out of vmap.
  """
  image_keys = jax.random.split(jax.random.split(key)[1], N)
  return np.asarray(jax.vmap(lambda k: synthetic._ellipse_mask(
      jax.random.split(k)[0], world.size, world.mask_softness)[0])(image_keys))


def test_families_with_occluders_always_cover_part_of_the_face(world):
  """skin / checker / marks / props put at least one occluder on every face."""
  key = jax.random.key(3, impl='rbg')
  ellipses = _ellipses(world, key)
  for family in ('skin', 'checker', 'marks', 'props'):
    s = synthetic.sample(world, key, N, (family,))
    hole = ellipses - np.asarray(s['mask'][..., 0])
    assert np.all(hole.max(axis=(1, 2)) > 0.5), family
  # classic draws 0..2 occluders: some faces are whole.
  s = synthetic.sample(world, key, N, ('classic',))
  assert np.any((ellipses - np.asarray(s['mask'][..., 0])).max(axis=(1, 2)) < 1e-6)


def _high_frequency_energy(x, outside):
  """Mean |difference| of horizontally or vertically adjacent pixels, both outside the face."""
  diffs = []
  for axis in (1, 2):
    d = np.abs(np.diff(x, axis=axis)).mean(-1)
    both = np.minimum(np.delete(outside, 0, axis), np.delete(outside, -1, axis))
    diffs.append(d[both])
  return float(np.mean(np.concatenate(diffs)))


def _outside(s):
  return s['mask'][..., 0] < 1e-3


def test_families_differ_in_kind(world, samples):
  """The properties that make each family what it is."""
  energy = {f: _high_frequency_energy(s['image'], _outside(s)) for f, s in samples.items()}
  # Hard 1-4 px patterns have far more pixel-to-pixel change than fractal noise.
  assert energy['checker'] > 2.5 * energy['fractal'], energy
  # Skin shapes take the face's own mean colour, unlike classic occluders:
  # compare the occluded pixels inside the ellipse with the face's mean.
  key = jax.random.key(4, impl='rbg')
  ellipses = _ellipses(world, key)

  def occluder_colour_gap(family):
    s = synthetic.sample(world, key, N, (family,))
    image, target, mask = (np.asarray(s[k]) for k in ('image', 'target', 'mask'))
    gaps = []
    for i in range(N):
      occluded = (ellipses[i] > 0.999) & (mask[i, ..., 0] < 1e-3)
      face = mask[i, ..., 0] > 0.999
      if occluded.sum() and face.sum():
        gaps.append(np.abs(image[i][occluded].mean(0) - target[i][face].mean(0)).mean())
    return float(np.mean(gaps))

  assert occluder_colour_gap('skin') < 0.5 * occluder_colour_gap('classic')


def test_family_sets_are_deterministic_and_distinct(world, samples):
  again = synthetic.heldout_set(world, N, 7, chunk=N, families=('props',))
  np.testing.assert_array_equal(again['image'], samples['props']['image'])
  # The same clean images under every family: paired comparisons.
  np.testing.assert_array_equal(samples['props']['target'], samples['skin']['target'])
  assert not np.array_equal(samples['props']['image'], samples['skin']['image'])
  with pytest.raises(ValueError, match='unknown synthetic family'):
    synthetic.heldout_set(world, N, 7, chunk=N, families=('hats',))


def test_training_mix_draws_only_its_families(world):
  """A mix of two families: every image is exactly one of them, both occur."""
  key = jax.random.key(5, impl='rbg')
  mix = synthetic.sample(world, key, N, ('checker', 'skin'))
  energy = [_high_frequency_energy(mix['image'][i:i + 1], _outside(mix)[i:i + 1])
            for i in range(N)]
  ref = {f: synthetic.sample(world, key, N, (f,)) for f in ('checker', 'skin')}
  ref_energy = {f: _high_frequency_energy(r['image'], _outside(r)) for f, r in ref.items()}
  split = 0.5 * (ref_energy['checker'] + ref_energy['skin'])
  n_checker = sum(e > split for e in energy)
  assert 0 < n_checker < N


def test_config_refuses_unknown_families_and_regions():
  c = tiny_config()
  c.synthetic.test_families = ('skin', 'hat')
  with pytest.raises(config_lib.ConfigError, match=r"config.synthetic.test_families.*'hat'"):
    config_lib.validate(c, 1)
  c = tiny_config()
  c.synthetic.families = ()
  with pytest.raises(config_lib.ConfigError, match='config.synthetic.families is empty'):
    config_lib.validate(c, 1)
  c = tiny_config()
  c.loss.region = 'face'
  with pytest.raises(config_lib.ConfigError, match='config.loss.region'):
    config_lib.validate(c, 1)


def test_variant_configs_change_one_thing_each():
  c = tiny_config()
  rows = {v: ablate.variant_config(c, v, seed=3) for v in ablate.VARIANTS}
  assert all(r.seed == 3 for r in rows.values())
  fields = lambda r: (r.loss.region, tuple(r.filter.sigmas) != (0.0, 0.0), r.loss.ind > 0,
                      r.filter.region)
  assert fields(rows['restyle']) == ('whole', False, False, 'uninterest')
  assert rows['restyle'].loss.iterations == 'all'
  assert fields(rows['masked']) == ('interest', False, False, 'uninterest')
  assert fields(rows['unf']) == ('interest', True, False, 'uninterest')
  assert fields(rows['interestyle']) == ('interest', True, True, 'uninterest')
  assert fields(rows['release_filter']) == ('interest', True, True, 'whole')
  assert rows['interestyle'].to_dict() == {**c.to_dict(), 'seed': 3}
  c.loss.ind = 0.0
  with pytest.raises(ValueError, match='needs InD'):
    ablate.variant_config(c, 'interestyle', 0)


def test_summary_and_table():
  runs = {
      'restyle': {'0': {'tests': {'own': {'mse_interest': 0.04, 'mse_interest_it0': 0.1,
                                          'mse_interest_it1': 0.04}}},
                  '1': {'tests': {'own': {'mse_interest': 0.06, 'mse_interest_it0': 0.1,
                                          'mse_interest_it1': 0.06}}}},
      'masked': {'0': {'tests': {'own': {'mse_interest': 0.02, 'mse_interest_it0': 0.1,
                                         'mse_interest_it1': 0.02}}},
                 '1': {'tests': {'own': {'mse_interest': 0.03, 'mse_interest_it0': 0.1,
                                         'mse_interest_it1': 0.03}}}},
  }
  # Seed 0 is 10 % below the masked row, seed 1 10 % above it: unpaired the
  # means differ by 2 %, paired the change is 0 ± 10 %.
  runs['unf'] = {'0': {'tests': {'own': {'mse_interest': 0.018, 'mse_interest_it0': 0.1,
                                         'mse_interest_it1': 0.018}}},
                 '1': {'tests': {'own': {'mse_interest': 0.033, 'mse_interest_it0': 0.1,
                                         'mse_interest_it1': 0.033}}}}
  s = ablate.summarise(runs, n_iters=1)
  assert s['restyle']['own']['mean'] == pytest.approx(0.05)
  assert s['restyle']['own']['std'] == pytest.approx(0.01)
  assert s['masked']['own']['vs_restyle'] == pytest.approx(0.025 / 0.05 - 1)
  assert s['masked']['own']['per_iteration_mean'] == pytest.approx([0.1, 0.025])
  assert 'vs_masked' not in s['masked']['own'] and 'vs_masked' not in s['restyle']['own']
  assert s['unf']['own']['vs_masked']['mean'] == pytest.approx([0.0], abs=1e-12)
  assert s['unf']['own']['vs_masked']['std'] == pytest.approx([0.1])
  result = {'summary': s, 'variants': ['restyle', 'masked', 'unf'], 'seeds': [0, 1],
            'n_iters': 1, 'descriptions': ablate.DESCRIPTIONS}
  table = ablate.format_table(result)
  assert '| + interest-region loss | 0.0250 ± 0.0050 (-50%) |' in table
  assert '| + uninterest filter (UnF) | 1 | +0.0 ± 10.0% |' in table


def test_ablate_command_trains_tables_plots_and_resumes(tmp_path):
  workdir = str(tmp_path / 'ablation')
  # (A tuple field given twice would be concatenated: TINY sets filter.sigmas,
  # and its test family is replaced below.)
  overrides = [f'--config.{k}={v}' for k, v in TINY.items() if k != 'synthetic.test_families']
  overrides += ['--config.synthetic.families=("classic",)',
                '--config.synthetic.test_families=("checker",)']
  cmd = [sys.executable, '-m', 'interestyle_jax.ablate', '--config',
         os.path.join(REPO, 'configs', 'synthetic.py'), '--workdir', workdir,
         '--variants', 'restyle,interestyle', '--seeds', '0,1'] + overrides
  env = {**os.environ, 'PYTHONPATH': REPO}
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(os.path.join(workdir, 'ablation.json')))
  assert sorted(result['runs']) == ['interestyle', 'restyle']
  for variant in ('restyle', 'interestyle'):
    for seed in ('0', '1'):
      metrics = json.load(open(os.path.join(workdir, variant, f'seed_{seed}', 'metrics.json')))
      tests = result['runs'][variant][seed]['tests']
      assert sorted(tests) == ['checker', 'own']
      assert tests['checker']['mse_interest'] == metrics['test_families']['checker']['mse_interest']
      assert tests['own']['mse_interest'] == metrics['eval']['mse_interest']
    cell = result['summary'][variant]['checker']
    finals = [result['runs'][variant][s]['tests']['checker']['mse_interest'] for s in '01']
    assert cell['mean'] == pytest.approx(np.mean(finals))
    assert cell['std'] == pytest.approx(np.std(finals))
  # The two seeds trained different encoders.
  a, b = (result['runs']['restyle'][s]['tests']['own']['mse_interest'] for s in '01')
  assert a != b
  table = open(os.path.join(workdir, 'ablation.md')).read()
  assert 'held-out family `checker`' in table and 'ReStyle-pSp' in table
  png = Image.open(os.path.join(workdir, 'ablation.png'))
  assert png.size[0] > 400 and png.size[1] > 200
  # Re-running reads the finished runs back instead of training again.
  again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count('finished earlier') == 4
  assert json.load(open(os.path.join(workdir, 'ablation.json')))['summary'] == result['summary']
  # A typo in --variants is one line, exit 2.
  bad_cmd = list(cmd)
  bad_cmd[bad_cmd.index('--variants') + 1] = 'restyle,unff'
  bad = subprocess.run(bad_cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert bad.returncode == 2 and "unknown ['unff']" in bad.stderr


def test_ablate_on_folder_data_with_extra_test_dirs(tmp_path):
  """Folder data (as configs/ffhq.py): the config's test split plus --test_dirs."""
  from interestyle_jax import evaluate
  from tests import folder_fixtures as ff
  size = 32
  train = ff.write_folder(str(tmp_path / 'train'), range(16), size)
  test = ff.write_folder(str(tmp_path / 'test'), range(100, 104), size)
  extra = ff.write_folder(str(tmp_path / 'extra'), range(200, 205), size, ext='jpg')
  workdir = str(tmp_path / 'ablation')
  cmd = [sys.executable, '-m', 'interestyle_jax.ablate', '--config',
         os.path.join(REPO, 'configs', 'synthetic.py'), '--workdir', workdir,
         '--variants', 'restyle,interestyle', '--seeds', '0', '--test_dirs', f'extra={extra}',
         '--config.data.source=folder', f'--config.data.train_dir={train}',
         f'--config.data.test_dir={test}', f'--config.data.data_dir={tmp_path / "tfds"}',
         '--config.data.shuffle_buffer=16', '--config.num_train_steps=2',
         '--config.batch_size=4', '--config.eval_batch_size=4', '--config.log_every_steps=1',
         '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
         '--config.image_every_steps=2', '--config.num_grid_images=2',
         '--config.model.n_iters=2', '--config.filter.sigmas=(16.0,0.0)',
         '--config.model.encoder.width=4']
  env = {**os.environ, 'PYTHONPATH': REPO}
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(os.path.join(workdir, 'ablation.json')))
  for variant in ('restyle', 'interestyle'):
    tests = result['runs'][variant]['0']['tests']
    assert sorted(tests) == ['extra', 'own']
    # The extra folder's numbers are what `evaluate` reports for that run.
    got = evaluate.main(['--checkpoint', os.path.join(workdir, variant, 'seed_0'),
                         '--data', extra, '--output', str(tmp_path / f'{variant}.json'),
                         '--no_progress'])
    assert got == 0
    want = json.load(open(tmp_path / f'{variant}.json'))['metrics']['mse_interest']
    assert tests['extra']['mse_interest'] == pytest.approx(want[-1], rel=1e-5)
    assert tests['extra']['mse_interest_it1'] == pytest.approx(want[0], rel=1e-5)
  table = open(os.path.join(workdir, 'ablation.md')).read()
  assert '| row | test split | test set `extra` |' in table

"""SeFa (``edit sefa``): eigenvectors against NumPy, direction files `edit direction` applies."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from interestyle_jax import artifacts, sefa
from interestyle_jax.edit import main as edit_main
from tests import tiny_checkpoint as tc

N, D = tc.N_STYLES, tc.STYLE_DIM
pytestmark = pytest.mark.usefixtures('unoptimised_xla')


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'restyle', tc.make_restyle_dir)


@pytest.fixture(scope='module')
def generator(model_dir):
  return sefa.load_generator(model_dir)


def consumers_of_each_style(gen, variables):
  """Modulation layers whose output changes when one W+ entry changes (found by running G)."""
  def styles(w):
    _, state = gen.apply(variables, w, capture_intermediates=True, mutable=['intermediates'])
    flat = jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]
    return {jax.tree_util.keystr(k[:-2]): np.asarray(v) for k, v in flat
            if 'modulation' in jax.tree_util.keystr(k)}
  w = np.random.default_rng(0).standard_normal((1, N, D)).astype(np.float32)
  base = styles(jnp.asarray(w))
  out = []
  for i in range(N):
    moved = w.copy()
    moved[:, i] += 1.0
    after = styles(jnp.asarray(moved))
    out.append(sorted(k for k in base if not np.allclose(base[k], after[k])))
  return out


def test_factorization_matches_numpy_svd(generator):
  gen, variables, _ = generator
  params = variables['params']
  users = consumers_of_each_style(gen, variables)
  # Each style feeds one convolution, plus the ToRGB of its resolution; the last
  # feeds only the last ToRGB. SeFa stacks the convolutions' weights (the
  # release leaves the ToRGBs sharing an index out).
  layers = []
  for i, names in enumerate(users):
    convs = [k for k in names if 'to_rgb' not in k]
    assert len(convs) == 1 or (i == N - 1 and not convs), (i, names)
    layers.append(convs[0] if convs else names[0])
  for span in ((0, N), (2, 6), (N - 1, N)):
    cols = []
    for name in layers[span[0]:span[1]]:
      node = params
      for key in [k.strip("[]'") for k in name.split('][')]:
        node = node[key]
      cols.append(np.asarray(node['weight'], np.float64))  # [D, C]
    a = np.concatenate(cols, axis=1)
    a /= np.linalg.norm(a, axis=0)
    u, s, _ = np.linalg.svd(a)
    fac = sefa.factorize(params, N, span, num=4)
    np.testing.assert_allclose(fac.eigenvalues, s[:4] ** 2, rtol=1e-4)
    for k in range(4):
      assert abs(float(fac.directions[k] @ u[:, k])) > 1 - 1e-5, (span, k)
    assert np.allclose(np.linalg.norm(fac.directions, axis=1), 1, atol=1e-5)
    assert fac.layers == span


def test_cli_writes_directions_that_edit_direction_applies(model_dir, tmp_path, capsys):
  out = tmp_path / 'sefa'
  args = ['sefa', '--generator', model_dir, '--layers', '2:6', '--num', '3', '--output',
          str(out), '--strengths', '-2', '0', '2', '--samples', '2', '--tile', '16']
  assert edit_main(args) == 0
  assert 'wrote 3 SeFa direction(s) of W+ 2:6' in capsys.readouterr().out
  summary = json.loads((out / 'sefa.json').read_text())
  assert summary['layers'] == [2, 6] and summary['directions'] == [
      'sefa_00.npy', 'sefa_01.npy', 'sefa_02.npy']
  assert summary['eigenvalues'] == sorted(summary['eigenvalues'], reverse=True)
  gen, variables, _ = sefa.load_generator(model_dir)
  fac = sefa.factorize(variables['params'], N, '2:6', 3)
  for k in range(3):
    d = np.load(out / f'sefa_{k:02d}.npy')
    assert d.shape == (N, D)
    assert not d[:2].any() and not d[6:].any()
    np.testing.assert_allclose(d[2:6], np.broadcast_to(fac.directions[k], (4, D)), atol=1e-6)
    grid = np.asarray(Image.open(out / f'sefa_{k:02d}.png'))
    assert grid.shape[1] == 3 * 16 + 2 * 2  # three strengths of 16 px, 2 px gaps
  # The same folder again is refused (nothing lost), --overwrite replaces.
  assert edit_main(args) == 2
  assert 'already holds sefa_00.npy' in capsys.readouterr().err
  assert edit_main(args + ['--overwrite']) == 0

  # `edit direction` takes the file: w + s·d on W+ entries 2..5 only.
  w = np.random.default_rng(3).standard_normal((N, D)).astype(np.float32)
  np.save(tmp_path / 'w.npy', w)
  grid = tmp_path / 'grid.png'
  assert edit_main(['direction', '--checkpoint', model_dir, '--input', str(tmp_path / 'w.npy'),
                    '--direction', str(out / 'sefa_00.npy'), '--strengths', '0', '2.5',
                    '--output', str(grid), '--save_latents', '--tile', '0']) == 0
  edited = np.load(tmp_path / 'grid.npy')[0]
  np.testing.assert_array_equal(edited[0], w)
  np.testing.assert_allclose(edited[1], w + 2.5 * np.load(out / 'sefa_00.npy'), atol=1e-6)
  assert np.abs(edited[1, 2:6] - w[2:6]).max() > 0 and (edited[1, 6:] == w[6:]).all()


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys):
  def fails(*extra, expect):
    assert edit_main(['sefa', '--generator', model_dir, '--output', str(tmp_path / 'o'),
                      *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
  fails('--layers', '3:99', expect='0 <= start < stop <= 8')
  fails('--num', '0', expect='--num and --samples must be >= 1')
  assert edit_main(['sefa', '--generator', str(tmp_path), '--output', str(tmp_path / 'o')]) == 2
  assert 'neither model.json nor inference/model.json' in capsys.readouterr().err
  artifacts.save_artifact(str(tmp_path / 'lp'), {'a': np.zeros(2)}, {'kind': 'lpips'})
  assert edit_main(['sefa', '--generator', str(tmp_path / 'lp'), '--output',
                    str(tmp_path / 'o')]) == 2
  assert "holds a 'lpips' model" in capsys.readouterr().err
  assert not (tmp_path / 'o').exists()


def test_first_direction_beats_random_ones_on_the_synthetic_generator():
  """The README's measurement (benchmarks/sefa_vs_random.py), smaller."""
  from interestyle_jax import synthetic
  from interestyle_jax.training.config import default_config
  world = synthetic.build_world(default_config().synthetic)  # configs/synthetic.py's generator
  latents = sefa.sample_latents(world.generator, world.variables, world.latent_avg[0], 16, 0,
                                world.truncation)
  first, rand = sefa.compare_with_random(world.generator, world.variables, latents, 3.0,
                                         n_random=4, seed=1)
  assert first > max(rand) and first > 1.2 * np.mean(rand), (first, rand)

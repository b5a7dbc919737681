"""Metrics (vs NumPy) and ``python -m interestyle_jax.evaluate`` on tiny checkpoints."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

import interestyle_jax
from interestyle_jax import metrics
from interestyle_jax.evaluate import main as evaluate_main
from interestyle_jax.models.arcface import id_features, load_arcface
from interestyle_jax.models.lpips import SCALE, SHIFT, load_lpips
from tests import tiny_checkpoint as tc

S = tc.SIZE


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'restyle', tc.make_restyle_dir)


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
  return (tc.shared(tmp_path_factory, 'lpips', tc.make_lpips_dir),
          tc.shared(tmp_path_factory, 'arcface', tc.make_arcface_dir))


@pytest.fixture(scope='module')
def arrays():
  rng = np.random.default_rng(0)
  a = np.clip(rng.standard_normal((3, S, S, 3)) * 0.5, -1, 1).astype(np.float32)
  b = np.clip(a + 0.3 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
  m = rng.uniform(0, 1, (3, S, S, 1)).astype(np.float32)
  return a, b, m


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """5 photos with soft elliptical masks, one of them truncated, one too small."""
  root = tmp_path_factory.mktemp('data')
  (root / 'images').mkdir()
  (root / 'masks').mkdir()
  yy, xx = np.mgrid[:48, :48] / 47.0
  for i, img in enumerate(tc.photos(5, 48, seed=3)):
    Image.fromarray(img).save(root / 'images' / f'{i:02d}.png')
    mask = np.clip(1.5 - ((yy - 0.5) / (0.3 + 0.02 * i)) ** 2 - ((xx - 0.5) / 0.25) ** 2, 0, 1)
    Image.fromarray((mask * 255).astype(np.uint8)).save(root / 'masks' / f'{i:02d}.png')
  Image.fromarray(tc.photos(1, 16)[0]).save(root / 'images' / 'small.png')
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / 'masks' / 'small.png')
  data = (root / 'images' / '04.png').read_bytes()
  (root / 'images' / '04.png').write_bytes(data[:len(data) // 2])
  return str(root)


def np_ssim(a, b, win=11, sigma=1.5, data_range=2.0):
  """SSIM with a 2-D Gaussian window over every valid position (no separability)."""
  g = np.exp(-0.5 * ((np.arange(win) - (win - 1) / 2) / sigma) ** 2)
  k = np.outer(g, g) / np.sum(g) ** 2

  def filt(x):  # [B, H, W, C] → valid positions
    return np.einsum('bhwcij,ij->bhwc', sliding_window_view(x, (win, win), axis=(1, 2)), k)

  a, b = a.astype(np.float64), b.astype(np.float64)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  ma, mb = filt(a), filt(b)
  vaa, vbb, vab = filt(a * a) - ma ** 2, filt(b * b) - mb ** 2, filt(a * b) - ma * mb
  s = (2 * ma * mb + c1) * (2 * vab + c2) / ((ma ** 2 + mb ** 2 + c1) * (vaa + vbb + c2))
  return s.mean(axis=(1, 2, 3))


def np_lpips(net, a, b):
  """LPIPS from the trunk's features: channel-normalise, square, weight, mean, sum."""
  module, variables = net
  x = (np.concatenate([a, b]) - np.asarray(SHIFT)) / np.asarray(SCALE)
  feats = module.apply(variables, x.astype(np.float32), method=lambda m, x: m.net(x))
  total = np.zeros(len(a))
  for l, f in enumerate(feats):
    f = np.asarray(f, np.float64)
    f = f / (np.sqrt(np.sum(f ** 2, axis=-1, keepdims=True)) + 1e-10)
    w = np.asarray(variables['params'][f'lin{l}']['kernel'])[:, 0]
    total += np.mean(np.sum((f[:len(a)] - f[len(a):]) ** 2 * w, axis=-1), axis=(1, 2))
  return total


def np_cos(net, a, b):
  """Cosine of the ArcFace embeddings (the network's face crop + pooling)."""
  ea = np.asarray(id_features(net, a), np.float64)
  eb = np.asarray(id_features(net, b), np.float64)
  return np.sum(ea * eb, -1) / np.linalg.norm(ea, axis=-1) / np.linalg.norm(eb, axis=-1)


def test_metrics_match_numpy(arrays, nets):
  a, b, m = arrays
  np.testing.assert_allclose(metrics.mse(a, b), np.mean((a - b) ** 2, axis=(1, 2, 3)),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics.mse(a, b, m),
                             np.mean((m * a - m * b) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(metrics.ssim(a, b), np_ssim(a, b), atol=1e-5)
  np.testing.assert_allclose(metrics.ssim(a, b, m), np_ssim(m * a, m * b), atol=1e-5)
  assert abs(float(metrics.ssim(a, a)[0]) - 1.0) < 1e-5
  lp, arc = load_lpips(nets[0]), load_arcface(nets[1])
  np.testing.assert_allclose(metrics.lpips(lp, a, b), np_lpips(lp, a, b), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics.lpips(lp, a, b, m), np_lpips(lp, m * a, m * b),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics.id_similarity(arc, a, b), np_cos(arc, a, b), atol=1e-5)
  np.testing.assert_allclose(metrics.id_similarity(arc, a, b, m), np_cos(arc, m * a, m * b),
                             atol=1e-5)
  w, w2 = a[:, :4, :5, 0], b[:, :4, :5, 0]
  np.testing.assert_allclose(metrics.latent_mse(w, w2), np.mean((w - w2) ** 2, axis=(1, 2)),
                             rtol=1e-5)
  res = metrics.image_metrics(a, b, m, lp, arc)
  assert tuple(res) == metrics.metric_names(True, True) == (
      'mse', 'mse_interest', 'ssim', 'ssim_interest', 'lpips', 'lpips_interest', 'id_sim',
      'id_sim_interest')
  assert metrics.metric_names(False, False) == ('mse', 'mse_interest', 'ssim', 'ssim_interest')


def test_evaluate_folder_matches_direct_inversion(model_dir, nets, data_dir, tmp_path, capsys):
  out = str(tmp_path / 'eval.json')
  rc = evaluate_main(['--checkpoint', model_dir, '--data', data_dir, '--batch_size', '3',
                      '--lpips', nets[0], '--arcface', nets[1], '--output', out])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  result = json.load(open(out))
  assert result['n_images'] == 4 and result['n_iters'] == tc.N_ITERS
  skipped = {os.path.basename(s['file']): s['reason'] for s in result['skipped']}
  assert set(skipped) == {'04.png', 'small.png'}
  assert 'minimum is 32 px' in skipped['small.png'] and 'unreadable' in skipped['04.png']
  assert 'skipped' in captured.err
  for name in metrics.metric_names(True, True):
    assert name in captured.out and len(result['metrics'][name]) == tc.N_ITERS
  assert 'iter 3' in captured.out

  # Direct computation on the same arrays: decode, invert all 4 in one batch,
  # NumPy metrics of every iteration against the input, plain means.
  from interestyle_jax.data import folder
  pairs = [p for p in folder.pair_folder(data_dir) if p.stem in ('00', '01', '02', '03')]
  exs = [folder.load_example(p, S) for p in pairs]
  x = np.stack([e.image for e in exs]).astype(np.float32) / 127.5 - 1
  m = np.stack([e.mask for e in exs]).astype(np.float32) / 255
  its = np.asarray(interestyle_jax.load_inverter(model_dir).invert(x).iterations)  # R == S
  lp, arc = load_lpips(nets[0]), load_arcface(nets[1])
  for t in range(tc.N_ITERS):
    y = its[t]
    want = {'mse': np.mean((y - x) ** 2), 'mse_interest': np.mean((m * y - m * x) ** 2),
            'ssim': np_ssim(y, x).mean(), 'ssim_interest': np_ssim(m * y, m * x).mean(),
            'lpips': np_lpips(lp, y, x).mean(), 'lpips_interest': np_lpips(lp, m * y, m * x).mean(),
            'id_sim': np_cos(arc, y, x).mean(), 'id_sim_interest': np_cos(arc, m * y, m * x).mean()}
    for k, v in want.items():
      assert abs(result['metrics'][k][t] - v) <= 1e-4 * max(1.0, abs(v)), (k, t)
  assert len(set(np.round(result['metrics']['mse'], 6))) > 1  # iterations differ


def test_two_devices_give_the_same_numbers(model_dir, data_dir, tmp_path, capsys):
  """Batch sharding over 2 (forced host) devices: same result as one device."""
  args = ['--checkpoint', model_dir, '--data', data_dir, '--batch_size', '3']
  one = str(tmp_path / 'eval1.json')
  assert evaluate_main(args + ['--output', one]) == 0
  capsys.readouterr()
  two = str(tmp_path / 'eval2.json')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-W', 'error::DeprecationWarning', '-m', 'interestyle_jax.evaluate',
         *args, '--output', two]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tc.REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  outs = [json.load(open(one)), json.load(open(two))]
  assert [o['devices'] for o in outs] == [jax.local_device_count(), 2]
  assert outs[0]['n_images'] == outs[1]['n_images'] == 4
  for k, v in outs[0]['metrics'].items():
    np.testing.assert_allclose(outs[1]['metrics'][k], v, rtol=1e-5, atol=1e-7)


def test_evaluate_errors(model_dir, nets, data_dir, tmp_path, capsys):
  out = str(tmp_path / 'e.json')
  no_masks = tmp_path / 'no_masks'
  (no_masks / 'images').mkdir(parents=True)
  assert evaluate_main(['--checkpoint', model_dir, '--data', str(no_masks), '--output', out]) == 2
  assert 'masks does not exist' in capsys.readouterr().err
  assert evaluate_main(['--checkpoint', model_dir, '--data', data_dir, '--lpips', model_dir,
                        '--output', out]) == 2
  assert "'restyle' model, expected lpips" in capsys.readouterr().err
  assert evaluate_main(['--checkpoint', nets[1], '--data', data_dir, '--output', out]) == 2
  assert "'arcface' model, expected restyle" in capsys.readouterr().err
  assert evaluate_main(['--checkpoint', model_dir, '--data', 'synthetic', '--output', out]) == 2
  assert 'pass --config configs/synthetic.py' in capsys.readouterr().err
  assert evaluate_main(['--checkpoint', model_dir, '--data', 'synthetic', '--output', out,
                        '--config', tc.SYNTHETIC_CONFIG]) == 2
  assert 'config.synthetic.style_dim=64 but the checkpoint has style_dim=16' in (
      capsys.readouterr().err)
  assert not os.path.exists(out)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'trained', tc.make_trained_workdir)


def test_synthetic_heldout_matches_training_metrics(trained, tmp_path, capsys):
  """evaluate --data synthetic reproduces the run's own final validation."""
  out = str(tmp_path / 'syn.json')
  # No --config: the world is rebuilt from the WORKDIR/config.json train.py wrote.
  assert os.path.isfile(os.path.join(trained, 'config.json'))
  assert evaluate_main(['--checkpoint', trained, '--data', 'synthetic',
                        '--batch_size', '16', '--output', out]) == 0
  assert 'latent_mse' in capsys.readouterr().out
  got = json.load(open(out))
  want = json.load(open(os.path.join(trained, 'metrics.json')))['eval']
  n_iters = got['n_iters']
  assert got['n_images'] == 64 and n_iters == 3
  for k in ('mse', 'mse_interest', 'ssim', 'ssim_interest', 'latent_mse'):
    assert abs(got['metrics'][k][-1] - want[k]) <= 1e-4 * max(1.0, abs(want[k])), k
  for t in range(n_iters):
    assert abs(got['metrics']['mse_interest'][t] - want[f'mse_interest_it{t + 1}']) <= 1e-5
  # A family kept out of training: the run's own end-of-training evaluation of it.
  assert evaluate_main(['--checkpoint', trained, '--data', 'synthetic:skin',
                        '--batch_size', '16', '--output', out, '--no_progress']) == 0
  got = json.load(open(out))['metrics']['mse_interest'][-1]
  want = json.load(open(os.path.join(trained, 'metrics.json')))['test_families']['skin']
  assert abs(got - want['mse_interest']) <= 1e-5
  assert abs(got - json.load(open(os.path.join(trained, 'metrics.json')))['eval']['mse_interest']
             ) > 1e-4
  capsys.readouterr()
  assert evaluate_main(['--checkpoint', trained, '--data', 'synthetic:hat', '--output', out]) == 2
  assert "--data synthetic:hat: unknown synthetic family ['hat']" in capsys.readouterr().err
  # A JSON config (the format of WORKDIR/config.json) of another world seed:
  # same architecture, other weights, refused.
  from interestyle_jax.evaluate import load_training_config
  cfg = load_training_config(trained, tc.SYNTHETIC_CONFIG)
  cfg.synthetic.seed = 1
  other = tmp_path / 'other.json'
  other.write_text(cfg.to_json_best_effort())
  assert evaluate_main(['--checkpoint', trained, '--data', 'synthetic', '--config', str(other),
                        '--output', out]) == 2
  assert "generator weights are not the synthetic world" in capsys.readouterr().err


def test_no_output_writes_nothing_and_shows_progress(model_dir, data_dir, tmp_path, capsys,
                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert evaluate_main(['--checkpoint', model_dir, '--data', data_dir, '--batch_size', '3']) == 0
  captured = capsys.readouterr()
  assert os.listdir(tmp_path) == [] and 'wrote' not in captured.out
  assert 'iter 3' in captured.out  # the table is printed
  # tqdm on stderr, counting every pair read (the 2 skipped ones included).
  assert 'evaluating' in captured.err and '6/6' in captured.err


def test_output_path_checked_before_loading(model_dir, data_dir, tmp_path, capsys, monkeypatch):
  import interestyle_jax.evaluate as ev

  def no_loading(path):
    raise AssertionError('the checkpoint was loaded before --output was checked')

  monkeypatch.setattr(ev, 'load_inverter', no_loading)
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  for out, message in ((str(tmp_path), 'is a folder; give a file path'),
                       (str(blocker / 'e.json'), 'is a file, not a folder')):
    assert evaluate_main(['--checkpoint', model_dir, '--data', data_dir, '--output', out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and err.startswith('error: --output'), err


def _damaged(src, dst, edit_meta=None, truncate=False):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst)
  meta_path = os.path.join(dst, 'model.json')
  if edit_meta is not None:
    meta = json.load(open(meta_path))
    edit_meta(meta)
    json.dump(meta, open(meta_path, 'w'))
  if truncate:
    tc.truncate_arrays(str(dst))
  return str(dst)


def test_unusable_checkpoint_and_networks_exit_2_in_one_line(model_dir, nets, data_dir,
                                                              tmp_path, capsys):
  cases = [
      (['--checkpoint', _damaged(model_dir, tmp_path / 'trunc', truncate=True)],
       'variables cannot be read'),
      (['--checkpoint', model_dir, '--lpips',
        _damaged(nets[0], tmp_path / 'lp', lambda m: m['lpips'].update(channels=[16] * 5))],
       '--lpips '),
      (['--checkpoint', model_dir, '--lpips',
        _damaged(nets[0], tmp_path / 'lp2', lambda m: m.update(lpips={'colour': 1}))],
       "unexpected keyword argument 'colour'"),
      (['--checkpoint', model_dir, '--arcface',
        _damaged(nets[1], tmp_path / 'arc', truncate=True)],
       '--arcface: '),
      (['--checkpoint', model_dir, '--arcface', str(tmp_path / 'missing')],
       '--arcface ' + str(tmp_path / 'missing') + ' does not exist'),
  ]
  out = tmp_path / 'e.json'
  for argv, message in cases:
    assert evaluate_main(argv + ['--data', data_dir, '--output', str(out)]) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    assert message in err, err
  assert not out.exists()


def test_help_shows_defaults_and_snake_case_flags():
  from interestyle_jax.evaluate import build_parser
  parser = build_parser()
  for action in parser._actions:  # pylint: disable=protected-access
    for flag in action.option_strings:
      if flag not in ('-h', '--help'):
        assert flag.startswith('--') and '-' not in flag[2:], flag
  text = ' '.join(parser.format_help().split())  # unwrapped
  assert '(default: 8)' in text and 'default: none, only printed' in text

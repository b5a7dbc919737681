"""PyTorch StyleGAN2 → Flax: parity with an independent torch reference, CLI, errors."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from interestyle_jax.convert import ConversionError, load_stylegan2, load_torch_stylegan2  # noqa: E402
from interestyle_jax.convert import common  # noqa: E402
from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.models.stylegan2 import noise_shapes  # noqa: E402
from tests.torch_ref.stylegan2 import RefGenerator  # noqa: E402

SD = 64


def make_ref(res, cm, width, seed=0):
  torch.manual_seed(seed)
  return RefGenerator(res, SD, 2, cm=cm, width=width).randomize(seed + 1).eval()


def ref_inputs(ref, batch=2, seed=0):
  g = torch.Generator().manual_seed(seed)
  z = torch.randn(batch, SD, generator=g)
  with torch.no_grad():
    w = ref.mapping(z)[:, None].repeat(1, ref.n_latent, 1)
  return z, w + 0.5 * torch.randn(w.shape, generator=g)


@pytest.mark.parametrize('res,cm,width', [(32, 1, 32), (32, 2, 32), (64, 1, 32), (64, 2, 64)])
def test_parity_const_noise_and_mapping(res, cm, width):
  ref = make_ref(res, cm, width)
  gen, v = load_torch_stylegan2({'g_ema': ref.state_dict()})
  assert (gen.resolution, gen.style_dim, gen.n_mlp, gen.width) == (res, SD, 2, width)
  if res >= 64:
    assert gen.channel_multiplier == cm
  z, w = ref_inputs(ref)
  with torch.no_grad():
    want = ref(w).permute(0, 2, 3, 1).numpy()
    want_w = ref.mapping(z).numpy()
  got = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise_mode='const'))
  assert np.abs(got - want).max() <= 1e-4
  got_w = np.asarray(gen.apply(v, jnp.asarray(z.numpy()), method=gen.mapping))
  assert np.abs(got_w - want_w).max() <= 1e-4
  grouped = gen.clone(modconv_impl='grouped').apply(v, jnp.asarray(w.numpy()))
  assert np.abs(np.asarray(grouped) - want).max() <= 1e-4


def test_parity_explicit_and_no_noise():
  ref = make_ref(32, 2, 32, seed=3)
  gen, v = load_torch_stylegan2(ref.state_dict())  # bare state dict
  _, w = ref_inputs(ref, batch=3, seed=4)
  g = torch.Generator().manual_seed(5)
  noise = [torch.randn(3, 1, s[1], s[2], generator=g) for s in noise_shapes(32)]
  with torch.no_grad():
    want = ref(w, noise=noise).permute(0, 2, 3, 1).numpy()
    want_none = ref(w, noise='none').permute(0, 2, 3, 1).numpy()
  jn = [jnp.asarray(n.permute(0, 2, 3, 1).numpy()) for n in noise]
  got = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise=jn))
  assert np.abs(got - want).max() <= 1e-4
  got_none = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise_mode='none'))
  assert np.abs(got_none - want_none).max() <= 1e-4


@pytest.fixture(scope='module')
def ckpt_file(tmp_path_factory):
  ref = make_ref(32, 2, 32, seed=7)
  path = tmp_path_factory.mktemp('pt') / 'g.pt'
  latent_avg = torch.randn(SD)
  torch.save({'g_ema': ref.state_dict(), 'latent_avg': latent_avg}, path)
  return ref, str(path), latent_avg.numpy()


def test_cli_round_trip(ckpt_file, tmp_path, capsys):
  ref, src, latent_avg = ckpt_file
  dst = tmp_path / 'out'
  assert convert_main(['stylegan2', src, str(dst)]) == 0
  assert 'wrote' in capsys.readouterr().out
  gen, v, lat = load_stylegan2(str(dst))
  np.testing.assert_allclose(np.asarray(lat).reshape(-1), latent_avg, atol=0)
  _, w = ref_inputs(ref)
  with torch.no_grad():
    want = ref(w).permute(0, 2, 3, 1).numpy()
  assert np.abs(np.asarray(gen.apply(v, jnp.asarray(w.numpy()))) - want).max() <= 1e-4
  # The same directory again is refused, --overwrite replaces it.
  assert convert_main(['stylegan2', src, str(dst)]) == 1
  assert 'already exists' in capsys.readouterr().err
  assert convert_main(['stylegan2', src, str(dst), '--overwrite']) == 0


def _assert_fails_cleanly(sd, tmp_path, match, capsys):
  src = tmp_path / 'bad.pt'
  torch.save(sd, src)
  dst = tmp_path / 'out'
  assert convert_main(['stylegan2', str(src), str(dst)]) == 1
  err = capsys.readouterr().err
  for m in match:
    assert m in err, err
  assert not dst.exists()
  assert [p for p in os.listdir(tmp_path) if 'partial' in p] == []
  return err


def test_error_missing_unexpected_and_mismatch(ckpt_file, tmp_path, capsys):
  ref = ckpt_file[0]
  sd = dict(ref.state_dict())
  del sd['convs.1.noise.weight']
  del sd['to_rgbs.0.bias']
  sd['convs.2.extra.weight'] = torch.zeros(3)
  sd['conv1.activate.bias'] = torch.zeros(5)
  err = _assert_fails_cleanly({'g_ema': sd}, tmp_path, [
      'missing (2)', 'params/convs_1/noise/weight', 'params/to_rgbs_0/bias',
      'unexpected (1)', 'convs.2.extra.weight',
      'shape mismatch (1)', 'conv1.activate.bias: checkpoint (5,) vs model (32,)'], capsys)
  assert str(tmp_path / 'bad.pt') in err


def test_error_not_a_generator(tmp_path, capsys):
  _assert_fails_cleanly({'state_dict': {'encoder.x': torch.zeros(1)}}, tmp_path,
                        ['no StyleGAN2 generator found', 'state_dict'], capsys)


def test_error_corrupt_and_missing_file(tmp_path, capsys):
  bad = tmp_path / 'corrupt.pt'
  bad.write_bytes(b'not a checkpoint')
  assert convert_main(['stylegan2', str(bad), str(tmp_path / 'o')]) == 1
  assert 'not a readable PyTorch checkpoint' in capsys.readouterr().err
  assert convert_main(['stylegan2', str(tmp_path / 'nope.pt'), str(tmp_path / 'o')]) == 2  # missing SRC
  assert not (tmp_path / 'o').exists()


class _Payload:
  """Unpickling it creates the file at ``path``: code running from a checkpoint."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_malicious_pickle_does_not_run_unless_trusted(ckpt_file, tmp_path, capsys):
  marker = tmp_path / 'ran'
  src = tmp_path / 'evil.pt'
  torch.save({'g_ema': ckpt_file[0].state_dict(), 'payload': _Payload(str(marker))}, src)
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert not marker.exists()
  assert str(src) in err and '--trust_checkpoint' in err and 'refused to unpickle' in err
  assert not (tmp_path / 'o').exists()
  # The explicit opt-in loads the whole pickle (and so runs its code).
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o'), '--trust_checkpoint']) == 0
  assert marker.exists()


class _Call:
  """Unpickling it calls ``fn(*args)``."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


@pytest.mark.parametrize('kind', ['os.system', 'builtins.eval', 'subprocess.call'])
def test_code_running_payloads_are_refused_in_one_line(kind, tmp_path, capsys):
  """Globals torch blocks outright (posix.system) and those it merely does not allow alike."""
  import builtins  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  marker = tmp_path / 'ran'
  payload = {'os.system': _Call(os.system, f'touch {marker}'),
             'builtins.eval': _Call(builtins.eval, f'open({str(marker)!r}, "w")'),
             'subprocess.call': _Call(subprocess.call, ['touch', str(marker)])}[kind]
  src = tmp_path / 'evil.pt'
  torch.save({'w': torch.zeros(2), 'x': payload}, src)
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  named = {'os.system': 'posix.system'}.get(kind, kind)  # os.system is posix.system
  assert f'refused to unpickle it: besides tensors it holds Python objects ({named})' in err[0]
  assert '--trust_checkpoint' in err[0] and not marker.exists()
  assert not (tmp_path / 'o').exists()


def test_training_args_namespace_is_allowed(ckpt_file, tmp_path):
  import argparse
  src = tmp_path / 'rosinality.pt'  # train.py of rosinality's port saves its args
  torch.save({'g_ema': ckpt_file[0].state_dict(), 'args': argparse.Namespace(size=32)}, src)
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o')]) == 0


def test_missing_torch_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match=r'interestyle_jax\[torch\]'):
    common.require_torch()


def test_loading_wrong_kind_is_explained(tmp_path):
  from interestyle_jax import artifacts
  artifacts.save_artifact(str(tmp_path / 'x'), {'a': np.zeros(2)}, {'kind': 'lpips'})
  with pytest.raises(artifacts.ArtifactError, match="holds a 'lpips' model"):
    load_stylegan2(str(tmp_path / 'x'))
  with pytest.raises(artifacts.ArtifactError, match='no model.json'):
    load_stylegan2(str(tmp_path))


# --- unusable paths: one line, exit 2, before anything is read ----------------


def _never_read(monkeypatch):
  """Makes reading a checkpoint fail the test: path errors must come first."""
  def fail(*a, **k):
    raise AssertionError('the checkpoint was read before the paths were checked')
  monkeypatch.setattr(common, 'load_torch_checkpoint', fail)
  from interestyle_jax.convert import stylegan2
  monkeypatch.setattr(stylegan2, 'load_torch_checkpoint', fail)


def _one_line_error(capsys, *parts):
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  for p in parts:
    assert p in lines[0], (p, err)
  return lines[0]


def test_unusable_paths_fail_fast_in_one_line(ckpt_file, tmp_path, monkeypatch, capsys):
  src = ckpt_file[1]
  _never_read(monkeypatch)
  as_file = tmp_path / 'model.flax'
  as_file.write_text('x')
  assert convert_main(['stylegan2', src, str(as_file)]) == 2
  _one_line_error(capsys, str(as_file), 'is an existing file', 'new directory path')
  assert as_file.read_text() == 'x'
  # --overwrite replaces model directories, never a file.
  assert convert_main(['stylegan2', src, str(as_file), '--overwrite']) == 2
  _one_line_error(capsys, 'is an existing file')
  # A file where a parent directory should be.
  dst = as_file / 'sub' / 'out'
  assert convert_main(['stylegan2', src, str(dst)]) == 2
  _one_line_error(capsys, str(dst), f'{as_file} is a file, not a directory')
  # Input files are checked too.
  assert convert_main(['stylegan2', str(tmp_path / 'nope.pt'), str(tmp_path / 'o')]) == 2
  _one_line_error(capsys, str(tmp_path / 'nope.pt'), 'does not exist')
  assert convert_main(['lpips', src, str(tmp_path / 'o'), '--alexnet', str(tmp_path)]) == 2
  _one_line_error(capsys, f'--alexnet {tmp_path} is a directory')
  assert not (tmp_path / 'o').exists()


def test_read_only_location_fails_fast(ckpt_file, tmp_path, monkeypatch, capsys):
  src = ckpt_file[1]
  ro = tmp_path / 'ro'
  ro.mkdir()
  dst = ro / 'ckpt' / 'stylegan2'  # missing parents under a read-only folder
  if os.geteuid() == 0:
    # root writes through permission bits: a read-only mount is what stops it.
    import tempfile

    def read_only(*a, dir=None, **k):
      raise PermissionError(30, 'Read-only file system', dir)
    monkeypatch.setattr(tempfile, 'mkdtemp', read_only)
  else:
    ro.chmod(0o555)
  _never_read(monkeypatch)
  try:
    assert convert_main(['stylegan2', src, str(dst)]) == 2
  finally:
    ro.chmod(0o755)
  _one_line_error(capsys, str(dst), f'{ro} is not writable', 'choose a writable location')
  assert os.listdir(ro) == []


def test_missing_parents_are_created(ckpt_file, tmp_path):
  """The README's `ckpt/...` destinations work on a fresh checkout."""
  dst = tmp_path / 'ckpt' / 'deeper' / 'stylegan2-ffhq'
  assert convert_main(['stylegan2', ckpt_file[1], str(dst)]) == 0
  assert (dst / 'model.json').is_file()
  # The write check leaves nothing behind.
  assert os.listdir(dst.parent) == ['stylegan2-ffhq']


def test_cli_path_error_is_one_line_in_a_fresh_process(ckpt_file, tmp_path):
  import subprocess
  target = tmp_path / 'taken'
  target.write_text('')
  out = subprocess.run([sys.executable, '-m', 'interestyle_jax.convert', 'stylegan2',
                        ckpt_file[1], str(target)], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 2, out.stderr
  lines = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and str(target) in lines[0]
  assert 'Traceback' not in out.stderr


def test_failed_write_leaves_no_output(ckpt_file, tmp_path, monkeypatch, capsys):
  """A write that dies half-way (disk full) leaves neither DST nor its partial sibling."""
  from interestyle_jax import artifacts
  src = ckpt_file[1]
  kept = tmp_path / 'kept'
  assert convert_main(['stylegan2', src, str(kept)]) == 0
  before = sorted(p.relative_to(kept) for p in kept.rglob('*'))

  class DiskFull:
    def save(self, path, tree):
      os.makedirs(path)
      with open(os.path.join(path, 'half'), 'w') as f:
        f.write('x')
      raise OSError(28, 'No space left on device')

  monkeypatch.setattr(artifacts, '_local_checkpointer', DiskFull)
  assert convert_main(['stylegan2', src, str(tmp_path / 'new')]) == 1
  assert 'error: no space left on the device holding' in capsys.readouterr().err
  assert convert_main(['stylegan2', src, str(kept), '--overwrite']) == 1
  assert sorted(os.listdir(tmp_path)) == ['kept']  # no 'new', no .partial-*
  assert sorted(p.relative_to(kept) for p in kept.rglob('*')) == before  # old model intact


# --- NaN / inf tensors: converted as they are, with a warning naming them -----


def test_non_finite_tensors_are_named(ckpt_file, tmp_path, caplog, capsys):
  ref = ckpt_file[0]
  sd = {k: v.clone() for k, v in ref.state_dict().items()}
  sd['conv1.conv.weight'].view(-1)[:3] = float('nan')
  sd['to_rgbs.0.bias'].view(-1)[0] = float('inf')
  latent_avg = torch.zeros(SD)
  latent_avg[5] = float('-inf')
  src = tmp_path / 'diverged.pt'
  torch.save({'g_ema': sd, 'latent_avg': latent_avg}, src)
  n_conv1 = sd['conv1.conv.weight'].numel()

  with caplog.at_level('WARNING', logger='interestyle_jax.convert'):
    load_torch_stylegan2(str(src))
  text = caplog.text
  assert str(src) in text and '2 tensor(s) hold non-finite values' in text
  assert f'conv1.conv.weight (3 NaN, 0 inf of {n_conv1})' in text
  assert 'to_rgbs.0.bias (0 NaN, 1 inf of 3)' in text
  assert f'latent_avg (0 NaN, 1 inf of {SD})' in text
  finite = [r for r in caplog.records if 'convs.0' in r.getMessage()]
  assert not finite  # only the tensors that hold NaN / inf are named

  dst = tmp_path / 'out'
  capsys.readouterr()
  assert convert_main(['stylegan2', str(src), str(dst)]) == 0  # converted, not refused
  err = capsys.readouterr().err
  warnings = [l for l in err.splitlines() if l.startswith('warning: ')]
  assert len(warnings) == 2, err  # the generator's tensors, then latent_avg
  assert 'conv1.conv.weight (3 NaN' in err and str(src) in err

  caplog.clear()
  with caplog.at_level('WARNING', logger='interestyle_jax.convert'):
    gen, v, lat = load_stylegan2(str(dst))
  assert np.isnan(np.asarray(v['params']['conv1']['conv']['weight'])).sum() == 3
  assert str(dst) in caplog.text and 'loaded as they are' in caplog.text
  assert "['generator']['params']['conv1']['conv']['weight'] (3 NaN" in caplog.text


def test_finite_checkpoint_warns_nothing(ckpt_file, caplog):
  with caplog.at_level('WARNING', logger='interestyle_jax.convert'):
    load_torch_stylegan2(ckpt_file[1])
  assert not caplog.records

"""NVIDIA StyleGAN2-ADA ``.pkl`` → Flax: safety, parity with an independent reference, refusals."""

import copy
import json
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from interestyle_jax.convert import load_stylegan2, load_torch_stylegan2, nvidia_pkl  # noqa: E402
from interestyle_jax.convert import stylegan2_ada  # noqa: E402
from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.convert.common import IGNORE  # noqa: E402
from interestyle_jax.models.stylegan2 import Generator, generator_channels  # noqa: E402
from tests.torch_ref import nvidia_pickle  # noqa: E402
from tests.torch_ref import stylegan2_ada as ref_ada  # noqa: E402

pytestmark = pytest.mark.usefixtures('unoptimised_xla')
W = 32  # w_dim


def make_ref(res, seed=0, **kw):
  torch.manual_seed(seed)
  kw.setdefault('channel_base', 512)
  kw.setdefault('channel_max', 32)
  return ref_ada.Generator(W, W, res, mapping_layers=2, **kw).randomize(seed + 1).eval()


def write_snapshot(path, g_ema, g=None, **kw):
  d = ref_ada.Persistent()  # a stand-in discriminator: other networks are read as data too
  d.__class__ = type('Discriminator', (ref_ada.Persistent,), {})
  d.weight = torch.nn.Parameter(torch.ones(2))
  d.table = np.arange(3.0)  # numpy arrays and scalars are data too
  nvidia_pickle.dump({'G': g if g is not None else copy.deepcopy(g_ema), 'D': d,
                      'G_ema': g_ema, 'augment_pipe': None,
                      'training_set_kwargs': {'path': 'x.zip', 'resolution': 32}}, path, **kw)
  return str(path)


def ws_for(ref, batch=2, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    w = ref.mapping(torch.randn(batch, W, generator=g))
  w = w[:, None].repeat(1, ref.num_ws, 1)
  return w + 0.7 * torch.randn(w.shape, generator=g)  # distinct styles per layer


def render_ref(ref, w, noise_mode='const'):
  with torch.no_grad():
    return ref(w, noise_mode).permute(0, 2, 3, 1).numpy()


# --- parity -----------------------------------------------------------------------


@pytest.mark.parametrize('res,kw', [
    # 64 px, narrow, 2 fp16 blocks (NVIDIA's un-fused path), a clamp that bites.
    (64, dict(num_fp16_res=2, conv_clamp=0.5)),
    # A config-f channel table (cm = 1, width 32) and a 3-tap filter.
    (32, dict(channel_base=1024, resample_filter=(1, 2, 1))),
])
def test_cli_conversion_matches_reference(res, kw, tmp_path, capsys):
  ref = make_ref(res, **kw)
  src = write_snapshot(tmp_path / 'network-snapshot.pkl', ref)
  dst = tmp_path / 'out'
  assert convert_main(['stylegan2', src, str(dst)]) == 0
  out = capsys.readouterr().out
  gen, v, lat = load_stylegan2(str(dst))
  hash(gen)  # model.json's lists become tuples: jit / lru_cache keys stay hashable
  # w_avg becomes latent_avg exactly.
  np.testing.assert_array_equal(np.asarray(lat), ref.mapping.w_avg.numpy()[None])
  w = ws_for(ref)
  got = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise_mode='const'))
  want = render_ref(ref, w)
  assert np.abs(got - want).max() <= 1e-4
  got = np.asarray(gen.apply(v, jnp.asarray(w.numpy()), noise_mode='none'))
  assert np.abs(got - render_ref(ref, w, 'none')).max() <= 1e-4
  z = torch.randn(3, W)
  with torch.no_grad():
    want_w = ref.mapping(z).numpy()
  got_w = np.asarray(gen.apply(v, jnp.asarray(z.numpy()), method=gen.mapping))
  assert np.abs(got_w - want_w).max() <= 1e-4
  meta = json.loads((dst / 'model.json').read_text())
  if 'conv_clamp' in kw:
    assert meta['generator']['conv_clamp'] == 0.5 and gen.conv_clamp == 0.5
    assert 'computed in float32' in out and 'float16' in out  # the fp16 blocks are named
    assert 'blocks at 32, 64 px' in out
    # The clamp is active: without it the images differ.
    free = np.asarray(gen.clone(conv_clamp=None).apply(v, jnp.asarray(w.numpy())))
    assert np.abs(free - want).max() > 0.1
    assert meta['generator']['channels'] == [32, 32, 32, 16, 8]
  else:
    assert meta['generator'] == dict(resolution=32, style_dim=W, n_mlp=2,
                                     channel_multiplier=1, width=32, blur_kernel=[1, 2, 1])


def test_network_g_and_python_loader(tmp_path):
  ema = make_ref(32, seed=3)
  raw = make_ref(32, seed=4)
  src = write_snapshot(tmp_path / 's.pkl', ema, g=raw)
  w = ws_for(ema, seed=5)
  gen, v, lat = load_torch_stylegan2(src, return_latent_avg=True)  # G_ema by default
  assert np.abs(np.asarray(gen.apply(v, jnp.asarray(w.numpy()))) - render_ref(ema, w)).max() <= 1e-4
  gen, v = stylegan2_ada.load_nvidia_stylegan2(src, network='G')
  assert np.abs(np.asarray(gen.apply(v, jnp.asarray(w.numpy()))) - render_ref(raw, w)).max() <= 1e-4
  dst = tmp_path / 'g'
  assert convert_main(['stylegan2', src, str(dst), '--network', 'G']) == 0
  assert json.loads((dst / 'model.json').read_text())['source_format'] == 'nvidia-pkl:G'


def test_config_f_1024_channel_counts_without_running_it():
  """FFHQ config-f (channel_base 32768, channel_max 512, 8 mapping layers) maps to cm = 2."""
  with torch.device('meta'):
    g = ref_ada.Generator(512, 512, 1024, channel_base=32768, channel_max=512,
                          mapping_layers=8, num_fp16_res=4, conv_clamp=256)
  for m in g.modules():  # the 4x4 filters are read for their values: real ones
    if 'resample_filter' in m._buffers:
      m._buffers['resample_filter'] = ref_ada.setup_filter((1, 3, 3, 1))
  tree = nvidia_pkl._as_data(g, torch)  # the module tree as a pickle would give it
  config, notes = stylegan2_ada.infer_config(tree)
  assert config == dict(resolution=1024, style_dim=512, n_mlp=8, lr_mlp=0.01, conv_clamp=256.0,
                        blur_kernel=(1, 3, 3, 1), channel_multiplier=2, width=512)
  want = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
  assert generator_channels(1024, 2, 512) == want
  assert {r: int(getattr(g.synthesis, f'b{r}').conv1.weight.shape[0]) for r in want} == want
  assert 'blocks at 128, 256, 512, 1024 px' in notes[0]
  # Every tensor lands on a variable of the same shape (zero-stride views: no memory).
  gen = Generator(**config)
  template = jax.eval_shape(gen.init, jax.random.PRNGKey(0), jnp.zeros((1, 18, 512)))
  expected = _flat(template)
  mapper = stylegan2_ada._key_mapper(1024)
  got = {}
  for key, t in nvidia_pkl.named_tensors(tree):
    m = mapper(key, np.broadcast_to(np.float32(0), tuple(t.shape)))
    if m is not IGNORE:
      got['/'.join(m[0])] = tuple(m[1].shape)
  assert got == expected
  assert g.num_ws == 18


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out['/'.join(prefix + (k,))] = tuple(v.shape)
  return out


# --- safety -----------------------------------------------------------------------


class _Exec:
  """Its ``__reduce__`` makes a plain pickle.load write ``path``."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (exec, (f'open({self.path!r}, "w").write("ran")',))


class _System:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f'touch {self.path}',))


@pytest.mark.parametrize('payload,global_name', [(_Exec, 'builtins.exec'),
                                                  (_System, f'{os.system.__module__}.system')])
def test_hostile_reduce_runs_nothing(payload, global_name, tmp_path, capsys):
  marker = tmp_path / 'ran'
  ref = make_ref(32)
  src = tmp_path / 'evil.pkl'
  # The payload hides in a network's state, where a parameter would be.
  ref.synthesis.b4.conv1.evil = payload(str(marker))
  write_snapshot(src, ref, g=ref)  # (a deepcopy of it would run the payload here)
  assert not marker.exists()
  assert convert_main(['stylegan2', str(src), str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert not marker.exists()
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert f'refused to unpickle global {global_name}' in err and '--trust_checkpoint' in err
  assert not (tmp_path / 'o').exists()
  # The payload is live: a plain pickle.load runs it (given a torch_utils to import).
  with nvidia_pickle._stand_in_modules(), open(src, 'rb') as f:
    sys.modules['torch_utils.persistence']._reconstruct_persistent_obj = lambda meta: meta
    pickle.load(f)
  assert marker.exists()


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_persistence_layout_is_read_as_data(protocol, tmp_path, capsys):
  """module_src is the code NVIDIA's unpickler execs: here it stays a string."""
  marker = tmp_path / 'ran'
  code = f'open({str(marker)!r}, "w").write("module_src ran")\n'
  ref = make_ref(32, seed=2)
  src = write_snapshot(tmp_path / 'ffhq.pkl', ref, module_src=code, protocol=protocol)
  assert code.encode() in open(src, 'rb').read()
  top = nvidia_pkl.load_network_pickle(src)
  g = top['G_ema']
  assert isinstance(g, nvidia_pkl.PersistentObject) and g.class_name == 'Generator'
  assert g.module_src == code and top['D'].class_name == 'Discriminator'
  np.testing.assert_array_equal(top['D'].attr('table'), np.arange(3.0))
  assert float(g.children()['mapping'].children()['fc0'].attr('bias_gain')) == 0.01
  assert isinstance(top['training_set_kwargs'], dict)
  assert g.attr('_init_kwargs')['synthesis_kwargs']['channel_max'] == 32  # an EasyDict
  assert convert_main(['stylegan2', src, str(tmp_path / 'o')]) == 0
  assert not marker.exists()
  exec(compile(code, 'module_src', 'exec'))  # noqa: S102 - proves the payload is live
  assert marker.exists()


def test_trust_checkpoint_needs_nvidia_code(tmp_path, capsys):
  src = write_snapshot(tmp_path / 's.pkl', make_ref(32))
  assert convert_main(['stylegan2', src, str(tmp_path / 'o'), '--trust_checkpoint']) == 1
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert 'torch_utils' in err and 'PYTHONPATH' in err


def test_tensorflow_pickle_and_garbage_are_one_line(tmp_path, capsys):
  tf_pkl = tmp_path / 'stylegan2-ffhq-config-f.pkl'
  # GLOBAL dnnlib.tflib.network Network; EMPTY_TUPLE; NEWOBJ; STOP
  tf_pkl.write_bytes(b'\x80\x03cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.')
  assert convert_main(['stylegan2', str(tf_pkl), str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert 'dnnlib.tflib.network.Network' in err and 'TensorFlow' in err
  garbage = tmp_path / 'g.pkl'
  garbage.write_bytes(b'\x80\x04garbage')
  assert convert_main(['stylegan2', str(garbage), str(tmp_path / 'o')]) == 1
  assert 'not a readable network pickle' in capsys.readouterr().err
  assert not (tmp_path / 'o').exists()


def test_format_is_told_by_bytes(tmp_path):
  from tests.torch_ref.stylegan2 import RefGenerator
  sd = {'g_ema': RefGenerator(16, 8, 1, width=8).state_dict()}
  torch.save(sd, tmp_path / 'zip.pkl')  # a torch.save file, whatever its name
  torch.save(sd, tmp_path / 'legacy.pt', _use_new_zipfile_serialization=False)
  src = write_snapshot(tmp_path / 'nv.pt', make_ref(32))  # a network pickle named .pt
  assert nvidia_pkl.file_format(str(tmp_path / 'zip.pkl')) == 'torch_zip'
  assert nvidia_pkl.file_format(str(tmp_path / 'legacy.pt')) == 'torch_legacy'
  assert nvidia_pkl.file_format(src) == 'pickle'
  for name in ('zip.pkl', 'legacy.pt'):
    assert convert_main(['stylegan2', str(tmp_path / name), str(tmp_path / name) + '.out']) == 0
  assert convert_main(['stylegan2', src, str(tmp_path / 'nv.out')]) == 0
  meta = json.loads((tmp_path / 'nv.out' / 'model.json').read_text())
  assert meta['source_format'] == 'nvidia-pkl:G_ema'
  assert convert_main(['stylegan2', str(tmp_path / 'zip.pkl'), str(tmp_path / 'x'),
                       '--network', 'G']) == 1


# --- architectures the generator cannot express -----------------------------------


class SynthesisInput(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.register_buffer('freqs', torch.zeros(4, 2))


def _stylegan3(g):
  syn = torch.nn.Module()
  syn.__class__ = type('SynthesisNetwork', (torch.nn.Module,), {})
  syn.input = SynthesisInput()
  setattr(syn, 'L0_36_512', torch.nn.Linear(2, 2))
  g.synthesis = syn
  return g


def _conditional(g):
  g.mapping.embed = ref_ada.FullyConnectedLayer(10, W)
  g.mapping.c_dim = 10
  return g


@pytest.mark.parametrize('variant,message', [
    (lambda: make_ref(32, architecture='resnet'), "synthesis architecture 'resnet'"),
    (lambda: make_ref(32, architecture='orig'), "synthesis architecture 'orig'"),
    (lambda: _stylegan3(make_ref(32)), 'StyleGAN3 generator (config -t/-r'),
    (lambda: _conditional(make_ref(32)), 'conditional generator (c_dim=10)'),
])
def test_unsupported_architectures_are_refused_in_one_line(variant, message, tmp_path, capsys):
  src = write_snapshot(tmp_path / 'x.pkl', variant())
  assert convert_main(['stylegan2', src, str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and message in lines[0] and src in lines[0], err
  assert not (tmp_path / 'o').exists()


def test_missing_tensor_is_named(tmp_path, capsys):
  ref = make_ref(32)
  del ref.synthesis.b8.conv0._parameters['bias']
  src = write_snapshot(tmp_path / 'x.pkl', ref)
  assert convert_main(['stylegan2', src, str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert 'missing (1)' in err and 'params/convs_0/activate/bias' in err

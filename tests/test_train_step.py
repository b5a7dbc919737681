"""The per-device train step against unrolled references, Ranger, overfitting.

Tiny models (16 px generator, 4-channel IR-SE encoder) keep every jit to a few
seconds. Generator noise weights are made non-zero and the steps use 'const'
noise so references can reproduce the exact images.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interestyle_jax import filter as unf
from interestyle_jax import losses
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.training import state as state_lib
from interestyle_jax.training import step as step_lib

SD, RES, T = 16, 16, 2
SIGMAS = (1.5, 0.0)
W = losses.LossWeights(l2=1.0, lpips=0.0, id=0.0, w_norm=0.3, ind=0.5)


# XLA without most optimisations compiles these tiny programs ~30 % faster.
pytestmark = pytest.mark.usefixtures('unoptimised_xla')


@pytest.fixture(scope='module')
def world():
  gen = Generator(RES, style_dim=SD, n_mlp=1, width=4)
  n = gen.n_styles
  gv = jax.jit(gen.init)(jax.random.PRNGKey(0), jnp.zeros((1, n, SD)))
  # Noise weights start at 0; make the (const) noise matter.
  gv = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 if any(getattr(k, 'key', None) == 'noise' for k in p) else x, gv)
  enc = BackboneEncoder(n_styles=n, style_dim=SD, stage_units=(1, 1, 1, 1), width=4)
  ev = jax.jit(enc.init)(jax.random.key(1, impl='rbg'), jnp.zeros((1, RES, RES, 6)))
  w_avg = jnp.broadcast_to(jax.jit(lambda v: gen.apply(
      v, 256, jax.random.PRNGKey(2), method=gen.mean_latent))(gv), (n, SD))
  avg = jax.jit(lambda v, w: gen.apply(v, w[None], noise_mode='const')[0])(gv, w_avg)
  frozen = {'generator': gv, 'latent_avg': w_avg, 'avg_image': avg}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (4, RES, RES, 3)), jnp.float32)
  m = jnp.asarray(rng.uniform(0, 1, (4, RES, RES, 1)) > 0.3, jnp.float32)
  return dict(gen=gen, enc=enc, ev=ev, frozen=frozen, batch={'image': x, 'mask': m},
              models=step_lib.Models(enc, gen))


def cfg_for(loss_iterations, weights=W):
  return step_lib.StepConfig(n_iters=T, sigmas=SIGMAS, loss_iterations=loss_iterations,
                             weights=weights, encoder_size=RES, train_noise_mode='const',
                             axis_name=None)


def unrolled_losses(wd, params, carry_grad=False, whole=False):
  """Per-iteration losses and the InD loss, written out with a Python loop.

  ``whole``: ReStyle's whole-image losses (the filter and the InD input still
  use the mask).
  """
  gen, enc, frozen = wd['gen'], wd['enc'], wd['frozen']
  x, m = wd['batch']['image'], wd['batch']['mask']
  lm = jnp.ones_like(m) if whole else m
  b = x.shape[0]
  w = jnp.broadcast_to(frozen['latent_avg'], (b,) + frozen['latent_avg'].shape)
  y = jnp.broadcast_to(frozen['avg_image'], x.shape)
  bs = wd['ev']['batch_stats']
  radius = unf.kernel_radius(max(SIGMAS))
  its, l2s = [], []
  for t in range(T):
    x_in = unf.uninterest_filter(x, m, SIGMAS[t], radius)
    delta, upd = enc.apply({'params': params, 'batch_stats': bs},
                           jnp.concatenate([x_in, y], -1), train=True, mutable=['batch_stats'])
    bs = upd['batch_stats']
    w = w + delta
    y_hat = gen.apply(frozen['generator'], w, noise_mode='const')
    l2 = jnp.mean((lm * y_hat - lm * x) ** 2)
    wn = jnp.mean(jnp.sqrt(jnp.sum((w - frozen['latent_avg']) ** 2, axis=(1, 2))))
    its.append(W.l2 * l2 + W.w_norm * wn)
    l2s.append(l2)
    if not carry_grad:
      w, y = jax.lax.stop_gradient(w), jax.lax.stop_gradient(y_hat)
  delta, upd = enc.apply({'params': params, 'batch_stats': bs},
                         jnp.concatenate([x, m * x], -1), train=True, mutable=['batch_stats'])
  y_ind = gen.apply(frozen['generator'], jax.lax.stop_gradient(w) + delta, noise_mode='const')
  ind = W.ind * W.l2 * jnp.mean((lm * y_ind - lm * x) ** 2)
  return its, ind, upd['batch_stats'], l2s


def tree_allclose(a, b, rtol=2e-4, atol=1e-6, scale_tol=1e-3):
  """Leafwise allclose; float32 sums in another order differ by ~1e-6 of a leaf's scale."""
  leaves_b = jax.tree.leaves(b)
  assert len(jax.tree.leaves(a)) == len(leaves_b)
  for (pa, va), vb in zip(jax.tree_util.tree_leaves_with_path(a), leaves_b):
    vb = np.asarray(vb)
    tol = atol + scale_tol * float(np.max(np.abs(vb), initial=0.0))
    np.testing.assert_allclose(np.asarray(va), vb, rtol=rtol, atol=tol,
                               err_msg=jax.tree_util.keystr(pa))


@pytest.fixture(scope='module')
def scan_results(world):
  out = {}
  for mode in ('all', 'last'):
    fn = jax.jit(functools.partial(step_lib.loss_and_grads, models=world['models'],
                                   cfg=cfg_for(mode)))
    out[mode] = fn(world['ev']['params'], world['ev']['batch_stats'], world['frozen'],
                   world['batch'], jax.random.PRNGKey(0))
  return out


def test_scan_equals_unrolled_loop_all(world, scan_results):
  params = world['ev']['params']
  grads, bs, metrics = scan_results['all']

  def summed(p):
    its, ind, _, _ = unrolled_losses(world, p)
    return sum(its) + ind

  its, ind, ref_bs, l2s = jax.jit(lambda p: unrolled_losses(world, p))(params)
  np.testing.assert_allclose(float(metrics['loss']), float(sum(its) + ind), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['ind']) * W.ind, float(ind), rtol=1e-5)
  for t in range(T):
    np.testing.assert_allclose(float(metrics[f'l2_it{t + 1}']), float(l2s[t]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['l2']), float(l2s[-1]), rtol=1e-5)
  # The step sums per-iteration gradients taken inside the scan; the reference
  # is one backward pass through the summed loss of the unrolled loop. Without
  # the stop-gradient on the carry the reference would differ.
  leaky = lambda p: sum(unrolled_losses(world, p, carry_grad=True)[0])
  ref, ref_leaky = jax.jit(lambda p: (jax.grad(summed)(p), jax.grad(leaky)(p)))(params)
  tree_allclose(grads, ref)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(ref_leaky), jax.tree.leaves(ref)))
  assert diff > 1e-6
  # BatchNorm statistics were threaded through all T + 1 train-mode passes.
  tree_allclose(bs, ref_bs, rtol=1e-5)


def test_last_iteration_only(world, scan_results):
  params = world['ev']['params']
  grads, _, metrics = scan_results['last']
  last_loss = lambda p: (lambda r: r[0][-1] + r[1])(unrolled_losses(world, p))
  ref, value = jax.jit(lambda p: (jax.grad(last_loss)(p), last_loss(p)))(params)
  tree_allclose(grads, ref)
  np.testing.assert_allclose(float(metrics['loss']), float(value), rtol=1e-5)
  # Same forward pass as 'all', but a different objective.
  for t in range(T):
    np.testing.assert_allclose(float(metrics[f'l2_it{t + 1}']),
                               float(scan_results['all'][2][f'l2_it{t + 1}']), rtol=1e-6)
  g_all = scan_results['all'][0]
  assert any(float(jnp.max(jnp.abs(a - b))) > 1e-6
             for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_all)))


def test_whole_image_loss_region(world, scan_results):
  """loss.region='whole' (the ReStyle baseline): every reconstruction loss on m ≡ 1."""
  params = world['ev']['params']
  cfg = dataclasses.replace(cfg_for('all'), loss_region='whole')
  fn = jax.jit(functools.partial(step_lib.loss_and_grads, models=world['models'], cfg=cfg))
  grads, _, metrics = fn(params, world['ev']['batch_stats'], world['frozen'], world['batch'],
                         jax.random.PRNGKey(0))

  def summed(p):
    its, ind, _, _ = unrolled_losses(world, p, whole=True)
    return sum(its) + ind

  value, ref = jax.jit(jax.value_and_grad(summed))(params)
  np.testing.assert_allclose(float(metrics['loss']), float(value), rtol=1e-5)
  tree_allclose(grads, ref)
  # Not the interest-region objective: the mask covers 70 % of the pixels.
  assert float(metrics['loss']) > 1.2 * float(scan_results['all'][2]['loss'])
  with pytest.raises(ValueError, match='loss_region'):
    dataclasses.replace(cfg, loss_region='face')


def numpy_ranger(params, grads_seq, lr, b1=0.95, b2=0.999, eps=1e-5, k=6, alpha=0.5):
  """Ranger 20.4.11 (lessw2020) in NumPy, weights in Flax layout (output axis last)."""
  p = {n: v.astype(np.float64) for n, v in params.items()}
  slow = {n: v.copy() for n, v in p.items()}
  m = {n: np.zeros_like(v) for n, v in p.items()}
  v2 = {n: np.zeros_like(v) for n, v in p.items()}
  rho_inf = 2 / (1 - b2) - 1
  for step, grads in enumerate(grads_seq, start=1):
    for n in p:
      g = grads[n].astype(np.float64)
      if g.ndim > 1:
        g = g - g.mean(axis=tuple(range(g.ndim - 1)), keepdims=True)
      m[n] = b1 * m[n] + (1 - b1) * g
      v2[n] = b2 * v2[n] + (1 - b2) * g * g
      b2t = b2 ** step
      rho = rho_inf - 2 * step * b2t / (1 - b2t)
      m_hat = m[n] / (1 - b1 ** step)
      if rho >= 5:
        r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        p[n] = p[n] - lr * r * m_hat / (np.sqrt(v2[n] / (1 - b2t)) + eps)
      else:
        p[n] = p[n] - lr * m_hat
      if step % k == 0:
        slow[n] = slow[n] + alpha * (p[n] - slow[n])
        p[n] = slow[n].copy()
  return p, slow


def test_ranger_matches_numpy_reference():
  rng = np.random.default_rng(0)
  params = {'conv': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
            'dense': rng.normal(size=(5, 3)).astype(np.float32),
            'bias': rng.normal(size=(3,)).astype(np.float32)}
  grads_seq = [{n: rng.normal(size=v.shape).astype(np.float32) for n, v in params.items()}
               for _ in range(13)]
  tx = state_lib.ranger(1e-2)
  st = state_lib.create_train_state({'params': jax.tree.map(jnp.asarray, params)}, tx)
  update = jax.jit(lambda s, g: state_lib.apply_gradients(s, g, {}, tx))
  for g in grads_seq:
    st = update(st, jax.tree.map(jnp.asarray, g))
  fast, slow = numpy_ranger(params, grads_seq, 1e-2)
  tree_allclose(st.params.fast, fast, rtol=1e-5, atol=1e-6)
  tree_allclose(st.params.slow, slow, rtol=1e-5, atol=1e-6)
  assert int(st.step) == 13
  # Lookahead really synchronised (fast == slow right after the 12th step).
  st12 = state_lib.create_train_state({'params': jax.tree.map(jnp.asarray, params)}, tx)
  for g in grads_seq[:12]:
    st12 = update(st12, jax.tree.map(jnp.asarray, g))
  tree_allclose(st12.params.fast, st12.params.slow, rtol=0, atol=0)


def test_overfits_a_tiny_batch(world):
  cfg = step_lib.StepConfig(n_iters=2, sigmas=(1.0, 0.0), weights=losses.LossWeights(
      lpips=0, id=0, ind=0.05), encoder_size=RES, train_noise_mode='const', axis_name=None)
  tx = state_lib.ranger(3e-3)
  st = jax.jit(lambda ev: state_lib.create_train_state(ev, tx))(world['ev'])
  # A target the generator can produce: G at a random latent, masked region.
  gen, frozen = world['gen'], world['frozen']
  w_true = frozen['latent_avg'] + 0.7 * jax.random.normal(jax.random.PRNGKey(5),
                                                          (4,) + frozen['latent_avg'].shape)
  batch = {'image': jax.jit(lambda v, w: gen.apply(v, w, noise_mode='const'))(
               frozen['generator'], w_true),
           'mask': world['batch']['mask']}
  fn = jax.jit(functools.partial(step_lib.train_step, models=world['models'], cfg=cfg, tx=tx))
  first = None
  for _ in range(80):
    st, metrics = fn(st, frozen, batch, jax.random.PRNGKey(0))
    first = float(metrics['l2']) if first is None else first
  assert float(metrics['l2']) < 0.25 * first, (first, float(metrics['l2']))


def test_multi_device_step_matches_single_device():
  """4 CPU devices (shard_map + pmean) == 1 device on the same global batch."""
  helper = os.path.join(os.path.dirname(__file__), 'multidevice_step.py')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  out = subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', helper],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['devices'] == 4
  assert result['no_bn_max_param_diff'] < 1e-5, result
  assert result['bn_max_param_diff'] < 1e-5, result
  assert result['bn_max_stats_diff'] < 1e-5, result
  assert result['noise_differs_per_device'], result
  assert result['eval_max_diff'] < 1e-5, result


def _global_cosine(a, b):
  la = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
  lb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
  return float(la @ lb / (np.linalg.norm(la) * np.linalg.norm(lb)))


def test_bfloat16_step_close_to_float32(world, scan_results):
  """Mixed precision: bf16 networks, float32 params/statistics/losses.

  Tolerance: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.2 %
  per op); through ~20 layers the loss stays within 5 % and the gradient
  direction within cosine 0.98 of float32 (measured: ~0.5 % and > 0.999).
  """
  cfg = dataclasses.replace(cfg_for('all'), dtype='bfloat16')
  grads, bs, metrics = jax.jit(functools.partial(
      step_lib.loss_and_grads, models=world['models'], cfg=cfg))(
          world['ev']['params'], world['ev']['batch_stats'], world['frozen'], world['batch'],
          jax.random.PRNGKey(0))
  g32, bs32, m32 = scan_results['all']
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((grads, bs, metrics)))
  for k in ('loss', 'l2', 'ind'):
    np.testing.assert_allclose(float(metrics[k]), float(m32[k]), rtol=5e-2, err_msg=k)
  assert float(metrics['loss']) != float(m32['loss'])  # really computed in bf16
  assert _global_cosine(grads, g32) > 0.98
  assert _global_cosine(bs, bs32) > 0.999


def test_generator_remat_gives_the_same_gradients(world, scan_results):
  models = step_lib.Models(world['enc'], world['gen'].clone(remat=True))
  fn = functools.partial(step_lib.loss_and_grads, models=models, cfg=cfg_for('all'))
  args = (world['ev']['params'], world['ev']['batch_stats'], world['frozen'], world['batch'],
          jax.random.PRNGKey(0))
  assert 'remat' in str(jax.make_jaxpr(fn)(*args)) or 'checkpoint' in str(jax.make_jaxpr(fn)(*args))
  grads, _, metrics = jax.jit(fn)(*args)
  tree_allclose(grads, scan_results['all'][0], rtol=1e-5, atol=1e-7, scale_tol=1e-5)
  np.testing.assert_allclose(float(metrics['loss']), float(scan_results['all'][2]['loss']),
                             rtol=1e-6)


def test_gradient_convolutions_are_canonical_inside_scan_and_shard_map(world):
  """Every convolution of the compiled sharded step is NHWC/HWIO (XLA:CPU's fast form).

  JAX's own convolution gradients use permuted dimension numbers that
  XLA:CPU only rewrites outside loops and shard_map bodies; left as they are
  they run as naive loops (the 9x slow paper step).
  """
  from jax.sharding import Mesh, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('batch',))
  cfg = dataclasses.replace(cfg_for('all'), axis_name='batch', unroll_scan=False)
  fn = jax.jit(jax.shard_map(
      functools.partial(step_lib.loss_and_grads, models=world['models'], cfg=cfg),
      mesh=mesh, in_specs=(P(), P(), P(), P('batch'), P()), out_specs=P(), check_vma=False))
  hlo = fn.lower(world['ev']['params'], world['ev']['batch_stats'], world['frozen'],
                 world['batch'], jax.random.PRNGKey(0)).compile().as_text()
  convs = [l for l in hlo.splitlines() if ' convolution(' in l and 'dim_labels=' in l]
  canonical = [l for l in convs if 'dim_labels=b01f_01io->b01f' in l]
  assert len(canonical) > 20
  # The only others are XLA's own rewrites of this tiny encoder's convolutions
  # on 1-2 px maps (windows of at most 2x2); at paper scale (maps >= 16 px)
  # all 181 convolutions of the step are canonical (benchmarks/train_step.py).
  for l in convs:
    if l not in canonical:
      window = l.split('window={size=')[1].split()[0].rstrip('}')
      assert all(int(v) <= 2 for v in window.split('x')), l[:300]

"""The one refinement loop, ``inference.refine``, against an unrolled reference.

Training's validation (``evaluation.eval_step``), its image grids
(``evaluation.visualize``), ``python -m interestyle_jax.evaluate`` and the
``Inverter`` (behind ``invert``) must all run ``inference.refine``: each is
checked against a Python loop written out here, and a spy checks that each
one really calls ``refine``. The reference pools the 32 px generator output
to the 16 px encoder size by a reshape-mean, uses BatchNorm running
statistics that are not the identity, and the generator's const noise with
non-zero noise weights (every variable is random, none at its initial value),
so a loop that used batch statistics, random noise or no pooling would differ.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax import evaluate, inference, losses
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.training import evaluation
from interestyle_jax.training import state as state_lib
from interestyle_jax.training import step as step_lib
from tests import tiny_checkpoint as tc

RES, SIZE, T, B = tc.RES, 16, 3, 4  # 32 px generator pooled to a 16 px encoder input
SIGMAS = (0.8, 0.3, 0.0)
TOL = 1e-5

pytestmark = pytest.mark.usefixtures('unoptimised_xla')


@pytest.fixture(scope='module')
def world():
  rng = np.random.default_rng(0)
  gen = Generator(**tc.GENERATOR)
  gv = tc.random_variables(gen, rng, jnp.zeros((1, tc.N_STYLES, tc.STYLE_DIM)))
  enc = BackboneEncoder(**tc.ENCODER)
  ev = tc.random_variables(enc, rng, jnp.zeros((1, SIZE, SIZE, 6)))
  # Running statistics unlike any batch's: eval-mode BatchNorm must use them.
  ev['batch_stats'] = jax.tree.map(
      lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), ev['batch_stats'])
  w_avg = jnp.asarray(rng.normal(0, 0.3, (tc.N_STYLES, tc.STYLE_DIM)), jnp.float32)
  x = jnp.asarray(rng.uniform(-1, 1, (B, SIZE, SIZE, 3)), jnp.float32)
  m = jnp.asarray(rng.uniform(0, 1, (B, SIZE, SIZE, 1)), jnp.float32)
  target = jnp.asarray(rng.uniform(-1, 1, (B, SIZE, SIZE, 3)), jnp.float32)
  # The reference's network calls, one at a time, each jitted alone (op by op
  # is slow on CPU); train=False is the default of BackboneEncoder.
  encode = jax.jit(enc.apply)
  generate = jax.jit(lambda v, w: gen.apply(v, w, noise_mode='const'))
  return dict(gen=gen, enc=enc, ev=ev, gv=gv, w_avg=w_avg, x=x, m=m, target=target,
              encode=encode, generate=generate)


def pool(img):
  """32 → 16 px: the mean of each 2x2 block."""
  b, r = img.shape[0], img.shape[1]
  return img.reshape(b, SIZE, r // SIZE, SIZE, r // SIZE, 3).mean(axis=(2, 4))


def reference(wd, xs):
  """ReStyle's loop written out: latents and generator images of every iteration."""
  ev, gv, encode, generate = wd['ev'], wd['gv'], wd['encode'], wd['generate']
  w = jnp.tile(wd['w_avg'][None], (B, 1, 1))
  y = jnp.tile(pool(generate(gv, wd['w_avg'][None])), (B, 1, 1, 1))
  ws, imgs = [], []
  for t in range(T):
    w = w + encode(ev, jnp.concatenate([xs[t], y], axis=-1))
    img = generate(gv, w)
    y = pool(img)
    ws.append(np.asarray(w))
    imgs.append(np.asarray(img))
  return np.stack(ws), np.stack(imgs)


@pytest.fixture(scope='module')
def want(world):
  return reference(world, [world['x']] * T)


def run_refine(wd, x):
  return jax.jit(inference.refine, static_argnums=(0, 1, 6, 7))(
      wd['enc'], wd['gen'], wd['ev'], wd['gv'], wd['w_avg'], x, T, SIZE)


def test_refine_matches_unrolled_reference(world, want):
  out = run_refine(world, world['x'])
  ws, imgs = want
  assert out.iterations.shape == (T, B, RES, RES, 3)
  np.testing.assert_allclose(np.asarray(out.iteration_latents), ws, atol=TOL)
  np.testing.assert_allclose(np.asarray(out.iterations), imgs, atol=TOL)
  np.testing.assert_array_equal(np.asarray(out.images), np.asarray(out.iterations[-1]))
  np.testing.assert_array_equal(np.asarray(out.latents), np.asarray(out.iteration_latents[-1]))
  # The iterations differ (the loop feeds ŷ back), so the comparison means something.
  assert float(np.abs(imgs[1] - imgs[0]).max()) > 1e-2


def test_refine_with_one_input_per_iteration(world):
  xs = [world['x'] * s for s in (0.2, -0.5, 1.0)]
  ws, imgs = reference(world, xs)
  out = run_refine(world, jnp.stack(xs))
  np.testing.assert_allclose(np.asarray(out.iteration_latents), ws, atol=TOL)
  np.testing.assert_allclose(np.asarray(out.iterations), imgs, atol=TOL)
  with pytest.raises(ValueError, match='2 per-iteration inputs, n_iters is 3'):
    run_refine(world, jnp.stack(xs[:2]))


@pytest.fixture
def spy(monkeypatch):
  """Counts the traces of ``inference.refine`` by whoever calls it."""
  calls = []
  real = inference.refine

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(inference, 'refine', counting)
  return calls


def training_args(wd):
  cfg = step_lib.StepConfig(n_iters=T, sigmas=SIGMAS, weights=losses.LossWeights(
      l2=1.0, lpips=0.0, id=0.0, w_norm=0.0, ind=0.0), encoder_size=SIZE, axis_name=None)
  avg = pool(wd['gen'].apply(wd['gv'], wd['w_avg'][None], noise_mode='const'))[0]
  frozen = {'generator': wd['gv'], 'latent_avg': wd['w_avg'], 'avg_image': avg}
  models = step_lib.Models(wd['enc'], wd['gen'])
  state = state_lib.create_train_state(wd['ev'], state_lib.ranger(1e-3))
  return cfg, frozen, models, state


def test_training_validation_runs_refine(world, want, spy):
  cfg, frozen, models, state = training_args(world)
  coll = evaluation.make_collection(evaluation.metric_names(cfg, models, False))
  batch = {'image': world['x'], 'mask': world['m'], 'target': world['target'],
           'valid': jnp.ones((B,))}
  got = jax.jit(lambda s, f, b: evaluation.eval_step(s, f, b, models=models, cfg=cfg,
                                                     collection=coll))(
                                                         state, frozen, batch).compute()
  assert spy, 'eval_step did not run inference.refine'
  m, tgt = np.asarray(world['m']), np.asarray(world['target'])
  for t in range(T):
    ref = np.mean((m * pool(jnp.asarray(want[1][t])) - m * tgt) ** 2)
    assert abs(float(got[f'mse_interest_it{t + 1}']) - ref) <= TOL * max(1.0, ref), t
  # The grids' filtered inputs go through the same loop, one x̃ₜ per iteration.
  spy.clear()
  panels = jax.jit(lambda s, f, b: evaluation.visualize(
      s, f, b, models=models, cfg=cfg, apply_filter=True))(state, frozen, batch)
  assert spy, 'visualize did not run inference.refine'
  from interestyle_jax import filter as unf
  xs = [unf.uninterest_filter(world['x'], world['m'], s, cfg.radius) for s in SIGMAS]
  ws, imgs = reference(world, xs)
  np.testing.assert_allclose(np.asarray(panels['y_hat']),
                             np.clip((np.asarray(pool(jnp.asarray(imgs.reshape(
                                 (-1, RES, RES, 3))))).reshape(T, B, SIZE, SIZE, 3) + 1) / 2,
                                     0, 1), atol=TOL)


def test_inverter_and_evaluate_run_refine(world, want, spy):
  inv = inference.Inverter(world['enc'], world['ev'], world['gen'], world['gv'],
                           world['w_avg'], encoder_size=SIZE, n_iters=T)
  out = inv.invert(world['x'])
  assert spy, 'the Inverter did not run inference.refine'
  np.testing.assert_allclose(np.asarray(out.iterations), want[1], atol=TOL)
  np.testing.assert_allclose(np.asarray(out.iteration_latents), want[0], atol=TOL)

  spy.clear()
  fn = evaluate.make_eval_fn(inv, T, evaluate.make_mesh())
  variables = {'encoder': inv.encoder_variables, 'generator': inv.generator_variables,
               'latent_avg': inv.latent_avg, 'avg_image': inv._avg_image}
  res = fn(variables, {'image': world['x'], 'mask': world['m'], 'target': world['target']})
  assert spy, 'evaluate did not run inference.refine'
  m, tgt = np.asarray(world['m']), np.asarray(world['target'])
  for t in range(T):
    ref = np.mean((m * pool(jnp.asarray(want[1][t])) - m * tgt) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(res['mse_interest'][t]), ref, atol=TOL)

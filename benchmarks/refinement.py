"""Does the refinement refine? Diagnostics of a trained synthetic-world run.

    python benchmarks/refinement.py runs/synthetic [--iters 5]

On the run's held-out set (and each held-out family, from WORKDIR/config.json)
it prints the interest-region MSE after each iteration t = 1..``--iters``
(beyond the trained T too) of ``inference.refine``, the loop validation and
inversion run, and of the same loop with one thing changed:

* ``yhat=avg``: ŷ replaced by the average image at every iteration (does Δ
  depend on ŷ at all?);
* ``bn=batch``: BatchNorm batch statistics of the batch of 8, as in training,
  instead of the running ones;
* ``noise=random``: random generator noise, as in training, instead of const;
* ``unf``: the training inputs x̃ₜ (UnF with the config's σ; σ = 0 past T);
* ``clean``: the clean target as input (no uninterest clutter at all).

Then, for the plain loop on the held-out set: the rms of Δₜ, the W+ latent
error, and a line search along each Δₜ (MSE of pool(G(wₜ₋₁ + α Δₜ)) for
α in 0..1.5): a Δₜ whose best α is near 0 points nowhere, one whose best α is
below 1 overshoots.
"""

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections
import numpy as np

from interestyle_jax import filter as unf
from interestyle_jax import inference, losses, synthetic
from interestyle_jax.ops.pooling import adaptive_avg_pool2d
from interestyle_jax.training import setup as setup_lib

VARIANTS = ('plain', 'yhat=avg', 'bn=batch', 'noise=random', 'unf', 'clean')
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
CHUNK = 8  # the training batch: batch statistics over 8 images, as in training


def variant_loop(inv, x, m, key, n_iters, sigmas, radius, variant):
  """The refinement with one thing changed; returns ŷₜ [T, B, S, S, 3] and Δₜ."""
  enc, gen, size = inv.encoder, inv.generator, inv.encoder_size
  avg = inference.average_image(gen, inv.generator_variables, inv.latent_avg, size)
  b = x.shape[0]
  w = jnp.broadcast_to(inv.latent_avg[None], (b,) + inv.latent_avg.shape)
  y = jnp.broadcast_to(avg, (b,) + avg.shape[1:])
  ys, deltas = [], []
  for t, k in enumerate(jax.random.split(key, n_iters)):
    x_t = x
    if variant == 'unf':
      x_t = unf.uninterest_filter(x, m, sigmas[t] if t < len(sigmas) else 0.0, radius)
    inp = jnp.concatenate([x_t, jnp.broadcast_to(avg, y.shape) if variant == 'yhat=avg' else y],
                          axis=-1)
    if variant == 'bn=batch':
      delta, _ = enc.apply(inv.encoder_variables, inp, train=True, mutable=['batch_stats'])
    else:
      delta = enc.apply(inv.encoder_variables, inp, train=False)
    w = w + delta
    noise = 'random' if variant == 'noise=random' else 'const'
    img = gen.apply(inv.generator_variables, w, noise_mode=noise,
                    rngs={'noise': k} if noise == 'random' else None)
    y = adaptive_avg_pool2d(img, size)
    ys.append(y)
    deltas.append(delta)
  return jnp.stack(ys), jnp.stack(deltas)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdir', help='a train.py workdir of the synthetic world')
  p.add_argument('--iters', type=int, default=5, help='iterations to run (beyond T too)')
  args = p.parse_args()
  with open(os.path.join(args.workdir, 'config.json')) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  inv = inference.load_inverter(args.workdir)
  world = synthetic.build_world(cfg.synthetic)
  sigmas = setup_lib.step_config(cfg, axis_name=None).sigmas
  radius = unf.kernel_radius(max(sigmas))
  loop = jax.jit(functools.partial(variant_loop, inv, n_iters=args.iters, sigmas=sigmas,
                                   radius=radius), static_argnames='variant')
  sets = {'held-out': None, **{f: (f,) for f in cfg.synthetic.test_families}}
  print(f'interest-region MSE after iterations 1..{args.iters} (trained T = '
        f'{cfg.model.n_iters})')
  for name, families in sets.items():
    d = synthetic.heldout_set(world, cfg.synthetic.num_heldout, cfg.synthetic.heldout_seed,
                              chunk=cfg.batch_size, families=families)
    x, m, tgt = (jnp.asarray(d[k]) for k in ('image', 'mask', 'target'))
    for variant in VARIANTS:
      src = tgt if variant == 'clean' else x
      ys = jnp.concatenate([loop(src[i:i + CHUNK], m[i:i + CHUNK], jax.random.key(i),
                                 variant='plain' if variant == 'clean' else variant)[0]
                            for i in range(0, len(x), CHUNK)], axis=1)
      mse = [float(jnp.mean(losses.interest_l2(y, tgt, m))) for y in ys]
      print(f'{name:>9} {variant:>13}: ' + ' '.join(f'{v:.4f}' for v in mse), flush=True)

  d = synthetic.heldout_set(world, cfg.synthetic.num_heldout, cfg.synthetic.heldout_seed,
                            chunk=cfg.batch_size)
  x, m, tgt, w_true = (jnp.asarray(d[k]) for k in ('image', 'mask', 'target', 'latent'))
  _, deltas = loop(x, m, jax.random.key(0), variant='plain')
  render = jax.jit(lambda w: adaptive_avg_pool2d(
      inv.generator.apply(inv.generator_variables, w, noise_mode='const'), inv.encoder_size))
  w = jnp.broadcast_to(inv.latent_avg[None], w_true.shape)
  print('\nheld-out set, plain loop: Δₜ and a line search along it')
  for t, delta in enumerate(deltas):
    line = [float(jnp.mean(losses.interest_l2(render(w + a * delta), tgt, m))) for a in ALPHAS]
    w = w + delta
    print(f't={t + 1}: rms Δ {float(jnp.sqrt(jnp.mean(delta ** 2))):.3f}, latent mse '
          f'{float(jnp.mean((w - w_true) ** 2)):.2f}; MSE at α = '
          + ' '.join(f'{a:g}:{v:.4f}' for a, v in zip(ALPHAS, line))
          + f' (best α {ALPHAS[int(np.argmin(line))]:g})', flush=True)


if __name__ == '__main__':
  main()

"""Encoder and full-inversion throughput (random weights).

Prints compile time and images/s of (a) the ReStyle BackboneEncoder forward
(IR-SE50 by default, eval-mode BatchNorm) at the encoder size and (b) one full
ReStyle inversion (T iterations of encoder + generator + pooling, as
``Inverter.invert`` runs it; the fixed start image pool(G(w_avg)) is cached
there and excluded here) on whatever backend JAX sees, e.g.

    python benchmarks/encoder.py --batch_sizes 1,8
    python benchmarks/encoder.py --batch_sizes 1 --resolution 256   # quick CPU run
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp

from common import bench, parse_ints  # benchmarks/ is on sys.path when run as a script
from interestyle_jax.inference import average_image, refine
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.stylegan2 import Generator, n_styles_for




def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch_sizes', default='1,4', help='comma-separated batch sizes')
  p.add_argument('--size', type=int, default=256, help='encoder input size')
  p.add_argument('--resolution', type=int, default=1024, help='generator resolution')
  p.add_argument('--n_iters', type=int, default=5, help='ReStyle iterations T')
  p.add_argument('--backbone', default='ir_se', choices=['ir_se', 'resnet34'])
  p.add_argument('--num_layers', type=int, default=50, help='IR-SE depth')
  p.add_argument('--modes', default='encoder,invert', help='encoder and/or invert')
  p.add_argument('--iters', type=int, default=3, help='timed calls')
  p.add_argument('--warmup', type=int, default=1, help='untimed calls after compiling')
  args = p.parse_args()
  print(f'backend={jax.default_backend()} devices={jax.devices()}')

  n_styles = n_styles_for(args.resolution)
  enc = BackboneEncoder(n_styles=n_styles, backbone=args.backbone,
                        num_layers=args.num_layers)
  t0 = time.perf_counter()
  enc_vars = jax.jit(enc.init)(jax.random.PRNGKey(0),
                               jnp.zeros((1, args.size, args.size, 6)))
  jax.block_until_ready(enc_vars)
  print(f'encoder {args.backbone}{args.num_layers if args.backbone == "ir_se" else ""} '
        f'n_styles={n_styles}: init {time.perf_counter() - t0:.1f}s')
  modes = args.modes.split(',')
  gen = gen_vars = None
  if 'invert' in modes:
    gen = Generator(args.resolution)
    t0 = time.perf_counter()
    gen_vars = jax.jit(gen.init)(jax.random.PRNGKey(1),
                                 jnp.zeros((1, n_styles, gen.style_dim)))
    jax.block_until_ready(gen_vars)
    print(f'generator {args.resolution}px: init {time.perf_counter() - t0:.1f}s')
  latent_avg = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (n_styles, 512))
  if gen is not None:
    avg_image = jax.jit(functools.partial(average_image, gen), static_argnums=2)(
        gen_vars, latent_avg, args.size)

  print(f'{"mode":>8} {"batch":>5} {"compile_s":>10} {"step_ms":>10} {"img/s":>8}')
  for batch in parse_ints(args.batch_sizes):
    x = jax.random.uniform(jax.random.PRNGKey(3), (batch, args.size, args.size, 3),
                           minval=-1.0, maxval=1.0)
    for mode in modes:
      if mode == 'encoder':
        x6 = jnp.concatenate([x, x], axis=-1)
        fn, fargs = (lambda v, a: enc.apply(v, a)), (enc_vars, x6)
      elif mode == 'invert':
        # ŷ₀ = pool(G(w_avg)) is cached by Inverter, so it is not timed here.
        fn = lambda ev, gv, la, a, y0: refine(enc, gen, ev, gv, la, a, args.n_iters,
                                              args.size, avg_image=y0)
        fargs = (enc_vars, gen_vars, latent_avg, x, avg_image)
      else:
        raise SystemExit(f'unknown mode {mode!r}')
      compile_s, step = bench(fn, fargs, args.iters, args.warmup)
      print(f'{mode:>8} {batch:>5} {compile_s:>10.2f} {step * 1e3:>10.1f} '
            f'{batch / step:>8.3f}', flush=True)


if __name__ == '__main__':
  main()

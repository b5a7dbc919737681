"""Generator throughput: forward and forward+backward w.r.t. W+.

Prints compile time and images/s for each resolution, batch size and
modulated-conv implementation on whatever backend JAX sees, e.g.

    python benchmarks/generator.py --resolutions 256,1024 --batch_sizes 1,8
"""

import argparse

import jax
import jax.numpy as jnp

from common import bench, parse_ints  # benchmarks/ is on sys.path when run as a script
from interestyle_jax.models.stylegan2 import Generator




def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--resolutions', default='256,1024')
  p.add_argument('--batch_sizes', default='1,4')
  p.add_argument('--impls', default='shared,grouped')
  p.add_argument('--modes', default='fwd,fwdbwd', help='fwd and/or fwdbwd')
  p.add_argument('--iters', type=int, default=3)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--dtype', default='float32')
  args = p.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(f'backend={jax.default_backend()} devices={jax.devices()}')
  print(f'{"res":>5} {"batch":>5} {"impl":>8} {"mode":>7} {"compile_s":>10} '
        f'{"step_ms":>9} {"img/s":>9}')
  for res in parse_ints(args.resolutions):
    base = Generator(res)
    w0 = jnp.zeros((1, base.n_styles, base.style_dim), dtype)
    variables = jax.jit(base.init)(jax.random.PRNGKey(0), w0)
    for batch in parse_ints(args.batch_sizes):
      w = jax.random.normal(jax.random.PRNGKey(1), (batch, base.n_styles, base.style_dim), dtype)
      for impl in args.impls.split(','):
        gen = base.clone(modconv_impl=impl)

        def fwd(v, w, gen=gen):
          return gen.apply(v, w, noise_mode='const')

        def fwdbwd(v, w, gen=gen):
          return jax.grad(lambda x: jnp.mean(jnp.square(gen.apply(v, x, noise_mode='const'))))(w)

        for mode in args.modes.split(','):
          fn = {'fwd': fwd, 'fwdbwd': fwdbwd}[mode]
          compile_s, step = bench(fn, (variables, w), args.iters, args.warmup)
          print(f'{res:>5} {batch:>5} {impl:>8} {mode:>7} {compile_s:>10.2f} '
                f'{step * 1e3:>9.1f} {batch / step:>9.2f}', flush=True)


if __name__ == '__main__':
  main()

"""How much SeFa's first direction changes images, against random unit directions.

On the synthetic world's generator (configs/synthetic.py ``config.synthetic``):
``latents`` W+ latents sampled as the world samples them (ψ toward its
w_avg), each moved by ``strength`` times the first SeFa direction, or by the
same multiple of a random unit direction; the figure is the mean absolute
pixel change (images in [-1, 1]) over the latents. The README quotes

    python benchmarks/sefa_vs_random.py --latents 64 --strength 3 --random 16
"""

import argparse
import importlib.util
import os

import jax
import numpy as np

from interestyle_jax import sefa, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_config():
  spec = importlib.util.spec_from_file_location(
      'synthetic_config', os.path.join(REPO, 'configs', 'synthetic.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--latents', type=int, default=64)
  p.add_argument('--strength', type=float, default=3.0)
  p.add_argument('--random', type=int, default=16, help='random unit directions drawn')
  p.add_argument('--layers', default=None, help='W+ range START:STOP (default: all)')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()
  world = synthetic.build_world(synthetic_config().synthetic)
  latents = sefa.sample_latents(world.generator, world.variables, world.latent_avg[0],
                                args.latents, args.seed, world.truncation)
  first, rand = sefa.compare_with_random(world.generator, world.variables, latents,
                                         args.strength, args.random, args.seed + 1, args.layers)
  print(f'backend={jax.default_backend()} generator={world.generator.resolution}px '
        f'D={world.generator.style_dim} latents={args.latents} strength={args.strength} '
        f'layers={args.layers or "all"}')
  print(f'first SeFa direction: mean |dG| = {first:.4f}')
  print(f'random unit directions ({len(rand)}): mean |dG| = {np.mean(rand):.4f} '
        f'(min {np.min(rand):.4f}, max {np.max(rand):.4f})')
  print(f'ratio first / random mean = {first / np.mean(rand):.2f}')


if __name__ == '__main__':
  main()

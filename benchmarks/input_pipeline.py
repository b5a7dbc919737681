"""Input-pipeline throughput: images/s delivered by make_train_iterator.

Writes a folder of synthetic photos and masks (or uses --dir), prepares it
with the TFDS builder (timed separately), then times the training iterator
(decode, flip, batch, device put) on whatever devices JAX sees::

    python benchmarks/input_pipeline.py --count 512 --batch 8 --steps 200

Compare the figure with the training step rate: the pipeline is not the
bottleneck while it delivers more images/s than a step consumes.
"""

import argparse
import os
import shutil
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from interestyle_jax.data import pipeline


def write_synthetic(root: str, count: int, source_size: int, seed: int = 0) -> None:
  """Writes ``count`` photo-like PNGs (smooth colour fields + grain) and masks.

  Pure noise would make PNG decoding unrealistically slow; smooth fields with
  a little grain compress about like real face crops.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  os.makedirs(os.path.join(root, 'masks'), exist_ok=True)
  yy, xx = np.mgrid[:source_size, :source_size] / source_size
  for i in range(count):
    low = rng.integers(0, 256, (8, 8, 3), np.uint8)
    img = np.asarray(Image.fromarray(low).resize((source_size, source_size), Image.BICUBIC),
                     np.int16)
    img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.4)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255
    Image.fromarray(img).save(os.path.join(root, 'images', f'{i:05d}.png'))
    Image.fromarray(mask).save(os.path.join(root, 'masks', f'{i:05d}.png'))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--count', type=int, default=512, help='synthetic images to write')
  p.add_argument('--source_size', type=int, default=256, help='side of the written images')
  p.add_argument('--image_size', type=int, default=256, help='pipeline output side')
  p.add_argument('--batch', type=int, default=8, help='global batch size')
  p.add_argument('--steps', type=int, default=200, help='timed batches')
  p.add_argument('--warmup', type=int, default=10, help='untimed batches first')
  p.add_argument('--dir', default='', help='existing ROOT with images/ and masks/ (no synthesis)')
  p.add_argument('--device_prefetch', type=int, default=2)
  p.add_argument('--num_parallel_calls', type=int, default=-1)
  args = p.parse_args()

  work = tempfile.mkdtemp(prefix='pipeline_bench_')
  try:
    root = args.dir
    if not root:
      root = os.path.join(work, 'data')
      t0 = time.perf_counter()
      write_synthetic(root, args.count, args.source_size)
      print(f'wrote {args.count} {args.source_size}px pairs in {time.perf_counter() - t0:.1f}s')
    c = pipeline.default_data_config()
    c.train_dir = root
    c.image_size = args.image_size
    c.data_dir = os.path.join(work, 'tfds')
    c.device_prefetch = args.device_prefetch
    c.num_parallel_calls = args.num_parallel_calls
    t0 = time.perf_counter()
    pipeline.load_builder(c)
    prep = time.perf_counter() - t0
    n = len(os.listdir(os.path.join(root, 'images')))
    print(f'prepare: {prep:.1f}s ({n / prep:.0f} images/s, {os.cpu_count()} CPUs)')

    it = pipeline.make_train_iterator(c, args.batch, seed=0)
    for _ in range(args.warmup):
      jax.block_until_ready(next(it))
    t0 = time.perf_counter()
    for _ in range(args.steps):
      jax.block_until_ready(next(it))
    dt = time.perf_counter() - t0
    rate = args.steps * args.batch / dt
    print(f'backend={jax.default_backend()} local_devices={jax.local_device_count()} '
          f'batch={args.batch} size={args.image_size}')
    print(f'train iterator: {rate:.0f} images/s ({1e3 * dt / args.steps:.2f} ms/batch)')
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()

"""Raw photo to aligned faces: MTCNN detection + FFHQ alignment, ours vs facenet-pytorch.

For each photo (scikit-image's astronaut at 512 px and upscaled to 1024 px,
and astronaut next to its mirror image, 512x1024 with two faces) it times
detection and then the FFHQ alignment of every face found
(``face_align.ffhq_align``, --size px, the recipe's 4x intermediate), once
with our JAX MTCNN and once with facenet-pytorch's ``MTCNN`` followed by the
same alignment from its landmarks. The first pass compiles (ours) and is
not timed; the figures are medians over --iters passes. Prints per-photo
times and faces/s over the whole set. Needs facenet-pytorch
(``pip install --no-deps facenet-pytorch==2.6.0``) and scikit-image, e.g.

    python benchmarks/align.py --size 1024 --iters 5

facenet-pytorch gets the stand-in NMS of benchmarks/mtcnn.py when
torchvision is missing (see there).
"""

import argparse
import importlib
import importlib.util
import os
import statistics
import time

import common  # noqa: F401  (puts the checkout on sys.path)  pylint: disable=unused-import
import jax
import numpy as np
from PIL import Image

from interestyle_jax import face_align


def _bench_mtcnn_module():
  """benchmarks/mtcnn.py, loaded by path (the name ``mtcnn`` is also a pip package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mtcnn.py')
  spec = importlib.util.spec_from_file_location('bench_mtcnn', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _photos():
  import skimage.data  # pylint: disable=g-import-not-at-top
  a = skimage.data.astronaut()
  big = np.asarray(Image.fromarray(a).resize((1024, 1024), Image.BICUBIC))
  return {'astronaut 512x512': a, 'astronaut 1024x1024': big,
          'astronaut+mirror 1024x512': np.concatenate([a, a[:, ::-1]], axis=1)}


def _run(detect, photos, size, iters):
  """Per photo: (faces, median detect s, median align s); the first pass is not timed."""
  times = {name: ([], []) for name in photos}
  n_faces = {}
  for it in range(iters + 1):
    for name, photo in photos.items():
      t0 = time.perf_counter()
      landmarks = detect(photo)
      t1 = time.perf_counter()
      for lm in landmarks:
        face_align.ffhq_align(photo, lm, size)
      t2 = time.perf_counter()
      n_faces[name] = len(landmarks)
      if it:
        times[name][0].append(t1 - t0)
        times[name][1].append(t2 - t1)
  return {name: (n_faces[name], statistics.median(d), statistics.median(a))
          for name, (d, a) in times.items()}


def _report(label, results):
  total_faces = sum(n for n, _, _ in results.values())
  total_s = sum(d + a for _, d, a in results.values())
  det_s = sum(d for _, d, _ in results.values())
  for name, (n, d, a) in results.items():
    print(f'  {label:16s} {name:26s} {n} face(s)  detect {d * 1e3:7.1f} ms  '
          f'align {a * 1e3:7.1f} ms')
  print(f'  {label:16s} all {len(results)} photos: {total_faces} faces in {total_s:.2f} s -> '
        f'{total_faces / total_s:.2f} faces/s (detection alone {total_faces / det_s:.2f} faces/s)')


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', type=int, default=1024, help='aligned face side')
  p.add_argument('--iters', type=int, default=5, help='timed passes over the photos')
  p.add_argument('--torch_threads', type=int, default=1,
                 help='torch.set_num_threads for facenet-pytorch (0: torch default)')
  p.add_argument('--weights', default=None,
                 help='folder with pnet/rnet/onet (.pt or .npy); default: the installed '
                      'facenet_pytorch package')
  args = p.parse_args()
  print(f'backend={jax.default_backend()} devices={jax.devices()} cpus={os.cpu_count()} '
        f'aligned size={args.size} (intermediate {4 * args.size})')
  from interestyle_jax.convert.mtcnn import load_weights  # pylint: disable=g-import-not-at-top

  spec = importlib.util.find_spec('facenet_pytorch')
  weights = args.weights or (spec and os.path.join(spec.submodule_search_locations[0], 'data'))
  if not weights:
    raise SystemExit('give --weights DIR or `pip install --no-deps facenet-pytorch==2.6.0`')
  photos = _photos()
  ours = load_weights(weights)
  _report('ours (JAX)', _run(lambda x: ours.detect(x).landmarks, photos, args.size, args.iters))

  if spec is None:
    print('facenet-pytorch not installed: no reference timing')
    return
  if importlib.util.find_spec('torchvision') is None:
    _bench_mtcnn_module()._stub_torchvision()  # pylint: disable=protected-access
  import torch  # pylint: disable=g-import-not-at-top
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  ref = importlib.import_module('facenet_pytorch').MTCNN(keep_all=True)

  def detect_ref(x):
    _, _, lms = ref.detect(x, landmarks=True)
    return [] if lms is None else list(np.asarray(lms, np.float64))

  _report('facenet-pytorch', _run(detect_ref, photos, args.size, args.iters))
  print(f'  (torch threads {torch.get_num_threads()})')


if __name__ == '__main__':
  main()

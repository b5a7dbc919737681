"""MTCNN face detection speed: our JAX cascade vs facenet-pytorch's MTCNN.

Runs both on scikit-image's astronaut photo upscaled to --size px (one face)
and prints the first call (ours compiles there), the median of the timed
calls, and images/s; faces found are printed to show both agree. Needs
facenet-pytorch installed (``pip install --no-deps facenet-pytorch==2.6.0``)
and scikit-image, e.g.

    python benchmarks/mtcnn.py --size 1024

Without torchvision, facenet-pytorch gets a stand-in ``batched_nms`` (our
NumPy NMS, which has torchvision's semantics), so its time includes that
instead of torchvision's C++ NMS; the time spent there is printed.
"""

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types

import jax
import numpy as np
from PIL import Image


NMS_SECONDS = [0.0]  # time spent in the stand-in NMS


def _stub_torchvision():
  """``torchvision.ops.boxes.batched_nms`` stand-in (IoU > threshold dropped, best first)."""
  import torch  # pylint: disable=g-import-not-at-top
  from interestyle_jax.models.mtcnn import batched_nms as numpy_batched_nms  # same semantics

  def batched_nms(boxes, scores, idxs, threshold):
    t0 = time.perf_counter()
    keep = numpy_batched_nms(boxes.numpy(), scores.numpy(), idxs.numpy(), threshold)
    keep = torch.from_numpy(keep)
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    NMS_SECONDS[0] += time.perf_counter() - t0
    return keep

  names = ('torchvision', 'torchvision.ops', 'torchvision.ops.boxes', 'torchvision.transforms',
           'torchvision.transforms.functional')
  mods = {n: types.ModuleType(n) for n in names}
  mods['torchvision.ops.boxes'].batched_nms = batched_nms
  sys.modules.update(mods)


def _time(fn, image, iters):
  t0 = time.perf_counter()
  first_out = fn(image)
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn(image)
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), first_out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', type=int, default=1024, help='image side (astronaut upscaled)')
  p.add_argument('--iters', type=int, default=5, help='timed calls')
  p.add_argument('--torch_threads', type=int, default=0,
                 help='torch.set_num_threads for facenet-pytorch (0: torch default; 1 is '
                      'steadier on a shared machine)')
  p.add_argument('--weights', default=None,
                 help='folder with pnet/rnet/onet (.pt or .npy); default: the installed '
                      'facenet_pytorch package')
  args = p.parse_args()
  print(f'backend={jax.default_backend()} devices={jax.devices()}')

  import skimage.data  # pylint: disable=g-import-not-at-top
  from interestyle_jax.convert.mtcnn import load_weights  # pylint: disable=g-import-not-at-top
  image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize(
      (args.size, args.size), Image.BICUBIC))

  spec = importlib.util.find_spec('facenet_pytorch')
  weights = args.weights or (spec and os.path.join(spec.submodule_search_locations[0], 'data'))
  if not weights:
    sys.exit('give --weights DIR or `pip install --no-deps facenet-pytorch==2.6.0`')
  ours = load_weights(weights)
  first, median, faces = _time(ours.detect, image, args.iters)
  print(f'ours (JAX)       first {first:6.2f} s  then {median * 1e3:7.1f} ms  '
        f'{1 / median:6.2f} images/s  {len(faces.boxes) / median:6.2f} faces/s  '
        f'boxes {np.round(faces.boxes.astype(float), 1).tolist()}')

  if spec is None:
    print('facenet-pytorch not installed: no reference timing')
    return
  if importlib.util.find_spec('torchvision') is None:
    _stub_torchvision()
  import torch  # pylint: disable=g-import-not-at-top
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  facenet = importlib.import_module('facenet_pytorch')
  ref = facenet.MTCNN(keep_all=True)
  first, median, out = _time(ref.detect, image, args.iters)
  nms_share = NMS_SECONDS[0] / (args.iters + 1)
  boxes = [] if out[0] is None else np.round(np.asarray(out[0], float), 1).tolist()
  print(f'facenet-pytorch  first {first:6.2f} s  then {median * 1e3:7.1f} ms  '
        f'{1 / median:6.2f} images/s  {len(boxes) / median:6.2f} faces/s  boxes {boxes}  '
        f'(torch threads {torch.get_num_threads()}; stand-in NMS {nms_share * 1e3:.1f} ms a call)')


if __name__ == '__main__':
  main()

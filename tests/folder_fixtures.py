"""Small generated image/mask folders for the data tests.

Every example's content encodes who it is and where its mask is, so the tests
can check pairing, sharding and flip alignment from the pipeline's output:

* green channel = the example's index (constant, so flips and resizes keep it);
* red channel = the mask (255 where the mask is 1), so image and mask agree
  pixel for pixel exactly when they were transformed together;
* the mask covers the leftmost ``1 + index % (size - 2)`` columns plus the
  top row, so it is never symmetric and a mirror image is recognisable.
"""

import os
from typing import Iterable, Optional

import numpy as np
from PIL import Image


def mask_for(index: int, size: int) -> np.ndarray:
  """uint8 [size, size] mask of example ``index`` (0/255)."""
  m = np.zeros((size, size), np.uint8)
  m[:, :1 + index % (size - 2)] = 255
  m[0, :] = 255
  return m


def image_for(index: int, size: int) -> np.ndarray:
  """uint8 [size, size, 3] image whose red channel is the mask and green the index."""
  img = np.zeros((size, size, 3), np.uint8)
  img[..., 0] = mask_for(index, size)
  img[..., 1] = index % 256
  img[..., 2] = (np.arange(size)[None, :] * 7 % 256).astype(np.uint8)  # a horizontal ramp
  return img


def write_folder(root: str, indices: Iterable[int], size: int = 16, ext: str = 'png',
                 stem_fmt: str = '{:05d}') -> str:
  """Writes ROOT/images/<stem>.<ext> and ROOT/masks/<stem>.png for ``indices``.

  Returns:
    ``root``.
  """
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  os.makedirs(os.path.join(root, 'masks'), exist_ok=True)
  for i in indices:
    stem = stem_fmt.format(i)
    Image.fromarray(image_for(i, size)).save(os.path.join(root, 'images', f'{stem}.{ext}'))
    Image.fromarray(mask_for(i, size)).save(os.path.join(root, 'masks', f'{stem}.png'))
  return root


def truncate(path: str, keep: float = 0.5) -> None:
  """Cuts a file to ``keep`` of its bytes (a truncated download)."""
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:int(len(data) * keep)])


def data_config(train_dir: str, test_dir: str = '', data_dir: Optional[str] = None,
                image_size: int = 16, **overrides):
  """A pipeline data config for a generated folder."""
  from interestyle_jax.data.pipeline import default_data_config  # pylint: disable=g-import-not-at-top
  c = default_data_config()
  c.train_dir = train_dir
  c.test_dir = test_dir
  c.image_size = image_size
  c.data_dir = data_dir or os.path.join(os.path.dirname(train_dir), 'tfds')
  c.shuffle_buffer = 64
  c.prepare_workers = 1  # in-process: spawning workers costs more than 30 tiny files
  for k, v in overrides.items():
    c[k] = v
  return c


def index_of(image_batch: np.ndarray) -> np.ndarray:
  """Recovers example indices from pipeline images in [-1, 1] (green channel)."""
  g = (np.asarray(image_batch)[..., 1] + 1.0) * 127.5
  return np.round(g.reshape(g.shape[:-2] + (-1,)).mean(-1)).astype(int)

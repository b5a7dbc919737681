"""Reading a paired image/mask folder: listing, pairing, decoding, resizing.

A dataset root looks like::

    ROOT/images/**/<stem>.{png,jpg,jpeg,webp}
    ROOT/masks/**/<stem>.png

Images and masks are matched by file stem (sub-folders are allowed, e.g. the
``00000/``…``69000/`` folders of the FFHQ release, but a stem may occur only
once per side). Everything here is NumPy + Pillow: no TensorFlow, so the TFDS
builder can run it in worker threads and the tests can call it directly.
"""

import hashlib
import io
import os
import posixpath
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from interestyle_jax.data.tf_setup import import_tf

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.webp')
MASK_EXTS = ('.png',)
IMAGES_SUBDIR = 'images'
MASKS_SUBDIR = 'masks'
# How many stems an error or warning lists before saying "and N more".
MAX_LISTED = 8
# Relative tolerance on width/height ratios of an image and its mask: above it
# the two cannot cover the same field of view, so resizing would misalign them.
ASPECT_TOLERANCE = 0.01


class DataValidationError(ValueError):
  """A dataset folder is unusable as given; the message names the fix."""


class Pair(NamedTuple):
  """One training example on disk."""
  stem: str
  image_path: str
  mask_path: str


class Example(NamedTuple):
  """One decoded example, ready to be stored.

  ``problem`` is None for a usable example; otherwise a reason string and the
  arrays are None.
  """
  stem: str
  image: Optional[np.ndarray]  # uint8 [size, size, 3]
  mask: Optional[np.ndarray]  # uint8 [size, size, 1], 0..255 standing for [0, 1]
  problem: Optional[str] = None
  mask_empty: bool = False
  mask_rescaled: bool = False  # the mask file used 0/1 values instead of 0/255
  non_square: bool = False


def list_examples(items: Sequence[str], limit: int = MAX_LISTED) -> str:
  """Formats the first few items of a list for an error message.

  Args:
    items: strings to show.
    limit: how many to show before summarising the rest.

  Returns:
    ``'a, b, c'`` or ``'a, b, c … and 12 more'``.
  """
  items = list(items)
  shown = ', '.join(items[:limit])
  if len(items) > limit:
    shown += f' … and {len(items) - limit} more'
  return shown


def _is_remote(path: str) -> bool:
  return '://' in path


def _join(a: str, b: str) -> str:
  return posixpath.join(a, b) if _is_remote(a) else os.path.join(a, b)


def _walk(root: str):
  if _is_remote(root):
    tf = import_tf()  # gs:// and other remote paths go through TF's gfile
    return tf.io.gfile.walk(root)
  return os.walk(root, followlinks=True)  # data trees are often assembled from symlinks


def _isdir(path: str) -> bool:
  if _is_remote(path):
    tf = import_tf()  # gs:// and other remote paths go through TF's gfile
    return tf.io.gfile.isdir(path)
  return os.path.isdir(path)


def list_files(folder: str, exts: Sequence[str]) -> Dict[str, str]:
  """Lists the files under ``folder`` (recursively) with one of ``exts``.

  Args:
    folder: directory to search (local path or a URL TensorFlow's gfile reads).
    exts: lower-case extensions with the dot, matched case-insensitively.

  Returns:
    Mapping stem → path, for files whose extension is in ``exts``. Hidden
    files (``.name``) are ignored.

  Raises:
    DataValidationError: the same stem occurs twice (two sub-folders or two
      extensions), which would make the pairing ambiguous.
  """
  found: Dict[str, str] = {}
  dups: Dict[str, List[str]] = {}
  for dirpath, dirnames, filenames in _walk(folder):  # follows symlinked sub-folders
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      stem, ext = os.path.splitext(name)
      if name.startswith('.') or ext.lower() not in exts:
        continue
      path = _join(dirpath, name)
      if stem in found:
        dups.setdefault(stem, [found[stem]]).append(path)
      else:
        found[stem] = path
  if dups:
    lines = [f'  {s}: {", ".join(p)}' for s, p in sorted(dups.items())[:MAX_LISTED]]
    raise DataValidationError(
        f'{folder}: {len(dups)} file stem(s) occur more than once, so images and '
        'masks cannot be paired by name:\n' + '\n'.join(lines) +
        '\nRename or remove the duplicates so each stem is unique in the folder.')
  return found


def pair_folder(root: str, masks: bool = True) -> List[Pair]:
  """Pairs ``root/images`` with ``root/masks`` by file stem.

  Args:
    root: dataset root holding ``images/`` and ``masks/``.
    masks: False reads ``images/`` alone (no ``masks/`` needed): every pair's
      ``mask_path`` is '' and its mask is all interest.

  Returns:
    The pairs, sorted by stem.

  Raises:
    DataValidationError: a sub-folder is missing or empty, or some images have
      no mask (or masks no image); the message lists the first stems missing
      on each side.
  """
  img_dir, mask_dir = _join(root, IMAGES_SUBDIR), _join(root, MASKS_SUBDIR)
  dirs = [(img_dir, 'images (.png/.jpg/.jpeg/.webp)')]
  if masks:
    dirs.append((mask_dir, 'masks (.png, same stem as the image)'))
  for d, what in dirs:
    if not _isdir(d):
      hint = ''
      if os.path.basename(root.rstrip('/')) in (IMAGES_SUBDIR, MASKS_SUBDIR):
        hint = f' (did you mean the parent folder {os.path.dirname(root.rstrip("/"))}?)'
      raise DataValidationError(
          f'{d} does not exist{hint}. A dataset root must contain images/ and masks/; '
          f'put the {what} there (masks are made with '
          '`python -m interestyle_jax.data.make_masks`).')
  images = list_files(img_dir, IMAGE_EXTS)
  if not images:
    raise DataValidationError(f'{img_dir} holds no .png/.jpg/.jpeg/.webp file.')
  if not masks:
    return [Pair(s, images[s], '') for s in sorted(images)]
  masks = list_files(mask_dir, MASK_EXTS)
  no_mask = sorted(set(images) - set(masks))
  no_image = sorted(set(masks) - set(images))
  if no_mask or no_image:
    msg = [f'{root}: {len(images)} images and {len(masks)} masks do not pair up by file stem.']
    if no_mask:
      msg.append(f'  {len(no_mask)} image(s) in {img_dir} have no mask in {mask_dir}: '
                 f'{list_examples(no_mask)}')
    if no_image:
      msg.append(f'  {len(no_image)} mask(s) in {mask_dir} have no image in {img_dir}: '
                 f'{list_examples(no_image)}')
    msg.append('Make the masks for the missing images (python -m '
               'interestyle_jax.data.make_masks), or move the unpaired files out of '
               'the folder. Masks must be .png files named like their image '
               '(00042.jpg ↔ 00042.png).')
    raise DataValidationError('\n'.join(msg))
  return [Pair(s, images[s], masks[s]) for s in sorted(images)]


def holdout_bucket(stem: str) -> float:
  """A stable pseudo-random number in [0, 1) for a stem.

  Used to split one folder into train/test: it depends only on the name, so
  adding or removing files never moves another file between splits.

  Args:
    stem: file stem.

  Returns:
    A float in [0, 1).
  """
  digest = hashlib.sha1(stem.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_pairs(pairs: Sequence[Pair], test_fraction: float) -> Tuple[List[Pair], List[Pair]]:
  """Splits one folder's pairs into (train, test) by :func:`holdout_bucket`.

  Args:
    pairs: all pairs of the folder.
    test_fraction: share in [0, 1) that goes to the test split.

  Returns:
    (train pairs, test pairs), each sorted by stem.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise DataValidationError(f'test_fraction must be in [0, 1), got {test_fraction}')
  test = [p for p in pairs if holdout_bucket(p.stem) < test_fraction]
  train = [p for p in pairs if holdout_bucket(p.stem) >= test_fraction]
  return train, test


def fingerprint(*parts) -> str:
  """A short hash of the given values (paths, stems, sizes) for cache naming.

  Args:
    *parts: values whose ``repr`` identifies the prepared data.

  Returns:
    12 hex digits.
  """
  h = hashlib.sha1()
  for p in parts:
    h.update(repr(p).encode('utf-8'))
    h.update(b'\0')
  return h.hexdigest()[:12]


def _read_bytes(path: str) -> bytes:
  if _is_remote(path):
    tf = import_tf()  # gs:// and other remote paths go through TF's gfile
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read()
  with open(path, 'rb') as f:
    return f.read()


def _open(data: bytes) -> Image.Image:
  img = Image.open(io.BytesIO(data))
  # load() decodes every pixel now, so a truncated file fails here and not
  # half-way through a later conversion.
  img.load()
  return img


def _wide_to_uint8(arr: np.ndarray) -> np.ndarray:
  """16/32-bit integer grey levels (16-bit PNG) → 8 bit."""
  arr = arr.astype(np.float64)
  top = 65535.0 if arr.max() > 255 else 255.0
  return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> np.ndarray:
  """Converts any Pillow image to uint8 RGB ``[H, W, 3]``.

  Grayscale is repeated over the channels; alpha is dropped (as PIL's
  ``convert('RGB')`` does, and as the PyTorch reference loaders do).

  Args:
    img: a loaded Pillow image.

  Returns:
    uint8 array ``[H, W, 3]``.
  """
  if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N'):
    g = _wide_to_uint8(np.asarray(img))
    return np.repeat(g[..., None], 3, axis=-1)
  return np.asarray(img.convert('RGB'), dtype=np.uint8)


def to_gray(img: Image.Image) -> Tuple[np.ndarray, bool]:
  """Converts a mask image to uint8 ``[H, W]`` with 255 standing for 1.

  Args:
    img: a loaded Pillow image (L, 1, P, RGB(A), LA, 16-bit or float).

  Returns:
    (array, rescaled) where ``rescaled`` says the file stored 0/1 values
    (a common mistake) and was multiplied by 255.
  """
  if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N'):
    g = _wide_to_uint8(np.asarray(img))
  elif img.mode == 'F':
    f = np.asarray(img, dtype=np.float64)
    f = f * 255.0 if f.max() <= 1.0 else f
    g = np.clip(np.round(f), 0, 255).astype(np.uint8)
  else:
    g = np.asarray(img.convert('L'), dtype=np.uint8)
  if g.max() == 1:
    return g * np.uint8(255), True
  return g, False


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 RGB to ``size``x``size`` with antialiased bilinear filtering.

  Pillow widens the bilinear kernel by the reduction factor when shrinking, so
  1024→256 averages every source pixel instead of aliasing.

  Args:
    rgb: uint8 ``[H, W, 3]``.
    size: output side.

  Returns:
    uint8 ``[size, size, 3]``.
  """
  if rgb.shape[:2] == (size, size):
    return rgb
  return np.asarray(Image.fromarray(rgb, 'RGB').resize((size, size), Image.BILINEAR))


def resize_mask(gray: np.ndarray, size: int) -> np.ndarray:
  """Resizes a uint8 mask with antialiased bilinear filtering in float.

  Filtering in float (not uint8) avoids an extra rounding step; the bilinear
  weights are non-negative and sum to one, so values stay in [0, 255].

  Args:
    gray: uint8 ``[H, W]``.
    size: output side.

  Returns:
    uint8 ``[size, size, 1]``.
  """
  if gray.shape != (size, size):
    f = Image.fromarray(gray.astype(np.float32), 'F').resize((size, size), Image.BILINEAR)
    gray = np.clip(np.round(np.asarray(f)), 0, 255).astype(np.uint8)
  return gray[..., None]


def load_example(pair: Pair, size: int) -> Example:
  """Reads, converts and resizes one image/mask pair.

  Unreadable or truncated files, and masks whose aspect ratio differs from the
  image's, give an Example with ``problem`` set instead of raising, so one bad
  file among 70,000 is counted rather than fatal.

  Args:
    pair: the files (``mask_path`` '': an all-interest mask).
    size: output side in pixels.

  Returns:
    The decoded Example.
  """
  arrays = []
  files = [(pair.image_path, 'image')] + ([(pair.mask_path, 'mask')] if pair.mask_path else [])
  for path, kind in files:
    try:
      arrays.append(_open(_read_bytes(path)))
    except Exception as e:  # pylint: disable=broad-except
      # Pillow raises OSError, SyntaxError, ValueError, struct.error… for
      # damaged files; all mean the same thing here.
      return Example(pair.stem, None, None,
                     problem=f'unreadable {kind} {path} ({type(e).__name__}: {e})')
  img = arrays[0]
  if not pair.mask_path:  # a folder without masks: everything is interest
    return Example(pair.stem, resize_image(to_rgb(img), size), np.full((size, size, 1), 255,
                                                                       np.uint8),
                   non_square=img.size[0] != img.size[1])
  msk = arrays[1]
  (iw, ih), (mw, mh) = img.size, msk.size
  if abs(iw / ih - mw / mh) > ASPECT_TOLERANCE * (iw / ih):
    return Example(pair.stem, None, None,
                   problem=f'mask {pair.mask_path} is {mw}x{mh} but image '
                   f'{pair.image_path} is {iw}x{ih}: different shapes cannot be aligned')
  rgb = resize_image(to_rgb(img), size)
  gray, rescaled = to_gray(msk)
  mask = resize_mask(gray, size)
  return Example(pair.stem, rgb, mask, mask_empty=not mask.any(),
                 mask_rescaled=rescaled, non_square=iw != ih)


def encode_png(arr: np.ndarray) -> bytes:
  """PNG-encodes uint8 ``[H, W, 3]`` or ``[H, W, 1]``.

  Args:
    arr: uint8 image.

  Returns:
    PNG bytes (compress_level 1: prepare time matters more than disk here).
  """
  if arr.shape[-1] == 1:
    arr = arr[..., 0]
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


def load_and_encode(pair: Pair, size: int) -> Tuple[Example, Optional[dict]]:
  """:func:`load_example` plus PNG encoding: the unit of work when preparing.

  A top-level function so that a process pool can run it.

  Args:
    pair: the files.
    size: output side.

  Returns:
    (example with the arrays dropped, record of PNG bytes or None when the
    pair was skipped).
  """
  ex = load_example(pair, size)
  if ex.problem:
    return ex, None
  record = {'image': encode_png(ex.image), 'mask': encode_png(ex.mask), 'stem': ex.stem}
  return ex._replace(image=None, mask=None), record

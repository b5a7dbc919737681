"""Finding and decoding input photos: one home for every command that reads them.

``invert``, ``align``, ``edit`` and ``evaluate`` take photos from the user's
disk. What can go wrong there is handled here, once:

- a file that is not an image, damaged or truncated: :class:`ImageError`
  with the reason (the commands skip and list it, or stop with one line);
- something that is not a regular file (a named pipe, a socket, a device):
  skipped with that reason, never opened (opening a FIFO blocks until a
  writer appears, which would hang the command);
- a phone photo stored sideways with an EXIF orientation tag: turned upright
  (as every viewer shows it) before anything else;
- an image smaller than the encoder input (:func:`too_small`), or not square
  (squashed, with :func:`squash_warning`);
- folders searched recursively with symlinks followed once (:func:`find_inputs`).
"""

import os
import stat
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from interestyle_jax.data import folder


class ImageError(ValueError):
  """An input image cannot be used (unreadable, not a file, too small): the message says why."""


# align's name for it, kept for callers of the earlier API.
PhotoError = ImageError

NOT_A_FILE = 'not a regular file (a named pipe, socket or device): skipped, never opened'


def not_a_file(path: str) -> Optional[str]:
  """Why ``path`` must not be opened as an image, or None for a regular file.

  Args:
    path: a path that exists.

  Returns:
    The reason, or None.
  """
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  return None if stat.S_ISREG(mode) else NOT_A_FILE


def _decode(path: str) -> np.ndarray:
  """uint8 RGB ``[H, W, 3]`` of an image file, upright by its EXIF orientation."""
  reason = not_a_file(path)
  if reason:
    raise ImageError(reason)
  try:
    with Image.open(path) as img:
      img.load()  # decode now: a truncated file fails here
      # Cameras store the sensor's orientation in EXIF and leave the turn to
      # the viewer: without it a portrait photo reaches the encoder sideways.
      return folder.to_rgb(ImageOps.exif_transpose(img))
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises OSError, SyntaxError, ValueError… for damaged files.
    raise ImageError(f'unreadable image ({type(e).__name__}: {e})') from e


def read_photo(path: str) -> np.ndarray:
  """Reads a photo at its own size as uint8 RGB, upright.

  Args:
    path: image file (any format Pillow reads; grey / RGBA become RGB).

  Returns:
    uint8 ``[H, W, 3]``.

  Raises:
    ImageError: not a regular file, or it cannot be decoded.
  """
  return _decode(path)


def too_small(width: int, height: int, min_size: int) -> Optional[str]:
  """Says why an image is too small for the encoder, or None when it is not.

  Args:
    width: image width.
    height: image height.
    min_size: the encoder input side.

  Returns:
    A message naming the minimum, or None.
  """
  if min(width, height) >= min_size:
    return None
  return (f'image is {width}x{height}, smaller than the encoder input '
          f'{min_size}x{min_size}: the minimum is {min_size} px on each side')


def read_image(path: str, size: int) -> np.ndarray:
  """Reads an image file, checks its size and resizes it to ``size``x``size``.

  Args:
    path: image file (any format Pillow reads; grey / RGBA become RGB).
    size: the encoder input side (also the minimum accepted side).

  Returns:
    uint8 ``[size, size, 3]``.

  Raises:
    ImageError: not a regular file, cannot be decoded, or smaller than ``size``.
  """
  return read_image_sized(path, size)[0]


def read_image_sized(path: str, size: int) -> Tuple[np.ndarray, Tuple[int, int]]:
  """:func:`read_image` that also returns the original ``(width, height)``.

  Args:
    path: image file.
    size: the encoder input side.

  Returns:
    ``(uint8 [size, size, 3], (width, height) before resizing)``, upright by
    the EXIF orientation; a non-square original was squashed, not cropped.

  Raises:
    ImageError: not a regular file, cannot be decoded, or smaller than ``size``.
  """
  rgb = _decode(path)
  problem = too_small(rgb.shape[1], rgb.shape[0], size)
  if problem:
    raise ImageError(problem)
  return folder.resize_image(rgb, size), (rgb.shape[1], rgb.shape[0])


def squash_warning(squashed: Sequence[Tuple[str, Tuple[int, int]]], size: int) -> str:
  """One line naming the non-square images that were squashed to a square.

  Args:
    squashed: ``(path, (width, height))`` pairs.
    size: the square side they were resized to.

  Returns:
    The warning line (empty when nothing was squashed).
  """
  if not squashed:
    return ''
  return (f'warning: squashed {len(squashed)} non-square image(s) to {size}x{size}, which '
          'distorts faces (the encoder expects square, aligned face crops; crop them first): '
          + folder.list_examples([f'{p} ({w}x{h})' for p, (w, h) in squashed]))


class Found(NamedTuple):
  """What :func:`find_inputs` found.

  Attributes:
    inputs: ``(file, output stem)`` pairs, the stem being the path relative
      to the folder without extension.
    ignored: files without an image extension.
    duplicates: symlinks to files or folders already listed or searched
      (cycles included), not followed again.
    not_files: ``(path, reason)`` of entries with an image extension that are
      not regular files (named pipes, sockets, devices), never opened.
  """
  inputs: List[Tuple[str, str]]
  ignored: List[str]
  duplicates: List[str]
  not_files: Sequence[Tuple[str, str]] = ()


def find_inputs(path: str, exclude: Optional[str] = None) -> Found:
  """Lists the image files to invert.

  Symlinked folders and files are followed, but every real folder is searched
  once and every real file listed once (by ``os.path.realpath``), under its
  own name when it lies in the folder itself: a link cycle such as ``self ->
  .``, a link to a sub-folder, or a second link to a photo repeats no work.

  Args:
    path: an image file or a folder (searched recursively, hidden entries
      skipped, in sorted order).
    exclude: a folder not to search (the output folder, when it lies inside
      the input folder: earlier outputs are not inputs).

  Returns:
    A :class:`Found`.

  Raises:
    FileNotFoundError: ``path`` does not exist, or is neither a folder nor a
      regular file.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'--input {path} does not exist')
  if not os.path.isdir(path):
    reason = not_a_file(path)
    if reason:
      raise FileNotFoundError(f'--input {path} is {reason.split(":")[0]}; give an image '
                              'file or a folder')
    return Found([(path, os.path.splitext(os.path.basename(path))[0])], [], [], [])
  skip = os.path.realpath(exclude) if exclude else None
  # Pass 1, links not followed: the real folders and files of the tree claim
  # their own names, so a link seen earlier in sorted order cannot rename them.
  own_dirs: Dict[str, str] = {}
  own_files: Dict[str, str] = {}
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')
                   and os.path.realpath(os.path.join(dirpath, d)) != skip]
    own_dirs.setdefault(os.path.realpath(dirpath), dirpath)
    for name in filenames:
      file = os.path.join(dirpath, name)
      if not name.startswith('.') and not os.path.islink(file):
        own_files.setdefault(os.path.realpath(file), file)
  # Pass 2, links followed, each real folder entered once.
  inputs, ignored, duplicates, not_files, used = [], [], [], [], set()
  seen_dirs, seen_files = {os.path.realpath(path)}, set()
  for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
    keep = []
    for d in sorted(dirnames):
      full = os.path.join(dirpath, d)
      real = os.path.realpath(full)
      if d.startswith('.') or real == skip:
        continue
      if real in seen_dirs or own_dirs.get(real, full) != full:
        duplicates.append(full)  # a cycle, or a folder searched under its own name
        continue
      seen_dirs.add(real)
      keep.append(d)
    dirnames[:] = keep
    for name in sorted(filenames):
      if name.startswith('.'):
        continue
      file = os.path.join(dirpath, name)
      stem, ext = os.path.splitext(os.path.relpath(file, path))
      if ext.lower() not in folder.IMAGE_EXTS:
        ignored.append(file)
        continue
      reason = not_a_file(file)
      if reason:
        not_files.append((file, reason))
        continue
      real = os.path.realpath(file)
      if real in seen_files or own_files.get(real, file) != file:
        duplicates.append(file)
        continue
      seen_files.add(real)
      if stem in used:  # a.jpg next to a.png: keep both outputs apart
        stem = f'{stem}_{ext.lstrip(".").lower()}'
      used.add(stem)
      inputs.append((file, stem))
  return Found(inputs, ignored, duplicates, not_files)

"""Labelled image grids (NumPy + PIL, host side): training panels and edit grids.

:func:`interestyle_jax.training.evaluation.visualize` returns the panels of a
few rows on the device; :func:`columns` picks and labels the columns,
:func:`render` lays them out under a header row of labels (PIL's default
font), upscaling small tiles so a 32 px world stays readable, and
:func:`write_png` stores the result as ``WORKDIR/images/{kind}_step_{N}.png``.
:func:`label_header` is the header row alone; ``editing.image_grid`` puts it
over the edit grids (strengths, layer ranges, interpolation steps).

Columns: ``input``, ``mask``, then per iteration t the filtered input x̃ₜ
(train grids only: validation feeds x̃ₜ = x, which would repeat the input
column T times) and the output ŷₜ, and ``target`` when the data carries a clean
image (the synthetic world's held-out set).
"""

import math
import os
from typing import List, Mapping, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Labels spell x̃ₜ / ŷₜ with combining accents; PIL's default font (Aileron)
# has no combining marks or subscripts, so _draw_label draws them by hand.
TILDE, HAT = '\u0303', '\u0302'
_ACCENTS = {TILDE: '~', HAT: '^'}
MIN_TILE = 128  # Tiles smaller than this are upscaled by an integer factor.
GAP = 2  # Pixels of background between tiles.
BACKGROUND = 255


def columns(panels: Mapping[str, np.ndarray], filtered: bool) -> List[Tuple[str, np.ndarray]]:
  """The labelled columns of a grid.

  Args:
    panels: from ``evaluation.visualize``: 'input' ``[b, S, S, 3]``, 'mask'
      ``[b, S, S, 1|3]``, 'x_tilde' and 'y_hat' ``[T, b, S, S, 3]``, optional
      'target' ``[b, S, S, 3]``; values in [0, 1].
    filtered: whether the inputs x̃ₜ were filtered (train grids); when False
      x̃ₜ = x and those columns are left out.

  Returns:
    ``[(label, [b, S, S, 3] array)]`` in display order.
  """
  x = np.asarray(panels['input'])
  mask = np.asarray(panels['mask'])
  cols = [('input', x), ('mask', np.broadcast_to(mask, mask.shape[:-1] + (3,)))]
  for t, (x_t, y_t) in enumerate(zip(np.asarray(panels['x_tilde']),
                                     np.asarray(panels['y_hat'])), start=1):
    if filtered:
      cols.append((f'x{TILDE}{t}', x_t))
    cols.append((f'y{HAT}{t}', y_t))
  if 'target' in panels:
    cols.append(('target', np.asarray(panels['target'])))
  return cols


def upscale_factor(tile: int, min_tile: int = MIN_TILE) -> int:
  """Integer nearest-neighbour factor bringing ``tile`` px to at least ``min_tile``."""
  return max(1, math.ceil(min_tile / tile))


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: fixed-size bitmap font only.
    return ImageFont.load_default()


def _draw_label(draw: ImageDraw.ImageDraw, center_x: float, baseline: float, label: str,
                size: int) -> None:
  """Draws ``label`` centred on ``center_x``; 'x' + accent + digits as x̃ₜ."""
  font = _font(size)
  if len(label) > 2 and label[1] in _ACCENTS:
    base, accent, sub = label[0], _ACCENTS[label[1]], label[2:]
    small = _font(max(8, int(size * 0.7)))
    width = draw.textlength(base, font=font) + 1 + draw.textlength(sub, font=small)
    left = center_x - width / 2
    l, top, r, _ = draw.textbbox((left, baseline), base, font=font, anchor='ls')
    draw.text((left, baseline), base, fill=0, font=font, anchor='ls')
    # The accent's baseline on the letter's top puts it just above the letter.
    draw.text(((l + r) / 2, top - 1), accent, fill=0, font=font, anchor='ms')
    draw.text((r + 1, baseline + size * 0.25), sub, fill=0, font=small, anchor='ls')
  else:
    draw.text((center_x, baseline), label, fill=0, font=font, anchor='ms')


def _fitting_font_size(labels: Sequence[str], width: int, size: int) -> int:
  """The largest font size <= ``size`` (>= 8) at which every label fits ``width``."""
  draw = ImageDraw.Draw(Image.new('L', (1, 1)))
  while size > 8 and max((draw.textlength(l, font=_font(size)) for l in labels),
                         default=0) > width - 2:
    size -= 1
  return size


def label_header(labels: Sequence[str], tile: int, gap: int = GAP,
                 font_size: int = 0) -> np.ndarray:
  """A white strip with one label centred over each ``tile``-wide column.

  Args:
    labels: one per column ('' leaves a column unlabelled).
    tile: column width in pixels.
    gap: pixels between columns.
    font_size: 0 picks ``tile / 8`` (at least 12), shrunk until the longest
      label fits its column.

  Returns:
    uint8 ``[h, len(labels) * (tile + gap) - gap, 3]``.
  """
  size = _fitting_font_size(labels, tile, font_size or max(12, tile // 8))
  height = int(size * 1.9)
  width = len(labels) * (tile + gap) - gap
  image = Image.new('RGB', (width, height), (BACKGROUND,) * 3)
  draw = ImageDraw.Draw(image)
  for c, label in enumerate(labels):
    if label:
      _draw_label(draw, c * (tile + gap) + tile / 2, height * 0.7, label, size)
  return np.asarray(image)


def render(cols: Sequence[Tuple[str, np.ndarray]], min_tile: int = MIN_TILE) -> np.ndarray:
  """Lays ``cols`` out as one image under a header row of labels.

  Args:
    cols: ``[(label, [b, S, S, 3] array in [0, 1])]``, e.g. from :func:`columns`.
    min_tile: tiles are upscaled (nearest neighbour, integer factor) to at
      least this many pixels.

  Returns:
    ``[H, W, 3]`` uint8 image: ``H = header + b * (S' + GAP)``,
    ``W = len(cols) * (S' + GAP) - GAP`` with ``S'`` the upscaled tile size.
  """
  rows, size = cols[0][1].shape[0], cols[0][1].shape[1]
  k = upscale_factor(size, min_tile)
  tile = size * k
  header = label_header([label for label, _ in cols], tile)
  width = len(cols) * (tile + GAP) - GAP
  body = np.full((rows * (tile + GAP) - GAP, width, 3), BACKGROUND, np.uint8)
  for c, (_, images) in enumerate(cols):
    pixels = np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    pixels = pixels.repeat(k, axis=1).repeat(k, axis=2)
    x0 = c * (tile + GAP)
    for r in range(rows):
      y0 = r * (tile + GAP)
      body[y0:y0 + tile, x0:x0 + tile] = pixels[r]
  return np.concatenate([header, body], axis=0)


def write_png(workdir: str, kind: str, step: int, image: np.ndarray) -> str:
  """Writes ``WORKDIR/images/{kind}_step_{step}.png`` atomically.

  Args:
    workdir: the training workdir.
    kind: 'train' or 'eval'.
    step: training step.
    image: ``[H, W, 3]`` uint8 from :func:`render`.

  Returns:
    The path written.
  """
  folder = os.path.join(workdir, 'images')
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f'{kind}_step_{step}.png')
  tmp = path + '.tmp'
  Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format='PNG')
  os.replace(tmp, path)  # an image viewer never reads a half-written file
  return path

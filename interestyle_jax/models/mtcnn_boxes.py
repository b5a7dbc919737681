"""Host-side MTCNN box arithmetic in NumPy: area resizing, NMS, regression, crops.

Everything here mirrors facenet-pytorch 2.6.0's ``detect_face`` in float32 and
in the same operation order, so that the integer truncations of box
coordinates (which choose the crop pixels) agree with it; the tests check the
resizing bit for bit against ``torch.nn.functional.interpolate(mode='area')``.
"""

from typing import List, Tuple

import numpy as np

# P-Net sees 12x12 windows with an output stride of 2.
CELL, STRIDE = 12, 2


def integral_image(images: np.ndarray) -> np.ndarray:
  """Summed-area tables ``[B, H + 1, W + 1, C]``, exact: integers for 8-bit pixels, else float64."""
  b, h, w, c = images.shape
  if images.dtype == np.uint8:
    # int32 while the whole-image sum fits (up to ~8 Mpixel photos), else int64.
    acc = np.int32 if h * w * 255 < 2 ** 31 else np.int64
  else:
    acc = np.float64
  table = np.zeros((b, h + 1, w + 1, c), acc)
  # Running sums down the rows, one contiguous row at a time (NumPy's cumsum
  # along this middle axis is about 10x slower), then along each row.
  for i in range(h):
    np.add(table[:, i, 1:], images[:, i], out=table[:, i + 1, 1:])
  table[:, :, 1:] = np.cumsum(table[:, :, 1:], axis=2)
  return table


def _windows(start: np.ndarray, length: np.ndarray, out: int) -> Tuple[np.ndarray, np.ndarray]:
  """PyTorch adaptive-pooling windows ``[floor(i L / o), ceil((i + 1) L / o))`` per row."""
  i = np.arange(out)
  lo = (i[None] * length[:, None]) // out
  hi = -((-(i[None] + 1) * length[:, None]) // out)
  return start[:, None] + lo, start[:, None] + hi


def area_resize(table: np.ndarray, image_index: np.ndarray, boxes: np.ndarray,
                out_h: int, out_w: int) -> np.ndarray:
  """Crops and resizes like ``torch.nn.functional.interpolate(mode='area')``.

  Args:
    table: summed-area tables from :func:`integral_image`.
    image_index: ``[N]`` image of each crop.
    boxes: ``[N, 4]`` int crops ``(x0, y0, x1, y1)``, end exclusive, inside the image.
    out_h: output height.
    out_w: output width.

  Returns:
    ``[N, out_h, out_w, C]`` float32 window means.
  """
  r0, r1 = _windows(boxes[:, 1], boxes[:, 3] - boxes[:, 1], out_h)
  c0, c1 = _windows(boxes[:, 0], boxes[:, 2] - boxes[:, 0], out_w)
  b = image_index[:, None, None]

  def at(r, c):
    return table[b, r[:, :, None], c[:, None, :]]

  sums = at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)
  # PyTorch sums in float32 (exact for these integer sums) and divides by
  # the window height, then by its width.
  kh = (r1 - r0).astype(np.float32)[:, :, None, None]
  kw = (c1 - c0).astype(np.float32)[:, None, :, None]
  return sums.astype(np.float32) / kh / kw


def area_resize_whole(table: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """:func:`area_resize` of whole images (the pyramid): the same windows for every image.

  Separable, so it gathers rows then columns instead of four 2-D gathers.
  """
  h, w = table.shape[1] - 1, table.shape[2] - 1
  (r0, r1), (c0, c1) = (_windows(np.zeros(1, np.int64), np.array([n]), o)
                        for n, o in ((h, out_h), (w, out_w)))
  rows = np.take(table, r1[0], axis=1) - np.take(table, r0[0], axis=1)
  sums = np.take(rows, c1[0], axis=2) - np.take(rows, c0[0], axis=2)
  kh = (r1[0] - r0[0]).astype(np.float32)[:, None, None]
  kw = (c1[0] - c0[0]).astype(np.float32)[:, None]
  return sums.astype(np.float32) / kh / kw


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = 'iou') -> np.ndarray:
  """Greedy non-maximum suppression on one image.

  Args:
    boxes: ``[N, 4]`` float32 ``(x1, y1, x2, y2)``.
    scores: ``[N]``.
    threshold: boxes overlapping a kept one by more than this are dropped.
    mode: ``'iou'``: intersection over union with areas ``w * h``
      (torchvision's ``nms``, used by the first stages); ``'min'``:
      intersection over the smaller box with areas ``(w + 1) * (h + 1)``
      (facenet-pytorch's last stage).

  Returns:
    Indices of the kept boxes, best first.
  """
  if mode not in ('iou', 'min'):
    raise ValueError(f"nms mode must be 'iou' or 'min', got {mode!r}")
  one = np.float32(1 if mode == 'min' else 0)
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  area = (x2 - x1 + one) * (y2 - y1 + one)
  # Ties are ordered as the reference orders them: a stable descending sort
  # (torchvision) or NumPy's default ascending argsort read backwards (facenet).
  order = np.argsort(-scores, kind='stable') if mode == 'iou' else np.argsort(scores)[::-1]
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
    inter = w * h
    denom = np.minimum(area[i], area[rest]) if mode == 'min' else area[i] + area[rest] - inter
    order = rest[inter / denom <= threshold]
  return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, image_index: np.ndarray,
                threshold: float, mode: str = 'iou') -> np.ndarray:
  """:func:`nms` separately per image; indices best first within each image."""
  keep = [np.nonzero(image_index == b)[0] for b in np.unique(image_index)]
  keep = [sel[nms(boxes[sel], scores[sel], threshold, mode)] for sel in keep]
  return np.concatenate(keep) if keep else np.zeros((0,), np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
  """Grows each box to a square of its longer side about the same centre (``rerec``)."""
  boxes = boxes.copy()
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  side = np.maximum(w, h)
  half = np.float32(0.5)
  boxes[:, 0] = boxes[:, 0] + w * half - side * half
  boxes[:, 1] = boxes[:, 1] + h * half - side * half
  boxes[:, 2] = boxes[:, 0] + side
  boxes[:, 3] = boxes[:, 1] + side
  return boxes


def regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
  """Moves box corners by ``reg`` times the box size (``w = x2 - x1 + 1`` in the later stages)."""
  one = np.float32(1 if plus_one else 0)
  size = np.stack([boxes[:, 2] - boxes[:, 0] + one, boxes[:, 3] - boxes[:, 1] + one], 1)
  out = boxes.copy()
  out[:, :4] = boxes[:, :4] + reg * np.tile(size, 2)
  return out


def crop_boxes(boxes: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
  """Integer crops of (regressed, squared) boxes, clipped to the image.

  Truncates the coordinates toward zero; the crop is rows ``y1 - 1 .. y2 - 1``
  with ``y1 >= 1`` and ``y2 <= height`` (likewise for columns), as the
  reference cuts them.

  Returns:
    ``(crops [N, 4] int (x0, y0, x1, y1) end exclusive, ok [N] bool)``; ``ok``
    is False for a box that lies outside the image (an empty crop).
  """
  b = np.trunc(boxes[:, :4]).astype(np.int64)
  x0 = np.maximum(b[:, 0], 1) - 1
  y0 = np.maximum(b[:, 1], 1) - 1
  x1 = np.minimum(b[:, 2], width)
  y1 = np.minimum(b[:, 3], height)
  return np.stack([x0, y0, x1, y1], 1), (x1 > x0) & (y1 > y0)


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> List[float]:
  """Scales at which a ``min_face_size`` face fills P-Net's 12 px window, down to 12 px images."""
  scale = CELL / min_face_size
  side = min(height, width) * scale
  scales = []
  while side >= CELL:
    scales.append(scale)
    scale *= factor
    side *= factor
  return scales

"""Mask operations of ``make_masks``: disk dilation, edge-replicating Gaussian, resize.

Pure NumPy + PIL on one mask at a time; ``--dilate`` / ``--sigma`` are given
in pixels of the written mask and :func:`finish` scales them to the input.
"""

import math

import numpy as np
from PIL import Image


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
  """Binary dilation by a disk of ``radius`` pixels (Euclidean, centre-to-centre).

  A pixel becomes 1 when some 1-pixel lies within ``radius`` of it. Done row
  offset by row offset: for each dy the disk is a horizontal segment of
  half-width floor(sqrt(r² − dy²)), found with a cumulative sum, so the cost is
  O((2r+1)·H·W) rather than O(r²·H·W).

  Args:
    mask: bool ``[H, W]``.
    radius: disk radius in pixels; ≤ 0 returns the mask unchanged.

  Returns:
    bool ``[H, W]``.
  """
  mask = np.asarray(mask, bool)
  if radius <= 0 or not mask.any():
    return mask.copy()
  h, w = mask.shape
  r = int(math.floor(radius))
  csum = np.concatenate([np.zeros((h, 1), np.int64), np.cumsum(mask, axis=1)], axis=1)
  rows = {}  # half-width → horizontally dilated mask
  out = np.zeros_like(mask)
  for dy in range(-min(r, h - 1), min(r, h - 1) + 1):  # farther rows are off the image
    half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
    if half not in rows:
      cols = np.arange(w)
      hi = np.minimum(cols + half + 1, w)
      lo = np.maximum(cols - half, 0)
      rows[half] = (csum[:, hi] - csum[:, lo]) > 0
    seg = rows[half]
    # out[y] |= seg[y + dy] where the source row exists.
    if dy >= 0:
      out[:h - dy] |= seg[dy:]
    else:
      out[-dy:] |= seg[:h + dy]
  return out


def gaussian_kernel(sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian taps over ±ceil(4σ).

  Args:
    sigma: standard deviation in pixels (> 0).

  Returns:
    float64 taps summing to 1.
  """
  radius = max(1, int(math.ceil(4.0 * sigma)))
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return k / k.sum()


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur with edge replication.

  Replicating the edge (not zero padding) keeps a region that runs off the
  image (hair, chin) at full weight up to the border.

  Args:
    mask: ``[H, W]`` values in [0, 1].
    sigma: standard deviation in pixels; ≤ 0 returns a float copy.

  Returns:
    float64 ``[H, W]`` in [0, 1].
  """
  m = np.asarray(mask, np.float64)
  if sigma <= 0:
    return m.copy()
  k = gaussian_kernel(sigma)
  r = len(k) // 2
  for axis in (0, 1):
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    p = np.pad(m, pad, mode='edge')
    n = m.shape[axis]
    acc = np.zeros_like(m)
    for i, tap in enumerate(k):
      acc += tap * (p[i:i + n] if axis == 0 else p[:, i:i + n])
    m = acc
  return np.clip(m, 0.0, 1.0)


def finish(binary: np.ndarray, dilate_px: float, sigma_px: float, size: int) -> np.ndarray:
  """Dilates, softens and resizes a binary interest mask.

  Args:
    binary: bool ``[H, W]`` at the input resolution.
    dilate_px: dilation radius in output pixels.
    sigma_px: Gaussian σ in output pixels.
    size: output side; 0 keeps the input size.

  Returns:
    uint8 ``[size, size]`` (or ``[H, W]``), 255 = interest.
  """
  h, w = binary.shape
  scale = 1.0 if size <= 0 else w / float(size)
  soft = soften(dilate(binary, dilate_px * scale), sigma_px * scale)
  if size > 0 and (h, w) != (size, size):
    soft = np.asarray(Image.fromarray(soft.astype(np.float32), 'F').resize(
        (size, size), Image.BILINEAR), np.float64)
  return np.clip(np.round(soft * 255.0), 0, 255).astype(np.uint8)

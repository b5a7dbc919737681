"""MTCNN face detector (Zhang et al. 2016): P-Net, R-Net and O-Net in Flax, and the cascade.

The networks and the cascade follow facenet-pytorch 2.6.0 (``MTCNN`` with its
defaults), whose detections are the reference the tests compare against:

1. **P-Net** runs on an image pyramid (smallest face 20 px, scale factor
   0.709, each level resized with PyTorch's ``'area'`` interpolation, i.e.
   adaptive average pooling). Every 12x12 window (stride 2) whose face
   probability is >= 0.6 becomes a candidate; NMS at IoU 0.5 within each
   scale, then 0.7 across scales; the boxes are regressed and squared.
2. **R-Net** scores 24x24 crops of the candidates (> 0.7 kept), NMS 0.7,
   regression, squaring.
3. **O-Net** scores 48x48 crops (> 0.7 kept), gives 5 landmarks, regression,
   and a last NMS at 0.7 where the overlap is measured against the *smaller*
   box ("Min").

Pixels are normalised as ``(x - 127.5) / 128``. Crops are cut from the image
clipped to its borders (no zero padding, as facenet-pytorch does), so a face
at the border gives a stretched crop.

The networks run jit-compiled. P-Net gets each pyramid level padded up to a
size bucket (a handful per octave) with the true size passed as a traced
argument, so photos of many sizes share a few compiled programs; R-Net and
O-Net get their candidates padded to a bucket too. Box bookkeeping (window
decoding, NMS, regression, crops: :mod:`interestyle_jax.models.mtcnn_boxes`)
runs on the host in NumPy in float32, in the same operation order as the
reference, so that integer truncations of box coordinates agree with it.

Weights: ``python -m interestyle_jax.convert mtcnn SRC DST`` (see
:mod:`interestyle_jax.convert.mtcnn`), then :func:`load_mtcnn`.
"""

import math
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax.models.irse import PReLU
# The host-side box arithmetic (also public here).
from interestyle_jax.models.mtcnn_boxes import (CELL, STRIDE, area_resize, area_resize_whole,  # noqa: F401
                                                batched_nms, crop_boxes, integral_image, nms,
                                                pyramid_scales, regress, square)

KIND = 'mtcnn'
NETS = ('pnet', 'rnet', 'onet')
# facenet-pytorch's MTCNN defaults.
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709


# ----------------------------------------------------------------------------- networks


def _conv(features: int, kernel: int, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding='VALID', name=name)


def max_pool_ceil(x: jnp.ndarray, k: int, s: int) -> jnp.ndarray:
  """PyTorch ``MaxPool2d(k, s, ceil_mode=True)`` on NHWC.

  Args:
    x: ``[B, H, W, C]``.
    k: window.
    s: stride.

  Returns:
    ``[B, ceil((H - k) / s) + 1, …, C]``: a last, partial window is kept
    (padded with -inf, so only real values count).
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - k) // s) + 1
    pads.append((0, (out - 1) * s + k - size))
  return nn.max_pool(x, (k, k), (s, s), padding=pads)


class PNet(nn.Module):
  """Proposal network: fully convolutional, one output per 12x12 window (stride 2)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, valid: Optional[jnp.ndarray] = None):
    """Scores every 12x12 window.

    Args:
      x: ``[B, H, W, 3]`` normalised images.
      valid: optional ``(h, w)`` int array: only ``x[:, :h, :w]`` is the
        image, the rest is padding. Outputs whose window lies in the image
        then equal those of the unpadded image (see :func:`pnet_output_size`).

    Returns:
      ``(reg [B, H', W', 4], prob [B, H', W'])``: box offsets (x1, y1, x2, y2,
      in units of the window) and the face probability.
    """
    x = PReLU(name='prelu1')(_conv(10, 3, 'conv1')(x))
    if valid is not None:
      # The unpadded image's ceil-mode pool has a last window of one row
      # (column) when h - 2 is odd; repeating that row into the padding makes
      # the padded pool's window take the same maximum.
      rows = jnp.minimum(jnp.arange(x.shape[1]), valid[0] - 3)
      cols = jnp.minimum(jnp.arange(x.shape[2]), valid[1] - 3)
      x = jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)
    x = max_pool_ceil(x, 2, 2)
    x = PReLU(name='prelu2')(_conv(16, 3, 'conv2')(x))
    x = PReLU(name='prelu3')(_conv(32, 3, 'conv3')(x))
    prob = jax.nn.softmax(_conv(2, 1, 'conv4_1')(x), axis=-1)[..., 1]
    return _conv(4, 1, 'conv4_2')(x), prob


class RNet(nn.Module):
  """Refinement network on 24x24 crops."""

  @nn.compact
  def __call__(self, x: jnp.ndarray):
    """Scores crops.

    Args:
      x: ``[N, 24, 24, 3]`` normalised crops.

    Returns:
      ``(reg [N, 4], prob [N])``.
    """
    x = max_pool_ceil(PReLU(name='prelu1')(_conv(28, 3, 'conv1')(x)), 3, 2)
    x = max_pool_ceil(PReLU(name='prelu2')(_conv(48, 3, 'conv2')(x)), 3, 2)
    x = PReLU(name='prelu3')(_conv(64, 2, 'conv3')(x))
    # Flattened (h, w, c); the converter reorders the published dense weights.
    x = PReLU(name='prelu4')(nn.Dense(128, name='dense4')(x.reshape(x.shape[0], -1)))
    prob = jax.nn.softmax(nn.Dense(2, name='dense5_1')(x), axis=-1)[:, 1]
    return nn.Dense(4, name='dense5_2')(x), prob


class ONet(nn.Module):
  """Output network on 48x48 crops: score, box offsets and 5 landmarks."""

  @nn.compact
  def __call__(self, x: jnp.ndarray):
    """Scores crops and places landmarks.

    Args:
      x: ``[N, 48, 48, 3]`` normalised crops.

    Returns:
      ``(reg [N, 4], landmarks [N, 10], prob [N])``; landmarks are 5 x then 5
      y coordinates as fractions of the crop (left eye, right eye, nose, left
      and right mouth corner).
    """
    x = max_pool_ceil(PReLU(name='prelu1')(_conv(32, 3, 'conv1')(x)), 3, 2)
    x = max_pool_ceil(PReLU(name='prelu2')(_conv(64, 3, 'conv2')(x)), 3, 2)
    x = max_pool_ceil(PReLU(name='prelu3')(_conv(64, 3, 'conv3')(x)), 2, 2)
    x = PReLU(name='prelu4')(_conv(128, 2, 'conv4')(x))
    x = PReLU(name='prelu5')(nn.Dense(256, name='dense5')(x.reshape(x.shape[0], -1)))
    prob = jax.nn.softmax(nn.Dense(2, name='dense6_1')(x), axis=-1)[:, 1]
    return nn.Dense(4, name='dense6_2')(x), nn.Dense(10, name='dense6_3')(x), prob


NET_MODULES = {'pnet': PNet, 'rnet': RNet, 'onet': ONet}
# Input size of each network's template (P-Net is fully convolutional).
NET_INPUT = {'pnet': 12, 'rnet': 24, 'onet': 48}


def pnet_output_size(size: int) -> int:
  """P-Net outputs along an input side of ``size`` (conv3, ceil pool 2, conv3, conv3)."""
  return -(-(size - 2) // 2) - 4


def _normalise(x):
  return (x - 127.5) * 0.0078125


@jax.jit
def _run_pnet(variables, x, valid):
  return PNet().apply(variables, _normalise(x), valid)


@jax.jit
def _run_rnet(variables, x):
  return RNet().apply(variables, _normalise(x))


@jax.jit
def _run_onet(variables, x):
  return ONet().apply(variables, _normalise(x))


# ----------------------------------------------------------------------------- shape buckets


def _bucket(n: int) -> int:
  """Rounds a pyramid side up to one of about four sizes per octave (fewer compiles)."""
  q = max(16, 2 ** (int(math.log2(n)) - 2))
  return -(-n // q) * q


def _batch_bucket(n: int) -> int:
  """Pads a number of crops to a bucket (16, then four sizes per octave): few compiles."""
  return _bucket(max(n, 16))


# ----------------------------------------------------------------------------- the cascade


class Faces(NamedTuple):
  """Faces found in one image, largest box first.

  Attributes:
    boxes: ``[N, 4]`` float32 ``(x1, y1, x2, y2)`` in pixels of the input.
    probs: ``[N]`` O-Net face probabilities.
    landmarks: ``[N, 5, 2]`` ``(x, y)`` of the left eye, right eye, nose, left
      and right mouth corner (left/right as seen in the image).
  """
  boxes: np.ndarray
  probs: np.ndarray
  landmarks: np.ndarray


def _as_batch(images, value_range: Tuple[float, float]) -> Tuple[np.ndarray, bool]:
  """``[B, H, W, 3]`` uint8, or float32 in [0, 255], and whether one image was given."""
  if isinstance(images, (list, tuple)):
    images = [np.asarray(im) for im in images]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
      raise ValueError(f'MTCNN.detect: a list of images must share one shape, got {shapes}; '
                       'call detect once per image instead')
    images, single = np.stack(images), False
  else:
    images = np.asarray(images)
    single = images.ndim in (2, 3)
    if single:
      images = images[None]
  if images.ndim == 3:  # grey
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'MTCNN.detect expects RGB images [H, W, 3] or [B, H, W, 3] (or grey '
                     f'[H, W]), got shape {images.shape}')
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.dtype == np.uint8:
    return images, single  # integer summed-area tables: exact and faster
  lo, hi = (float(v) for v in value_range)
  return (images.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo)), single


class MTCNN:
  """The three-stage cascade with converted weights (see :func:`load_mtcnn`).

  Attributes:
    variables: ``{'pnet': …, 'rnet': …, 'onet': …}`` Flax variables.
    min_face_size: smallest face searched for, in pixels.
    thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
    factor: scale step of the image pyramid.
  """

  def __init__(self, variables: Mapping[str, Any], min_face_size: float = MIN_FACE_SIZE,
               thresholds: Sequence[float] = THRESHOLDS, factor: float = FACTOR):
    missing = [n for n in NETS if n not in variables]
    if missing:
      raise ValueError(f'MTCNN variables lack {missing}; load them with load_mtcnn(DIR) from a '
                       '`python -m interestyle_jax.convert mtcnn SRC DIR` directory')
    if not 0 < factor < 1:
      raise ValueError(f'pyramid factor must be in (0, 1), got {factor}')
    self.variables = {n: variables[n] for n in NETS}
    self.min_face_size = float(min_face_size)
    self.thresholds = tuple(float(t) for t in thresholds)
    self.factor = float(factor)

  def detect(self, images, value_range: Tuple[float, float] = (0, 255)
             ) -> Union[Faces, List[Faces]]:
    """Finds faces and their 5 landmarks.

    Args:
      images: one RGB image ``[H, W, 3]`` (or grey ``[H, W]``), a batch
        ``[B, H, W, 3]`` or a list of same-size images. ``uint8`` pixels, or
        floats in ``value_range``.
      value_range: range of float pixels, e.g. ``(-1, 1)`` for this project's
        image tensors; ignored for ``uint8``.

    Returns:
      :class:`Faces` for one image, a list of them for a batch.
    """
    x, single = _as_batch(images, value_range)
    per_image = self._cascade(x)
    return per_image[0] if single else per_image

  def _cascade(self, x: np.ndarray) -> List[Faces]:
    n_img, h, w, _ = x.shape
    table = integral_image(x)
    t1, t2, t3 = self.thresholds
    f32 = np.float32

    # Stage 1: P-Net over the pyramid.
    cands, regs, owners = [], [], []
    for scale in pyramid_scales(h, w, self.min_face_size, self.factor):
      lh, lw = int(h * scale + 1), int(w * scale + 1)
      level = np.zeros((n_img, _bucket(lh), _bucket(lw), 3), f32)
      level[:, :lh, :lw] = area_resize_whole(table, lh, lw)
      reg, prob = _run_pnet(self.variables['pnet'], level, np.array([lh, lw], np.int32))
      oh, ow = pnet_output_size(lh), pnet_output_size(lw)
      prob, reg = np.asarray(prob)[:, :oh, :ow], np.asarray(reg)[:, :oh, :ow]
      b, yy, xx = np.nonzero(prob >= t1)
      cell = np.stack([xx, yy], 1).astype(f32)
      boxes = np.concatenate([np.floor((STRIDE * cell + 1) / f32(scale)),
                              np.floor((STRIDE * cell + CELL) / f32(scale)),
                              prob[b, yy, xx][:, None]], 1)
      keep = batched_nms(boxes[:, :4], boxes[:, 4], b, 0.5)
      cands.append(boxes[keep])
      regs.append(reg[b, yy, xx][keep])
      owners.append(b[keep])
    boxes, reg, owner = (np.concatenate(a) if a else np.zeros((0, d), t) for a, d, t in
                         ((cands, 5, f32), (regs, 4, f32), (owners, 1, np.int64)))
    owner = owner.reshape(-1)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
    boxes, reg, owner = boxes[keep], reg[keep], owner[keep]
    boxes = square(regress(boxes, reg, plus_one=False))

    # Stage 2: R-Net on 24x24 crops.
    boxes, owner, (reg, prob) = self._refine('rnet', table, boxes, owner, 24, h, w)
    keep = prob > t2
    boxes = np.concatenate([boxes[keep, :4], prob[keep, None]], 1)
    reg, owner = reg[keep], owner[keep]
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
    boxes = square(regress(boxes[keep], reg[keep]))
    owner = owner[keep]

    # Stage 3: O-Net on 48x48 crops, landmarks, and the last "Min" NMS.
    boxes, owner, (reg, marks, prob) = self._refine('onet', table, boxes, owner, 48, h, w)
    keep = prob > t3
    boxes = np.concatenate([boxes[keep, :4], prob[keep, None]], 1)
    reg, marks, owner = reg[keep], marks[keep], owner[keep]
    # Landmarks are fractions of the O-Net crop, before its regression.
    bw = boxes[:, 2:3] - boxes[:, 0:1] + f32(1)
    bh = boxes[:, 3:4] - boxes[:, 1:2] + f32(1)
    points = np.stack([bw * marks[:, :5] + boxes[:, 0:1] - f32(1),
                       bh * marks[:, 5:] + boxes[:, 1:2] - f32(1)], -1)
    boxes = regress(boxes, reg)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7, mode='min')
    boxes, points, owner = boxes[keep], points[keep], owner[keep]

    out = []
    for i in range(n_img):
      sel = owner == i
      b, p = boxes[sel], points[sel]
      order = np.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[::-1]
      out.append(Faces(b[order, :4].copy(), b[order, 4].copy(), p[order].copy()))
    return out

  def _refine(self, net: str, table: np.ndarray, boxes: np.ndarray, owner: np.ndarray,
              size: int, h: int, w: int):
    """Runs R-Net or O-Net on the crops of ``boxes``; drops boxes outside the image."""
    crops, ok = crop_boxes(boxes, h, w)
    boxes, owner, crops = boxes[ok], owner[ok], crops[ok]
    n = len(boxes)
    data = np.zeros((_batch_bucket(n), size, size, 3), np.float32)
    if n:
      data[:n] = area_resize(table, owner, crops, size, size)
    # With no candidate left the (padded) batch is all zeros; its outputs are
    # sliced to nothing, which keeps the shapes right for the next steps.
    run = _run_rnet if net == 'rnet' else _run_onet
    outs = run(self.variables[net], data)
    return boxes, owner, tuple(np.asarray(o)[:n] for o in outs)


def load_mtcnn(path: str, **kwargs) -> MTCNN:
  """Loads a ``convert mtcnn`` directory (torch not needed).

  Args:
    path: the model directory.
    **kwargs: :class:`MTCNN` settings (``min_face_size``, ``thresholds``, ``factor``).

  Returns:
    The cascade.
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  _, tree = artifacts.load_artifact(path, expected_kind=KIND)
  return MTCNN(tree, **kwargs)

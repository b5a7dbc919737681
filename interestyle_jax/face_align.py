"""Face alignment from MTCNN's 5 landmarks: the ArcFace 112 px crop and FFHQ alignment.

Two crops, for two uses:

* :func:`arcface_crop` — the 112x112 crop the ID-similarity metric feeds to
  ArcFace / CurricularFace, as ReStyle's ``scripts/calc_id_loss_parallel.py``
  makes it with ``MTCNN.align`` (pSp / ReStyle ``models/mtcnn/mtcnn.py`` and
  ``mtcnn_pytorch/src/align_trans.py``): the similarity transform that best
  maps the 5 landmarks onto :data:`ARCFACE_REFERENCE_POINTS`, then a bilinear
  warp with black outside the photo (OpenCV ``warpAffine`` defaults).
* :func:`ffhq_align` — the FFHQ crop (NVlabs ffhq-dataset's
  ``recreate_aligned_images``), the framing StyleGAN2 generators and the
  encoders trained on FFHQ / CelebA-HQ expect.

Detection plus alignment of every face of a photo (:func:`align_faces`,
:func:`face_stems`, :func:`load_detector`) serves ``align``, ``invert
--align`` and the paper's ID metric.

Landmarks are ``[5, 2]`` (x, y) in pixels: left eye, right eye, nose, left
mouth corner, right mouth corner ("left" as seen in the photo), as
:class:`interestyle_jax.models.mtcnn.MTCNN` returns them. Pixel centres are at
integer coordinates, as in MTCNN's and OpenCV's convention.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import scipy.ndimage
from PIL import Image

# ReStyle's get_reference_facial_points(default_square=True): the 96x112
# template of align_trans.REFERENCE_FACIAL_POINTS shifted right by
# (112 - 96) / 2 = 8 px to centre it in a 112x112 square.
_REFERENCE_96x112 = np.array([
    [30.29459953, 51.69630051],
    [65.53179932, 51.50139999],
    [48.02519989, 71.73660278],
    [33.54930115, 92.3655014],
    [62.72990036, 92.20410156],
])
ARCFACE_REFERENCE_POINTS = _REFERENCE_96x112 + np.array([8.0, 0.0])
ARCFACE_SIZE = 112
NO_FACE = 'no face found (MTCNN)'


class AlignmentError(ValueError):
  """Landmarks or an image that cannot be aligned (the message says why)."""


def check_image(image: np.ndarray) -> np.ndarray:
  """Checks that ``image`` is uint8 ``[H, W, 3]`` (grey ``[H, W]`` becomes RGB).

  Args:
    image: the photo.

  Returns:
    The image as uint8 ``[H, W, 3]``.

  Raises:
    AlignmentError: wrong dtype or shape.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise AlignmentError(f'image must be uint8 [H, W, 3], got dtype {image.dtype}; convert '
                         'floats with np.clip(x * 255, 0, 255).astype(np.uint8)')
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise AlignmentError(f'image must be [H, W, 3] (RGB), got shape {image.shape}')
  return image


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
  """Checks that ``landmarks`` are 5 finite (x, y) points with distinct eyes.

  Args:
    landmarks: ``[5, 2]`` (x, y).

  Returns:
    float64 ``[5, 2]``.

  Raises:
    AlignmentError: wrong shape, NaN / inf, or both eyes at the same place
      (no scale or rotation can be derived).
  """
  pts = np.asarray(landmarks, np.float64)
  if pts.shape != (5, 2):
    raise AlignmentError(f'landmarks must be [5, 2] (x, y): left eye, right eye, nose, left '
                         f'and right mouth corner; got shape {pts.shape}')
  if not np.all(np.isfinite(pts)):
    raise AlignmentError(f'landmarks hold NaN or inf: {pts.tolist()}')
  if np.hypot(*(pts[1] - pts[0])) < 1e-6:
    raise AlignmentError(f'both eyes are at the same place {pts[0].tolist()}; the landmarks '
                         'do not describe a face')
  return pts


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares non-reflective similarity ``dst ≈ A @ src + t``.

  Solves the linear system of MATLAB's ``cp2tform(..., 'similarity')`` (as
  ``matlab_cp2tform.findNonreflectiveSimilarity`` does): parameters
  ``(a, b, tx, ty)`` of ``A = [[a, -b], [b, a]]`` minimising the squared
  distances in ``dst`` space.

  Args:
    src: ``[K, 2]`` points, K >= 2, not all equal.
    dst: ``[K, 2]`` points.

  Returns:
    ``[2, 3]`` float64 matrix ``[A | t]``.
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  x, y = src[:, 0], src[:, 1]
  one, zero = np.ones_like(x), np.zeros_like(x)
  # u = a x - b y + tx ; v = b x + a y + ty
  design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
  target = np.concatenate([dst[:, 0], dst[:, 1]])
  (a, b, tx, ty), *_ = np.linalg.lstsq(design, target, rcond=None)
  return np.array([[a, -b, tx], [b, a, ty]])


def warp_affine(image: np.ndarray, out_to_src: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Bilinear warp with black outside the image (OpenCV ``warpAffine`` semantics).

  Output pixel ``(x, y)`` takes the image at ``out_to_src @ [x, y, 1]``,
  interpolated from its 4 neighbours; neighbours outside the image count
  as 0 (``BORDER_CONSTANT``), so the crop fades to black over one pixel at
  the photo's edge.

  Args:
    image: uint8 ``[H, W, C]``.
    out_to_src: ``[2, 3]`` affine map from output to image pixel coordinates.
    size: output ``(width, height)``.

  Returns:
    uint8 ``[height, width, C]`` (rounded to nearest).
  """
  w, h = size
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  sx = out_to_src[0, 0] * xs + out_to_src[0, 1] * ys + out_to_src[0, 2]
  sy = out_to_src[1, 0] * xs + out_to_src[1, 1] * ys + out_to_src[1, 2]
  x0, y0 = np.floor(sx), np.floor(sy)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
  src = image.astype(np.float64)
  hi, wi = image.shape[:2]

  def tap(yy, xx):
    inside = ((xx >= 0) & (xx < wi) & (yy >= 0) & (yy < hi))[..., None]
    return np.where(inside, src[np.clip(yy, 0, hi - 1), np.clip(xx, 0, wi - 1)], 0.0)

  out = ((1 - fy) * ((1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1))
         + fy * ((1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def arcface_transform(landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
  """The similarity from crop pixels to photo pixels used by :func:`arcface_crop`.

  Args:
    landmarks: ``[5, 2]`` (x, y) in the photo.
    size: crop side; the reference points are scaled by ``size / 112``.

  Returns:
    ``[2, 3]`` float64 map from crop pixel coordinates to photo coordinates.

  Raises:
    AlignmentError: unusable landmarks.
  """
  pts = check_landmarks(landmarks)
  # ReStyle fits the reference -> photo direction (cp2tform solves for the
  # inverse transform and then inverts it), i.e. least squares in photo
  # pixels; fitting that direction directly gives the same matrix.
  return similarity_fit(ARCFACE_REFERENCE_POINTS * (size / ARCFACE_SIZE), pts)


def arcface_crop(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
  """The ArcFace / CurricularFace 112x112 face crop of ReStyle's ID metric.

  The 5 landmarks are mapped onto ReStyle's square reference points
  (:data:`ARCFACE_REFERENCE_POINTS`, ``get_reference_facial_points(
  default_square=True)``) by the least-squares non-reflective similarity
  (``cp2tform``'s 'similarity' system), and the photo is warped with
  bilinear interpolation, black outside it, as ``warp_and_crop_face(...,
  crop_size=(112, 112))`` does with ``cv2.warpAffine``.

  Deviation: ReStyle's ``findSimilarity`` also fits a mirrored similarity
  and keeps it when its residual is smaller; its comparison runs against
  reference points it has already mirrored in place, and for any upright
  face it keeps the non-reflective fit (residuals about 259 vs 308 for
  exact landmarks). The mirrored fit would only ever pick a mirrored crop,
  so it is not offered. OpenCV quantises the sampling positions to 1/32 px
  and the weights to 15 bits; this warp is exact float64 bilinear, so
  pixels may differ from OpenCV's by about 1 grey level.

  Args:
    image: uint8 ``[H, W, 3]`` photo (grey ``[H, W]`` is accepted).
    landmarks: ``[5, 2]`` (x, y): left eye, right eye, nose, left and right
      mouth corner, e.g. ``MTCNN.detect(image).landmarks[0]``.
    size: crop side (the reference points are scaled by ``size / 112``).

  Returns:
    uint8 ``[size, size, 3]``.

  Raises:
    AlignmentError: image not uint8 ``[H, W, 3]``, or unusable landmarks.
  """
  image = check_image(image)
  if int(size) != size or size < 1:
    raise AlignmentError(f'size must be a positive integer, got {size}')
  size = int(size)
  return warp_affine(image, arcface_transform(landmarks, size), (size, size))


# ----------------------------------------------------------------------------- FFHQ


class FFHQCrop(NamedTuple):
  """The oriented crop square of the FFHQ recipe, in photo pixels.

  Attributes:
    quad: ``[4, 2]`` corners (x, y): top-left, bottom-left, bottom-right,
      top-right of the aligned image.
    center: ``[2]`` the crop centre, ``eye_avg + 0.1 * eye_to_mouth``.
    x: ``[2]`` half the crop's horizontal side, as a vector.
    y: ``[2]`` half the crop's vertical side (``x`` turned 90 degrees).
    size: the side, ``2 * |x|``.
  """
  quad: np.ndarray
  center: np.ndarray
  x: np.ndarray
  y: np.ndarray
  size: float


def ffhq_crop(landmarks: np.ndarray) -> FFHQCrop:
  """The crop square of NVlabs ffhq-dataset's ``recreate_aligned_images`` from 5 landmarks.

  The recipe's eye "centres" (the mean of dlib's 6 points around each eye)
  are MTCNN's eye points, and its mouth corners (dlib points 48 and 54) are
  MTCNN's mouth corners; the nose is not used.

  Args:
    landmarks: ``[5, 2]`` (x, y) as :class:`~interestyle_jax.models.mtcnn.MTCNN`
      gives them.

  Returns:
    An :class:`FFHQCrop`.

  Raises:
    AlignmentError: unusable landmarks.
  """
  pts = check_landmarks(landmarks)
  eye_left, eye_right, _, mouth_left, mouth_right = pts
  eye_avg = (eye_left + eye_right) * 0.5
  eye_to_eye = eye_right - eye_left
  mouth_avg = (mouth_left + mouth_right) * 0.5
  eye_to_mouth = mouth_avg - eye_avg
  # The horizontal axis bisects the eye line and the perpendicular of the
  # eye-to-mouth line, so a tilted mouth or tilted eyes alone rotate it half.
  x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
  x /= np.hypot(*x)
  x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
  y = np.flipud(x) * [-1, 1]
  center = eye_avg + eye_to_mouth * 0.1
  quad = np.stack([center - x - y, center - x + y, center + x + y, center + x - y])
  return FFHQCrop(quad, center, x, y, float(np.hypot(*x) * 2))


def _blur_pad(img: np.ndarray, pad: Sequence[int], qsize: float) -> np.ndarray:
  """The recipe's padding: reflect, then blur and fade to the median towards the new edges.

  Args:
    img: uint8 ``[H, W, 3]``.
    pad: ``(left, top, right, bottom)`` in pixels, each >= 1.
    qsize: the crop side (sets the blur radius).

  Returns:
    uint8 ``[H + top + bottom, W + left + right, 3]``.
  """
  left, top, right, bottom = pad
  img = np.pad(np.float32(img), ((top, bottom), (left, right), (0, 0)), 'reflect')
  h, w, _ = img.shape
  y, x, _ = np.ogrid[:h, :w, :1]
  # 0 at the photo's edge, 1 at the padding's outer edge, negative inside the
  # photo: the blur weight 3 * mask + 1 reaches a third of the pad into it.
  mask = np.maximum(1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
                    1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom))
  blur = qsize * 0.02
  img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(
      mask * 3.0 + 1.0, 0.0, 1.0)
  img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
  return np.uint8(np.clip(np.rint(img), 0, 255))


def ffhq_align(image: np.ndarray, landmarks: np.ndarray, output_size: int = 1024,
               transform_size: Optional[int] = None, enable_padding: bool = True) -> np.ndarray:
  """Aligns a face as FFHQ was (NVlabs ffhq-dataset ``recreate_aligned_images``).

  Steps, as in the recipe: the oriented crop square of :func:`ffhq_crop`;
  when its side is at least 4x ``output_size``, the photo is first shrunk
  by ``floor(side / (2 * output_size))`` (Lanczos); the photo is cropped to the square plus a 10 %
  border; where the square still reaches past the photo (by more than the
  border minus 4 px) and ``enable_padding``, the photo is padded by
  reflection (at least 30 % of the square), blurred (σ = 2 % of the square)
  and faded to its median colour towards the new edges; the square is
  resampled bilinearly to ``transform_size`` and reduced to ``output_size``
  with Lanczos.

  Deviations: the recipe reads its eyes and mouth from dlib's 68 points;
  here they are MTCNN's 5 (see :func:`ffhq_crop`), whose eye points sit near
  the pupils where dlib's eye-contour means do, so the framing matches FFHQ
  to within landmark noise rather than exactly. ``transform_size`` defaults
  to ``4 * output_size`` (the recipe's 4096 at 1024 px) rather than a fixed
  4096, so small outputs are not supersampled 16x or more.

  Args:
    image: uint8 ``[H, W, 3]`` photo (grey ``[H, W]`` is accepted).
    landmarks: ``[5, 2]`` (x, y): left eye, right eye, nose, left and right
      mouth corner (``MTCNN.detect(image).landmarks[i]``).
    output_size: side of the aligned image.
    transform_size: side of the intermediate bilinear resampling (default
      ``4 * output_size``).
    enable_padding: pad a crop that leaves the photo with blurred
      reflections (the recipe's default) instead of black.

  Returns:
    uint8 ``[output_size, output_size, 3]``.

  Raises:
    AlignmentError: image not uint8 ``[H, W, 3]``, unusable landmarks, or
      non-positive sizes.
  """
  image = check_image(image)
  for name, value in (('output_size', output_size), ('transform_size', transform_size)):
    if value is not None and (int(value) != value or value < 1):
      raise AlignmentError(f'{name} must be a positive integer, got {value}')
  output_size = int(output_size)
  transform_size = int(transform_size or 4 * output_size)
  crop_sq = ffhq_crop(landmarks)
  quad, qsize = crop_sq.quad.copy(), crop_sq.size
  img = Image.fromarray(image)

  # Shrink.
  shrink = int(np.floor(qsize / output_size * 0.5))
  if shrink > 1:
    rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
    img = img.resize(rsize, Image.Resampling.LANCZOS)
    quad /= shrink
    qsize /= shrink

  # Crop.
  border = max(int(np.rint(qsize * 0.1)), 3)
  crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
          int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
  crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
          min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
  if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
    img = img.crop(crop)
    quad -= crop[0:2]

  # Pad.
  pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
         int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
  pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
         max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
  if enable_padding and max(pad) > border - 4:
    # At least 1 px on every side: the recipe's fade divides by each pad.
    pad = np.maximum(pad, max(int(np.rint(qsize * 0.3)), 1))
    img = Image.fromarray(_blur_pad(np.asarray(img), pad, qsize))
    quad += pad[:2]

  # Transform: PIL's QUAD maps output corners to these source points, in its
  # pixel-corner convention (landmarks are pixel-centre: + 0.5).
  img = img.transform((transform_size, transform_size), Image.Transform.QUAD,
                      (quad + 0.5).flatten(), Image.Resampling.BILINEAR)
  if output_size < transform_size:
    img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
  return np.asarray(img)


# ---------------------------------------------------------------------------
# Every face of a photo.


class AlignedFace(NamedTuple):
  """One detected face and its FFHQ-aligned crop.

  Attributes:
    image: uint8 ``[size, size, 3]`` aligned crop.
    box: ``[4]`` x1, y1, x2, y2 in photo pixels.
    prob: MTCNN's face probability.
    landmarks: ``[5, 2]`` (x, y) in photo pixels.
  """
  image: np.ndarray
  box: np.ndarray
  prob: float
  landmarks: np.ndarray

  def record(self, output: str) -> Dict:
    """The face as summary.json lists it, with the output file written for it."""
    return {'output': output, 'box': [round(float(v), 2) for v in self.box],
            'prob': round(float(self.prob), 6),
            'landmarks': [[round(float(v), 2) for v in p] for p in self.landmarks]}


def align_faces(detector, photo: np.ndarray, size: int = 1024,
                transform_size: Optional[int] = None,
                enable_padding: bool = True) -> List[AlignedFace]:
  """Detects every face of a photo and FFHQ-aligns each.

  Args:
    detector: an :class:`interestyle_jax.models.mtcnn.MTCNN` (``load_mtcnn``).
    photo: uint8 ``[H, W, 3]``.
    size: side of the aligned crops.
    transform_size: see :func:`~interestyle_jax.face_align.ffhq_align`.
    enable_padding: see :func:`~interestyle_jax.face_align.ffhq_align`.

  Returns:
    One :class:`AlignedFace` per face, largest first (MTCNN's order); empty
    when there is none.
  """
  faces = detector.detect(photo)
  return [AlignedFace(ffhq_align(photo, lm, size, transform_size, enable_padding),
                      np.asarray(box, np.float64), float(prob), np.asarray(lm, np.float64))
          for box, prob, lm in zip(faces.boxes, faces.probs, faces.landmarks)]


def face_stems(stem: str, n_faces: int, taken: Set[str]) -> List[str]:
  """Output stems of a photo's faces: ``stem`` for one, ``stem_0``, ``stem_1``, … for several.

  A numbered name that another output already uses (a photo named
  ``b_0.jpg`` next to a ``b.jpg`` with two faces) gets ``-2``, ``-3``, …
  appended instead of overwriting it.

  Args:
    stem: the photo's output stem (path relative to the output folder).
    n_faces: faces found.
    taken: stems in use; the new ones are added to it.

  Returns:
    ``n_faces`` stems.
  """
  names = [stem] if n_faces == 1 else [f'{stem}_{k}' for k in range(n_faces)]
  out = []
  for name in names:
    unique, k = name, 2
    while unique in taken and unique != stem:
      unique, k = f'{name}-{k}', k + 1
    taken.add(unique)
    out.append(unique)
  return out


def load_detector(path: str, flag: str = '--mtcnn', **kwargs):
  """Loads a ``convert mtcnn`` directory, with an error naming the flag and the fix.

  Args:
    path: the directory.
    flag: the option that gave it, for messages.
    **kwargs: :class:`~interestyle_jax.models.mtcnn.MTCNN` settings.

  Returns:
    The detector.

  Raises:
    artifacts.ArtifactError: not a usable MTCNN directory.
  """
  # Imported here: alignment alone needs neither Orbax nor the network.
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  from interestyle_jax.models.mtcnn import load_mtcnn  # pylint: disable=g-import-not-at-top
  try:
    return load_mtcnn(path, **kwargs)
  except artifacts.ArtifactError as e:
    hint = '' if 'convert mtcnn' in str(e) else (
        '; an MTCNN directory is made by `python -m interestyle_jax.convert mtcnn SRC DIR` '
        '(SRC: the facenet-pytorch wheel or its pnet/rnet/onet files)')
    raise artifacts.ArtifactError(f'{flag} {path}: {e}{hint}') from e

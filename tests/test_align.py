"""Face alignment: ReStyle's ArcFace 112 px crop and the FFHQ crop, on real photos and MTCNN.

The detector is our JAX MTCNN with facenet-pytorch's own weights, read from
the installed package (``pip install --no-deps facenet-pytorch==2.6.0``, as
.ci/run does) and converted once per module; without it the tests that
need a detector skip (fail under CI). Photos are scikit-image's bundled ones.
"""

import importlib.util
import os

import numpy as np
import pytest

skdata = pytest.importorskip('skimage.data')
sktransform = pytest.importorskip('skimage.transform')

from interestyle_jax import face_align  # noqa: E402
from interestyle_jax.face_align import arcface_crop  # noqa: E402

# ReStyle models/mtcnn/mtcnn_pytorch/src/align_trans.py: REFERENCE_FACIAL_POINTS
# (96x112 crop) and get_reference_facial_points(default_square=True), which
# shifts x by (112 - 96) / 2 to centre them in a 112x112 square.
RESTYLE_POINTS_96x112 = np.array([[30.29459953, 51.69630051], [65.53179932, 51.50139999],
                                  [48.02519989, 71.73660278], [33.54930115, 92.3655014],
                                  [62.72990036, 92.20410156]])
RESTYLE_POINTS_112 = RESTYLE_POINTS_96x112 + [(112 - 96) / 2, 0]


def facenet_weights_dir() -> str:
  """facenet-pytorch's ``data/`` folder (pnet/rnet/onet.pt); skip (fail under CI) without it."""
  spec = importlib.util.find_spec('facenet_pytorch')
  folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
  if folder is None or not os.path.isfile(os.path.join(folder, 'data', 'onet.pt')):
    msg = ('facenet_pytorch/data/onet.pt not found: install it with `pip install --no-deps '
           'facenet-pytorch==2.6.0` (as .ci/run does)')
    if os.environ.get('CI'):
      pytest.fail(msg)
    pytest.skip(msg)
  return os.path.join(folder, 'data')


@pytest.fixture(scope='module')
def mtcnn_dir(tmp_path_factory):
  """The real MTCNN weights converted with ``convert mtcnn`` (needs torch to read .pt)."""
  pytest.importorskip('torch')
  from interestyle_jax.convert.__main__ import main as convert_main  # pylint: disable=g-import-not-at-top
  src = facenet_weights_dir()
  dst = str(tmp_path_factory.mktemp('mtcnn') / 'mtcnn')
  assert convert_main(['mtcnn', src, dst]) == 0
  return dst


@pytest.fixture(scope='module')
def detector(mtcnn_dir):
  from interestyle_jax.models.mtcnn import load_mtcnn  # pylint: disable=g-import-not-at-top
  return load_mtcnn(mtcnn_dir)


ASTRONAUT = skdata.astronaut()


@pytest.fixture(scope='module')
def astronaut_landmarks(detector):
  faces = detector.detect(ASTRONAUT)
  assert len(faces.boxes) == 1
  return faces.landmarks[0].astype(np.float64)


# ----------------------------------------------------------------------------- ArcFace crop


def _skimage_arcface(image, landmarks, size=112):
  """Independent reference: Umeyama similarity (skimage) + skimage's bilinear warp, black outside."""
  ref = RESTYLE_POINTS_112 * size / 112
  # warp() wants the map from output to input coordinates: reference -> photo.
  tform = sktransform.SimilarityTransform.from_estimate(ref, landmarks)
  assert tform
  out = sktransform.warp(image.astype(np.float64), tform, output_shape=(size, size), order=1,
                         mode='constant', cval=0.0, preserve_range=True)
  return np.clip(np.round(out), 0, 255).astype(np.uint8), tform.params


def test_arcface_reference_points_are_restyles():
  np.testing.assert_allclose(face_align.ARCFACE_REFERENCE_POINTS, RESTYLE_POINTS_112, atol=1e-9)


def test_arcface_crop_matches_an_independent_reference(astronaut_landmarks):
  crop = arcface_crop(ASTRONAUT, astronaut_landmarks)
  ref, params = _skimage_arcface(ASTRONAUT, astronaut_landmarks)
  assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
  np.testing.assert_allclose(face_align.arcface_transform(astronaut_landmarks), params[:2],
                             atol=1e-9)
  # Both are float64 bilinear: only rounding at .5 can differ (measured: identical).
  assert np.abs(crop.astype(int) - ref).max() <= 1


def test_arcface_crop_noisy_landmarks_and_sizes():
  """Landmarks that no similarity fits exactly (least squares must agree), near the border."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
  for size, angle, scale, shift in ((112, 0.4, 0.9, (10, -20)), (64, -1.2, 1.7, (70, 30)),
                                    (224, 2.8, 0.5, (-5, 5))):
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = RESTYLE_POINTS_112 @ rot.T * scale + shift + rng.normal(0, 2.0, (5, 2))
    crop = arcface_crop(image, pts, size=size)
    ref, params = _skimage_arcface(image, pts, size)
    np.testing.assert_allclose(face_align.arcface_transform(pts, size), params[:2], atol=1e-9)
    assert crop.shape == (size, size, 3)
    assert np.abs(crop.astype(int) - ref).max() <= 1, (size, angle)
    assert (crop == 0).all(axis=-1).any()  # parts of these crops lie outside the photo


def test_arcface_crop_exact_similarity_puts_landmarks_on_the_reference():
  """A photo made by a known similarity from a 112 px template is undone exactly."""
  # A template with a distinct blob at every reference point.
  yy, xx = np.mgrid[0:112, 0:112]
  template = np.zeros((112, 112, 3), np.float64)
  for k, (x, y) in enumerate(RESTYLE_POINTS_112):
    template[..., k % 3] += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2))
  template = np.clip(template, 0, 255).astype(np.uint8)
  angle, scale, shift = 0.3, 2.0, np.array([40.0, 25.0])
  a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  photo_pts = RESTYLE_POINTS_112 @ a.T + shift
  # Render the photo: photo pixel p shows template at a^-1 (p - shift).
  inv = np.linalg.inv(a)
  photo = face_align.warp_affine(template, np.concatenate([inv, -(inv @ shift)[:, None]], 1),
                                 (300, 300))
  crop = arcface_crop(photo, photo_pts)
  # Two bilinear resamplings of sharp blobs (measured: max 6, mean 0.024);
  # swapping left and right landmarks (a mirrored fit) gives mean 8.6.
  err = np.abs(crop.astype(int) - template.astype(int))
  assert err.max() <= 8 and err.mean() < 0.1


def test_arcface_crop_errors():
  pts = RESTYLE_POINTS_112
  with pytest.raises(face_align.AlignmentError, match='uint8'):
    arcface_crop(ASTRONAUT.astype(np.float32) / 255, pts)
  with pytest.raises(face_align.AlignmentError, match=r'\[5, 2\]'):
    arcface_crop(ASTRONAUT, pts[:4])
  with pytest.raises(face_align.AlignmentError, match='NaN'):
    arcface_crop(ASTRONAUT, np.full((5, 2), np.nan))
  with pytest.raises(face_align.AlignmentError, match='same place'):
    arcface_crop(ASTRONAUT, np.zeros((5, 2)))
  grey = arcface_crop(ASTRONAUT[..., 0], pts)  # grey photos become RGB
  assert grey.shape == (112, 112, 3) and (grey[..., 0] == grey[..., 2]).all()

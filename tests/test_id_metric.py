"""The paper's ID protocol (MTCNN align + CurricularFace IR-101) vs an independent reference,
and ``evaluate --id_protocol paper``.

The reference pipeline is built from other code: facenet-pytorch's own MTCNN
(with ReStyle's detector settings) for the landmarks, scikit-image's
least-squares similarity (Umeyama, reference points -> photo, i.e.
least squares in photo pixels as cp2tform) and bilinear ``warp`` for the
112 px crop, torch's ``ToTensor``/``Normalize(0.5, 0.5)`` arithmetic and the
PyTorch IR reference of tests/torch_ref/curricularface.py (random weights)
for the embedding. Photos are scikit-image's bundled ones: ``astronaut()``
(a face), perturbed copies of it at other sizes, and ``chelsea()`` (a cat:
no face at these settings, for this cascade and facenet-pytorch's alike).
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
skdata = pytest.importorskip('skimage.data')
sktransform = pytest.importorskip('skimage.transform')

from interestyle_jax import id_metric  # noqa: E402
from interestyle_jax.convert.__main__ import main as convert_main  # noqa: E402
from interestyle_jax.evaluate import main as evaluate_main  # noqa: E402
from tests import tiny_checkpoint as tc  # noqa: E402
from tests.test_mtcnn import facenet, facenet_dir  # noqa: E402,F401  (fixtures)
from tests.torch_ref.curricularface import RefCurricularFace, randomize  # noqa: E402

# ReStyle's align_trans.REFERENCE_FACIAL_POINTS (96x112 template), moved 8 px
# right by get_reference_facial_points(default_square=True).
REFERENCE_POINTS = np.array([[30.29459953, 51.69630051], [65.53179932, 51.50139999],
                             [48.02519989, 71.73660278], [33.54930115, 92.3655014],
                             [62.72990036, 92.20410156]]) + np.array([8.0, 0.0])
# ReStyle's MTCNN.detect_faces: min face 20 px, thresholds, pyramid factor.
RESTYLE_SETTINGS = dict(min_face_size=20, thresholds=[0.15, 0.25, 0.35], factor=0.707)
TOL = 1e-4


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def mtcnn_dir(facenet_dir, tmp_path_factory):  # noqa: F811
  dst = str(tmp_path_factory.mktemp('mtcnn') / 'mtcnn')
  assert convert_main(['mtcnn', os.path.join(facenet_dir, 'data'), dst]) == 0
  return dst


@pytest.fixture(scope='module')
def torch_net():
  return randomize(RefCurricularFace(units=(1, 1, 2, 1), width=8, emb=32), 4)


@pytest.fixture(scope='module')
def cf_dir(torch_net, tmp_path_factory):
  root = tmp_path_factory.mktemp('cf')
  src = str(root / 'CurricularFace_Backbone.pth')
  torch.save(torch_net.state_dict(), src)
  assert convert_main(['curricularface', src, str(root / 'curricularface')]) == 0
  return str(root / 'curricularface')


@pytest.fixture(scope='module')
def paper(cf_dir, mtcnn_dir):
  return id_metric.load_paper_id(cf_dir, mtcnn_dir)


def perturbed(image, size, seed, sigma=10.0):
  """The photo with Gaussian noise, resized to ``size`` (another resolution)."""
  rng = np.random.default_rng(seed)
  noisy = np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)
  return np.asarray(Image.fromarray(noisy).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope='module')
def photos():
  astronaut = skdata.astronaut()
  return {'astronaut': astronaut, 'noisy384': perturbed(astronaut, 384, 0),
          'noisy256': perturbed(astronaut, 256, 1, 20.0), 'chelsea': skdata.chelsea(),
          'grey256': np.full((256, 256, 3), 128, np.uint8)}


# ----------------------------------------------------------------------------- the reference


@pytest.fixture(scope='module')
def reference(facenet, torch_net):  # noqa: F811
  detector = facenet.MTCNN(keep_all=True, **RESTYLE_SETTINGS)

  def crop(image):
    boxes, probs, points = detector.detect(image, landmarks=True)
    if boxes is None:  # no face (facenet-pytorch then returns [None] probabilities)
      return None
    landmarks = np.asarray(points[int(np.argmax(probs))], np.float64)
    # Reference points -> photo, least squares in photo pixels.
    if hasattr(sktransform.SimilarityTransform, 'from_estimate'):
      tform = sktransform.SimilarityTransform.from_estimate(REFERENCE_POINTS, landmarks)
    else:
      tform = sktransform.SimilarityTransform()
      assert tform.estimate(REFERENCE_POINTS, landmarks)
    out = sktransform.warp(image.astype(np.float64), tform, output_shape=(112, 112), order=1,
                           mode='constant', cval=0.0, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)

  def embed(face):
    x = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
      return torch_net((x - 0.5) / 0.5)[0].double().numpy()

  def score(a, b):
    ca, cb = crop(a), crop(b)
    return np.nan if ca is None or cb is None else float(embed(ca) @ embed(cb))

  return {'crop': crop, 'score': score}


# ----------------------------------------------------------------------------- the protocol


def test_aligned_crop_matches_reference(paper, reference, photos):
  for name in ('astronaut', 'noisy384'):
    ours = paper.align([photos[name]])[0]
    want = reference['crop'](photos[name])
    assert ours.shape == (112, 112, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - want.astype(int))
    # Landmarks agree to ~1e-4 px; a rare rounding tie flips one grey level.
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, name
  assert paper.align([photos['chelsea']]) == [None]
  assert reference['crop'](photos['chelsea']) is None


def test_paper_similarity_matches_reference(paper, reference, photos):
  p = photos
  pairs = [('astronaut', 'noisy384'), ('noisy256', 'astronaut'), ('noisy256', 'noisy384'),
           ('astronaut', 'astronaut'), ('chelsea', 'astronaut'), ('astronaut', 'chelsea')]
  res = paper.similarity([p[a] for a, _ in pairs], [p[b] for _, b in pairs])
  want = np.array([reference['score'](p[a], p[b]) for a, b in pairs])
  np.testing.assert_array_equal(np.isnan(res.scores), np.isnan(want))
  np.testing.assert_allclose(res.scores[:4], want[:4], atol=TOL)
  assert abs(res.scores[3] - 1.0) < 1e-5 and res.scores[0] < 0.999  # not a constant
  assert res.found_a.tolist() == [True] * 4 + [False, True]
  assert res.found_b.tolist() == [True] * 5 + [False]
  assert res.skipped.tolist() == [False] * 4 + [True, True]
  # Float images in [-1, 1] are the same photos.
  floats = paper.similarity([p['astronaut'] / 127.5 - 1.0], [p['noisy384']])
  np.testing.assert_allclose(floats.scores, res.scores[:1], atol=1e-9)
  # ReStyle's summary: mean / std over the scored pairs, skipped ones counted.
  s = id_metric.summarize(res.scores)
  assert (s['n_scored'], s['n_skipped']) == (4, 2)
  np.testing.assert_allclose([s['mean'], s['std']], [np.mean(want[:4]), np.std(want[:4])],
                             atol=TOL)
  assert id_metric.summarize([np.nan]) == {'mean': None, 'std': None, 'n_scored': 0,
                                           'n_skipped': 1}


def test_accumulator_over_iterations(paper, reference, photos, tmp_path):
  """Outputs of 2 iterations vs photo files at their own size; misses counted per side."""
  p = photos
  files = []
  for name in ('astronaut', 'chelsea', 'noisy384'):
    files.append(str(tmp_path / f'{name}.png'))
    Image.fromarray(p[name]).save(files[-1])
  # [T=2, B=3(+1 padding), 256, 256, 3]; iteration 2 of the first image lost its face.
  outputs = np.stack([np.stack([p['noisy256'], p['noisy256'], p['noisy256'], p['grey256']]),
                      np.stack([p['grey256'], p['noisy256'], p['noisy256'], p['grey256']])])
  acc = id_metric.PaperIDAccumulator(paper, n_iters=2)
  acc.add(outputs[:, :2], None, np.array([1, 1]), files[:2])
  acc.add(outputs[:, 2:], None, np.array([1, 0]), files[2:] + ['padding'])
  res = acc.result()
  s_a = reference['score'](p['noisy256'], p['astronaut'])
  s_n = reference['score'](p['noisy256'], p['noisy384'])
  np.testing.assert_allclose(res['mean'], [(s_a + s_n) / 2, s_n], atol=TOL)
  np.testing.assert_allclose(res['std'], [abs(s_a - s_n) / 2, 0.0], atol=TOL)
  assert res['n_scored'] == [2, 1] and res['undetected'] == [1, 2]
  assert res['undetected_outputs'] == [0, 1] and res['undetected_targets'] == 1
  assert res['n_pairs'] == 3
  assert res['no_face'] == [
      {'file': files[0], 'target': False, 'output_iterations': [2]},
      {'file': files[1], 'target': True, 'output_iterations': []}]
  assert id_metric.format_summary(res) == (
      f'paper ID (last iteration): {s_n:.4f} +- 0.0000 over 1 of 3 pairs; 2 undetected '
      '(no face in 1 outputs, 1 photos)')


# ----------------------------------------------------------------------------- evaluate CLI


@pytest.fixture(scope='module')
def restyle_dir(tmp_path_factory):
  return tc.shared(tmp_path_factory, 'restyle', tc.make_restyle_dir)


@pytest.fixture(scope='module')
def face_folder(photos, tmp_path_factory):
  root = tmp_path_factory.mktemp('faces')
  (root / 'images').mkdir()
  (root / 'masks').mkdir()
  for name in ('astronaut', 'chelsea', 'noisy384'):
    Image.fromarray(photos[name]).save(root / 'images' / f'{name}.png')
    Image.fromarray(np.full(photos[name].shape[:2], 255, np.uint8)).save(
        root / 'masks' / f'{name}.png')
  return str(root)


def test_evaluate_paper_protocol(restyle_dir, face_folder, cf_dir, mtcnn_dir, tmp_path, capsys):
  out = str(tmp_path / 'eval.json')
  rc = evaluate_main(['--checkpoint', restyle_dir, '--data', face_folder, '--batch_size', '2',
                      '--id_protocol', 'paper', '--curricularface', cf_dir, '--mtcnn', mtcnn_dir,
                      '--output', out, '--no_progress'])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  result = json.load(open(out))
  t = tc.N_ITERS
  assert result['id_protocol'] == 'paper' and result['n_images'] == 3
  paper = result['id_paper']
  # The tiny random generator draws no faces (32 px noise-like images): every
  # output is undetected, and chelsea.png has no face either.
  assert paper['n_pairs'] == 3 and paper['undetected'] == [3] * t
  assert paper['undetected_outputs'] == [3] * t and paper['undetected_targets'] == 1
  assert paper['n_scored'] == [0] * t and paper['mean'] == [None] * t
  assert result['metrics']['id_paper'] == [None] * t
  no_face = {os.path.basename(m['file']): m for m in paper['no_face']}
  assert set(no_face) == {'astronaut.png', 'chelsea.png', 'noisy384.png'}
  assert no_face['chelsea.png']['target'] and not no_face['astronaut.png']['target']
  assert no_face['astronaut.png']['output_iterations'] == list(range(1, t + 1))
  assert 'id_sim' not in result['metrics']  # the fast protocol's metric is not mixed in
  assert 'id_paper' in captured.out and 'n/a' in captured.out
  assert 'paper ID (last iteration): n/a over 0 of 3 pairs; 3 undetected' in captured.out
  # Default: the fast protocol, no paper fields.
  assert evaluate_main(['--checkpoint', restyle_dir, '--data', face_folder, '--output', out,
                        '--no_progress']) == 0
  capsys.readouterr()
  result = json.load(open(out))
  assert result['id_protocol'] == 'fast' and 'id_paper' not in result


def test_evaluate_id_option_errors(restyle_dir, face_folder, cf_dir, mtcnn_dir, tmp_path,
                                   tmp_path_factory, capsys):
  arcface_dir = tc.shared(tmp_path_factory, 'arcface', tc.make_arcface_dir)
  base = ['--checkpoint', restyle_dir, '--data', face_folder]
  cases = [
      (['--id_protocol', 'paper', '--mtcnn', mtcnn_dir], '--id_protocol paper needs '
       '--curricularface: `python -m interestyle_jax.convert curricularface'),
      (['--id_protocol', 'paper'], 'needs --curricularface and --mtcnn'),
      (['--id_protocol', 'paper', '--curricularface', cf_dir], 'needs --mtcnn'),
      (['--id_protocol', 'paper', '--curricularface', cf_dir, '--mtcnn', mtcnn_dir,
        '--arcface', arcface_dir], '--arcface is the fast protocol'),
      (['--curricularface', cf_dir, '--mtcnn', mtcnn_dir],
       '--curricularface and --mtcnn only serve --id_protocol paper'),
      (['--mtcnn', mtcnn_dir, '--arcface', arcface_dir], '--mtcnn only serve'),
      (['--id_protocol', 'paper', '--curricularface', arcface_dir, '--mtcnn', mtcnn_dir],
       "--curricularface: " + os.path.abspath(arcface_dir) + " holds a 'arcface' model, "
       'expected curricularface; convert the right checkpoint with `python -m '
       'interestyle_jax.convert curricularface'),
      (['--id_protocol', 'paper', '--curricularface', cf_dir, '--mtcnn', cf_dir],
       "--mtcnn: " + os.path.abspath(cf_dir) + " holds a 'curricularface' model, expected mtcnn"),
      (['--id_protocol', 'paper', '--curricularface', str(tmp_path / 'nope'), '--mtcnn',
        mtcnn_dir], '--curricularface ' + str(tmp_path / 'nope') + ' does not exist'),
  ]
  out = tmp_path / 'e.json'
  for argv, message in cases:
    assert evaluate_main(base + argv + ['--output', str(out)]) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert message in err, (argv, err)
  with pytest.raises(SystemExit):  # argparse: only fast / paper
    evaluate_main(base + ['--id_protocol', 'exact'])
  assert 'invalid choice' in capsys.readouterr().err
  assert not out.exists()

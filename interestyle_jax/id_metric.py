"""The paper's ID similarity: ReStyle's ``scripts/calc_id_loss_parallel.py`` protocol.

The IntereStyle paper (like ReStyle and pSp) reports identity preservation as
ReStyle's script computes it, for each pair (inversion, original photo):

1. detect the face with MTCNN and align it to 112x112 (``MTCNN.align``: the
   first face the detector returns, i.e. the one with the highest O-Net
   probability after the last NMS; the 5 landmarks are mapped onto the
   ArcFace reference points by a least-squares similarity and the photo is
   warped bilinearly, :func:`interestyle_jax.align.arcface_crop`);
2. normalise the uint8 crop to [-1, 1] (``ToTensor`` then ``Normalize(0.5, 0.5)``);
3. embed it with CurricularFace's IR-101 (``IR_101(112)`` from
   ``CurricularFace_Backbone.pth``, :mod:`interestyle_jax.models.curricularface`);
4. score the pair by the dot product of the two unit embeddings.

A pair where either image has no detected face is skipped (ReStyle prints
``skipping`` and leaves it out of the mean); here it is also counted. The
reported number is the plain mean over the scored pairs (and their standard
deviation, ``np.std``), per refinement iteration.

Detector settings are ReStyle's ``MTCNN.detect_faces`` (smallest face 20 px,
thresholds 0.15 / 0.25 / 0.35, pyramid factor 0.707), lower than
facenet-pytorch's defaults, so that the face of nearly every photo is found.
The cascade is this project's MTCNN (:mod:`interestyle_jax.models.mtcnn`,
facenet-pytorch's arithmetic), not the TropComplique copy ReStyle ships
(PIL-bilinear pyramid and crops): on a clear face the landmarks differ by
about a pixel, and on faceless photos the weak false positives of the two
differ.

This is a host-side loop (detection and alignment in NumPy per image) around
a jit-compiled embedding; :class:`PaperIDAccumulator` feeds it the
evaluation's batches.
"""

import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax.face_align import AlignmentError, arcface_crop

# ReStyle's models/mtcnn/mtcnn.py: MTCNN.detect_faces' defaults.
RESTYLE_MTCNN = dict(min_face_size=20.0, thresholds=(0.15, 0.25, 0.35), factor=0.707)
# Faces embedded per call; the last chunk is padded, so one program serves all.
EMBED_CHUNK = 8


def as_uint8(image) -> np.ndarray:
  """uint8 passes through; float images in [-1, 1] are rounded to 0..255.

  The rounding is :func:`interestyle_jax.editing.to_uint8`'s, i.e. the PNG
  ``invert`` writes (ReStyle's ``tensor2im`` truncates instead: at most one
  grey level apart).
  """
  from interestyle_jax.editing import to_uint8  # pylint: disable=g-import-not-at-top
  return to_uint8(image)


class PairScores(NamedTuple):
  """Per-pair results of :meth:`PaperID.similarity`.

  Attributes:
    scores: ``[N]`` float64 cosines; NaN where the pair was skipped.
    found_a: ``[N]`` bool, a face was detected in the first image.
    found_b: ``[N]`` bool, a face was detected in the second image.
  """
  scores: np.ndarray
  found_a: np.ndarray
  found_b: np.ndarray

  @property
  def skipped(self) -> np.ndarray:
    """``[N]`` bool: pairs left out of the mean (a face missing on either side)."""
    return ~(self.found_a & self.found_b)


class PaperID:
  """MTCNN alignment + CurricularFace IR-101 embedding (see the module docstring).

  Attributes:
    net: ``(CurricularFace module, variables)``.
    detector: an :class:`interestyle_jax.models.mtcnn.MTCNN`.
    size: the aligned crop side (the network's input size, 112).
  """

  def __init__(self, net: Tuple[Any, Any], detector):
    module = net[0]
    self.net = net
    self.detector = detector
    self.size = int(module.input_size)
    self._apply = jax.jit(module.apply)

  def align(self, images: Sequence[np.ndarray]) -> List[Optional[np.ndarray]]:
    """Detects and aligns the most probable face of each image.

    Args:
      images: uint8 ``[H, W, 3]`` images (or floats in [-1, 1]); a
        ``[B, H, W, 3]`` array is detected as one batch.

    Returns:
      Per image, the uint8 ``[size, size, 3]`` crop, or None when no face
      was found.
    """
    images = [as_uint8(im) for im in images]
    same = len({im.shape for im in images}) == 1
    # Same-size images (a batch of generator outputs) share the pyramid passes.
    found = (self.detector.detect(np.stack(images)) if same and images else
             [self.detector.detect(im) for im in images])
    crops = []
    for im, faces in zip(images, found):
      crop = None
      if len(faces.probs):
        # ReStyle's align() takes landmarks[0]: its NMS lists the most probable first.
        best = int(np.argmax(faces.probs))
        try:
          crop = arcface_crop(im, faces.landmarks[best], self.size)
        except AlignmentError:  # degenerate landmarks: no usable face either
          crop = None
      crops.append(crop)
    return crops

  def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
    """IR-101 embeddings of aligned crops.

    Args:
      crops: uint8 ``[size, size, 3]`` crops (or a ``[N, size, size, 3]`` array).

    Returns:
      ``[N, D]`` float64 unit embeddings.
    """
    x = np.asarray(crops, np.uint8).reshape(-1, self.size, self.size, 3)
    # ToTensor (/255) then Normalize(0.5, 0.5), as ReStyle's id_transform.
    x = (x.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    n = len(x)
    pad = -n % EMBED_CHUNK
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)])
    out = [np.asarray(self._apply(self.net[1], jnp.asarray(x[i:i + EMBED_CHUNK])))
           for i in range(0, len(x), EMBED_CHUNK)]
    return np.concatenate(out)[:n].astype(np.float64) if out else np.zeros((0, 0))

  def similarity(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> PairScores:
    """The paper's ID similarity of each pair ``(a[i], b[i])``.

    Args:
      a: images (e.g. inversions), uint8 ``[H, W, 3]`` or floats in [-1, 1].
      b: as many images (e.g. the originals; any sizes).

    Returns:
      :class:`PairScores` (NaN score where a face is missing).
    """
    if len(a) != len(b):
      raise ValueError(f'{len(a)} images vs {len(b)}: pairs need as many of each')
    return self.score_crops(self.align(a), self.align(b))

  def score_crops(self, crops_a: Sequence[Optional[np.ndarray]],
                  crops_b: Sequence[Optional[np.ndarray]]) -> PairScores:
    """Cosines of aligned crops, pairs with a None crop skipped.

    Args:
      crops_a: crops from :meth:`align` (None: no face).
      crops_b: as many.

    Returns:
      :class:`PairScores`.
    """
    found_a = np.array([c is not None for c in crops_a], bool)
    found_b = np.array([c is not None for c in crops_b], bool)
    both = np.flatnonzero(found_a & found_b)
    scores = np.full(len(found_a), np.nan)
    if len(both):
      ea = self.embed([crops_a[i] for i in both])
      eb = self.embed([crops_b[i] for i in both])
      scores[both] = np.sum(ea * eb, axis=1)
    return PairScores(scores, found_a, found_b)


def summarize(scores: np.ndarray) -> Dict[str, Any]:
  """ReStyle's summary of per-pair scores (NaN = skipped).

  Args:
    scores: ``[N]`` scores.

  Returns:
    ``{'mean', 'std', 'n_scored', 'n_skipped'}``; mean and std are None when
    nothing was scored.
  """
  scores = np.asarray(scores, np.float64)
  ok = scores[~np.isnan(scores)]
  return {'mean': float(np.mean(ok)) if len(ok) else None,
          'std': float(np.std(ok)) if len(ok) else None,
          'n_scored': int(len(ok)), 'n_skipped': int(len(scores) - len(ok))}


def read_photo(path: str) -> np.ndarray:
  """A photo file as uint8 RGB at its own resolution (the data pipeline's decoding)."""
  from interestyle_jax.data import folder  # pylint: disable=g-import-not-at-top
  return folder.to_rgb(folder._open(folder._read_bytes(path)))  # pylint: disable=protected-access


class PaperIDAccumulator:
  """Collects the paper ID similarity of every refinement iteration over batches.

  The evaluated pair is (generator output at iteration t at the generator's
  resolution, the original photo file at its own resolution): the closest
  thing to ReStyle's script, which compares the saved inference outputs
  (``--resize_outputs`` off: the 1024 px generator output) with the
  CelebA-HQ originals. Without files (``--data synthetic``) the target is
  the batch's target image.
  """

  def __init__(self, paper_id: PaperID, n_iters: int):
    self.paper_id = paper_id
    self.n_iters = int(n_iters)
    self.scores: List[List[float]] = [[] for _ in range(self.n_iters)]
    self.no_face: Dict[str, Dict[str, Any]] = {}
    self.n_pairs = 0

  def add(self, outputs: np.ndarray, targets: np.ndarray, valid: np.ndarray,
          paths: Optional[Sequence[str]] = None) -> None:
    """Scores one evaluation batch.

    Args:
      outputs: ``[T, B, R, R, 3]`` uint8 (or [-1, 1]) outputs of every iteration.
      targets: ``[B, S, S, 3]`` batch targets in [-1, 1] (used without ``paths``).
      valid: ``[B]`` 1 for real rows, 0 for padding.
      paths: the photo file of each real row; the target is read from it.
    """
    n = int(np.sum(valid))
    names = list(paths[:n]) if paths is not None else [
        f'heldout[{self.n_pairs + i}]' for i in range(n)]
    photos = ([read_photo(p) for p in paths[:n]] if paths is not None
              else [as_uint8(t) for t in np.asarray(targets)[:n]])
    target_crops = self.paper_id.align(photos)
    for i, crop in enumerate(target_crops):
      if crop is None:
        self._missing(names[i])['target'] = True
    outputs = np.asarray(outputs)
    for t in range(self.n_iters):
      res = self.paper_id.score_crops(self.paper_id.align(outputs[t, :n]), target_crops)
      self.scores[t].extend(res.scores.tolist())
      for i in np.flatnonzero(~res.found_a):
        self._missing(names[i])['output_iterations'].append(t + 1)
    self.n_pairs += n

  def _missing(self, name: str) -> Dict[str, Any]:
    return self.no_face.setdefault(name, {'file': name, 'target': False,
                                          'output_iterations': []})

  def result(self) -> Dict[str, Any]:
    """Per-iteration summary for the evaluation JSON.

    Returns:
      ``{'mean': [T], 'std': [T], 'n_scored': [T], 'undetected': [T],
      'undetected_outputs': [T], 'undetected_targets', 'n_pairs', 'no_face':
      [{'file', 'target', 'output_iterations'}]}``; ``undetected`` counts
      the skipped pairs (no face in the output, the target or both).
    """
    per_t = [summarize(s) for s in self.scores]
    return {
        'protocol': 'paper: MTCNN-aligned 112 px faces, CurricularFace IR-101 cosine '
                    '(ReStyle scripts/calc_id_loss_parallel.py)',
        'mean': [s['mean'] for s in per_t], 'std': [s['std'] for s in per_t],
        'n_scored': [s['n_scored'] for s in per_t],
        'undetected': [s['n_skipped'] for s in per_t],
        'undetected_outputs': [sum(t + 1 in m['output_iterations'] for m in self.no_face.values())
                               for t in range(self.n_iters)],
        'undetected_targets': sum(m['target'] for m in self.no_face.values()),
        'n_pairs': self.n_pairs,
        'no_face': sorted(self.no_face.values(), key=lambda m: m['file'])}


def format_summary(res: Dict[str, Any]) -> str:
  """One line for the evaluation printout.

  Args:
    res: :meth:`PaperIDAccumulator.result`.

  Returns:
    e.g. ``paper ID (last iteration): 0.6231 +- 0.0712 over 2820 of 2824 pairs;
    4 undetected (no face in 3 outputs, 1 photos)``.
  """
  mean, std = res['mean'][-1], res['std'][-1]
  score = 'n/a' if mean is None else f'{mean:.4f} +- {std:.4f}'
  return (f'paper ID (last iteration): {score} over {res["n_scored"][-1]} of {res["n_pairs"]} '
          f'pairs; {res["undetected"][-1]} undetected (no face in '
          f'{res["undetected_outputs"][-1]} outputs, {res["undetected_targets"]} photos)')


ID_FLAGS = ('--curricularface', '--mtcnn')


def check_args(id_protocol: str, arcface: Optional[str], curricularface: Optional[str],
               mtcnn: Optional[str]) -> Optional[str]:
  """Validates evaluate's ID options.

  Args:
    id_protocol: 'fast' or 'paper'.
    arcface: ``--arcface``.
    curricularface: ``--curricularface``.
    mtcnn: ``--mtcnn``.

  Returns:
    A one-line error, or None when the combination is usable.
  """
  if id_protocol == 'paper':
    if arcface:
      return ('--arcface is the fast protocol\'s network; --id_protocol paper uses '
              '--curricularface and --mtcnn instead (drop --arcface)')
    missing = [f for f, v in zip(ID_FLAGS, (curricularface, mtcnn)) if not v]
    if missing:
      how = {'--curricularface': 'curricularface CurricularFace_Backbone.pth DIR',
             '--mtcnn': 'mtcnn SRC DIR'}
      return (f'--id_protocol paper needs {" and ".join(missing)}: '
              + '; '.join(f'`python -m interestyle_jax.convert {how[f]}`' for f in missing))
    return None
  given = [f for f, v in zip(ID_FLAGS, (curricularface, mtcnn)) if v]
  if given:
    return (f'{" and ".join(given)} only serve --id_protocol paper; add it, or use '
            '--arcface for the fast ID similarity')
  return None


def load_paper_id(curricularface: str, mtcnn: str, **detector_settings) -> PaperID:
  """Loads the two networks of the paper protocol, checking they are usable.

  Args:
    curricularface: a ``convert curricularface`` directory.
    mtcnn: a ``convert mtcnn`` directory.
    **detector_settings: override :data:`RESTYLE_MTCNN` entries.

  Returns:
    A :class:`PaperID`.

  Raises:
    FileNotFoundError: a directory does not exist.
    artifacts.ArtifactError: a directory of the wrong kind, damaged, or whose
      arrays do not fit its model.json (the message names the flag).
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from interestyle_jax.models.curricularface import load_curricularface
  from interestyle_jax.models.mtcnn import load_mtcnn  # pylint: disable=g-import-not-at-top
  nets = []
  for flag, path, loader in (('--curricularface', curricularface, load_curricularface),
                             ('--mtcnn', mtcnn, load_mtcnn)):
    if not os.path.exists(path):
      raise FileNotFoundError(f'{flag} {path} does not exist')
    try:
      nets.append(loader(path, **(dict(RESTYLE_MTCNN, **detector_settings)
                                  if flag == '--mtcnn' else {})))
    except artifacts.ArtifactError as e:
      raise artifacts.ArtifactError(f'{flag}: {e}') from e
    except (KeyError, TypeError, ValueError) as e:  # model.json fields the module does not take
      raise artifacts.ArtifactError(f'{flag} {path} is not usable ({type(e).__name__}: {e}); '
                                    'convert it again') from e
  (module, variables), detector = nets
  size = module.input_size
  try:  # shapes only: variables that do not fit model.json fail here, not mid-run
    jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [''])[0][:300]
    raise artifacts.ArtifactError(
        f'--curricularface {curricularface}: its variables do not fit the model in its '
        f'model.json ({type(e).__name__}: {first}); convert it again with `python -m '
        'interestyle_jax.convert curricularface`') from e
  return PaperID((module, variables), detector)

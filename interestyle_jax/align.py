"""``python -m interestyle_jax.align``: raw photos in, FFHQ-aligned faces out.

    python -m interestyle_jax.align --mtcnn ckpt/mtcnn --input photos/ \\
        --output aligned/ [--size 1024]

Every face MTCNN finds in ``photos/a/b.jpg`` is aligned as FFHQ was
(:func:`interestyle_jax.face_align.ffhq_align`) and written as
``aligned/a/b.png``; a photo with several faces gives ``b_0.png``,
``b_1.png``, … (largest face first). ``aligned/summary.json`` lists, per
photo, the faces written with their box, probability and landmarks, the
photos without a face, and the files that could not be read. Exit status: 0
when a face was written, 1 when no photo held a face, 2 for an unusable
argument (MTCNN directory, input, output), checked before any photo is read.

The library part (``arcface_crop``, ``ffhq_align``, …) lives in
:mod:`interestyle_jax.face_align` and is re-exported here; the helpers below
(:func:`read_photo`, :func:`align_faces`, :func:`face_stems`) are shared with
``python -m interestyle_jax.invert --align``.
"""

import argparse
import os
import sys
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set

import numpy as np
from PIL import Image, ImageOps

from interestyle_jax import artifacts, cli_utils
from interestyle_jax.data import folder
from interestyle_jax.face_align import (ARCFACE_REFERENCE_POINTS, ARCFACE_SIZE,  # noqa: F401
                                        AlignmentError, FFHQCrop, arcface_crop, arcface_transform,
                                        ffhq_align, ffhq_crop)

__all__ = ['ARCFACE_REFERENCE_POINTS', 'ARCFACE_SIZE', 'AlignedFace', 'AlignmentError', 'FFHQCrop',
           'PhotoError', 'align_faces', 'arcface_crop', 'arcface_transform', 'face_stems',
           'ffhq_align', 'ffhq_crop', 'load_detector', 'main', 'read_photo']

SUMMARY_FILE = 'summary.json'
NO_FACE = 'no face found (MTCNN)'


class PhotoError(ValueError):
  """A photo cannot be decoded (the message says why)."""


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


def read_photo(path: str) -> np.ndarray:
  """Reads a photo as uint8 RGB, upright.

  Camera photos often store the sensor's orientation in EXIF and rely on
  the viewer to rotate them; MTCNN finds few faces on their side, so the
  EXIF orientation is applied first.

  Args:
    path: image file (any format Pillow reads; grey / RGBA become RGB).

  Returns:
    uint8 ``[H, W, 3]``.

  Raises:
    PhotoError: the file cannot be decoded.
  """
  try:
    with Image.open(path) as img:
      img.load()  # decode now: a truncated file fails here
      return folder.to_rgb(ImageOps.exif_transpose(img))
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises OSError, SyntaxError, ValueError… for damaged files.
    raise PhotoError(f'unreadable image ({type(e).__name__}: {e})') from e


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
  from interestyle_jax.models.mtcnn import load_mtcnn  # pylint: disable=g-import-not-at-top
  try:
    return load_mtcnn(path, **kwargs)
  except artifacts.ArtifactError as e:
    hint = '' if 'convert mtcnn' in str(e) else (
        '; an MTCNN directory is made by `python -m interestyle_jax.convert mtcnn SRC DIR` '
        '(SRC: the facenet-pytorch wheel or its pnet/rnet/onet files)')
    raise artifacts.ArtifactError(f'{flag} {path}: {e}{hint}') from e


def check_outputs(out_dir: str, stems: Iterable[str], suffixes: Sequence[str] = ('.png',)) -> None:
  """Checks, before any work, that the outputs of single-face photos can be written.

  Args:
    out_dir: the output folder.
    stems: output stems of the photos.
    suffixes: files written per stem.

  Raises:
    cli_utils.OutputPathError: ``out_dir`` (or a sub-folder) cannot be
      written, or a folder stands where an output file goes.
  """
  stems = list(stems)
  cli_utils.check_output_dir(out_dir, '--output')
  for rel in [SUMMARY_FILE] + [s + suf for s in stems for suf in suffixes]:
    if os.path.isdir(os.path.join(out_dir, rel)):
      raise cli_utils.OutputPathError(
          f'--output {out_dir} holds a folder {rel} where an output file goes; move it away '
          'or choose another --output')
  for sub in sorted({os.path.dirname(s) for s in stems} - {''}):
    cli_utils.check_output_dir(os.path.join(out_dir, sub), f'--output {out_dir}: sub-folder')


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.align', formatter_class=cli_utils.HelpFormatter,
      description='Find the faces in photos with MTCNN and write each one aligned as FFHQ '
                  '(NVlabs ffhq-dataset recipe) as a PNG: photo.png, or photo_0.png, '
                  'photo_1.png, … (largest first), plus summary.json. Exit status: 0 when '
                  'a face was written, 1 when no photo held one, 2 for an unusable argument.')
  p.add_argument('--mtcnn', required=True,
                 help='MTCNN directory from `python -m interestyle_jax.convert mtcnn SRC DIR`')
  p.add_argument('--input', required=True,
                 help='a photo or a folder of photos (searched recursively; '
                      + '/'.join(folder.IMAGE_EXTS) + ')')
  p.add_argument('--output', required=True, help='output folder (created)')
  p.add_argument('--size', type=int, default=1024, help='side of the aligned faces in px')
  p.add_argument('--min_face_size', type=float, default=20.0,
                 help='smallest face MTCNN looks for, in photo px')
  p.add_argument('--no_padding', action='store_true',
                 help='fill a crop that leaves the photo with black instead of the '
                      "recipe's blurred reflection")
  p.add_argument('--quiet', action='store_true', help='no line per photo')
  return p


def main(argv=None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    0 when at least one face was written, 1 when none was found, 2 for an
    unusable argument (checked before any photo is read).
  """
  from interestyle_jax import editing  # pylint: disable=g-import-not-at-top
  from interestyle_jax.invert import find_inputs  # pylint: disable=g-import-not-at-top
  args = build_parser().parse_args(argv)
  if args.size < 1:
    return cli_utils.usage_error(f'--size must be >= 1, got {args.size}')
  if args.min_face_size <= 0:
    return cli_utils.usage_error(f'--min_face_size must be > 0, got {args.min_face_size}')
  try:
    cli_utils.check_output_dir(args.output, '--output')
    found = find_inputs(args.input, exclude=args.output)
    check_outputs(args.output, [stem for _, stem in found.inputs])
    detector = load_detector(args.mtcnn, min_face_size=args.min_face_size)
  except (FileNotFoundError, artifacts.ArtifactError, cli_utils.OutputPathError) as e:
    return cli_utils.usage_error(e)

  taken = {stem for _, stem in found.inputs}
  photos, no_face, skipped, n_faces = [], [], [], 0
  for k, (file, stem) in enumerate(found.inputs):
    try:
      photo = read_photo(file)
    except PhotoError as e:
      skipped.append((file, str(e)))
      if not args.quiet:
        print(f'[{k + 1}/{len(found.inputs)}] {file}: unreadable, skipped', flush=True)
      continue
    faces = align_faces(detector, photo, args.size, enable_padding=not args.no_padding)
    records = []
    for name, face in zip(face_stems(stem, len(faces), taken), faces):
      target = os.path.join(args.output, name + '.png')
      try:
        editing.save_png(face.image, target)
      except OSError as e:  # e.g. a folder named like a numbered face (not checked upfront)
        skipped.append((file, f'cannot write {target} ({type(e).__name__}: {e})'))
        continue
      records.append(face.record(name + '.png'))
    photos.append({'file': file, 'size': [photo.shape[1], photo.shape[0]], 'faces': records})
    n_faces += len(records)
    if not faces:
      no_face.append(file)
    if not args.quiet:
      what = (f'{len(faces)} face(s) -> ' + ', '.join(os.path.join(args.output, r['output'])
                                                      for r in records)) if faces else 'no face'
      print(f'[{k + 1}/{len(found.inputs)}] {file}: {what}', flush=True)

  if found.ignored:
    print(f'ignored {len(found.ignored)} file(s) without an image extension '
          f'({", ".join(folder.IMAGE_EXTS)}): {folder.list_examples(found.ignored)}')
  if found.duplicates:
    print(f'ignored {len(found.duplicates)} symlink(s) to images or folders already '
          f'searched: {folder.list_examples(found.duplicates)}')
  for file in no_face:
    print(f'no face found in {file}', file=sys.stderr)
  for file, reason in skipped:
    print(f'skipped {file}: {reason}', file=sys.stderr)
  if photos:
    summary = {'mtcnn': args.mtcnn, 'input': args.input, 'size': args.size,
               'faces': n_faces, 'photos': photos, 'no_face': no_face,
               'skipped': [{'file': f, 'reason': r} for f, r in skipped]}
    cli_utils.save_json(summary, os.path.join(args.output, SUMMARY_FILE))
  with_faces = len(photos) - len(no_face)
  print(f'aligned {n_faces} face(s) from {with_faces} of {len(found.inputs)} photo(s) into '
        f'{args.output} ({args.size}x{args.size})'
        + (f'; no face in {len(no_face)}' if no_face else '')
        + (f'; skipped {len(skipped)} unreadable' if skipped else ''))
  if not n_faces:
    print('error: no face found' + (' in any photo' if photos else
          f' (no readable {"/".join(folder.IMAGE_EXTS)} file under {args.input})'),
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())

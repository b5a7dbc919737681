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

The library part lives in :mod:`interestyle_jax.face_align` (detection and
alignment, shared with ``invert --align``) and :mod:`interestyle_jax.photos`
(finding and decoding photos); the names users import from here are
re-exported.
"""

import argparse
import os
import sys

from interestyle_jax import artifacts, cli_utils, editing, photos
from interestyle_jax.data import folder
# The library names this command's users import from it (the README's
# `from interestyle_jax.align import arcface_crop, ffhq_align`).
from interestyle_jax.face_align import (ARCFACE_REFERENCE_POINTS, ARCFACE_SIZE,  # noqa: F401
                                        NO_FACE, AlignedFace, AlignmentError, FFHQCrop,
                                        align_faces, arcface_crop, arcface_transform,
                                        face_stems, ffhq_align, ffhq_crop, load_detector)
from interestyle_jax.photos import PhotoError, read_photo  # noqa: F401

__all__ = ['ARCFACE_REFERENCE_POINTS', 'ARCFACE_SIZE', 'AlignedFace', 'AlignmentError', 'FFHQCrop',
           'PhotoError', 'align_faces', 'arcface_crop', 'arcface_transform', 'face_stems',
           'ffhq_align', 'ffhq_crop', 'load_detector', 'main', 'read_photo']

SUMMARY_FILE = 'summary.json'


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
  args = build_parser().parse_args(argv)
  if args.size < 1:
    return cli_utils.usage_error(f'--size must be >= 1, got {args.size}')
  if args.min_face_size <= 0:
    return cli_utils.usage_error(f'--min_face_size must be > 0, got {args.min_face_size}')
  try:
    cli_utils.check_output_dir(args.output, '--output')
    found = photos.find_inputs(args.input, exclude=args.output)
    cli_utils.check_outputs(args.output, [stem for _, stem in found.inputs], ('.png',),
                            SUMMARY_FILE)
    detector = load_detector(args.mtcnn, min_face_size=args.min_face_size)
  except (FileNotFoundError, artifacts.ArtifactError, cli_utils.OutputPathError) as e:
    return cli_utils.usage_error(e)

  taken = {stem for _, stem in found.inputs}
  done, no_face, n_faces = [], [], 0
  skipped = list(found.not_files)
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
    done.append({'file': file, 'size': [photo.shape[1], photo.shape[0]], 'faces': records})
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
  if done:
    summary = {'mtcnn': args.mtcnn, 'input': args.input, 'size': args.size,
               'faces': n_faces, 'photos': done, 'no_face': no_face,
               'skipped': [{'file': f, 'reason': r} for f, r in skipped]}
    cli_utils.save_json(summary, os.path.join(args.output, SUMMARY_FILE))
  with_faces = len(done) - len(no_face)
  print(f'aligned {n_faces} face(s) from {with_faces} of {len(found.inputs)} photo(s) into '
        f'{args.output} ({args.size}x{args.size})'
        + (f'; no face in {len(no_face)}' if no_face else '')
        + (f'; skipped {len(skipped)} unreadable (listed above)' if skipped else ''))
  if not n_faces:
    print('error: no face found' + (' in any photo' if done else
          f' (no readable {"/".join(folder.IMAGE_EXTS)} file under {args.input})'),
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())

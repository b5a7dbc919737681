"""``python -m interestyle_jax.invert``: invert a photo or a folder of photos.

    python -m interestyle_jax.invert --checkpoint ckpt/interestyle \\
        --input photos/ --output out/ [--n_iters 5] [--batch_size 4]

For every readable image ``photos/a/b.jpg`` it writes

* ``out/a/b.png``: the final reconstruction (generator resolution),
* ``out/a/b_iterations.png``: a strip of the input and the reconstruction
  after each iteration (encoder size),
* ``out/a/b.npy``: the W+ latent ``[n_styles, D]`` (float32), ready for
  ``python -m interestyle_jax.edit``,

and ``out/summary.json`` listing what was inverted and what was skipped.
Unreadable files and images smaller than the encoder input are skipped and
reported at the end. Exit status: 0 when at least one image was inverted, 1
when none could be, 2 for an unusable checkpoint or argument (including an
output path that cannot be written, checked before any work).

Images are resized to the encoder size with the data pipeline's antialiased
bilinear filter (``data/folder.py``), as the training data was; aligned,
square face crops (FFHQ / CelebA-HQ style) are what the encoder expects, and a
non-square image is squashed (with a warning naming it).

With ``--align --mtcnn DIR`` the inputs are raw photos: every face MTCNN
finds is aligned as FFHQ was (:mod:`interestyle_jax.align`) at the
generator's resolution, written as ``out/a/b_aligned.png``, and inverted;
several faces in one photo are numbered ``b_0``, ``b_1``, … (largest
first), and a photo without a face is skipped with that reason.

Folders are searched recursively; symlinked folders are followed, but each
real folder and each real file is visited once, so a link cycle (``self ->
.``) or a second link to the same photos inverts nothing twice.
"""

import argparse
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from interestyle_jax import artifacts, cli_utils, editing, face_align
from interestyle_jax.data import folder
# Importable from here as before (the notebook reads images with read_image).
from interestyle_jax.photos import (Found, ImageError, find_inputs, read_image,  # noqa: F401
                                    read_image_sized, read_photo, squash_warning, too_small)

SUMMARY_FILE = 'summary.json'
OUTPUT_SUFFIXES = ('.png', '_iterations.png', '.npy')
ALIGNED_SUFFIX = '_aligned.png'  # with --align: the FFHQ-aligned face that was inverted


class Report(NamedTuple):
  """What :func:`invert_files` did.

  Attributes:
    inverted: output stems (paths relative to the output folder, no extension).
    skipped: ``(input path, reason)`` pairs.
    squashed: ``(input path, (width, height))`` of the non-square images that
      were resized to a square anyway.
    faces: with ``--align``, one summary record per face found (``file``,
      ``output``, ``box``, ``prob``, ``landmarks``).
    stopped: why the run stopped before the end (a full disk), or None.
  """
  inverted: List[str]
  skipped: List[Tuple[str, str]]
  squashed: Sequence[Tuple[str, Tuple[int, int]]] = ()
  faces: Sequence[Dict] = ()
  stopped: Optional[str] = None


def _write(out_dir: str, stem: str, recon, strip, latent) -> None:
  """The three outputs of one image, all or none (a failed write removes the others)."""
  base = os.path.join(out_dir, stem)
  written = []
  try:
    for suffix, save, value in (('.png', editing.save_png, recon),
                                ('_iterations.png', editing.save_png, strip),
                                ('.npy', cli_utils.save_npy, np.asarray(latent, np.float32))):
      save(value, base + suffix)
      written.append(base + suffix)
  except OSError:
    for path in written:
      os.remove(path)
    raise


def invert_files(inverter, inputs: List[Tuple[str, str]], out_dir: str,
                 n_iters: Optional[int] = None, batch_size: int = 4,
                 progress: bool = True, detector=None) -> Report:
  """Inverts image files batch by batch and writes the outputs.

  With a ``detector`` the files are raw photos: each face is FFHQ-aligned
  at the generator resolution, written as ``<stem>_aligned.png`` and
  inverted (:func:`_aligned_faces`).

  Args:
    inverter: an ``inference.Inverter``.
    inputs: ``(file, output stem)`` pairs (see :func:`find_inputs`).
    out_dir: output folder.
    n_iters: refinement iterations (default: the model's).
    batch_size: images per encoder call; the last batch is padded so a
      single compiled program serves every batch.
    progress: show a tqdm progress bar (photos done).
    detector: an MTCNN (``face_align.load_detector``) to align raw photos with.

  Returns:
    A :class:`Report`.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  size = inverter.encoder_size
  inverted, skipped, squashed, faces = [], [], [], []
  taken = {stem for _, stem in inputs}
  bar = tqdm(total=len(inputs), unit='img', disable=not progress, desc='inverting')
  pending: List[Tuple[str, np.ndarray]] = []

  def flush():
    imgs = np.stack([im for _, im in pending])
    pad = batch_size - len(imgs)
    if pad:
      imgs = np.concatenate([imgs, np.repeat(imgs[-1:], pad, axis=0)])
    out = inverter.invert(imgs, n_iters=n_iters)
    # One device-to-host copy per batch, then NumPy slicing per image.
    recons, latents = np.asarray(out.images), np.asarray(out.latents)
    iters = np.swapaxes(np.asarray(out.iterations), 0, 1)  # [B, T, R, R, 3]
    for k, (stem, image) in enumerate(pending):
      strip = editing.image_grid(np.concatenate([image[None], editing.resize(iters[k], size)]))
      _write(out_dir, stem, recons[k], strip, latents[k])
      inverted.append(stem)
    if detector is None:
      bar.update(len(pending))
    pending.clear()

  def run():
    for file, stem in inputs:
      try:
        if detector is not None:
          for name, image, record in _aligned_faces(detector, file, stem, taken, inverter,
                                                    out_dir):
            pending.append((name, folder.resize_image(image, size)))
            faces.append(record)
            if len(pending) == batch_size:
              flush()
          bar.update(1)
          continue
        image, (w, h) = read_image_sized(file, size)
        pending.append((stem, image))
        if w != h:
          squashed.append((file, (w, h)))
      except ImageError as e:
        skipped.append((file, str(e)))
        bar.update(1)
      if len(pending) == batch_size:
        flush()
    if pending:
      flush()

  try:
    run()
  except OSError as e:
    if not artifacts.is_disk_full(e):
      raise
    # What was written stays; the batch being written is lost (atomic writes).
    bar.close()
    return Report(inverted, skipped, squashed, faces, str(artifacts.NoSpaceError(out_dir)))
  bar.close()
  return Report(inverted, skipped, squashed, faces)


def _aligned_faces(detector, file: str, stem: str, taken, inverter, out_dir: str):
  """Detects and FFHQ-aligns the faces of a raw photo; writes ``<name>_aligned.png``.

  Args:
    detector: the MTCNN.
    file: the photo.
    stem: its output stem.
    taken: output stems in use (updated).
    inverter: the inverter (its generator resolution is the crop size).
    out_dir: output folder.

  Returns:
    ``(output stem, aligned uint8 crop, summary record)`` per face.

  Raises:
    ImageError: unreadable photo, or no face in it.
  """
  photo = read_photo(file)
  found = face_align.align_faces(detector, photo, inverter.generator.resolution)
  if not found:
    raise ImageError(face_align.NO_FACE)
  out = []
  for name, face in zip(face_align.face_stems(stem, len(found), taken), found):
    editing.save_png(face.image, os.path.join(out_dir, name + ALIGNED_SUFFIX))
    out.append((name, face.image, {'file': file, **face.record(name + ALIGNED_SUFFIX)}))
  return out


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.invert', formatter_class=cli_utils.HelpFormatter,
      description='Invert photos into W+ with a ReStyle / IntereStyle encoder: writes the '
                  'reconstruction, a strip of the iterations and the latent per image. '
                  'Exit status: 0 when something was inverted, 1 when nothing could be, '
                  '2 for an unusable checkpoint or argument.')
  p.add_argument('--checkpoint', required=True,
                 help='`convert restyle` directory or train.py workdir')
  p.add_argument('--input', required=True,
                 help='an image file or a folder of images (searched recursively)')
  p.add_argument('--output', required=True, help='output folder (created)')
  p.add_argument('--n_iters', type=int, default=None,
                 help="refinement iterations (default: the model's, 5 for ReStyle)")
  p.add_argument('--batch_size', type=int, default=4, help='images per encoder call')
  p.add_argument('--align', action='store_true',
                 help='the inputs are raw photos: FFHQ-align every face MTCNN finds (needs '
                      '--mtcnn) and invert those, writing <name>_aligned.png too')
  p.add_argument('--mtcnn', default=None,
                 help='with --align: MTCNN directory from `python -m interestyle_jax.convert '
                      'mtcnn SRC DIR`')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  return p


def main(argv=None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    0 when at least one image was inverted, 1 when none could be, 2 for an
    unusable checkpoint or argument (checked before any inversion).
  """
  args = build_parser().parse_args(argv)
  if args.batch_size < 1:
    return cli_utils.usage_error(f'--batch_size must be >= 1, got {args.batch_size}')
  if args.n_iters is not None and args.n_iters < 1:
    return cli_utils.usage_error(f'--n_iters must be >= 1, got {args.n_iters}')
  if args.align and not args.mtcnn:
    return cli_utils.usage_error('--align needs --mtcnn DIR, the MTCNN face detector: make it with `python -m '
                  'interestyle_jax.convert mtcnn SRC DIR` (SRC: the facenet-pytorch wheel)')
  if args.mtcnn and not args.align:
    return cli_utils.usage_error('--mtcnn is only used with --align; add --align to align raw photos')
  detector = None
  try:
    cli_utils.check_output_dir(args.output, '--output')
    found = find_inputs(args.input, exclude=args.output)
    inputs = found.inputs
    cli_utils.check_outputs(args.output, [stem for _, stem in inputs],
                            OUTPUT_SUFFIXES + ((ALIGNED_SUFFIX,) if args.align else ()),
                            SUMMARY_FILE)
    if args.align:
      detector = face_align.load_detector(args.mtcnn)
    from interestyle_jax.inference import load_inverter  # pylint: disable=g-import-not-at-top
    inverter = load_inverter(args.checkpoint)
  except (FileNotFoundError, artifacts.ArtifactError, cli_utils.OutputPathError) as e:
    return cli_utils.usage_error(e)
  report = invert_files(inverter, inputs, args.output, args.n_iters, args.batch_size,
                        progress=not args.no_progress, detector=detector)
  report = report._replace(skipped=list(found.not_files) + report.skipped)
  if found.ignored:
    print(f'ignored {len(found.ignored)} file(s) without an image extension '
          f'({", ".join(folder.IMAGE_EXTS)}): {folder.list_examples(found.ignored)}')
  if found.duplicates:
    print(f'ignored {len(found.duplicates)} symlink(s) to images or folders already '
          f'searched: {folder.list_examples(found.duplicates)}')
  for file, reason in report.skipped:
    print(f'skipped {file}: {reason}', file=sys.stderr)
  if report.squashed:
    print(squash_warning(report.squashed, inverter.encoder_size), file=sys.stderr)
  summary: Dict = {'checkpoint': args.checkpoint, 'input': args.input,
                   'n_iters': args.n_iters or inverter.n_iters,
                   'inverted': report.inverted,
                   'skipped': [{'file': f, 'reason': r} for f, r in report.skipped],
                   'squashed': [{'file': f, 'size': [w, h]} for f, (w, h) in report.squashed]}
  if args.align:
    summary['faces'] = list(report.faces)
  if report.stopped:
    summary['stopped'] = report.stopped
  if report.inverted:
    try:
      cli_utils.save_json(summary, os.path.join(args.output, SUMMARY_FILE))
    except OSError as e:
      if not report.stopped:
        raise
      report = report._replace(stopped=f'{report.stopped}; {SUMMARY_FILE} could not be '
                                       f'written either ({e.strerror or e})')
  if report.stopped:
    print(f'error: stopped after {len(report.inverted)} of {len(inputs)} image(s): '
          f'{report.stopped}', file=sys.stderr)
    return 1
  if args.align:
    done = (f'{len(report.inverted)} face(s) from {len(inputs) - len(report.skipped)} of '
            f'{len(inputs)} photo(s)')
  else:
    done = f'{len(report.inverted)} of {len(inputs)} image(s)'

  print(f'inverted {done} into {args.output}'
        + (f'; skipped {len(report.skipped)} (listed above)' if report.skipped else ''))
  if not report.inverted:
    print('error: nothing could be inverted' + ('' if inputs else
          f' (no .png/.jpg/.jpeg/.webp file under {args.input})'), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())

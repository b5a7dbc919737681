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
reported at the end; the exit status is nonzero only when nothing could be
inverted (or the checkpoint / arguments are unusable).

Images are resized to the encoder size with the data pipeline's antialiased
bilinear filter (``data/folder.py``), as the training data was; aligned,
square face crops (FFHQ / CelebA-HQ style) are what the encoder expects.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

from interestyle_jax import artifacts, editing
from interestyle_jax.data import folder

SUMMARY_FILE = 'summary.json'


class ImageError(ValueError):
  """An input image cannot be inverted (unreadable or too small)."""


class Report(NamedTuple):
  """What :func:`invert_files` did.

  Attributes:
    inverted: output stems (paths relative to the output folder, no extension).
    skipped: ``(input path, reason)`` pairs.
  """
  inverted: List[str]
  skipped: List[Tuple[str, str]]


def too_small(width: int, height: int, min_size: int) -> Optional[str]:
  """Says why an image is too small for the encoder, or None when it is not.

  Args:
    width: image width.
    height: image height.
    min_size: the encoder input side.

  Returns:
    A message naming the minimum, or None.
  """
  if min(width, height) >= min_size:
    return None
  return (f'image is {width}x{height}, smaller than the encoder input '
          f'{min_size}x{min_size}: the minimum is {min_size} px on each side')


def read_image(path: str, size: int) -> np.ndarray:
  """Reads an image file, checks its size and resizes it to ``size``x``size``.

  Args:
    path: image file (any format Pillow reads; grey / RGBA become RGB).
    size: the encoder input side (also the minimum accepted side).

  Returns:
    uint8 ``[size, size, 3]``.

  Raises:
    ImageError: the file cannot be decoded, or is smaller than ``size``.
  """
  try:
    with Image.open(path) as img:
      img.load()  # decode now: a truncated file fails here
      rgb = folder.to_rgb(img)
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises OSError, SyntaxError, ValueError… for damaged files.
    raise ImageError(f'unreadable image ({type(e).__name__}: {e})') from e
  problem = too_small(rgb.shape[1], rgb.shape[0], size)
  if problem:
    raise ImageError(problem)
  return folder.resize_image(rgb, size)


def find_inputs(path: str) -> Tuple[List[Tuple[str, str]], List[str]]:
  """Lists the image files to invert.

  Args:
    path: an image file or a folder (searched recursively, hidden entries
      skipped, symlinked folders followed).

  Returns:
    ``(inputs, ignored)``: ``(file, output stem)`` pairs, the stem being the
    path relative to the folder without extension; and the files ignored for
    not having an image extension.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'--input {path} does not exist')
  if os.path.isfile(path):
    return [(path, os.path.splitext(os.path.basename(path))[0])], []
  inputs, ignored, used = [], [], set()
  for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      if name.startswith('.'):
        continue
      file = os.path.join(dirpath, name)
      stem, ext = os.path.splitext(os.path.relpath(file, path))
      if ext.lower() not in folder.IMAGE_EXTS:
        ignored.append(file)
        continue
      if stem in used:  # a.jpg next to a.png: keep both outputs apart
        stem = f'{stem}_{ext.lstrip(".").lower()}'
      used.add(stem)
      inputs.append((file, stem))
  return inputs, ignored


def _write(out_dir: str, stem: str, recon, strip, latent) -> None:
  base = os.path.join(out_dir, stem)
  editing.save_png(recon, base + '.png')
  editing.save_png(strip, base + '_iterations.png')
  np.save(base + '.npy', np.asarray(latent, np.float32))


def invert_files(inverter, inputs: List[Tuple[str, str]], out_dir: str,
                 n_iters: Optional[int] = None, batch_size: int = 4,
                 progress: bool = True) -> Report:
  """Inverts image files batch by batch and writes the outputs.

  Args:
    inverter: an ``inference.Inverter``.
    inputs: ``(file, output stem)`` pairs (see :func:`find_inputs`).
    out_dir: output folder.
    n_iters: refinement iterations (default: the model's).
    batch_size: images per encoder call; the last batch is padded so a
      single compiled program serves every batch.
    progress: show a tqdm progress bar.

  Returns:
    A :class:`Report`.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  size = inverter.encoder_size
  inverted, skipped = [], []
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
    bar.update(len(pending))
    pending.clear()

  for file, stem in inputs:
    try:
      pending.append((stem, read_image(file, size)))
    except ImageError as e:
      skipped.append((file, str(e)))
      bar.update(1)
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  bar.close()
  return Report(inverted, skipped)


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.invert',
      description='Invert photos into W+ with a ReStyle / IntereStyle encoder: writes the '
                  'reconstruction, a strip of the iterations and the latent per image.')
  p.add_argument('--checkpoint', required=True,
                 help='`convert restyle` directory or train.py workdir')
  p.add_argument('--input', required=True, help='an image file or a folder of images')
  p.add_argument('--output', required=True, help='output folder (created)')
  p.add_argument('--n_iters', type=int, default=None,
                 help="refinement iterations (default: the model's, 5 for ReStyle)")
  p.add_argument('--batch_size', type=int, default=4, help='images per encoder call')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  return p


def main(argv=None) -> int:
  """Runs the CLI; returns the exit status (0 when at least one image was inverted)."""
  args = build_parser().parse_args(argv)
  if args.batch_size < 1:
    print(f'error: --batch_size must be >= 1, got {args.batch_size}', file=sys.stderr)
    return 2
  if args.n_iters is not None and args.n_iters < 1:
    print(f'error: --n_iters must be >= 1, got {args.n_iters}', file=sys.stderr)
    return 2
  try:
    inputs, ignored = find_inputs(args.input)
    from interestyle_jax.inference import load_inverter  # pylint: disable=g-import-not-at-top
    inverter = load_inverter(args.checkpoint)
  except (FileNotFoundError, artifacts.ArtifactError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  report = invert_files(inverter, inputs, args.output, args.n_iters, args.batch_size,
                        progress=not args.no_progress)
  if ignored:
    print(f'ignored {len(ignored)} file(s) without an image extension '
          f'({", ".join(folder.IMAGE_EXTS)}): {folder.list_examples(ignored)}')
  for file, reason in report.skipped:
    print(f'skipped {file}: {reason}', file=sys.stderr)
  summary: Dict = {'checkpoint': args.checkpoint, 'input': args.input,
                   'n_iters': args.n_iters or inverter.n_iters,
                   'inverted': report.inverted,
                   'skipped': [{'file': f, 'reason': r} for f, r in report.skipped]}
  if report.inverted:
    with open(os.path.join(args.output, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2)
  print(f'inverted {len(report.inverted)} of {len(inputs)} image(s) into {args.output}'
        + (f'; skipped {len(report.skipped)} (listed above)' if report.skipped else ''))
  if not report.inverted:
    print('error: nothing could be inverted' + ('' if inputs else
          f' (no .png/.jpg/.jpeg/.webp file under {args.input})'), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""``python -m interestyle_jax.edit``: latent edits of inversions, as image grids.

Sources are photos (inverted with the checkpoint) or W+ latents saved by
``python -m interestyle_jax.invert`` (``.npy``, ``[n_styles, D]``)::

    # Rows: the inputs; columns: the input photo, then the strengths (0 = the inversion).
    python -m interestyle_jax.edit direction --checkpoint ckpt/interestyle \\
        --input a.jpg b.npy --direction smile.npy --strengths -3 -1.5 0 1.5 3 \\
        [--layers 0:8] --output smile.png

    # Columns: source and target photos, their inversions, then the source with
    # each layer range of the target.
    python -m interestyle_jax.edit mix --checkpoint ckpt/interestyle \\
        --source a.jpg --target b.jpg --layers 0:4 4:8 8:18 --output mix.png

    # Columns: source and target photos, then source … target in equal W+ steps.
    python -m interestyle_jax.edit interpolate --checkpoint ckpt/interestyle \\
        --source a.jpg --target b.jpg --steps 8 --output lerp.png

    # Directions of any generator, found in closed form (SeFa): sefa_NN.npy for
    # `edit direction`, sefa_NN.png grids at ± strengths, sefa.json.
    python -m interestyle_jax.edit sefa --generator ckpt/stylegan2-ffhq \\
        --layers 0:8 --num 5 --output sefa/

Layer ranges are ``START:STOP`` style indices (stop exclusive). A header row
labels the columns; a ``.npy`` source has no photo (grey input cell).
``--save_latents`` also writes the edited latents (the rendered columns, not
the photos) next to the grid (``<output>.npy``).

Exit status 2 for an unusable checkpoint, input, direction or argument; the
output paths are checked before anything is loaded. A direction file must hold
exactly one tensor of a direction's shape, and directions and latents with
NaN / inf values are refused. Non-square photos are squashed to the encoder's
square input, with a warning naming them.
"""

import argparse
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from interestyle_jax import artifacts, cli_utils, editing, sefa
from interestyle_jax.photos import ImageError, read_image_sized, squash_warning


def load_latent(path: str, n_styles: int, style_dim: int) -> np.ndarray:
  """Reads a W+ latent saved by ``invert`` (``.npy``).

  Args:
    path: ``.npy`` of ``[n_styles, D]`` or ``[1, n_styles, D]``.
    n_styles: W+ entries the generator takes.
    style_dim: latent width D.

  Returns:
    float32 ``[n_styles, D]``.

  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable, of another shape, or with NaN / inf values
      (the message names the file).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist')
  try:
    w = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f'{path} is not a readable .npy latent ({type(e).__name__}: {e})') from e
  if not isinstance(w, np.ndarray) or not (np.issubdtype(w.dtype, np.floating)
                                           or np.issubdtype(w.dtype, np.integer)):
    raise ValueError(f'{path} does not hold one array of real numbers (a W+ latent '
                     f'[{n_styles}, {style_dim}])')
  w = w.astype(np.float32)
  if w.ndim == 3 and w.shape[0] == 1:
    w = w[0]
  if w.shape != (n_styles, style_dim):
    raise ValueError(f'{path}: latent of shape {w.shape}, but this generator takes '
                     f'[{n_styles}, {style_dim}] W+ latents')
  return editing.check_finite(w, f'latent {path}')


def load_sources(inverter, paths: List[str], n_iters=None,
                 squashed: Optional[List[Tuple[str, Tuple[int, int]]]] = None,
                 photos: Optional[List[Optional[np.ndarray]]] = None) -> np.ndarray:
  """W+ latents of photos (inverted) or ``.npy`` latent files, in order.

  Args:
    inverter: an ``inference.Inverter``.
    paths: image files and/or ``.npy`` files of ``[n_styles, D]`` (or
      ``[1, n_styles, D]``) latents.
    n_iters: refinement iterations for photos (default: the model's).
    squashed: receives ``(path, (width, height))`` of non-square photos,
      which are squashed to the encoder's square input.
    photos: receives, per path, the photo as the encoder saw it (uint8
      ``[S, S, 3]``), or None for a ``.npy`` latent.

  Returns:
    float32 ``[len(paths), n_styles, D]``.
  """
  n, d = inverter.generator.n_styles, inverter.generator.style_dim
  out = []
  for path in paths:
    if path.lower().endswith('.npy'):
      out.append(load_latent(path, n, d))
      if photos is not None:
        photos.append(None)
      continue
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} does not exist')
    try:
      image, (w, h) = read_image_sized(path, inverter.encoder_size)
    except ImageError as e:
      raise ImageError(f'{path}: {e}') from None
    if w != h and squashed is not None:
      squashed.append((path, (w, h)))
    out.append(np.asarray(inverter.invert(image, n_iters=n_iters).latents[0]))
    if photos is not None:
      photos.append(np.asarray(image))
  return np.stack(out)


# A latent source (.npy) has no photo: its input cell is this grey.
NO_PHOTO = 200


def _input_tiles(photos: List[Optional[np.ndarray]], size: int) -> np.ndarray:
  """``[len(photos), size, size, 3]`` uint8: the photos, grey for latent sources."""
  return np.stack([np.full((size, size, 3), NO_PHOTO, np.uint8) if p is None
                   else editing.resize(p[None], size)[0] for p in photos])


def _render_grid(inverter, latents: np.ndarray, tile: int, labels: List[str],
                 inputs: List[np.ndarray]) -> np.ndarray:
  """Renders ``[rows, cols, n_styles, D]`` latents under ``labels``.

  ``inputs`` are ``[rows, tile, tile, 3]`` uint8 columns put before the
  renderings (their labels come first in ``labels``).
  """
  rows, cols = latents.shape[:2]
  imgs = editing.resize(editing.render(inverter.generator, inverter.generator_variables,
                                       latents.reshape((-1,) + latents.shape[2:])), tile)
  imgs = imgs.reshape((rows, cols) + imgs.shape[1:])
  return editing.image_grid(np.concatenate([col[:, None] for col in inputs] + [imgs], axis=1),
                            labels=labels)


def _strength_label(s: float) -> str:
  return '0 (inversion)' if s == 0 else f'{s:+g}'


def latents_path(output: str) -> str:
  """Where ``--save_latents`` writes: ``<output without extension>.npy``."""
  return os.path.splitext(output)[0] + '.npy'


def check_output_paths(args) -> None:
  """Checks ``--output`` (and the ``--save_latents`` file) before any work.

  Args:
    args: the parsed arguments.

  Raises:
    cli_utils.OutputPathError: a folder or a file in the way, no write
      permission, or an extension Pillow cannot write.
  """
  cli_utils.check_output_file(args.output, '--output', example='grid.png')
  ext = os.path.splitext(args.output)[1].lower()
  Image.init()
  if Image.registered_extensions().get(ext) not in Image.SAVE:
    raise cli_utils.OutputPathError(
        f'--output {args.output}: cannot write {ext or "a file without extension"} images; '
        'use a .png (or .jpg) file name')
  if args.save_latents:
    cli_utils.check_output_file(latents_path(args.output), '--save_latents: the file')


def run(args) -> Tuple[np.ndarray, np.ndarray]:
  """Computes the edited latents of a parsed command line and renders them.

  Args:
    args: the parsed arguments (see :func:`build_parser`).

  Returns:
    ``(latents [rows, cols, n_styles, D], grid uint8 [H, W, 3])``.
  """
  from interestyle_jax.inference import load_inverter  # pylint: disable=g-import-not-at-top
  inverter = load_inverter(args.checkpoint)
  n = inverter.generator.n_styles
  squashed, photos = [], []
  if args.command == 'direction':
    d = editing.check_direction(editing.load_direction(args.direction), n,
                                inverter.generator.style_dim, source=args.direction)
    editing.parse_layers(args.layers, n)  # fail before inverting anything
    w = load_sources(inverter, args.input, args.n_iters, squashed, photos)
    edits = editing.apply_direction(w, d, args.strengths, args.layers)  # [K, B, n, D]
    latents = np.swapaxes(np.asarray(edits), 0, 1)
    where = f' @ {args.layers}' if args.layers else ''
    labels = ['input'] + [_strength_label(s) + (where if s else '') for s in args.strengths]
    inputs = [photos]
  else:
    # Fail on bad arguments before inverting anything.
    if args.command == 'mix':
      for layers in args.layers:
        editing.parse_layers(layers, n)
    elif args.steps < 2:
      raise ValueError(f'--steps must be >= 2 (the endpoints), got {args.steps}')
    w = load_sources(inverter, [args.source, args.target], args.n_iters, squashed, photos)
    w_a, w_b = w[:1], w[1:]
    inputs = [[photos[0]], [photos[1]]]
    labels = ['source input', 'target input']
    if args.command == 'mix':
      cols = [w_a, w_b] + [np.asarray(editing.mix(w_a, w_b, layers)) for layers in args.layers]
      latents = np.stack(cols, axis=1)
      labels += ['source', 'target'] + [f'layers {layers}' for layers in args.layers]
    else:
      latents = np.swapaxes(np.asarray(editing.interpolate(w_a, w_b, args.steps)), 0, 1)
      labels += [f't = {t / (args.steps - 1):.2g}' for t in range(args.steps)]
  if squashed:
    print(squash_warning(squashed, inverter.encoder_size), file=sys.stderr)
  size = args.tile or inverter.generator.resolution
  return latents, _render_grid(inverter, latents, size, labels,
                               [_input_tiles(col, size) for col in inputs])


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser, one sub-command per edit."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.edit', formatter_class=cli_utils.HelpFormatter,
      description='Edit inversions in W+ (directions, style mixing, interpolation) and '
                  'write the results as a PNG grid. Exit status 2 for an unusable '
                  'checkpoint, input, direction or argument.')
  sub = p.add_subparsers(dest='command', required=True)
  fmt = cli_utils.HelpFormatter

  def common(q):
    q.add_argument('--checkpoint', required=True,
                   help='`convert restyle` directory or train.py workdir')
    q.add_argument('--output', required=True, help='PNG file for the grid')
    q.add_argument('--n_iters', type=int, default=None,
                   help="refinement iterations for photos (default: the model's)")
    q.add_argument('--tile', type=int, default=256,
                   help='side of each grid cell in pixels (0 = generator resolution)')
    q.add_argument('--save_latents', action='store_true',
                   help='also write the grid latents [rows, cols, n_styles, D] to '
                        '<output without .png>.npy')

  q = sub.add_parser('direction', help='w + s·d for a list of strengths s', formatter_class=fmt)
  common(q)
  q.add_argument('--input', nargs='+', required=True,
                 help='photos or .npy latents (one grid row each)')
  q.add_argument('--direction', required=True,
                 help='.npy ([D] or [n_styles, D]) or .pt/.pth (needs torch) holding '
                      'exactly one direction tensor')
  q.add_argument('--strengths', type=float, nargs='+', default=[-3.0, -1.5, 0.0, 1.5, 3.0],
                 help='multipliers, one grid column each (e.g. --strengths -3 0 3)')
  q.add_argument('--layers', default=None,
                 help='edit only these style indices, START:STOP (stop exclusive; '
                      'default: all)')

  q = sub.add_parser('mix', help='style mixing of two inversions', formatter_class=fmt)
  common(q)
  q.add_argument('--source', required=True, help='photo or .npy latent kept outside the range')
  q.add_argument('--target', required=True, help='photo or .npy latent giving the range')
  q.add_argument('--layers', nargs='+', required=True,
                 help='one or more START:STOP ranges taken from --target, one column each')

  q = sub.add_parser('interpolate', help='linear interpolation between two inversions',
                     formatter_class=fmt)
  common(q)
  q.add_argument('--source', required=True, help='photo or .npy latent (first column)')
  q.add_argument('--target', required=True, help='photo or .npy latent (last column)')
  q.add_argument('--steps', type=int, default=8, help='columns, endpoints included (>= 2)')

  q = sub.add_parser('sefa', formatter_class=fmt,
                     help='closed-form directions (SeFa) of a generator: direction files for '
                          '`edit direction` and grids')
  sefa.add_arguments(q)
  return p


def main(argv=None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    0 on success, 2 for an unusable checkpoint, input, direction or argument.
  """
  args = build_parser().parse_args(argv)
  if args.command == 'sefa':
    return sefa.main(args)
  try:
    check_output_paths(args)
    latents, grid = run(args)
  except (FileNotFoundError, ImportError, ValueError, artifacts.ArtifactError) as e:
    # ValueError covers OutputPathError and ImageError.
    print(f'error: {e}', file=sys.stderr)
    return 2
  editing.save_png(grid, args.output)
  print(f'wrote {args.output} ({latents.shape[0]} row(s) x {latents.shape[1]} column(s))')
  if args.save_latents:
    path = latents_path(args.output)
    cli_utils.save_npy(latents, path)
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

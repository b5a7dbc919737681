"""``python -m interestyle_jax.edit``: latent edits of inversions, as image grids.

Sources are photos (inverted with the checkpoint) or W+ latents saved by
``python -m interestyle_jax.invert`` (``.npy``, ``[n_styles, D]``)::

    # Rows: the inputs; columns: the strengths (0 = the inversion itself).
    python -m interestyle_jax.edit direction --checkpoint ckpt/interestyle \\
        --input a.jpg b.npy --direction smile.npy --strengths -3 -1.5 0 1.5 3 \\
        [--layers 0:8] --output smile.png

    # Columns: source, target, then the source with each layer range of the target.
    python -m interestyle_jax.edit mix --checkpoint ckpt/interestyle \\
        --source a.jpg --target b.jpg --layers 0:4 4:8 8:18 --output mix.png

    # Columns: source … target in equal W+ steps.
    python -m interestyle_jax.edit interpolate --checkpoint ckpt/interestyle \\
        --source a.jpg --target b.jpg --steps 8 --output lerp.png

Layer ranges are ``START:STOP`` style indices (stop exclusive). ``--save_latents``
also writes the edited latents next to the grid (``<output>.npy``).
"""

import argparse
import os
import sys
from typing import List, Tuple

import numpy as np

from interestyle_jax import artifacts, editing
from interestyle_jax.invert import ImageError, read_image


def load_sources(inverter, paths: List[str], n_iters=None) -> np.ndarray:
  """W+ latents of photos (inverted) or ``.npy`` latent files, in order.

  Args:
    inverter: an ``inference.Inverter``.
    paths: image files and/or ``.npy`` files of ``[n_styles, D]`` (or
      ``[1, n_styles, D]``) latents.
    n_iters: refinement iterations for photos (default: the model's).

  Returns:
    float32 ``[len(paths), n_styles, D]``.
  """
  n, d = inverter.generator.n_styles, inverter.generator.style_dim
  out = []
  for path in paths:
    if path.lower().endswith('.npy'):
      w = np.load(path, allow_pickle=False).astype(np.float32)
      if w.ndim == 3 and w.shape[0] == 1:
        w = w[0]
      if w.shape != (n, d):
        raise ValueError(f'{path}: latent of shape {w.shape}, but this generator takes '
                         f'[{n}, {d}] W+ latents')
      out.append(w)
      continue
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} does not exist')
    try:
      image = read_image(path, inverter.encoder_size)
    except ImageError as e:
      raise ImageError(f'{path}: {e}') from None
    out.append(np.asarray(inverter.invert(image, n_iters=n_iters).latents[0]))
  return np.stack(out)


def _render_grid(inverter, latents: np.ndarray, tile: int) -> np.ndarray:
  """Renders ``[rows, cols, n_styles, D]`` latents as one grid image."""
  rows, cols = latents.shape[:2]
  imgs = editing.render(inverter.generator, inverter.generator_variables,
                        latents.reshape((-1,) + latents.shape[2:]))
  return editing.image_grid(imgs.reshape((rows, cols) + imgs.shape[1:]), tile=tile)


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
  if args.command == 'direction':
    d = editing.check_direction(editing.load_direction(args.direction), n,
                                inverter.generator.style_dim)
    editing.parse_layers(args.layers, n)  # fail before inverting anything
    w = load_sources(inverter, args.input, args.n_iters)
    edits = editing.apply_direction(w, d, args.strengths, args.layers)  # [K, B, n, D]
    latents = np.swapaxes(np.asarray(edits), 0, 1)
  else:
    # Fail on bad arguments before inverting anything.
    if args.command == 'mix':
      for layers in args.layers:
        editing.parse_layers(layers, n)
    elif args.steps < 2:
      raise ValueError(f'--steps must be >= 2 (the endpoints), got {args.steps}')
    w = load_sources(inverter, [args.source, args.target], args.n_iters)
    w_a, w_b = w[:1], w[1:]
    if args.command == 'mix':
      cols = [w_a, w_b] + [np.asarray(editing.mix(w_a, w_b, layers)) for layers in args.layers]
      latents = np.stack(cols, axis=1)
    else:
      latents = np.swapaxes(np.asarray(editing.interpolate(w_a, w_b, args.steps)), 0, 1)
  return latents, _render_grid(inverter, latents, args.tile or None)


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser, one sub-command per edit."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.edit',
      description='Edit inversions in W+ (directions, style mixing, interpolation) and '
                  'write the results as a PNG grid.')
  sub = p.add_subparsers(dest='command', required=True)

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

  q = sub.add_parser('direction', help='w + s·d for a list of strengths s')
  common(q)
  q.add_argument('--input', nargs='+', required=True,
                 help='photos or .npy latents (one grid row each)')
  q.add_argument('--direction', required=True,
                 help='.npy ([D] or [n_styles, D]) or .pt/.pth (needs torch)')
  q.add_argument('--strengths', type=float, nargs='+', default=[-3.0, -1.5, 0.0, 1.5, 3.0],
                 help='multipliers, one grid column each (e.g. --strengths -3 0 3)')
  q.add_argument('--layers', default=None,
                 help='edit only these style indices, START:STOP (stop exclusive)')

  q = sub.add_parser('mix', help='style mixing of two inversions')
  common(q)
  q.add_argument('--source', required=True, help='photo or .npy latent kept outside the range')
  q.add_argument('--target', required=True, help='photo or .npy latent giving the range')
  q.add_argument('--layers', nargs='+', required=True,
                 help='one or more START:STOP ranges taken from --target, one column each')

  q = sub.add_parser('interpolate', help='linear interpolation between two inversions')
  common(q)
  q.add_argument('--source', required=True, help='photo or .npy latent (first column)')
  q.add_argument('--target', required=True, help='photo or .npy latent (last column)')
  q.add_argument('--steps', type=int, default=8, help='columns, endpoints included (>= 2)')
  return p


def main(argv=None) -> int:
  """Runs the CLI; returns the exit status."""
  args = build_parser().parse_args(argv)
  try:
    latents, grid = run(args)
  except (FileNotFoundError, ImportError, ValueError, artifacts.ArtifactError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  editing.save_png(grid, args.output)
  print(f'wrote {args.output} ({latents.shape[0]} row(s) x {latents.shape[1]} column(s))')
  if args.save_latents:
    path = os.path.splitext(args.output)[0] + '.npy'
    np.save(path, latents)
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

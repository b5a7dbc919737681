"""SeFa: closed-form editing directions of any StyleGAN2 generator (Shen & Zhou, CVPR 2021).

Every styled layer maps its W+ entry to channel styles with an affine
(modulation) weight ``A_i`` (stored ``[D, C_i]`` here). A unit direction
``n`` in W changes those styles most when it maximises ``‖Aᵀ n‖`` for the
layers' weights stacked side by side, ``A = [A_a … A_{b-1}]``: the
eigenvectors of ``A Aᵀ`` with the largest eigenvalues. As the authors'
release (genforce/sefa ``factorize_weight``), each style channel's weight
column is first normalised to unit length, and W+ index ``i`` means the layer
that style feeds: the 4x4 conv for 0, the convolutions for ``1 … n−2`` and
the last ToRGB for ``n−1`` (ToRGB layers that share an index with a
convolution are left out, as in the release).

    python -m interestyle_jax.edit sefa --generator ckpt/stylegan2-ffhq \\
        --layers 0:8 --num 5 --output sefa/

writes ``sefa_00.npy`` … (``[n_styles, D]``, the direction on the chosen W+
entries and zero elsewhere: ``edit direction --direction sefa_00.npy``
applies it), ``sefa_00.png`` … (sample latents at ± strengths) and
``sefa.json`` (layers, eigenvalues, files).
"""

import os
import sys
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts, cli_utils, editing
from interestyle_jax.models.stylegan2 import Generator, n_styles_for

OUTPUT_JSON = 'sefa.json'


def modulation_path(index: int, n_styles: int) -> Tuple[str, ...]:
  """Parameter path of the modulation weight fed by W+ entry ``index``.

  Args:
    index: style index in ``0 .. n_styles - 1``.
    n_styles: W+ entries of the generator.

  Returns:
    e.g. ``('conv1', 'conv', 'modulation', 'weight')``.
  """
  if index == 0:
    layer = 'conv1'
  elif index < n_styles - 1:
    layer = f'convs_{index - 1}'
  else:
    layer = f'to_rgbs_{n_styles // 2 - 2}'  # the last style feeds only the last ToRGB
  return (layer, 'conv', 'modulation', 'weight')


class Factorization(NamedTuple):
  """SeFa's result.

  Attributes:
    directions: ``[K, D]`` unit vectors, by decreasing eigenvalue.
    eigenvalues: ``[K]`` eigenvalues of ``A Aᵀ`` (of the normalised weights).
    layers: ``(start, stop)`` W+ range the weights came from.
  """
  directions: np.ndarray
  eigenvalues: np.ndarray
  layers: Tuple[int, int]


def factorize(params: Mapping[str, Any], n_styles: int, layers: editing.Layers = None,
              num: Optional[int] = None) -> Factorization:
  """Top eigenvectors of the stacked, column-normalised modulation weights.

  Args:
    params: the generator's ``params``.
    n_styles: its W+ entries.
    layers: W+ range ``(start, stop)`` or ``'start:stop'`` (default: all).
    num: directions to keep (default: all ``D``).

  Returns:
    A :class:`Factorization`; each direction's largest component is positive
    (an eigenvector's sign is arbitrary).
  """
  start, stop = editing.parse_layers(layers, n_styles)
  cols = []
  for i in range(start, stop):
    node = params
    for key in modulation_path(i, n_styles):
      node = node[key]
    cols.append(np.asarray(node, np.float64))  # [D, C_i]
  a = np.concatenate(cols, axis=1)
  a = a / np.linalg.norm(a, axis=0, keepdims=True)
  values, vectors = np.linalg.eigh(a @ a.T)  # ascending
  order = np.argsort(values)[::-1]
  dim = a.shape[0]
  num = dim if num is None else int(num)
  if not 1 <= num <= dim:
    raise ValueError(f'--num {num} must be in 1..{dim} (the latent width)')
  vectors = vectors[:, order[:num]].T
  signs = np.sign(vectors[np.arange(num), np.argmax(np.abs(vectors), axis=1)])
  return Factorization((vectors * signs[:, None]).astype(np.float32),
                       values[order[:num]].astype(np.float32), (start, stop))


def direction_file_array(direction: np.ndarray, n_styles: int,
                         layers: Tuple[int, int]) -> np.ndarray:
  """``[n_styles, D]``: ``direction`` on the W+ entries of ``layers``, zero elsewhere."""
  mask = editing.layer_mask(n_styles, layers)[:, None]
  return (mask * np.asarray(direction, np.float32)[None]).astype(np.float32)


def load_generator(path: str):
  """A generator from a ``convert stylegan2`` / ``convert restyle`` dir or a train.py workdir.

  Args:
    path: the directory.

  Returns:
    ``(generator, variables, latent_avg [D] or None)``.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'--generator {path} is not a directory; give a `convert stylegan2` '
                            'or `convert restyle` output, or a train.py workdir')
  model_dir = path
  if not os.path.isfile(os.path.join(path, artifacts.META_FILE)):
    model_dir = os.path.join(path, 'inference')
    if not os.path.isfile(os.path.join(model_dir, artifacts.META_FILE)):
      raise artifacts.ArtifactError(
          f'--generator {path} has neither {artifacts.META_FILE} nor inference/'
          f'{artifacts.META_FILE}; give a `convert stylegan2` / `convert restyle` output or a '
          'train.py workdir')
  meta, tree = artifacts.load_artifact(model_dir, ('stylegan2', 'restyle'))
  try:
    gen = Generator(**meta['generator'])
  except (KeyError, TypeError, ValueError) as e:
    raise artifacts.ArtifactError(f'{model_dir}: model.json does not describe a generator '
                                  f'({e})') from e
  latent_avg = tree.get('latent_avg')
  if latent_avg is not None:
    latent_avg = jnp.asarray(latent_avg).reshape(-1, gen.style_dim)[0]
  return gen, tree['generator'], latent_avg


def sample_latents(gen: Generator, variables, latent_avg, n: int, seed: int,
                   truncation: float) -> np.ndarray:
  """``n`` W+ latents from z ~ N(0, I), truncated toward ``latent_avg``.

  Args:
    gen: the generator.
    variables: its variables.
    latent_avg: truncation centre ``[D]`` (None: the mean of 10^4 samples).
    n: how many.
    seed: PRNG seed of z.
    truncation: ψ.

  Returns:
    float32 ``[n, n_styles, D]``.
  """
  key_z, key_avg = jax.random.split(jax.random.PRNGKey(seed))
  z = jax.random.normal(key_z, (n, gen.style_dim))
  w = gen.apply(variables, z, method=gen.mapping)
  if truncation != 1.0:
    if latent_avg is None:
      latent_avg = gen.apply(variables, 10_000, key_avg, method=gen.mean_latent)[0]
    w = latent_avg + truncation * (w - latent_avg)
  return np.asarray(jnp.broadcast_to(w[:, None], (n, gen.n_styles, gen.style_dim)))


def add_arguments(parser) -> None:
  """The ``edit sefa`` options."""
  parser.add_argument('--generator', required=True,
                      help='`convert stylegan2` or `convert restyle` directory, or a train.py '
                           'workdir')
  parser.add_argument('--output', required=True,
                      help='folder for sefa_NN.npy / sefa_NN.png / sefa.json (created)')
  parser.add_argument('--layers', default=None,
                      help='W+ range START:STOP whose modulation weights are factorised and '
                           'which the directions move (default: all)')
  parser.add_argument('--num', type=int, default=5, help='directions to write (top eigenvalues)')
  parser.add_argument('--strengths', type=float, nargs='+', default=[-3.0, -1.5, 0.0, 1.5, 3.0],
                      help='grid columns: multiples of each unit direction')
  parser.add_argument('--samples', type=int, default=4, help='grid rows: sampled latents')
  parser.add_argument('--seed', type=int, default=0, help='seed of the sampled latents')
  parser.add_argument('--truncation', type=float, default=0.7,
                      help='ψ of the sampled latents (SeFa\'s default 0.7)')
  parser.add_argument('--tile', type=int, default=0,
                      help='side of each grid cell (0 = generator resolution)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace sefa files already in --output')


def output_names(num: int) -> List[str]:
  """Files ``edit sefa`` writes for ``num`` directions."""
  return [f'sefa_{k:02d}{ext}' for k in range(num) for ext in ('.npy', '.png')] + [OUTPUT_JSON]


def run(args) -> dict:
  """Factorises, writes the directions, grids and summary of a parsed command line.

  Args:
    args: parsed ``edit sefa`` arguments.

  Returns:
    The summary written to ``sefa.json``.
  """
  out = cli_utils.check_output_dir(args.output, '--output')
  if args.num < 1 or args.samples < 1:
    raise ValueError('--num and --samples must be >= 1')
  taken = [n for n in output_names(args.num) if os.path.exists(os.path.join(out, n))]
  if taken and not args.overwrite:
    raise ValueError(f'--output {args.output} already holds {", ".join(taken[:4])}'
                     f'{" …" if len(taken) > 4 else ""}; pass --overwrite or another folder')
  gen, variables, latent_avg = load_generator(args.generator)
  n = n_styles_for(gen.resolution)
  fac = factorize(variables['params'], n, args.layers, min(args.num, gen.style_dim))
  w = sample_latents(gen, variables, latent_avg, args.samples, args.seed, args.truncation)
  tile = args.tile or gen.resolution
  labels = [f'{s:+g}' if s else '0' for s in args.strengths]
  files = []
  for k, d in enumerate(fac.directions):
    full = direction_file_array(d, n, fac.layers)
    edits = np.swapaxes(np.asarray(editing.apply_direction(w, full, args.strengths)), 0, 1)
    imgs = editing.render(gen, variables, edits.reshape((-1,) + edits.shape[2:]))
    grid = editing.image_grid(imgs.reshape(edits.shape[:2] + imgs.shape[1:]), tile=tile,
                              labels=labels)
    cli_utils.save_npy(full, os.path.join(out, f'sefa_{k:02d}.npy'))
    editing.save_png(grid, os.path.join(out, f'sefa_{k:02d}.png'))
    files.append(f'sefa_{k:02d}.npy')
  summary = {'generator': os.path.abspath(args.generator), 'layers': list(fac.layers),
             'eigenvalues': [float(v) for v in fac.eigenvalues], 'directions': files,
             'strengths': list(args.strengths), 'samples': args.samples, 'seed': args.seed,
             'truncation': args.truncation}
  cli_utils.save_json(summary, os.path.join(out, OUTPUT_JSON))
  return summary


def main(args) -> int:
  """``edit sefa``: 0 written, 2 for an unusable generator, folder or argument."""
  try:
    summary = run(args)
  except (FileNotFoundError, ValueError, artifacts.ArtifactError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  a, b = summary['layers']
  print(f'wrote {len(summary["directions"])} SeFa direction(s) of W+ {a}:{b} to {args.output} '
        f'(eigenvalues {", ".join(f"{v:.3g}" for v in summary["eigenvalues"])})')
  return 0


def image_change(gen: Generator, variables, latents: np.ndarray, direction: np.ndarray,
                 strength: float) -> float:
  """Mean absolute pixel change (images in [-1, 1]) of ``w + strength · d`` over ``latents``.

  Args:
    gen: the generator.
    variables: its variables.
    latents: ``[N, n_styles, D]``.
    direction: ``[D]`` or ``[n_styles, D]``.
    strength: the multiplier.

  Returns:
    ``mean |G(w + s d) − G(w)|``.
  """
  edited = np.asarray(editing.apply_direction(latents, direction, [strength]))[0]
  a = editing.render(gen, variables, latents, batch_size=len(latents))
  b = editing.render(gen, variables, edited, batch_size=len(latents))
  return float(np.mean(np.abs(b - a)))


def compare_with_random(gen: Generator, variables, latents: np.ndarray, strength: float,
                        n_random: int = 8, seed: int = 0,
                        layers: Sequence[int] = None) -> Tuple[float, List[float]]:
  """Image change of the first SeFa direction and of random unit directions.

  Args:
    gen: the generator.
    variables: its variables.
    latents: ``[N, n_styles, D]``.
    strength: the same multiplier for every direction.
    n_random: random unit directions to draw.
    seed: their seed.
    layers: W+ range factorised and edited (default: all).

  Returns:
    ``(first SeFa direction's change, [each random direction's change])``.
  """
  n = latents.shape[1]
  fac = factorize(variables['params'], n, layers, 1)
  first = image_change(gen, variables, latents,
                       direction_file_array(fac.directions[0], n, fac.layers), strength)
  rng = np.random.default_rng(seed)
  rand = []
  for _ in range(n_random):
    d = rng.standard_normal(latents.shape[2])
    d /= np.linalg.norm(d)
    rand.append(image_change(gen, variables, latents,
                             direction_file_array(d, n, fac.layers), strength))
  return first, rand

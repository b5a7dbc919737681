"""Latent editing of W+ inversions: directions, style mixing, interpolation, grids.

    inv = interestyle_jax.load_inverter('ckpt/interestyle')
    w = inv.invert(photo).latents                            # [1, n_styles, D]
    d = load_direction('smile.npy')                          # [D] or [n_styles, D]
    edits = apply_direction(w, d, [-3, 0, 3], layers=(0, 8))  # [3, 1, n_styles, D]
    imgs = render(inv.generator, inv.generator_variables, edits.reshape(-1, *w.shape[1:]))
    save_png(image_grid(imgs[None]), 'smile.png')

Directions are InterFaceGAN-style vectors in W: ``w + s · d`` for each strength
``s``. A layer range ``(start, stop)`` (style indices, ``stop`` exclusive)
restricts an edit or a style mix to those W+ entries: with the style index use
of StyleGAN2 (conv1 ← 0, to_rgb1 ← 1, then per resolution up-conv, conv,
to_rgb), low indices control coarse structure (pose, face shape) and high ones
fine appearance (colour, texture).
"""

import argparse
import functools
import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
from PIL import Image

from interestyle_jax import cli_utils, grids
from interestyle_jax.models.stylegan2 import mix_styles
from interestyle_jax.ops import xla_options

Layers = Optional[Union[Tuple[int, int], str]]


def parse_layers(layers: Layers, n_styles: int) -> Tuple[int, int]:
  """Validates a layer range.

  Args:
    layers: ``None`` (all), ``(start, stop)`` or ``'start:stop'`` (Python
      slice syntax, stop exclusive; either side may be empty).
    n_styles: number of W+ entries.

  Returns:
    ``(start, stop)`` with ``0 <= start < stop <= n_styles``.
  """
  if layers is None:
    return 0, n_styles
  if isinstance(layers, str):
    parts = layers.split(':')
    if len(parts) != 2:
      raise ValueError(f'layer range {layers!r} must look like START:STOP (e.g. 0:8; '
                       f'stop exclusive, {n_styles} styles)')
    try:
      start = int(parts[0]) if parts[0].strip() else 0
      stop = int(parts[1]) if parts[1].strip() else n_styles
    except ValueError:
      raise ValueError(f'layer range {layers!r} must hold integers, like 0:8') from None
  else:
    start, stop = (int(v) for v in layers)
  if not 0 <= start < stop <= n_styles:
    raise ValueError(f'layer range {start}:{stop} is not within the latent\'s {n_styles} '
                     f'styles: need 0 <= start < stop <= {n_styles}')
  return start, stop


def layer_mask(n_styles: int, layers: Layers = None) -> np.ndarray:
  """Boolean ``[n_styles]`` selecting the W+ entries of a layer range.

  Args:
    n_styles: number of W+ entries.
    layers: see :func:`parse_layers`.

  Returns:
    bool array, True inside the range.
  """
  start, stop = parse_layers(layers, n_styles)
  idx = np.arange(n_styles)
  return (idx >= start) & (idx < stop)


def _direction_shape_ok(shape: Tuple[int, ...]) -> bool:
  """Whether ``shape`` is one a direction can have: [D], [1, D], [n, D], [1, n, D]."""
  return len(shape) in (1, 2) or (len(shape) == 3 and shape[0] == 1)


def _tensors_in(obj, torch, prefix: str = '') -> List[Tuple[str, Any]]:
  """Every tensor in a loaded ``.pt`` object, with its key path."""
  if isinstance(obj, torch.Tensor):
    return [(prefix or '<tensor>', obj)]
  if isinstance(obj, argparse.Namespace):
    obj = vars(obj)
  items = (obj.items() if isinstance(obj, Mapping) else
           enumerate(obj) if isinstance(obj, (list, tuple)) else ())
  found = []
  for key, value in items:
    found += _tensors_in(value, torch, f'{prefix}.{key}' if prefix else str(key))
  return found


def check_finite(values: np.ndarray, source: str) -> np.ndarray:
  """Refuses NaN / inf in a direction or latent.

  One non-finite value spreads through the generator's modulation to every
  pixel of every image that uses it (even a style masked out by a layer
  range: ``0 · NaN`` is NaN), so the grid would be garbage.

  Args:
    values: the array.
    source: what it is, for the message (``'direction smile.npy'``).

  Returns:
    ``values``.

  Raises:
    ValueError: naming ``source`` and how many values are NaN / infinite.
  """
  bad = ~np.isfinite(values)
  if bad.any():
    n_nan = int(np.isnan(values).sum())
    raise ValueError(f'{source} holds {int(bad.sum())} non-finite value(s) of {values.size} '
                     f'({n_nan} NaN, {int(bad.sum()) - n_nan} inf); it is damaged or was '
                     'computed from diverged numbers: recompute or re-export it')
  return values


def load_direction(path: str) -> np.ndarray:
  """Reads a latent direction from ``.npy`` or a PyTorch ``.pt``/``.pth`` file.

  InterFaceGAN boundaries are ``.npy`` arrays ``[1, D]``; the e4e/ReStyle
  editing directions are ``torch.save``'d tensors (reading them needs the
  ``torch`` extra; only tensors and plain containers are unpickled). The file
  must hold exactly one tensor of a direction's shape, possibly inside a
  container (``{'direction': t}``): a model checkpoint or state dict (many
  tensors; a StyleGAN2 ``.pt``'s ``latent_avg`` is not a direction) is refused.

  Args:
    path: the file.

  Returns:
    float32 array as stored, ``[D]``, ``[1, D]``, ``[n_styles, D]`` or
    ``[1, n_styles, D]`` (sizes checked by :func:`check_direction`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable file, not exactly one tensor, a shape no
      direction has, non-numeric or non-finite values (the message names
      the file).
  """
  ext = os.path.splitext(path)[1].lower()
  if not os.path.isfile(path):
    raise FileNotFoundError(f'direction file {path} does not exist')
  if ext == '.npy':
    try:
      arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # pickled objects, truncated files
      raise ValueError(f'direction file {path} is not a readable .npy array '
                       f'({type(e).__name__}: {e})') from e
    if not isinstance(arr, np.ndarray):  # an .npz archive saved under .npy
      raise ValueError(f'direction file {path} holds several arrays (an .npz archive), not '
                       'one direction; save the direction alone with np.save')
    name = '<array>'
  elif ext in ('.pt', '.pth'):
    from interestyle_jax.convert.common import require_torch  # pylint: disable=g-import-not-at-top
    torch = require_torch()
    try:
      with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      # torch raises UnpicklingError, RuntimeError, EOFError… for files it
      # cannot or will not (arbitrary Python objects) read.
      first = (str(e).strip().splitlines() or [''])[0][:200]
      raise ValueError(f'direction file {path} is not a readable tensor file '
                       f'({type(e).__name__}: {first})') from e
    tensors = _tensors_in(obj, torch)
    if len(tensors) != 1:
      names = [k for k, _ in tensors]
      shown = ', '.join(names[:4]) + (f' … and {len(names) - 4} more' if len(names) > 4 else '')
      raise ValueError(f'direction file {path} holds {len(tensors)} tensors'
                       + (f' ({shown})' if names else '') + ', not one direction'
                       + (' — a model checkpoint or state dict?' if len(tensors) > 1 else '')
                       + '; give a file holding a single [D] or [n_styles, D] tensor')
    name, tensor = tensors[0]
    if name.split('.')[-1] == 'latent_avg':
      raise ValueError(f'direction file {path} holds only {name!r}: the generator\'s average '
                       'latent, not an editing direction')
    arr = tensor.detach().cpu()
    if arr.is_complex() or arr.dtype == torch.bool:
      raise ValueError(f'direction file {path}: tensor {name} is {arr.dtype}, not real numbers')
    arr = arr.float().numpy()
  else:
    raise ValueError(f'direction file {path} must be .npy, .pt or .pth')
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f'direction file {path} holds {arr.dtype} values, not real numbers')
  if not _direction_shape_ok(arr.shape):
    raise ValueError(f'direction file {path} holds {name} of shape {tuple(arr.shape)}, which '
                     'no direction has: expected [D], [1, D] or [n_styles, D]')
  return check_finite(np.asarray(arr, np.float32), f'direction file {path}')


def check_direction(direction, n_styles: int, style_dim: int, source: str = '') -> np.ndarray:
  """Brings a direction to ``[n_styles, D]``, or says why it does not fit.

  Args:
    direction: ``[D]``, ``[1, D]`` (InterFaceGAN), ``[n_styles, D]`` or
      ``[1, n_styles, D]``.
    n_styles: W+ entries of the latents to edit.
    style_dim: latent width D.
    source: where it comes from (a file name), for messages.

  Returns:
    float32 ``[n_styles, D]``.
  """
  d = np.asarray(direction, np.float32)
  shape = d.shape
  what = f'the direction {source}' if source else 'the direction'
  if d.ndim == 3 and d.shape[0] == 1:
    d = d[0]
  if d.ndim == 2 and d.shape[0] == 1:
    d = d[0]
  if d.ndim == 1 and d.shape[0] == style_dim:
    return np.broadcast_to(d, (n_styles, style_dim)).copy()
  if d.shape == (n_styles, style_dim):
    return d
  raise ValueError(f'{what} has shape {shape} but the latents are [{n_styles}, '
                   f'{style_dim}] (W+): expected [{style_dim}] or [{n_styles}, {style_dim}]. '
                   'Was it made for another generator (e.g. 512-d FFHQ directions on a '
                   'smaller model)?')


def _as_wplus(w, what: str) -> jnp.ndarray:
  w = jnp.asarray(w, jnp.float32)
  if w.ndim == 2:
    w = w[None]
  if w.ndim != 3:
    raise ValueError(f'{what} must be W+ latents [B, n_styles, D] or [n_styles, D], '
                     f'got shape {tuple(w.shape)}')
  return w


def apply_direction(latents, direction, strengths: Sequence[float],
                    layers: Layers = None) -> jnp.ndarray:
  """``w + s · d`` for every strength, optionally on a layer range only.

  Args:
    latents: ``[B, n_styles, D]`` (or ``[n_styles, D]``) W+ latents.
    direction: ``[D]`` or ``[n_styles, D]`` (see :func:`check_direction`).
    strengths: the multipliers ``s``; 0 gives back the latents unchanged.
    layers: W+ entries to edit (see :func:`parse_layers`); others stay put.

  Returns:
    ``[len(strengths), B, n_styles, D]``.
  """
  w = _as_wplus(latents, 'latents')
  n, dim = w.shape[1:]
  d = check_direction(direction, n, dim) * layer_mask(n, layers)[:, None]
  s = jnp.asarray(strengths, jnp.float32).reshape(-1, 1, 1, 1)
  return w[None] + s * jnp.asarray(d)[None, None]


def mix(w_a, w_b, layers: Layers) -> jnp.ndarray:
  """Style mixing: the W+ entries in ``layers`` from ``w_b``, the rest from ``w_a``.

  Args:
    w_a: ``[B, n_styles, D]`` (or ``[n_styles, D]``) latents kept outside the range.
    w_b: latents of the same shape supplying the range.
    layers: see :func:`parse_layers`.

  Returns:
    ``[B, n_styles, D]``.
  """
  w_a, w_b = _as_wplus(w_a, 'w_a'), _as_wplus(w_b, 'w_b')
  if w_a.shape != w_b.shape:
    raise ValueError(f'cannot mix latents of shapes {tuple(w_a.shape)} and {tuple(w_b.shape)}')
  start, stop = parse_layers(layers, w_a.shape[1])
  # mix_styles takes entries >= its index from the second argument: first
  # w_b below stop (else w_a), then w_a below start.
  return mix_styles(w_a, mix_styles(w_b, w_a, stop), start)


def interpolate(w_a, w_b, steps: int) -> jnp.ndarray:
  """Linear interpolation in W+, endpoints included.

  Args:
    w_a: ``[B, n_styles, D]`` (or ``[n_styles, D]``) start latents.
    w_b: end latents, same shape.
    steps: number of latents (>= 2).

  Returns:
    ``[steps, B, n_styles, D]``; the first equals ``w_a`` and the last ``w_b``
    exactly.
  """
  if steps < 2:
    raise ValueError(f'interpolation needs at least 2 steps, got {steps}')
  w_a, w_b = _as_wplus(w_a, 'w_a'), _as_wplus(w_b, 'w_b')
  if w_a.shape != w_b.shape:
    raise ValueError(f'cannot interpolate latents of shapes {tuple(w_a.shape)} and '
                     f'{tuple(w_b.shape)}')
  t = jnp.linspace(0.0, 1.0, steps).reshape(-1, 1, 1, 1)
  # (1 − t) a + t b (not a + t (b − a)) so that t = 1 gives b bit for bit.
  return (1.0 - t) * w_a[None] + t * w_b[None]


@functools.lru_cache(maxsize=8)
def _render_fn(generator):
  return xla_options.jit(lambda v, w: generator.apply(v, w, noise_mode='const'))


def render(generator, variables, latents, batch_size: int = 8) -> np.ndarray:
  """Renders W+ latents with the const noise buffers, ``batch_size`` at a time.

  Args:
    generator: the StyleGAN2 ``Generator`` module.
    variables: its ``{'params', 'noises'}``.
    latents: ``[N, n_styles, D]``.
    batch_size: latents per generator call (the last call is padded, so one
      compiled program serves every call).

  Returns:
    float32 ``[N, R, R, 3]`` images (about [-1, 1]).
  """
  w = np.asarray(_as_wplus(latents, 'latents'))
  fn = _render_fn(generator)
  out = []
  for i in range(0, len(w), batch_size):
    chunk = w[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(variables, chunk))[:batch_size - pad])
  return np.concatenate(out)


def to_uint8(images) -> np.ndarray:
  """Float images in [-1, 1] → uint8 (clipped); uint8 passes through.

  Args:
    images: any shape ending in channels.

  Returns:
    uint8 array of the same shape.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize(images, size: int) -> np.ndarray:
  """Resizes uint8 or float NHWC images to ``size``x``size`` (antialiased).

  Args:
    images: ``[N, H, W, 3]``.
    size: output side.

  Returns:
    uint8 ``[N, size, size, 3]``.
  """
  images = to_uint8(images)
  if images.shape[1:3] == (size, size):
    return images
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                   for im in images])


def image_grid(images, tile: Optional[int] = None, pad: int = 2,
               labels: Optional[Sequence[str]] = None) -> np.ndarray:
  """Lays out ``[rows, cols, H, W, 3]`` images as one uint8 grid.

  Args:
    images: float in [-1, 1] or uint8; ``[cols, H, W, 3]`` is one row.
    tile: resize every image to ``tile``x``tile`` first (None: keep H x W).
    pad: white pixels between tiles.
    labels: one per column, drawn in a header row above the grid (None: no
      header).

  Returns:
    uint8 ``[header + rows * (h + pad) - pad, cols * (w + pad) - pad, 3]``.
  """
  images = np.asarray(images)
  if images.ndim == 4:
    images = images[None]
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f'image_grid expects [rows, cols, H, W, 3], got {images.shape}')
  rows, cols = images.shape[:2]
  if labels is not None and len(labels) != cols:
    raise ValueError(f'image_grid got {len(labels)} labels for {cols} columns')
  flat = images.reshape((-1,) + images.shape[2:])
  flat = resize(flat, tile) if tile else to_uint8(flat)
  h, w = flat.shape[1:3]
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
  for k, im in enumerate(flat):
    r, c = divmod(k, cols)
    grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
  if labels is None:
    return grid
  return np.concatenate([grids.label_header(labels, w, pad), grid], axis=0)


def save_png(image: np.ndarray, path: str) -> str:
  """Writes a uint8 (or [-1, 1] float) ``[H, W, 3]`` image as PNG.

  Args:
    image: the image.
    path: output file; parent directories are created.

  Returns:
    ``path``.
  """
  with cli_utils.atomic_file(path) as tmp:
    Image.fromarray(to_uint8(image)).save(tmp, format='PNG')
  return path

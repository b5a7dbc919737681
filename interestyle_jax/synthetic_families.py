"""Families of uninterest content for the synthetic world.

Each family draws, from a PRNG key, what a face generator cannot produce
around and over one clean generator image: a background (shown outside the
soft elliptical "face" mask) and an occluder layer (alpha and fill, pasted over
everything; occluded pixels are uninterest). Families differ in kind, so a
family held out of training measures whether an encoder learnt to ignore
uninterest content in general or only the clutter it saw:

* ``classic``: gratings, stripes and smoothed colour blotches; discs and boxes
  on the face border, solid or textured.
* ``fractal``: natural-looking multi-octave (1/f) noise through random
  palettes; irregular fractal-edged blobs on the border.
* ``marks``: thin structures and text-like marks: 1 px lines crossing the face,
  blocks of glyph strokes, on a smooth gradient.
* ``skin``: large irregular shapes in the face's own colours (the mean of the
  clean face, shaded) on the mask border, over a low-contrast background.
* ``checker``: hard high-frequency patterns: 2 and 4 px checkerboards, binary
  pixel noise, near-Nyquist gratings; boxes of another pattern on the border.
* ``props``: hats (a brim band and crown over the top of the face) and hands
  (a palm with four fingers reaching in from below), over a plain gradient.

All shapes are in unit coordinates of the image (pixel centres in (0, 1)), so
a family looks the same at any resolution; only the ``checker`` and
``marks`` patterns are defined in pixels, because being 1–4 px wide is what
makes them what they are.
"""

import math
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from interestyle_jax import filter as unf

# (cy, cx, b, a): centre and semi-axes (rows, cols) of the face ellipse.
Ellipse = Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]
# (key, clean image [S, S, 3], ellipse, max_occluders) -> (background, alpha [S, S], fill).
FamilyFn = Callable[..., Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]]


def grid(size: int):
  """Pixel-centre coordinates ``(rows, cols)`` in (0, 1), each ``[size, size]``."""
  c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
  return jnp.meshgrid(c, c, indexing='ij')


def _colours(key, n: int):
  return jax.random.uniform(key, (n, 3), minval=-1.0, maxval=1.0)


def _border_point(key, ellipse: Ellipse, lo: float = 0.0, hi: float = 2 * math.pi):
  """A point on the ellipse border at a random angle in [lo, hi) (y grows downwards)."""
  cy, cx, b, a = ellipse
  angle = jax.random.uniform(key, (), minval=lo, maxval=hi)
  return cy + b * jnp.sin(angle), cx + a * jnp.cos(angle)


def _over(alpha, fill, new_alpha, new_fill):
  """Composites a new occluder over an occluder layer."""
  fill = new_alpha[..., None] * new_fill + (1.0 - new_alpha[..., None]) * fill
  return jnp.maximum(alpha, new_alpha), fill


def _occluders(k_count, k_draw, size: int, max_occluders: int, draw_one, minimum: int = 0,
               layer=None):
  """Composites ``minimum``..``max_occluders`` occluders (uniform count) over a layer.

  Args:
    k_count: key of the count.
    k_draw: key split into one key per occluder slot.
    size: image side.
    max_occluders: most occluders.
    draw_one: ``key -> (alpha [S, S], fill [S, S, 3])`` of one occluder.
    minimum: fewest occluders.
    layer: ``(alpha, fill)`` to composite over (default: empty).

  Returns:
    ``(alpha, fill)``.
  """
  count = jax.random.randint(k_count, (), minimum, max(max_occluders, minimum) + 1)
  alpha, fill = layer or (jnp.zeros((size, size)), jnp.zeros((size, size, 3)))
  slots = jax.random.split(k_draw, max(max_occluders, 1))[:max(max_occluders, minimum)]
  for i, key in enumerate(slots):
    a, f = draw_one(key)
    alpha, fill = _over(alpha, fill, a * (i < count), f)
  return alpha, fill


# ----------------------------------------------------------------------------- classic


def texture(key, size: int) -> jnp.ndarray:
  """A grating, stripes or smoothed colour blotches ``[size, size, 3]`` in [-1, 1]."""
  ks = jax.random.split(key, 8)
  yy, xx = grid(size)
  kind = jax.random.randint(ks[0], (), 0, 3)
  theta = jax.random.uniform(ks[1], (), maxval=math.pi)
  freq = jax.random.uniform(ks[2], (), minval=1.5, maxval=6.0)
  phase = jax.random.uniform(ks[3], (), maxval=2 * math.pi)
  c0, c1 = _colours(ks[4], 2)
  s = 0.5 + 0.5 * jnp.sin(2 * math.pi * freq * (xx * jnp.cos(theta) + yy * jnp.sin(theta))
                          + phase)
  grating = c0 + s[..., None] * (c1 - c0)
  stripes = c0 + (s[..., None] > 0.5) * (c1 - c0)
  noise = jax.random.uniform(ks[5], (1, size, size, 3), minval=-1.0, maxval=1.0)
  sigma = size / 16.0
  blotch = unf.gaussian_blur(noise, sigma, unf.kernel_radius(sigma))[0]
  blotch = jnp.clip(blotch * 3.0, -1.0, 1.0)
  return jnp.select([kind == 0, kind == 1], [grating, stripes], blotch)


def classic(key, img, ellipse: Ellipse, max_occluders: int):
  """Textured background; 0..max discs or boxes on the border, solid or textured."""
  size = img.shape[0]
  k_bg, k_n, k_o = jax.random.split(key, 3)
  yy, xx = grid(size)

  def one(ko):
    ks = jax.random.split(ko, 6)
    oy, ox = _border_point(ks[0], ellipse)
    r = jax.random.uniform(ks[1], (), minval=0.08, maxval=0.16)
    disc = (yy - oy) ** 2 + (xx - ox) ** 2 <= r ** 2
    box = (jnp.abs(yy - oy) <= r * 0.8) & (jnp.abs(xx - ox) <= r * 1.3)
    a = jnp.where(jax.random.bernoulli(ks[2]), disc, box).astype(jnp.float32)
    solid = jnp.broadcast_to(_colours(ks[3], 1)[0], (size, size, 3))
    return a, jnp.where(jax.random.bernoulli(ks[4]), solid, texture(ks[5], size))

  alpha, fill = _occluders(k_n, k_o, size, max_occluders, one)
  return texture(k_bg, size), alpha, fill


# ----------------------------------------------------------------------------- fractal


def fractal_noise(key, size: int, octaves: int = 4) -> jnp.ndarray:
  """Multi-octave value noise with 1/f amplitudes, normalised to [0, 1] ``[S, S]``."""
  total = jnp.zeros((size, size))
  for o, k in enumerate(jax.random.split(key, octaves)):
    cells = 2 ** (o + 1) + 1
    n = jax.random.uniform(k, (cells, cells))
    total = total + 0.5 ** o * jax.image.resize(n, (size, size), 'cubic')
  lo, hi = jnp.min(total), jnp.max(total)
  return (total - lo) / jnp.maximum(hi - lo, 1e-6)


def _palette(key, t: jnp.ndarray) -> jnp.ndarray:
  """Maps ``t`` in [0, 1] through a random 3-colour ramp."""
  c = _colours(key, 3)
  lo = c[0] + jnp.clip(2 * t, 0, 1)[..., None] * (c[1] - c[0])
  return jnp.where((t < 0.5)[..., None], lo,
                   c[1] + jnp.clip(2 * t - 1, 0, 1)[..., None] * (c[2] - c[1]))


def fractal(key, img, ellipse: Ellipse, max_occluders: int):
  """Fractal-noise background; 0..max irregular fractal blobs on the border."""
  size = img.shape[0]
  ks = jax.random.split(key, 4)
  background = _palette(ks[1], fractal_noise(ks[0], size))
  yy, xx = grid(size)

  def one(ko):
    kk = jax.random.split(ko, 5)
    oy, ox = _border_point(kk[0], ellipse)
    r = jax.random.uniform(kk[1], (), minval=0.1, maxval=0.18)
    edge = fractal_noise(kk[2], size)
    d = jnp.sqrt((yy - oy) ** 2 + (xx - ox) ** 2) / r
    a = ((d + 0.8 * (edge - 0.5)) < 1.0).astype(jnp.float32)
    return a, _palette(kk[4], fractal_noise(kk[3], size))

  alpha, fill = _occluders(ks[2], ks[3], size, max_occluders, one)
  return background, alpha, fill


# ----------------------------------------------------------------------------- marks


def _line(key, size: int, through):
  """A 1 px wide straight line through a point, at a random angle ``[S, S]``."""
  yy, xx = grid(size)
  theta = jax.random.uniform(key, (), maxval=math.pi)
  d = (yy - through[0]) * jnp.cos(theta) - (xx - through[1]) * jnp.sin(theta)
  return (jnp.abs(d) * size <= 0.5).astype(jnp.float32)


def _text_block(key, size: int, centre):
  """Rows of glyph strokes (2 px wide, 3 px tall, 1 px gaps) in a box at ``centre``."""
  ks = jax.random.split(key, 3)
  rows = jnp.arange(size)[:, None]
  cols = jnp.arange(size)[None, :]
  half_h = jax.random.uniform(ks[0], (), minval=0.08, maxval=0.15) * size
  half_w = jax.random.uniform(ks[1], (), minval=0.15, maxval=0.3) * size
  inside = ((jnp.abs(rows + 0.5 - centre[0] * size) <= half_h)
            & (jnp.abs(cols + 0.5 - centre[1] * size) <= half_w))
  bits = jax.random.bernoulli(ks[2], 0.6, (size // 4 + 1, size // 3 + 1))
  glyph = bits[rows // 4, cols // 3] & (rows % 4 != 3) & (cols % 3 != 2)
  return (inside & glyph).astype(jnp.float32)


def marks(key, img, ellipse: Ellipse, max_occluders: int):
  """Gradient background; 2..4 one-pixel lines and 1..max blocks of text marks."""
  size = img.shape[0]
  ks = jax.random.split(key, 8)
  yy, xx = grid(size)
  c = _colours(ks[0], 2)
  theta = jax.random.uniform(ks[1], (), maxval=2 * math.pi)
  ramp = 0.5 + 0.5 * ((yy - 0.5) * jnp.sin(theta) + (xx - 0.5) * jnp.cos(theta)) / 0.71
  background = c[0] + ramp[..., None] * (c[1] - c[0])
  alpha, fill = jnp.zeros((size, size)), jnp.zeros((size, size, 3))
  n_lines = jax.random.randint(ks[2], (), 2, 5)
  for i, kl in enumerate(jax.random.split(ks[3], 4)):
    k1, k2, k3 = jax.random.split(kl, 3)
    a = _line(k1, size, _border_point(k2, ellipse)) * (i < n_lines)
    alpha, fill = _over(alpha, fill, a, jnp.broadcast_to(_colours(k3, 1)[0], (size, size, 3)))

  def text(kt):
    k1, k2, k3 = jax.random.split(kt, 3)
    ink = jnp.where(jax.random.bernoulli(k3), -0.9, 0.9)  # dark or bright ink
    return (_text_block(k1, size, _border_point(k2, ellipse)),
            jnp.full((size, size, 3), ink))

  alpha, fill = _occluders(ks[4], ks[5], size, max_occluders, text, minimum=1,
                           layer=(alpha, fill))
  return background, alpha, fill


# ----------------------------------------------------------------------------- skin


def _skin_fill(key, img, ellipse: Ellipse, centre, r):
  """The face's mean colour, jittered and shaded across a shape of radius ``r``."""
  size = img.shape[0]
  yy, xx = grid(size)
  cy, cx, b, a = ellipse
  inside = ((((yy - cy) / b) ** 2 + ((xx - cx) / a) ** 2) <= 1.0)[..., None]
  mean = jnp.sum(img * inside, axis=(0, 1)) / jnp.maximum(jnp.sum(inside), 1.0)
  k1, k2 = jax.random.split(key)
  colour = mean + 0.1 * jax.random.normal(k1, (3,))
  theta = jax.random.uniform(k2, (), maxval=2 * math.pi)
  shade = ((yy - centre[0]) * jnp.sin(theta) + (xx - centre[1]) * jnp.cos(theta)) / r
  return jnp.clip(colour + 0.15 * jnp.clip(shade, -1, 1)[..., None], -1.0, 1.0)


def skin(key, img, ellipse: Ellipse, max_occluders: int):
  """Low-contrast background; 1..max large irregular face-coloured shapes on the border."""
  size = img.shape[0]
  ks = jax.random.split(key, 4)
  background = 0.4 * texture(ks[0], size)
  yy, xx = grid(size)

  def one(ko):
    kk = jax.random.split(ko, 4)
    oy, ox = _border_point(kk[0], ellipse)
    r = jax.random.uniform(kk[1], (), minval=0.12, maxval=0.2)
    # A union of three overlapping discs: an irregular, lobed outline.
    offs = jax.random.uniform(kk[2], (3, 3), minval=-1.0, maxval=1.0)
    shape = jnp.zeros((size, size), bool)
    for dy, dx, dr in offs:
      rr = r * (0.75 + 0.25 * dr)
      shape |= (yy - oy - 0.6 * r * dy) ** 2 + (xx - ox - 0.6 * r * dx) ** 2 <= rr ** 2
    return shape.astype(jnp.float32), _skin_fill(kk[3], img, ellipse, (oy, ox), r)

  alpha, fill = _occluders(ks[1], ks[2], size, max_occluders, one, minimum=1)
  return background, alpha, fill


# ----------------------------------------------------------------------------- checker


def high_frequency(key, size: int) -> jnp.ndarray:
  """A 2 or 4 px checkerboard, binary pixel noise or a near-Nyquist grating ``[S, S, 3]``."""
  ks = jax.random.split(key, 4)
  rows = jnp.arange(size)[:, None]
  cols = jnp.arange(size)[None, :]
  kind = jax.random.randint(ks[0], (), 0, 4)
  check2 = (rows + cols) % 2 == 0
  check4 = (rows // 2 + cols // 2) % 2 == 0
  pixels = jax.random.bernoulli(ks[1], 0.5, (size, size))
  theta = jax.random.uniform(ks[2], (), maxval=math.pi)
  grating = jnp.sin(2 * math.pi / 2.5 * (rows * jnp.cos(theta) + cols * jnp.sin(theta))) > 0
  on = jnp.select([kind == 0, kind == 1, kind == 2], [check2, check4, pixels], grating)
  c = _colours(ks[3], 2)
  return jnp.where(on[..., None], c[0], c[1])


def checker(key, img, ellipse: Ellipse, max_occluders: int):
  """High-frequency background; 1..max boxes of another pattern on the border."""
  size = img.shape[0]
  ks = jax.random.split(key, 3)
  yy, xx = grid(size)

  def one(ko):
    kk = jax.random.split(ko, 4)
    oy, ox = _border_point(kk[0], ellipse)
    h, w = jax.random.uniform(kk[1], (2,), minval=0.07, maxval=0.16)
    a = ((jnp.abs(yy - oy) <= h) & (jnp.abs(xx - ox) <= w)).astype(jnp.float32)
    return a, high_frequency(kk[2], size)

  alpha, fill = _occluders(ks[1], ks[2], size, max_occluders, one, minimum=1)
  return high_frequency(ks[0], size), alpha, fill


# ----------------------------------------------------------------------------- props


def _hat(key, size: int, ellipse: Ellipse):
  """A brim band across the top of the face and a crown above it ``[S, S]``."""
  cy, cx, b, a = ellipse
  k1, k2 = jax.random.split(key)
  yy, xx = grid(size)
  brim_y = cy - b * jax.random.uniform(k1, (), minval=0.35, maxval=0.65)
  t = jax.random.uniform(k2, (), minval=0.025, maxval=0.05)
  brim = (jnp.abs(yy - brim_y) <= t) & (jnp.abs(xx - cx) <= a * 1.4)
  crown = (yy <= brim_y) & (yy >= cy - b * 1.35) & (jnp.abs(xx - cx) <= a * 0.85)
  return brim | crown


def _hand(key, size: int, ellipse: Ellipse):
  """A palm on the lower border with four fingers reaching into the face ``[S, S]``."""
  cy, cx, _, _ = ellipse
  k1, k2, k3 = jax.random.split(key, 3)
  py, px = _border_point(k1, ellipse, lo=0.2 * math.pi, hi=0.8 * math.pi)
  r = jax.random.uniform(k2, (), minval=0.07, maxval=0.1)
  yy, xx = grid(size)
  shape = (yy - py) ** 2 + (xx - px) ** 2 <= r ** 2
  towards = jnp.arctan2(cy - py, cx - px)
  spread = jax.random.uniform(k3, (), minval=0.25, maxval=0.45)
  for j in range(4):
    angle = towards + spread * (j - 1.5)
    u = (yy - py) * jnp.sin(angle) + (xx - px) * jnp.cos(angle)  # along the finger
    v = -(yy - py) * jnp.cos(angle) + (xx - px) * jnp.sin(angle)  # across it
    shape |= (u >= 0) & (u <= r + 0.13) & (jnp.abs(v) <= 0.022)
  return shape


def props(key, img, ellipse: Ellipse, max_occluders: int):
  """Gradient background; a hat, a hand, or both (at least one)."""
  del max_occluders  # a face wears at most one hat and raises at most one hand here
  size = img.shape[0]
  ks = jax.random.split(key, 8)
  yy, _ = grid(size)
  c = _colours(ks[0], 2)
  background = c[0] + yy[..., None] * (c[1] - c[0])
  which = jax.random.randint(ks[1], (), 0, 3)  # 0 hat, 1 hand, 2 both
  hat = _hat(ks[2], size, ellipse).astype(jnp.float32) * (which != 1)
  hand = _hand(ks[3], size, ellipse).astype(jnp.float32) * (which != 0)
  hat_fill = jnp.where(jax.random.bernoulli(ks[4]),
                       jnp.broadcast_to(_colours(ks[5], 1)[0], (size, size, 3)),
                       texture(ks[5], size))
  glove = jnp.broadcast_to(_colours(ks[6], 1)[0], (size, size, 3))
  hand_fill = jnp.where(jax.random.bernoulli(ks[7]),
                        _skin_fill(ks[6], img, ellipse, (0.8, 0.5), 0.2), glove)
  alpha, fill = _over(jnp.zeros((size, size)), jnp.zeros((size, size, 3)), hat, hat_fill)
  alpha, fill = _over(alpha, fill, hand, hand_fill)
  return background, alpha, fill


FAMILIES: Dict[str, FamilyFn] = {
    'classic': classic,
    'fractal': fractal,
    'marks': marks,
    'skin': skin,
    'checker': checker,
    'props': props,
}


def check_families(families, field: str = 'families') -> Tuple[str, ...]:
  """Validates family names.

  Args:
    families: a sequence of names.
    field: the option or config field that gave them (for the message).

  Returns:
    The names as a tuple.

  Raises:
    ValueError: empty, or a name that is not a family.
  """
  families = tuple(families)
  if not families:
    raise ValueError(f'{field} is empty; choose from {sorted(FAMILIES)}')
  unknown = [f for f in families if f not in FAMILIES]
  if unknown:
    raise ValueError(f'{field}: unknown synthetic famil{"ies" if len(unknown) > 1 else "y"} '
                     f'{unknown}; choose from {sorted(FAMILIES)}')
  return families


def draw(key, families: Tuple[str, ...], img, ellipse: Ellipse, max_occluders: int):
  """The uninterest content of one image, from one of ``families`` chosen uniformly.

  Args:
    key: PRNG key.
    families: family names (see :data:`FAMILIES`).
    img: the clean image ``[S, S, 3]`` (``skin`` and ``props`` take its colours).
    ellipse: the face ellipse ``(cy, cx, b, a)`` in unit coordinates.
    max_occluders: occluder count limit of the families that have one.

  Returns:
    ``(background [S, S, 3], alpha [S, S], fill [S, S, 3])``.
  """
  k_pick, k_draw = jax.random.split(key)
  fns = [FAMILIES[f] for f in families]
  if len(fns) == 1:
    return fns[0](k_draw, img, ellipse, max_occluders)
  branches = [lambda k, f=f: f(k, img, ellipse, max_occluders) for f in fns]
  return jax.lax.switch(jax.random.randint(k_pick, (), 0, len(fns)), branches, k_draw)

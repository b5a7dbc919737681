"""StyleGAN2 generator (config-f) in Flax linen.

Mirrors the PyTorch port whose checkpoints (``stylegan2-ffhq-config-f.pt``) all
pSp / e4e / ReStyle / IntereStyle releases use. Module and parameter names follow
the PyTorch state-dict keys (``convs.3.conv.modulation.weight`` becomes
``params['convs_3']['conv']['modulation']['weight']``), with linear weights
stored ``[in, out]`` and convolution weights HWIO. The fixed per-layer noise
buffers live in the ``'noises'`` collection.
"""

import math
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from interestyle_jax.models.layers import EqualLinear
from interestyle_jax.ops import blur, fused_leaky_relu, upsample
from interestyle_jax.ops.conv import canonical_conv

KIND = 'stylegan2'  # the model directory kind `convert stylegan2` writes

NOISE_MODES = ('const', 'random', 'none')
MODCONV_IMPLS = ('shared', 'grouped')


def pixel_norm(x: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
  """Normalises each vector to unit root-mean-square over the last axis."""
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def generator_channels(resolution: int, channel_multiplier: int = 2,
                       width: int = 512) -> dict:
  """Channels per resolution for config-f, scaled by ``width / 512``.

  Args:
    resolution: output resolution (power of two).
    channel_multiplier: 2 for the FFHQ model.
    width: channels at 4-32 px (512 in every released checkpoint); smaller
      values give the narrow models used in tests.

  Returns:
    dict mapping each resolution 4..``resolution`` to a channel count.
  """
  base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
          128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
          512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
  out = {}
  res = 4
  while res <= resolution:
    c = base.get(res, 8 * channel_multiplier)
    out[res] = max(1, c * width // 512)
    res *= 2
  return out


def n_styles_for(resolution: int) -> int:
  """Number of W+ vectors, ``2 * log2(resolution) - 2`` (18 at 1024 px)."""
  return 2 * int(math.log2(resolution)) - 2


def num_noise_layers(resolution: int) -> int:
  """Number of noise inputs, one per styled conv (17 at 1024 px)."""
  return 2 * (int(math.log2(resolution)) - 2) + 1


def noise_shapes(resolution: int):
  """NHWC shapes ``[1, r, r, 1]`` of the per-layer noise inputs."""
  return [(1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1)
          for i in range(num_noise_layers(resolution))]


def mix_styles(w_a: jnp.ndarray, w_b: jnp.ndarray, inject_index: int) -> jnp.ndarray:
  """Style mixing: layers ``< inject_index`` from ``w_a``, the rest from ``w_b``.

  Args:
    w_a: ``[B, n_styles, D]`` (or ``[B, D]``, broadcast over styles).
    w_b: same shape as ``w_a``.
    inject_index: first style index taken from ``w_b``.

  Returns:
    ``[B, n_styles, D]`` mixed latents.
  """
  if w_a.ndim != 3 or w_b.ndim != 3:
    raise ValueError('mix_styles needs W+ latents [B, n_styles, D]; got '
                     f'{w_a.shape} and {w_b.shape}')
  n = w_a.shape[1]
  sel = (jnp.arange(n) < inject_index)[None, :, None]
  return jnp.where(sel, w_a, w_b)


class ModulatedConv2d(nn.Module):
  """Modulated convolution with optional demodulation and 2x upsampling.

  Attributes:
    features: output channels.
    kernel_size: square kernel size (3 or 1).
    demodulate: normalise each output filter (eps 1e-8).
    upsample: transposed conv (stride 2) followed by the FIR blur.
    blur_kernel: FIR taps of the blur.
    impl: 'shared' scales the activations around one shared convolution;
      'grouped' builds per-sample weights and runs a grouped convolution.
  """
  features: int
  kernel_size: int
  demodulate: bool = True
  upsample: bool = False
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  impl: str = 'shared'

  @nn.compact
  def __call__(self, x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    in_ch = x.shape[-1]
    weight = self.param('weight', nn.initializers.normal(1.0),
                        (k, k, in_ch, self.features))
    style = EqualLinear(in_ch, bias_init=1.0, name='modulation')(w)  # [B, in]
    weight = weight * (1.0 / math.sqrt(in_ch * k * k))
    demod = None
    if self.demodulate:
      # sum_{i,kh,kw} (W s_i)^2 == s^2 @ sum_{kh,kw} W^2, without building
      # the per-sample weights. The sum over taps is written out: XLA:CPU
      # runs jnp.sum over the two leading axes ~30x slower than this
      # elementwise loop, and it is recomputed for every generator call.
      wsq = sum(jnp.square(weight[i, j]) for i in range(k) for j in range(k))  # [in, out]
      demod = lax.rsqrt(jnp.square(style) @ wsq + 1e-8)  # [B, out]

    if self.impl == 'shared':
      out = self._conv(x * style[:, None, None, :], weight)
      if demod is not None:
        out = out * demod[:, None, None, :]
    elif self.impl == 'grouped':
      wb = weight[None] * style[:, None, None, :, None]
      if demod is not None:
        wb = wb * demod[:, None, None, None, :]
      if k == 1 and not self.upsample:
        out = jnp.einsum('bhwi,bio->bhwo', x, wb[:, 0, 0])
      else:
        out = jax.vmap(lambda xi, wi: self._conv(xi[None], wi)[0])(x, wb)
    else:
      raise ValueError(f'impl must be one of {MODCONV_IMPLS}, got {self.impl!r}')

    if self.upsample:
      factor = 2
      p = (len(self.blur_kernel) - factor) - (k - 1)
      pad0 = (p + 1) // 2 + factor - 1
      pad1 = p // 2 + 1
      out = blur(out, self.blur_kernel, (pad0, pad1), upsample_factor=factor)
    return out

  def _conv(self, x, weight):
    k = self.kernel_size
    if k == 1 and not self.upsample:
      # A 1x1 convolution is a matrix product; as a convolution, XLA:CPU runs
      # ToRGB's (3 output channels) ~15x slower.
      return jnp.einsum('bhwi,io->bhwo', x, weight[0, 0])
    dn = ('NHWC', 'HWIO', 'NHWC')
    if self.upsample:
      # PyTorch's conv_transpose2d(stride=2, padding=0): dilate the input,
      # pad by k-1 and correlate with the spatially flipped kernel.
      return canonical_conv(
          x, jnp.flip(weight, (0, 1)), (1, 1), [(k - 1, k - 1)] * 2,
          lhs_dilation=(2, 2), dimension_numbers=dn)
    return canonical_conv(x, weight, (1, 1), [(k // 2, k // 2)] * 2, dimension_numbers=dn)


class NoiseInjection(nn.Module):
  """Adds ``weight * noise`` with a learned scalar weight (init 0)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, noise: Optional[jnp.ndarray]) -> jnp.ndarray:
    weight = self.param('weight', nn.initializers.zeros, (1,))
    if noise is None:
      return x
    # Noise is drawn in float32; keep a bfloat16 generator in bfloat16.
    return x + (weight * noise).astype(x.dtype)


class FusedLeakyReLU(nn.Module):
  """Learned per-channel bias followed by leaky ReLU (0.2) with gain sqrt(2)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    return fused_leaky_relu(x, bias)


def _clamp(x: jnp.ndarray, clamp: Optional[float]) -> jnp.ndarray:
  return x if clamp is None else jnp.clip(x, -clamp, clamp)


class StyledConv(nn.Module):
  """Modulated 3x3 conv, noise injection, activation and optional clamp."""
  features: int
  upsample: bool = False
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  impl: str = 'shared'
  clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, w, noise):
    x = ModulatedConv2d(self.features, 3, upsample=self.upsample,
                        blur_kernel=self.blur_kernel, impl=self.impl,
                        name='conv')(x, w)
    x = NoiseInjection(name='noise')(x, noise)
    # NVIDIA's bias_act clamps after the activation gain.
    return _clamp(FusedLeakyReLU(name='activate')(x), self.clamp)


class ToRGB(nn.Module):
  """1x1 modulated conv to RGB (no demodulation) plus the upsampled skip."""
  upsample: bool = True
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  impl: str = 'shared'
  clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, w, skip=None):
    out = ModulatedConv2d(3, 1, demodulate=False, impl=self.impl,
                          name='conv')(x, w)
    # The clamp (NVIDIA generators) bounds this layer's output, not the sum.
    out = _clamp(out + self.param('bias', nn.initializers.zeros, (3,)), self.clamp)
    if skip is not None:
      if self.upsample:
        skip = upsample(skip, self.blur_kernel)
      out = out + skip
    return out


class ConstantInput(nn.Module):
  """The learned 4x4 constant the synthesis network starts from."""
  channels: int

  @nn.compact
  def __call__(self, batch: int) -> jnp.ndarray:
    const = self.param('input', nn.initializers.normal(1.0),
                       (1, 4, 4, self.channels))
    return jnp.broadcast_to(const, (batch,) + const.shape[1:])


class Generator(nn.Module):
  """StyleGAN2 generator: mapping network + synthesis network.

  Calling the module with a W+ latent ``[B, n_styles, style_dim]`` (or a W
  latent ``[B, style_dim]``, broadcast to every layer) returns ``[B, R, R, 3]``
  images in roughly [-1, 1].

  Attributes:
    resolution: output size, a power of two in 8..1024.
    style_dim: latent width (512 for FFHQ).
    n_mlp: mapping-network depth (8 for FFHQ).
    channel_multiplier: channel multiplier for >= 64 px (2 for FFHQ).
    width: channels at 4-32 px (512 for released models).
    blur_kernel: FIR taps for upsampling.
    lr_mlp: learning-rate multiplier of the mapping network.
    modconv_impl: 'shared' or 'grouped' modulated-conv implementation.
    remat: recompute each styled conv / ToRGB block in the backward pass
      instead of keeping its activations (``jax.checkpoint``): less memory
      for a gradient through G, one more forward pass of G.
    conv_clamp: clamp every styled conv (after bias, activation and gain)
      and every ToRGB output to ``±conv_clamp``, as NVIDIA's StyleGAN2-ADA /
      StyleGAN3 generators do (256 in their configs); None: no clamp.
    channels: explicit channels per resolution 4, 8, …, ``resolution``
      (NVIDIA's ``min(channel_base // res, channel_max)`` when that is not a
      config-f table); None: ``generator_channels(resolution,
      channel_multiplier, width)``.
  """
  resolution: int
  style_dim: int = 512
  n_mlp: int = 8
  channel_multiplier: int = 2
  width: int = 512
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  lr_mlp: float = 0.01
  modconv_impl: str = 'shared'
  remat: bool = False
  conv_clamp: Optional[float] = None
  channels: Optional[Sequence[int]] = None

  def __post_init__(self):
    # model.json gives lists; a Module must stay hashable (jit caches, lru_cache).
    for field in ('blur_kernel', 'channels'):
      value = getattr(self, field)
      if value is not None and not isinstance(value, tuple):
        object.__setattr__(self, field, tuple(value))
    super().__post_init__()

  def setup(self):
    log_size = int(math.log2(self.resolution))
    if 2 ** log_size != self.resolution or not 8 <= self.resolution <= 1024:
      raise ValueError('Generator.resolution must be a power of two in '
                       f'8..1024, got {self.resolution}')
    if self.modconv_impl not in MODCONV_IMPLS:
      raise ValueError(f'Generator.modconv_impl must be one of {MODCONV_IMPLS}, '
                       f'got {self.modconv_impl!r}')
    ch = self.channels_per_resolution()
    bk = tuple(self.blur_kernel)
    impl = self.modconv_impl
    clamp = None if self.conv_clamp is None else float(self.conv_clamp)
    # style_{i} is PyTorch's style.{i+1} (style.0 is the parameter-free PixelNorm).
    self.style = [EqualLinear(self.style_dim, lr_mul=self.lr_mlp, activation=True)
                  for _ in range(self.n_mlp)]
    styled_conv = nn.remat(StyledConv) if self.remat else StyledConv
    to_rgb = nn.remat(ToRGB) if self.remat else ToRGB
    self.input = ConstantInput(ch[4])
    self.conv1 = styled_conv(ch[4], blur_kernel=bk, impl=impl, clamp=clamp)
    self.to_rgb1 = to_rgb(upsample=False, blur_kernel=bk, impl=impl, clamp=clamp)
    convs, to_rgbs = [], []
    for i in range(3, log_size + 1):
      c = ch[2 ** i]
      convs.append(styled_conv(c, upsample=True, blur_kernel=bk, impl=impl, clamp=clamp))
      convs.append(styled_conv(c, blur_kernel=bk, impl=impl, clamp=clamp))
      to_rgbs.append(to_rgb(blur_kernel=bk, impl=impl, clamp=clamp))
    self.convs = convs
    self.to_rgbs = to_rgbs
    self.noise_buffers = [
        self.variable('noises', f'noise_{i}',
                      lambda s=s: jax.random.normal(self.make_rng('params'), s))
        for i, s in enumerate(noise_shapes(self.resolution))]

  def channels_per_resolution(self) -> Dict[int, int]:
    """Channels of each resolution 4..``resolution`` (``channels`` or config-f's table)."""
    if self.channels is None:
      return generator_channels(self.resolution, self.channel_multiplier, self.width)
    sizes = [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1)]
    if len(self.channels) != len(sizes) or min(self.channels) < 1:
      raise ValueError(f'Generator.channels must give {len(sizes)} positive counts (for '
                       f'{sizes[0]}..{sizes[-1]} px), got {self.channels}')
    return dict(zip(sizes, (int(c) for c in self.channels)))

  @property
  def n_styles(self) -> int:
    return n_styles_for(self.resolution)

  @property
  def num_noise_layers(self) -> int:
    return num_noise_layers(self.resolution)

  def mapping(self, z: jnp.ndarray) -> jnp.ndarray:
    """Maps z ``[B, style_dim]`` to w ``[B, style_dim]``."""
    x = pixel_norm(z)
    for layer in self.style:
      x = layer(x)
    return x

  def mean_latent(self, n: int, rng: jax.Array) -> jnp.ndarray:
    """Average w of ``n`` random z (the truncation centre), shape ``[1, D]``."""
    z = jax.random.normal(rng, (n, self.style_dim))
    return jnp.mean(self.mapping(z), axis=0, keepdims=True)

  def __call__(self, latents: jnp.ndarray, noise_mode: str = 'const',
               noise: Optional[Sequence[jnp.ndarray]] = None,
               truncation: float = 1.0,
               truncation_latent: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Synthesises images from W or W+ latents.

    Args:
      latents: ``[B, n_styles, D]`` W+ latents or ``[B, D]`` W latents.
      noise_mode: 'const' uses the stored noise buffers, 'random' draws fresh
        noise from the ``'noise'`` RNG stream, 'none' adds no noise.
      noise: optional explicit per-layer noise (``num_noise_layers`` arrays of
        shape ``[B or 1, r, r, 1]``); overrides ``noise_mode``.
      truncation: psi; < 1 pulls the latents toward ``truncation_latent``.
      truncation_latent: the truncation centre ``[D]``, ``[1, D]`` or W+.

    Returns:
      ``[B, resolution, resolution, 3]`` images.
    """
    if latents.ndim == 2:
      latents = jnp.broadcast_to(latents[:, None, :],
                                 (latents.shape[0], self.n_styles, latents.shape[-1]))
    if latents.ndim != 3 or latents.shape[1:] != (self.n_styles, self.style_dim):
      raise ValueError(
          f'Generator({self.resolution}px) expects latents [B, {self.n_styles}, '
          f'{self.style_dim}] or [B, {self.style_dim}], got {latents.shape}')
    if truncation != 1.0:
      if truncation_latent is None:
        raise ValueError('truncation < 1 needs truncation_latent (e.g. the '
                         'checkpoint latent_avg or Generator.mean_latent)')
      latents = truncation_latent + truncation * (latents - truncation_latent)
    if self.is_initializing():
      # Creates the mapping parameters too, so `init` yields a full generator.
      self.mapping(jnp.zeros((1, self.style_dim), latents.dtype))
    batch = latents.shape[0]
    noises = self._noise_inputs(batch, noise_mode, noise)

    out = self.input(batch).astype(latents.dtype)
    out = self.conv1(out, latents[:, 0], noises[0])
    skip = self.to_rgb1(out, latents[:, 1])
    i = 1
    for j, to_rgb in enumerate(self.to_rgbs):
      out = self.convs[2 * j](out, latents[:, i], noises[2 * j + 1])
      out = self.convs[2 * j + 1](out, latents[:, i + 1], noises[2 * j + 2])
      skip = to_rgb(out, latents[:, i + 2], skip)
      i += 2
    return skip

  def _noise_inputs(self, batch, noise_mode, noise):
    shapes = noise_shapes(self.resolution)
    if noise is not None:
      if len(noise) != len(shapes):
        raise ValueError(f'noise must hold {len(shapes)} arrays, got {len(noise)}')
      return list(noise)
    if noise_mode == 'const':
      return [buf.value for buf in self.noise_buffers]
    if noise_mode == 'random':
      key = self.make_rng('noise')
      keys = jax.random.split(key, len(shapes))
      return [jax.random.normal(k, (batch,) + s[1:]) for k, s in zip(keys, shapes)]
    if noise_mode == 'none':
      return [None] * len(shapes)
    raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}')

  def from_z(self, z: jnp.ndarray, mix_z: Optional[jnp.ndarray] = None,
             inject_index: Optional[int] = None, truncation: float = 1.0,
             truncation_latent: Optional[jnp.ndarray] = None,
             noise_mode: str = 'random'):
    """Samples images from z, with optional style mixing.

    Args:
      z: ``[B, D]`` Gaussian latents.
      mix_z: optional second ``[B, D]`` latents for style mixing.
      inject_index: first layer taken from ``mix_z`` (required with it).
      truncation: psi toward ``truncation_latent``.
      truncation_latent: truncation centre.
      noise_mode: as in ``__call__``.

    Returns:
      ``(images, w_plus)``.
    """
    w = jnp.broadcast_to(self.mapping(z)[:, None], (z.shape[0], self.n_styles, self.style_dim))
    if mix_z is not None:
      if inject_index is None:
        raise ValueError('style mixing needs inject_index')
      w2 = jnp.broadcast_to(self.mapping(mix_z)[:, None], w.shape)
      w = mix_styles(w, w2, inject_index)
    if truncation != 1.0:
      w = truncation_latent + truncation * (w - truncation_latent)
    return self(w, noise_mode=noise_mode), w


# Generator fields every model.json lists, and the others with their defaults
# (written only when a model departs from them, so older files stay as they are).
CONFIG_FIELDS = ('resolution', 'style_dim', 'n_mlp', 'channel_multiplier', 'width')
OPTIONAL_FIELDS = {'lr_mlp': 0.01, 'blur_kernel': (1, 3, 3, 1), 'conv_clamp': None,
                   'channels': None}


def generator_config(generator: Generator) -> Dict[str, Any]:
  """The JSON-able keyword arguments that rebuild ``generator`` (for model.json).

  Args:
    generator: a Generator.

  Returns:
    ``CONFIG_FIELDS`` as ints, plus each of ``OPTIONAL_FIELDS`` that differs
    from its default (sequences as lists).
  """
  out = {k: int(getattr(generator, k)) for k in CONFIG_FIELDS}
  for field, default in OPTIONAL_FIELDS.items():
    value = getattr(generator, field)
    if isinstance(value, (tuple, list)):
      value = [v.item() if hasattr(v, 'item') else v for v in value]
      if default is not None and tuple(value) == tuple(default):
        continue
    elif value == default:
      continue
    out[field] = value
  return out


def load_stylegan2(path: str):
  """Loads a ``convert stylegan2`` directory (torch not needed).

  Args:
    path: the model directory.

  Returns:
    ``(generator_module, variables, latent_avg)``; ``latent_avg`` is ``[1, D]``
    (or ``[n_styles, D]``) or None when the source had none.
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  meta, tree = artifacts.load_artifact(path, expected_kind=KIND)  # warns on NaN/inf
  gen = Generator(**meta['generator'])
  return gen, tree['generator'], tree.get('latent_avg')

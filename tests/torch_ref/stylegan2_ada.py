"""Independent PyTorch reference of NVIDIA's StyleGAN2-ADA generator (test-only).

Written from the facts of NVlabs stylegan2-ada-pytorch ``training/networks.py``
and ``torch_utils/ops`` (module names, parameter shapes, gains, resampling
padding, noise/bias/clamp order, the float16 blocks' un-fused path), not from
its code, and computed differently from the Flax model where the two could
share a mistake: the up-sampling layer zero-inserts and FIR-filters *before* a
plain convolution (NVIDIA's generic path) instead of the transposed
convolution the port uses. Modules carry the attributes a network pickle holds
(``conv_clamp``, ``architecture``, ``use_fp16``, gains, ``_init_kwargs``), so
:mod:`tests.torch_ref.nvidia_pickle` can write a ``.pkl`` in NVIDIA's layout.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_ref.stylegan2 import upfirdn_ref

SQRT2 = np.sqrt(2)  # a numpy float, as NVIDIA's activation table stores it


def setup_filter(taps):
  """NVIDIA's filter buffer: 2-D outer product below 8 taps, 1-D above, sum 1."""
  f = torch.as_tensor(taps, dtype=torch.float32)
  if f.numel() < 8:
    f = f[:, None] * f[None, :]
  return f / f.sum()


def fir_2d(f):
  return f if f.ndim == 2 else f[:, None] * f[None, :]


def fir_pads(n, up):
  """Padding that centres an n-tap filter after ``up``-fold zero insertion."""
  return (n + up - 1) // 2, (n - up) // 2


class Persistent(nn.Module):
  """Records the constructor arguments, as persistence's decorator does."""

  def remember(self, **kwargs):
    self._init_args = ()
    self._init_kwargs = kwargs


class FullyConnectedLayer(Persistent):
  def __init__(self, in_features, out_features, activation='linear', lr_multiplier=1.0,
               bias_init=0.0):
    super().__init__()
    self.remember(in_features=in_features, out_features=out_features, activation=activation,
                  lr_multiplier=lr_multiplier, bias_init=bias_init)
    self.activation = activation
    self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
    self.bias = nn.Parameter(torch.full([out_features], np.float32(bias_init)))
    self.weight_gain = lr_multiplier / np.sqrt(in_features)
    self.bias_gain = lr_multiplier

  def forward(self, x):
    y = x @ (self.weight * float(self.weight_gain)).t() + self.bias * float(self.bias_gain)
    if self.activation == 'lrelu':
      y = F.leaky_relu(y, 0.2) * float(SQRT2)
    return y


class MappingNetwork(Persistent):
  def __init__(self, z_dim, w_dim, num_ws, num_layers, lr_multiplier=0.01):
    super().__init__()
    self.remember(z_dim=z_dim, c_dim=0, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers)
    self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, 0, w_dim, num_ws
    self.num_layers, self.w_avg_beta = num_layers, 0.995
    for i in range(num_layers):
      setattr(self, f'fc{i}', FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim,
                                                  activation='lrelu',
                                                  lr_multiplier=lr_multiplier))
    self.register_buffer('w_avg', torch.zeros(w_dim))

  def forward(self, z):
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    for i in range(self.num_layers):
      x = getattr(self, f'fc{i}')(x)
    return x


def modulated_conv(x, weight, styles, demodulate, fp16_path, conv):
  """One modulated convolution; ``conv(x, w)`` runs the spatial part per sample.

  ``fp16_path`` follows the float16 blocks' un-fused route in float32:
  weight and styles pre-normalised by their max norms, activations scaled
  before and after one shared convolution.
  """
  if fp16_path and demodulate:
    fan = weight[0].numel()
    weight = weight / math.sqrt(fan) / weight.flatten(1).abs().amax(1).reshape(-1, 1, 1, 1)
    styles = styles / styles.abs().amax(1, keepdim=True)
  w = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
  dcoefs = (w.square().sum([2, 3, 4]) + 1e-8).rsqrt() if demodulate else None
  if fp16_path:
    y = conv(x * styles[:, :, None, None], weight[None].expand(x.shape[0], -1, -1, -1, -1))
    return y * dcoefs[:, :, None, None] if demodulate else y
  if demodulate:
    w = w * dcoefs[:, :, None, None, None]
  return conv(x, w)


class SynthesisLayer(Persistent):
  def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, use_noise=True,
               resample_filter=(1, 3, 3, 1), conv_clamp=None):
    super().__init__()
    self.remember(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                  resolution=resolution, up=up, resample_filter=list(resample_filter),
                  conv_clamp=conv_clamp)
    self.resolution, self.up, self.use_noise = resolution, up, use_noise
    self.activation, self.conv_clamp, self.padding, self.act_gain = 'lrelu', conv_clamp, 1, SQRT2
    self.register_buffer('resample_filter', setup_filter(resample_filter))
    self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
    self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
    if use_noise:
      self.register_buffer('noise_const', torch.randn(resolution, resolution))
      self.noise_strength = nn.Parameter(torch.zeros([]))
    self.bias = nn.Parameter(torch.zeros(out_channels))

  def _conv(self, x, w):
    f = fir_2d(self.resample_filter)
    outs = []
    for i in range(x.shape[0]):
      xi = x[i:i + 1]
      if self.up == 2:
        # Zero-insert, filter (gain 4) with the layer's padding folded in, then
        # a valid convolution with the flipped kernel (NVIDIA's up layers
        # convolve, their plain layers correlate).
        p0, p1 = fir_pads(f.shape[0], 2)
        xi = upfirdn_ref(xi, f * 4, up=2, pad=(p0 + 1, p1 + 1))
        outs.append(F.conv2d(xi, w[i].flip([2, 3])))
      else:
        outs.append(F.conv2d(xi, w[i], padding=1))
    return torch.cat(outs)

  def forward(self, x, w, noise_mode='const', fp16_path=False):
    styles = self.affine(w)
    x = modulated_conv(x, self.weight, styles, True, fp16_path, self._conv)
    if self.use_noise and noise_mode == 'const':
      x = x + self.noise_const * self.noise_strength
    x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * float(self.act_gain)
    if self.conv_clamp is not None:
      x = x.clamp(-self.conv_clamp, self.conv_clamp)
    return x


class ToRGBLayer(Persistent):
  def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
    super().__init__()
    self.remember(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                  conv_clamp=conv_clamp)
    self.conv_clamp = conv_clamp
    self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
    self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
    self.bias = nn.Parameter(torch.zeros(out_channels))
    self.weight_gain = 1 / np.sqrt(in_channels)

  def forward(self, x, w, fp16_path=False):
    styles = self.affine(w) * float(self.weight_gain)
    conv = lambda xs, ws: torch.einsum('bihw,boi->bohw', xs, ws[:, :, :, 0, 0])
    y = modulated_conv(x, self.weight, styles, False, fp16_path, conv)
    y = y + self.bias[None, :, None, None]
    return y if self.conv_clamp is None else y.clamp(-self.conv_clamp, self.conv_clamp)


class Conv2dLayer(Persistent):
  """The 'resnet' blocks' 1x1 skip convolution (layout only)."""

  def __init__(self, in_channels, out_channels):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))


class SynthesisBlock(Persistent):
  def __init__(self, in_channels, out_channels, w_dim, resolution, is_last,
               architecture='skip', resample_filter=(1, 3, 3, 1), conv_clamp=None,
               use_fp16=False, use_noise=True):
    super().__init__()
    self.remember(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                  resolution=resolution, img_channels=3, is_last=is_last,
                  architecture=architecture, use_fp16=use_fp16)
    self.in_channels, self.w_dim, self.resolution, self.img_channels = (
        in_channels, w_dim, resolution, 3)
    self.is_last, self.architecture, self.use_fp16, self.channels_last = (
        is_last, architecture, use_fp16, False)
    self.register_buffer('resample_filter', setup_filter(resample_filter))
    self.num_conv = self.num_torgb = 0
    kw = dict(w_dim=w_dim, resolution=resolution, resample_filter=resample_filter,
              conv_clamp=conv_clamp, use_noise=use_noise)
    if in_channels == 0:
      self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
    else:
      self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **kw)
      self.num_conv += 1
    self.conv1 = SynthesisLayer(out_channels, out_channels, **kw)
    self.num_conv += 1
    if is_last or architecture == 'skip':
      self.torgb = ToRGBLayer(out_channels, 3, w_dim, conv_clamp=conv_clamp)
      self.num_torgb += 1
    if in_channels and architecture == 'resnet':
      self.skip = Conv2dLayer(in_channels, out_channels)

  def forward(self, x, img, ws, noise_mode):
    fp16 = self.use_fp16
    if self.in_channels == 0:
      x = self.conv1(self.const[None].repeat(ws.shape[0], 1, 1, 1), ws[:, 0], noise_mode, fp16)
    else:
      x = self.conv0(x, ws[:, 0], noise_mode, fp16)
      x = self.conv1(x, ws[:, 1], noise_mode, fp16)
    if img is not None:
      f = fir_2d(self.resample_filter)
      img = upfirdn_ref(img, f * 4, up=2, pad=fir_pads(f.shape[0], 2))
    y = self.torgb(x, ws[:, self.num_conv], fp16)
    return x, y if img is None else img + y


class SynthesisNetwork(Persistent):
  def __init__(self, w_dim, img_resolution, channel_base, channel_max, num_fp16_res=0,
               **block_kwargs):
    super().__init__()
    self.remember(w_dim=w_dim, img_resolution=img_resolution, img_channels=3,
                  channel_base=channel_base, channel_max=channel_max,
                  num_fp16_res=num_fp16_res, **block_kwargs)
    log2 = int(np.log2(img_resolution))
    self.w_dim, self.img_resolution, self.img_resolution_log2 = w_dim, img_resolution, log2
    self.img_channels = 3
    self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
    ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
    fp16_from = max(2 ** (log2 + 1 - num_fp16_res), 8)
    self.num_ws = 0
    for r in self.block_resolutions:
      block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, r == img_resolution,
                             use_fp16=r >= fp16_from, **block_kwargs)
      self.num_ws += block.num_conv + (block.num_torgb if r == img_resolution else 0)
      setattr(self, f'b{r}', block)

  def forward(self, ws, noise_mode='const'):
    x = img = None
    i = 0
    for r in self.block_resolutions:
      block = getattr(self, f'b{r}')
      x, img = block(x, img, ws[:, i:i + block.num_conv + block.num_torgb], noise_mode)
      i += block.num_conv
    return img


class Generator(Persistent):
  """NVIDIA's Generator layout: ``synthesis`` then ``mapping`` (W+ → NCHW image)."""

  def __init__(self, z_dim, w_dim, img_resolution, channel_base, channel_max,
               mapping_layers=2, mapping_lr=0.01, num_fp16_res=0, **block_kwargs):
    super().__init__()
    self.remember(z_dim=z_dim, c_dim=0, w_dim=w_dim, img_resolution=img_resolution,
                  img_channels=3, mapping_kwargs={'num_layers': mapping_layers},
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                                        num_fp16_res=num_fp16_res, **block_kwargs))
    self.z_dim, self.c_dim, self.w_dim = z_dim, 0, w_dim
    self.img_resolution, self.img_channels = img_resolution, 3
    self.synthesis = SynthesisNetwork(w_dim, img_resolution, channel_base, channel_max,
                                      num_fp16_res, **block_kwargs)
    self.num_ws = self.synthesis.num_ws
    self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr)

  def randomize(self, seed, noise_strength=0.3):
    """Non-zero biases, noise strengths and w_avg (they start at 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      for name, p in list(self.named_parameters()) + [('mapping.w_avg', self.mapping.w_avg)]:
        if name.endswith('bias') or name.endswith('noise_strength') or name.endswith('w_avg'):
          scale = noise_strength if name.endswith('noise_strength') else 0.2
          p.copy_(scale * torch.randn(p.shape, generator=g) + p.mean())
    return self

  def forward(self, ws, noise_mode='const'):
    return self.synthesis(ws, noise_mode)

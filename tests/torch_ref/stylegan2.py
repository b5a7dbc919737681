"""Independent PyTorch reference of the StyleGAN2 generator (test-only).

Written from the facts in DESIGN.md §1.1; its state-dict keys follow the public
PyTorch port (g_ema), buffers included, so that converting its state dict
exercises exactly the code path a real checkpoint takes.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def fir_kernel(taps, gain=1.0):
  k = torch.tensor(taps, dtype=torch.float32)
  k = k[None, :] * k[:, None]
  return k / k.sum() * gain


def upfirdn_ref(x, kernel, up=1, down=1, pad=(0, 0)):
  """NCHW textbook upfirdn: zero-insert, pad/crop, convolve (flipped), decimate."""
  b, c, h, w = x.shape
  if up > 1:
    z = x.new_zeros(b, c, h * up, w * up)
    z[:, :, ::up, ::up] = x
    x = z
  p0, p1 = pad
  x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
  hh, ww = x.shape[2:]
  x = x[:, :, max(-p0, 0):hh - max(-p1, 0), max(-p0, 0):ww - max(-p1, 0)]
  k = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1)
  x = F.conv2d(x, k, groups=c)
  return x[:, :, ::down, ::down]


class EqualLinear(nn.Module):
  def __init__(self, inp, out, bias_init=0.0, lr_mul=1.0, act=False):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out, inp) / lr_mul)
    self.bias = nn.Parameter(torch.full((out,), float(bias_init)))
    self.lr_mul, self.act, self.scale = lr_mul, act, lr_mul / math.sqrt(inp)

  def forward(self, x):
    y = x @ (self.weight * self.scale).t() + self.bias * self.lr_mul
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if self.act else y


class Blur(nn.Module):
  def __init__(self, pad, gain):
    super().__init__()
    self.register_buffer('kernel', fir_kernel([1, 3, 3, 1], gain))
    self.pad = pad

  def forward(self, x):
    return upfirdn_ref(x, self.kernel, pad=self.pad)


class ModConv(nn.Module):
  def __init__(self, inp, out, k, sdim, demod=True, up=False):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(1, out, inp, k, k))
    self.modulation = EqualLinear(sdim, inp, bias_init=1.0)
    self.k, self.inp, self.out, self.demod, self.up = k, inp, out, demod, up
    if up:
      self.blur = Blur((1, 1), 4.0)

  def forward(self, x, s):
    b = x.shape[0]
    st = self.modulation(s)
    w = self.weight / math.sqrt(self.inp * self.k ** 2) * st[:, None, :, None, None]
    if self.demod:
      w = w / torch.sqrt((w ** 2).sum([2, 3, 4], keepdim=True) + 1e-8)
    outs = []
    for i in range(b):  # one sample at a time: independent of any grouping trick
      if self.up:
        outs.append(F.conv_transpose2d(x[i:i + 1], w[i].transpose(0, 1), stride=2))
      else:
        outs.append(F.conv2d(x[i:i + 1], w[i], padding=self.k // 2))
    y = torch.cat(outs)
    return self.blur(y) if self.up else y


class NoiseInj(nn.Module):
  def __init__(self):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(1))

  def forward(self, x, noise):
    return x if noise is None else x + self.weight * noise


class Act(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(c))

  def forward(self, x):
    return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)


class StyledConv(nn.Module):
  def __init__(self, inp, out, sdim, up=False):
    super().__init__()
    self.conv = ModConv(inp, out, 3, sdim, up=up)
    self.noise = NoiseInj()
    self.activate = Act(out)

  def forward(self, x, s, noise):
    return self.activate(self.noise(self.conv(x, s), noise))


class Upsample(nn.Module):
  def __init__(self):
    super().__init__()
    self.register_buffer('kernel', fir_kernel([1, 3, 3, 1], 4.0))

  def forward(self, x):
    return upfirdn_ref(x, self.kernel, up=2, pad=(2, 1))


class ToRGB(nn.Module):
  def __init__(self, inp, sdim, up=True):
    super().__init__()
    if up:
      self.upsample = Upsample()
    self.conv = ModConv(inp, 3, 1, sdim, demod=False)
    self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

  def forward(self, x, s, skip=None):
    y = self.conv(x, s) + self.bias
    if skip is not None:
      y = y + self.upsample(skip)
    return y


class ConstInput(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.input = nn.Parameter(torch.randn(1, c, 4, 4))


class PixelNorm(nn.Module):
  def forward(self, x):
    return x / torch.sqrt((x ** 2).mean(1, keepdim=True) + 1e-8)


class RefGenerator(nn.Module):
  """W+ → image, NCHW. ``channels(res)`` gives the width per resolution."""

  def __init__(self, size, sdim, n_mlp, cm=2, width=512):
    super().__init__()
    self.style = nn.Sequential(PixelNorm(), *[EqualLinear(sdim, sdim, lr_mul=0.01, act=True)
                                              for _ in range(n_mlp)])
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
            512: 32 * cm, 1024: 16 * cm}
    ch = {r: max(1, c * width // 512) for r, c in base.items()}
    self.log_size = int(math.log2(size))
    self.n_latent = 2 * self.log_size - 2
    self.input = ConstInput(ch[4])
    self.conv1 = StyledConv(ch[4], ch[4], sdim)
    self.to_rgb1 = ToRGB(ch[4], sdim, up=False)
    self.convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
    c_in = ch[4]
    for i in range(3, self.log_size + 1):
      c = ch[2 ** i]
      self.convs.append(StyledConv(c_in, c, sdim, up=True))
      self.convs.append(StyledConv(c, c, sdim))
      self.to_rgbs.append(ToRGB(c, sdim))
      c_in = c
    self.num_layers = 2 * (self.log_size - 2) + 1
    for i in range(self.num_layers):
      r = 2 ** ((i + 5) // 2)
      self.noises.register_buffer(f'noise_{i}', torch.randn(1, 1, r, r))

  def randomize(self, seed):
    """Non-zero values everywhere (biases and noise weights start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      for name, p in self.named_parameters():
        if name.endswith('bias') or name.endswith('noise.weight'):
          p.copy_(0.2 * torch.randn(p.shape, generator=g) + (1.0 if 'modulation' in name else 0.0))
    return self

  def mapping(self, z):
    return self.style(z)

  def forward(self, w, noise='const'):
    if noise == 'const':
      noise = [getattr(self.noises, f'noise_{i}') for i in range(self.num_layers)]
    elif noise == 'none':
      noise = [None] * self.num_layers
    x = self.input.input.repeat(w.shape[0], 1, 1, 1)
    x = self.conv1(x, w[:, 0], noise[0])
    skip = self.to_rgb1(x, w[:, 1])
    i = 1
    for j, rgb in enumerate(self.to_rgbs):
      x = self.convs[2 * j](x, w[:, i], noise[2 * j + 1])
      x = self.convs[2 * j + 1](x, w[:, i + 1], noise[2 * j + 2])
      skip = rgb(x, w[:, i + 2], skip)
      i += 2
    return skip

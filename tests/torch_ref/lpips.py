"""Independent PyTorch reference of LPIPS-AlexNet v0.1 (test-only).

Written from the published definition; ``lins`` state-dict keys match the
lpips package's ``alex.pth`` (``lin0.model.1.weight``) and ``alexnet`` keys
match torchvision's AlexNet (``features.0.weight`` …, plus a token
``classifier.*`` entry that the converter must skip).
"""

import torch
from torch import nn


class AlexNetRef(nn.Module):
  def __init__(self, channels=(64, 192, 384, 256, 256)):
    super().__init__()
    c1, c2, c3, c4, c5 = channels
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    # Stand-in for the 4096-wide head: only its key names matter here.
    self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(8, 4))

  def relus(self, x):
    out = []
    for i, layer in enumerate(self.features[:12]):  # relu5 is the last tap
      x = layer(x)
      if i in (1, 4, 7, 9, 11):
        out.append(x)
    return out


class LinLayer(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))


class Lins(nn.Module):
  def __init__(self, channels=(64, 192, 384, 256, 256)):
    super().__init__()
    for i, c in enumerate(channels):
      setattr(self, f'lin{i}', LinLayer(c))


class RefLPIPS(nn.Module):
  def __init__(self, channels=(64, 192, 384, 256, 256), seed=0):
    super().__init__()
    torch.manual_seed(seed)
    self.alexnet = AlexNetRef(channels)
    self.lins = Lins(channels)
    with torch.no_grad():  # LPIPS weights are non-negative
      for p in self.lins.parameters():
        p.copy_(torch.rand(p.shape))
    self.register_buffer('shift', torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer('scale', torch.tensor([.458, .448, .450])[None, :, None, None])
    self.eval()

  def forward(self, x, y):
    """Per-image distances of NCHW images in [-1, 1]."""
    fx = self.alexnet.relus((x - self.shift) / self.scale)
    fy = self.alexnet.relus((y - self.shift) / self.scale)
    total = 0
    for i, (a, b) in enumerate(zip(fx, fy)):
      a = a / (torch.sqrt((a ** 2).sum(1, keepdim=True)) + 1e-10)
      b = b / (torch.sqrt((b ** 2).sum(1, keepdim=True)) + 1e-10)
      d = getattr(self.lins, f'lin{i}').model((a - b) ** 2)
      total = total + d.mean(dim=(2, 3))
    return total[:, 0]

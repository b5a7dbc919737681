"""Independent PyTorch references: IR-SE / ResNet-34 encoders and ArcFace (test-only).

Written from the architecture facts (DESIGN.md §1.1, ReStyle / TreB1eN layout);
module nesting is chosen so that ``state_dict()`` keys equal those of the real
checkpoints (``input_layer.0.weight``, ``body.3.res_layer.5.fc1.weight``,
``styles.0.convs.0.weight``, ``output_layer.3.weight`` …), buffers included.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_ref.stylegan2 import EqualLinear


class SE(nn.Module):
  def __init__(self, c, r=16):
    super().__init__()
    self.fc1 = nn.Conv2d(c, max(1, c // r), 1, bias=False)
    self.fc2 = nn.Conv2d(max(1, c // r), c, 1, bias=False)

  def forward(self, x):
    s = x.mean(dim=(2, 3), keepdim=True)
    return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class IRSEUnit(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.stride = stride
    if cin == cout:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), SE(cout))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class BasicBlockRef(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    r = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(r + (x if self.downsample is None else self.downsample(x)))


def irse_body(units, width):
  mods, cin = [], width
  for s, n in enumerate(units):
    cout = width * 2 ** s
    for u in range(n):
      mods.append(IRSEUnit(cin, cout, 2 if u == 0 else 1))
      cin = cout
  return nn.Sequential(*mods)


class StyleBlock(nn.Module):
  def __init__(self, cin, cout, spatial):
    super().__init__()
    n = max(1, int(math.log2(spatial)))
    mods = []
    for k in range(n):
      mods += [nn.Conv2d(cin if k == 0 else cout, cout, 3, 2, 1), nn.LeakyReLU()]
    self.convs = nn.Sequential(*mods)
    self.linear = EqualLinear(cout, cout)
    self.cout = cout

  def forward(self, x):
    return self.linear(self.convs(x).reshape(-1, self.cout))


class RefEncoder(nn.Module):
  """BackboneEncoder (backbone 'ir_se') or ResNetBackboneEncoder ('resnet34'), NCHW."""

  def __init__(self, n_styles, style_dim=512, input_nc=6, units=(3, 4, 14, 3), width=64,
               spatial=16, backbone='ir_se'):
    super().__init__()
    self.backbone = backbone
    if backbone == 'ir_se':
      self.input_layer = nn.Sequential(nn.Conv2d(input_nc, width, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(width), nn.PReLU(width))
      self.body = irse_body(units, width)
    else:
      self.conv1 = nn.Conv2d(input_nc, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.PReLU(width)
      mods, cin = [], width
      for s, n in enumerate(units):
        cout = width * 2 ** s
        for u in range(n):
          mods.append(BasicBlockRef(cin, cout, 2 if (u == 0 and s > 0) else 1))
          cin = cout
      self.body = nn.Sequential(*mods)
    self.styles = nn.ModuleList([StyleBlock(width * 8, style_dim, spatial)
                                 for _ in range(n_styles)])

  def forward(self, x):
    if self.backbone == 'ir_se':
      x = self.input_layer(x)
    else:
      x = self.relu(self.bn1(self.conv1(x)))
    x = self.body(x)
    return torch.stack([s(x) for s in self.styles], dim=1)


class RefArcFace(nn.Module):
  """TreB1eN Backbone(mode='ir_se') with the 112 px output layer, eval mode, NCHW."""

  def __init__(self, units=(3, 4, 14, 3), width=64, input_size=112, emb=512):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                     nn.BatchNorm2d(width), nn.PReLU(width))
    self.body = irse_body(units, width)
    c, s = width * 8, input_size // 16
    self.output_layer = nn.Sequential(nn.BatchNorm2d(c), nn.Dropout(0.6), nn.Flatten(),
                                      nn.Linear(c * s * s, emb), nn.BatchNorm1d(emb))

  def forward(self, x):
    x = self.output_layer(self.body(self.input_layer(x)))
    return x / torch.norm(x, 2, 1, True)


def randomize(module, seed):
  """Non-trivial BN statistics/affines and PReLU slopes (defaults are identities)."""
  g = torch.Generator().manual_seed(seed)

  def rnd(shape):
    return torch.randn(shape, generator=g)

  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = m.num_features
        m.running_mean.copy_(0.1 * rnd(n))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.weight.copy_(1.0 + 0.1 * rnd(n))
        m.bias.copy_(0.1 * rnd(n))
        m.num_batches_tracked.fill_(7)
      elif isinstance(m, nn.PReLU):
        m.weight.copy_(0.25 + 0.1 * rnd(m.weight.shape))
      elif isinstance(m, EqualLinear):
        m.bias.copy_(0.1 * rnd(m.bias.shape))
  return module.eval()


def adaptive_pool(x, size):
  """torch's adaptive average pooling (NCHW)."""
  return F.adaptive_avg_pool2d(x, size)

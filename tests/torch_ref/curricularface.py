"""Independent PyTorch reference of CurricularFace's IR-101 (test-only).

Written from the architecture facts of ReStyle's ``IR_101(input_size=112)``
(TreB1eN ``Backbone(112, 100, mode='ir', drop_ratio=0.4, affine=False)``):
input conv3x3 → BN → PReLU; ``bottleneck_IR`` units (BN → conv3x3 → PReLU →
conv3x3(stride) → BN, no SE) with a max-pool(1, s) or conv1x1+BN shortcut;
output BN2d → Dropout → Flatten → Linear → BatchNorm1d(affine=False); L2
normalisation. Module nesting gives the checkpoint's ``state_dict()`` keys
(``body.3.res_layer.4.running_var``, ``output_layer.4.running_mean`` …).
"""

import torch
from torch import nn


class IRUnit(nn.Module):
  """``bottleneck_IR``: the IR-SE unit of tests/torch_ref/irse.py without its SE gate."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    if cin == cout:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class RefCurricularFace(nn.Module):
  """IR_101(112) (or any stage units / width), NCHW, eval mode after :func:`randomize`."""

  def __init__(self, units=(3, 13, 30, 3), width=64, input_size=112, emb=512, affine=False):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                     nn.BatchNorm2d(width), nn.PReLU(width))
    mods, cin = [], width
    for s, n in enumerate(units):
      cout = width * 2 ** s
      for u in range(n):
        mods.append(IRUnit(cin, cout, 2 if u == 0 else 1))
        cin = cout
    self.body = nn.Sequential(*mods)
    side = input_size // 16
    self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.4), nn.Flatten(),
                                      nn.Linear(cin * side * side, emb),
                                      nn.BatchNorm1d(emb, affine=affine))

  def forward(self, x):
    x = self.output_layer(self.body(self.input_layer(x)))
    return x / torch.norm(x, 2, 1, True)


def randomize(module, seed):
  """Random weights, BN running statistics and PReLU slopes; eval mode.

  BN defaults (mean 0, var 1, scale 1, bias 0) and PReLU's 0.25 would hide
  a wrong mapping of those tensors, so every one gets distinct values.
  Non-affine BNs (the output BatchNorm1d) have running statistics only.

  Args:
    module: the network.
    seed: generator seed.

  Returns:
    The module, in eval mode.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = m.num_features
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.num_batches_tracked.fill_(11)
        if m.affine:
          m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=g))
          m.bias.copy_(0.1 * torch.randn(n, generator=g))
      elif isinstance(m, nn.PReLU):
        m.weight.copy_(0.25 + 0.1 * torch.randn(m.weight.shape, generator=g))
  return module.eval()

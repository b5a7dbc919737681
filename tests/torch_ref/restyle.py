"""A ReStyle-format checkpoint from the torch references, and ReStyle's inference loop.

``make_checkpoint`` returns the dict ReStyle's coach saves
(``{'state_dict': {encoder.*, decoder.*}, 'latent_avg', 'opts'}``);
``ref_invert`` is the iterative refinement of ReStyle's ``run_on_batch``
(w₀ = latent_avg, ŷ₀ = pool(G(w₀)), then w += E([x, ŷ]), const noise).
"""

import torch
import torch.nn.functional as F

from tests.torch_ref.irse import RefEncoder, randomize
from tests.torch_ref.stylegan2 import RefGenerator


def make_models(res=32, sdim=32, units=(1, 1, 1, 1), width=16, enc_size=64,
                backbone='ir_se', seed=0):
  torch.manual_seed(seed)
  gen = RefGenerator(res, sdim, 2, cm=1, width=64).randomize(seed + 1).eval()
  enc = RefEncoder(gen.n_latent, sdim, 6, units, width, spatial=enc_size // 16,
                   backbone=backbone)
  randomize(enc, seed + 2)
  with torch.no_grad():
    for s in enc.styles:  # keep the residuals small, as a trained encoder's are
      s.linear.weight.mul_(0.1)
  return enc, gen


def make_checkpoint(enc, gen, latent_avg, opts=None):
  sd = {f'encoder.{k}': v for k, v in enc.state_dict().items()}
  sd.update({f'decoder.{k}': v for k, v in gen.state_dict().items()})
  return {'state_dict': sd, 'latent_avg': latent_avg,
          'opts': opts if opts is not None else {'n_iters_per_batch': 2, 'input_nc': 6,
                                                 'output_size': 32}}


@torch.no_grad()
def ref_invert(enc, gen, latent_avg, x, n_iters, enc_size):
  """x: NCHW [-1, 1] at enc_size; latent_avg [n_styles, D]. Returns (images, w, all)."""
  b = x.shape[0]
  w = latent_avg[None].repeat(b, 1, 1)
  y = F.adaptive_avg_pool2d(gen(latent_avg[None]), enc_size).repeat(b, 1, 1, 1)
  outs = []
  for _ in range(n_iters):
    w = w + enc(torch.cat([x, y], dim=1))
    img = gen(w)
    outs.append(img)
    y = F.adaptive_avg_pool2d(img, enc_size)
  return outs[-1], w, outs

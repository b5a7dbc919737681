"""The paper-scale training world shared by the benchmarks (no files needed).

A config-f StyleGAN2 (channel multiplier 2, 256 or 1024 px, random weights)
and a ReStyle IR-SE50 encoder at 256 px (6 input channels, one style block
per W+ vector), with the step settings of the issue that measured the step:
interest-region L2 only, InD off, every iteration carrying loss unless told
otherwise. Both worlds are built either straight in JAX or from the PyTorch
reference networks of ``tests/torch_ref`` (converted, so both sides of
``vs_pytorch.py`` hold the same weights).
"""

import dataclasses
import os
import sys
from typing import Any, Dict, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from interestyle_jax import losses  # pylint: disable=g-import-not-at-top
from interestyle_jax.inference import average_image
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.stylegan2 import Generator, n_styles_for
from interestyle_jax.training import step as step_lib

ENCODER_SIZE = 256


@dataclasses.dataclass
class World:
  """Modules, frozen constants and initial encoder variables."""
  models: step_lib.Models
  frozen: Dict[str, Any]
  encoder_variables: Dict[str, Any]


def step_config(n_iters: int, loss_iterations: str = 'all', axis_name: Optional[str] = 'batch',
                unroll: bool = False, dtype: str = 'float32',
                noise_mode: str = 'const') -> step_lib.StepConfig:
  """The measured step: L2 only, InD off, σ = 0 (the filter is the identity).

  Args:
    n_iters: T.
    loss_iterations: 'all' or 'last'.
    axis_name: device axis (None: unmapped).
    unroll: unroll the scan.
    dtype: compute dtype of the networks.
    noise_mode: generator noise ('const' matches the PyTorch reference).

  Returns:
    StepConfig.
  """
  return step_lib.StepConfig(
      n_iters=n_iters, sigmas=(0.0,) * n_iters, loss_iterations=loss_iterations,
      weights=losses.LossWeights(l2=1.0, lpips=0.0, id=0.0, w_norm=0.0, ind=0.0),
      encoder_size=ENCODER_SIZE, train_noise_mode=noise_mode, axis_name=axis_name,
      unroll_scan=unroll, dtype=dtype)


def _frozen(gen, gen_vars, latent_avg) -> Dict[str, Any]:
  avg = jax.jit(lambda v, w: average_image(gen, v, w, ENCODER_SIZE)[0])(gen_vars, latent_avg)
  return {'generator': gen_vars, 'latent_avg': latent_avg, 'avg_image': avg}


def jax_world(resolution: int, seed: int = 0) -> World:
  """Random-weight paper-scale modules built in JAX.

  Args:
    resolution: generator output side (256 or 1024).
    seed: init seed.

  Returns:
    World.
  """
  gen = Generator(resolution)
  n = gen.n_styles
  enc = BackboneEncoder(n_styles=n)
  k1, k2 = jax.random.split(jax.random.key(seed, impl='rbg'))
  gen_vars = jax.jit(gen.init)(k1, jnp.zeros((1, n, gen.style_dim)))
  enc_vars = dict(jax.jit(enc.init)(k2, jnp.zeros((1, ENCODER_SIZE, ENCODER_SIZE, 6))))
  latent_avg = jax.jit(lambda v, k: gen.apply(v, 4096, k, method=gen.mean_latent))(
      gen_vars, jax.random.PRNGKey(seed))
  latent_avg = jnp.broadcast_to(latent_avg, (n, gen.style_dim))
  return World(step_lib.Models(enc, gen), _frozen(gen, gen_vars, latent_avg), enc_vars)


def torch_world(resolution: int, seed: int = 0):
  """The PyTorch reference networks at paper scale and the same world in JAX.

  Args:
    resolution: generator output side.
    seed: weight seed.

  Returns:
    ``(torch_encoder, torch_generator, torch_latent_avg, World)``; the JAX
    World holds the converted weights (``convert restyle``'s code path).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from interestyle_jax.convert.restyle import convert_checkpoint  # pylint: disable=g-import-not-at-top
  from tests.torch_ref.irse import RefEncoder, randomize  # pylint: disable=g-import-not-at-top
  from tests.torch_ref.restyle import make_checkpoint  # pylint: disable=g-import-not-at-top
  from tests.torch_ref.stylegan2 import RefGenerator  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  n = n_styles_for(resolution)
  gen = RefGenerator(resolution, 512, 8, cm=2, width=512).randomize(seed + 1).eval()
  enc = RefEncoder(n, 512, 6, (3, 4, 14, 3), 64, spatial=ENCODER_SIZE // 16)
  randomize(enc, seed + 2)
  with torch.no_grad():
    for s in enc.styles:  # small residuals, as a trained encoder's
      s.linear.weight.mul_(0.1)
    latent_avg = gen.mapping(torch.randn(4096, 512)).mean(0, keepdim=True).repeat(n, 1)
  meta, tree = convert_checkpoint(make_checkpoint(enc, gen, latent_avg), 'torch_ref')
  jgen = Generator(**meta['generator'])
  jenc = BackboneEncoder(**meta['encoder'])
  latent = jnp.asarray(tree['latent_avg'])
  world = World(step_lib.Models(jenc, jgen), _frozen(jgen, tree['generator'], latent),
                dict(tree['encoder']))
  return enc, gen, latent_avg, world


def batch_arrays(batch: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Random images in [-1, 1] and an elliptical interest mask, NHWC float32.

  Args:
    batch: number of images.
    seed: NumPy seed.

  Returns:
    ``(images [B, 256, 256, 3], masks [B, 256, 256, 1])``.
  """
  rng = np.random.default_rng(seed)
  s = ENCODER_SIZE
  yy, xx = np.mgrid[:s, :s] / s - 0.5
  mask = ((yy / 0.4) ** 2 + (xx / 0.3) ** 2 <= 1).astype(np.float32)[..., None]
  images = rng.uniform(-1, 1, (batch, s, s, 3)).astype(np.float32)
  return images, np.broadcast_to(mask, (batch, s, s, 1)).copy()

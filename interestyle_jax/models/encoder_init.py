"""ReStyle's encoder initialisation: the IR-SE trunk of ArcFace plus fresh style blocks.

ReStyle builds its encoder from ArcFace IR-SE50: the trunk's weights, the
first conv widened to ``input_nc`` channels whose extra input channels get
N(0, 1) weights (``torch.randn``), and GradualStyleBlocks at PyTorch's default
initialisation. ``convert irse50 --as_encoder_backbone`` writes it as an
``encoder_init`` directory; ``train.py`` builds it from an ``arcface``
directory (``config.model.encoder_init_path``) with :func:`encoder_init_from_arcface`.
"""

import math
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax.models.encoder import BackboneEncoder

ENCODER_INIT_KIND = 'encoder_init'


def encoder_init_from_arcface(config: Dict[str, Any], variables: Mapping[str, Any],
                              n_styles: int, input_nc: int = 6, style_dim: int = 512,
                              encoder_size: int = 256, seed: int = 0):
  """Builds ReStyle's encoder initialisation from converted ArcFace weights.

  Args:
    config: ArcFace kwargs (from :func:`convert_state_dict`).
    variables: ArcFace variables.
    n_styles: styles the encoder predicts (18 for 1024 px).
    input_nc: encoder input channels (6 for ReStyle); channels beyond 3 of
      the first conv get N(0, 1) weights.
    style_dim: latent width.
    encoder_size: encoder input resolution (sets the style-block depth).
    seed: seed of the random parts.

  Returns:
    ``(encoder_kwargs, encoder_variables)`` as numpy arrays.
  """
  if input_nc < 3:
    raise ValueError(f'input_nc must be >= 3, got {input_nc}')
  enc_config = dict(n_styles=int(n_styles), style_dim=int(style_dim), input_nc=int(input_nc),
                    backbone='ir_se', num_layers=config['num_layers'],
                    stage_units=config['stage_units'], width=config['width'])
  enc = BackboneEncoder(**enc_config)
  # Shapes only: running a full init would compile the whole network.
  template = jax.eval_shape(enc.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, encoder_size, encoder_size, input_nc)))
  rng = np.random.default_rng(seed)
  params = {k: torch_default_init(v, rng) for k, v in template['params'].items()
            if k != 'backbone'}
  backbone = jax.tree_util.tree_map(np.asarray, dict(variables['params']['backbone']))
  kernel = backbone['input_conv']['kernel']  # [3, 3, 3, C]
  extra = rng.standard_normal(kernel.shape[:2] + (input_nc - 3, kernel.shape[3]))
  backbone['input_conv'] = {'kernel': np.concatenate([kernel, extra.astype(np.float32)], 2)}
  params['backbone'] = backbone
  out = {'params': params,
         'batch_stats': {'backbone': jax.tree_util.tree_map(
             np.asarray, variables['batch_stats']['backbone'])}}
  # The result must fit the encoder exactly (same trunk, widened input conv).
  got = jax.tree.map(np.shape, out)
  want = jax.tree.map(lambda a: tuple(a.shape), dict(template))
  if got != want:
    raise ValueError(f'ArcFace {config} does not make the trunk of encoder {enc_config}')
  return enc_config, out


def torch_default_init(tree: Mapping[str, Any], rng: np.random.Generator):
  """PyTorch's default initialisation for a style block's variable shapes.

  Conv weights and biases ~ U(±1/sqrt(fan_in)) (``kaiming_uniform_(a=√5)``),
  EqualLinear weights ~ N(0, 1) with zero bias — what ReStyle's freshly built
  GradualStyleBlocks start from.

  Args:
    tree: ``{'convs_k': {'kernel', 'bias'}, 'linear': {'weight', 'bias'}}`` of
      shapes.
    rng: NumPy generator.

  Returns:
    The same tree of float32 arrays.
  """
  out = {}
  for name, leaves in tree.items():
    if 'kernel' in leaves:
      kh, kw, cin, _ = leaves['kernel'].shape
      bound = 1.0 / math.sqrt(kh * kw * cin)
      out[name] = {k: rng.uniform(-bound, bound, v.shape).astype(np.float32)
                   for k, v in leaves.items()}
    else:
      out[name] = {'weight': rng.standard_normal(leaves['weight'].shape).astype(np.float32),
                   'bias': np.zeros(leaves['bias'].shape, np.float32)}
  return out


def load_encoder_init(path: str):
  """Loads an ``encoder_init`` directory.

  Args:
    path: the model directory.

  Returns:
    ``(BackboneEncoder, variables, encoder_size)``.
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  meta, tree = artifacts.load_artifact(path, expected_kind=ENCODER_INIT_KIND)
  return BackboneEncoder(**meta['encoder']), tree['encoder'], meta['encoder_size']

"""ArcFace IR-SE50 (``model_ir_se50.pth``) → ``arcface`` or ``encoder_init`` directory.

``convert irse50 SRC DST`` writes the ID-loss network (kind ``arcface``).
With ``--as_encoder_backbone N_STYLES`` it writes instead the initial weights
of a ReStyle ``BackboneEncoder`` (kind ``encoder_init``), as ReStyle builds
them: the IR-SE trunk from ArcFace, the first conv widened to ``input_nc``
channels whose extra input channels get N(0, 1) weights (``torch.randn`` in
ReStyle), and freshly initialised style blocks, all from ``--seed``.
"""

import math
from typing import Any, Dict, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from interestyle_jax import artifacts
from interestyle_jax.convert.backbones import arcface_mapper, infer_backbone, irse_mode
from interestyle_jax.convert.common import (ConversionError, assign_state_dict,
                                            check_output_location, load_torch_checkpoint)
from interestyle_jax.models.arcface import ArcFace
from interestyle_jax.models.encoder_init import (ENCODER_INIT_KIND,  # noqa: F401
                                                 encoder_init_from_arcface, load_encoder_init,
                                                 torch_default_init)

KIND = 'arcface'


def infer_arcface(sd: Mapping[str, Any], source: str = 'checkpoint') -> Dict[str, Any]:
  """Infers ``ArcFace`` kwargs from tensor shapes.

  Args:
    sd: ArcFace state dict.
    source: file name for error messages.

  Returns:
    dict with num_layers, stage_units, width, input_size, embedding_dim.
  """
  config = infer_backbone(sd, source)
  if config['backbone'] == 'ir_se' and irse_mode(sd) == 'ir':
    raise ConversionError(f'{source}: its IR units have no squeeze-and-excitation weights '
                          '(an IR backbone such as CurricularFace IR-101, not an IR-SE ArcFace); '
                          'convert it with `python -m interestyle_jax.convert curricularface`')
  if config['backbone'] != 'ir_se' or config['input_nc'] != 3:
    raise ConversionError(f'{source}: expected an RGB IR-SE ArcFace backbone, found '
                          f'{config["backbone"]} with {config["input_nc"]} input channels')
  lin = sd.get('output_layer.3.weight')
  if lin is None:
    raise ConversionError(f'{source}: no "output_layer.3.weight": not an ArcFace '
                          'Backbone state dict (is it a ReStyle checkpoint? use `restyle`)')
  emb, n_in = (int(d) for d in lin.shape)
  side = math.isqrt(n_in // (8 * config['width']))
  if side * side * 8 * config['width'] != n_in:
    raise ConversionError(f'{source}: output linear takes {n_in} inputs, not '
                          f'{8 * config["width"]} x S x S')
  return dict(num_layers=config['num_layers'], stage_units=config['stage_units'],
              width=config['width'], input_size=16 * side, embedding_dim=emb)


def convert_state_dict(sd: Mapping[str, Any], source: str = 'checkpoint'):
  """Converts an ArcFace state dict.

  Args:
    sd: the state dict (``input_layer.*``, ``body.*``, ``output_layer.*``).
    source: file name for error messages.

  Returns:
    ``(arcface_kwargs, variables)`` with ``{'params', 'batch_stats'}``.
  """
  if 'state_dict' in sd and isinstance(sd['state_dict'], Mapping):
    raise ConversionError(f'{source}: this is a training checkpoint with a "state_dict" '
                          'entry (ReStyle?), not the ArcFace model_ir_se50.pth')
  config = infer_arcface(sd, source)
  net = ArcFace(**config)
  s = config['input_size']
  template = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)))
  return config, assign_state_dict(template, sd, arcface_mapper, 'ArcFace IR-SE', source)


def load_torch_arcface(path_or_state_dict: Union[str, Mapping[str, Any]]):
  """Loads ``model_ir_se50.pth`` (or a state dict) as a Flax ArcFace.

  Args:
    path_or_state_dict: file or loaded state dict.

  Returns:
    ``(ArcFace module, variables)``.
  """
  source = path_or_state_dict if isinstance(path_or_state_dict, str) else 'state dict'
  config, variables = convert_state_dict(load_torch_checkpoint(path_or_state_dict), source)
  return ArcFace(**config), jax.tree_util.tree_map(jnp.asarray, variables)


def add_arguments(parser) -> None:
  """Extra CLI flags of ``convert irse50``."""
  # Dashed spellings are the original ones, kept so old commands still work.
  parser.add_argument('--as_encoder_backbone', '--as-encoder-backbone', dest='n_styles',
                      type=int, default=None, metavar='N_STYLES',
                      help='write a ReStyle encoder initialisation (kind encoder_init) '
                           'predicting N_STYLES latents instead of the ArcFace network')
  parser.add_argument('--input_nc', '--input-nc', type=int, default=6,
                      help='encoder input channels (with --as_encoder_backbone)')
  parser.add_argument('--style_dim', '--style-dim', type=int, default=512,
                      help='latent width (with --as_encoder_backbone)')
  parser.add_argument('--encoder_size', '--encoder-size', type=int, default=256,
                      help='encoder input resolution (with --as_encoder_backbone)')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the randomly initialised parts')


def convert(src: str, dst: str, overwrite: bool = False, n_styles: Optional[int] = None,
            input_nc: int = 6, style_dim: int = 512, encoder_size: int = 256,
            seed: int = 0) -> str:
  """``convert irse50 SRC DST [--as_encoder_backbone N]``.

  Args:
    src: ``model_ir_se50.pth``.
    dst: output directory (written atomically).
    overwrite: replace an existing ``dst``.
    n_styles: when set, write an ``encoder_init`` directory instead.
    input_nc: encoder input channels.
    style_dim: encoder latent width.
    encoder_size: encoder input resolution.
    seed: seed of the random parts.

  Returns:
    The output path.
  """
  check_output_location(dst)  # before the slow part
  config, variables = convert_state_dict(load_torch_checkpoint(src), src)
  if n_styles is None:
    meta = {'kind': KIND, 'arcface': config, 'source': str(src)}
    return artifacts.save_artifact(dst, {'arcface': variables}, meta, overwrite=overwrite)
  enc_config, enc_vars = encoder_init_from_arcface(
      config, variables, n_styles, input_nc, style_dim, encoder_size, seed)
  meta = {'kind': ENCODER_INIT_KIND, 'encoder': enc_config, 'encoder_size': encoder_size,
          'seed': seed, 'source': str(src)}
  return artifacts.save_artifact(dst, {'encoder': enc_vars}, meta, overwrite=overwrite)

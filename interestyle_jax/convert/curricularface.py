"""CurricularFace IR-101 (``CurricularFace_Backbone.pth``) → ``curricularface`` directory.

``convert curricularface SRC DST`` writes the identity network of the paper's
ID metric (``evaluate --id_protocol paper``): ReStyle's ``IR_101(112)``, an
IR backbone *without* squeeze-and-excitation and a non-affine output
BatchNorm1d (:mod:`interestyle_jax.models.curricularface`). Depth, widths,
input size and whether the last BN has a scale/bias are read from the tensor
shapes. An IR-SE checkpoint (the ArcFace ``model_ir_se50.pth``) or a ReStyle
training checkpoint is refused with a message naming the converter it needs;
nothing is written when conversion fails.
"""

import math
from typing import Any, Dict, Mapping, Union

import jax
import jax.numpy as jnp

from interestyle_jax import artifacts
from interestyle_jax.convert.backbones import arcface_mapper, infer_backbone, irse_mode
from interestyle_jax.convert.common import (ConversionError, assign_state_dict,
                                            check_output_location, load_torch_checkpoint)
from interestyle_jax.models.curricularface import KIND, CurricularFace

SRC_HELP = 'CurricularFace_Backbone.pth (ReStyle\'s IR_101(112) state dict)'


def infer_curricularface(sd: Mapping[str, Any], source: str = 'checkpoint') -> Dict[str, Any]:
  """Infers ``CurricularFace`` kwargs from tensor shapes (shapes only, no values).

  Args:
    sd: the state dict (``input_layer.*``, ``body.*``, ``output_layer.*``).
    source: file name for error messages.

  Returns:
    dict with num_layers, stage_units (None for a standard depth), width,
    input_size, embedding_dim, mode ('ir') and affine_output.

  Raises:
    ConversionError: not an IR (no-SE) face-recognition Backbone; the message
      names the converter the file needs when it is a known other kind.
  """
  if isinstance(sd.get('state_dict'), Mapping) or any(
      str(k).startswith(('encoder.', 'decoder.')) for k in sd):
    raise ConversionError(f'{source}: this is a ReStyle / IntereStyle training checkpoint '
                          '(encoder + decoder), not CurricularFace_Backbone.pth; convert it '
                          'with `python -m interestyle_jax.convert restyle`')
  config = infer_backbone(sd, source)
  if config['backbone'] != 'ir_se':  # infer_backbone's name for the input_layer/body layout
    raise ConversionError(f'{source}: a {config["backbone"]} backbone, not the IR layout '
                          '(input_layer / body.N.res_layer) of CurricularFace_Backbone.pth')
  if irse_mode(sd) == 'ir_se':
    raise ConversionError(
        f'{source}: its units have squeeze-and-excitation weights '
        '(body.N.res_layer.5.fc1.weight): an IR-SE network such as the ArcFace '
        'model_ir_se50.pth; convert it with `python -m interestyle_jax.convert irse50`. '
        '`curricularface` takes CurricularFace_Backbone.pth (IR-101 without SE).')
  if config['input_nc'] != 3:
    raise ConversionError(f'{source}: the first conv takes {config["input_nc"]} channels; '
                          'a face-recognition network takes RGB (3)')
  lin = sd.get('output_layer.3.weight')
  if lin is None:
    raise ConversionError(f'{source}: no "output_layer.3.weight": an IR trunk without the '
                          'embedding head, not CurricularFace_Backbone.pth')
  emb, n_in = (int(d) for d in lin.shape)
  channels = 8 * config['width']
  side = math.isqrt(n_in // channels)
  if side * side * channels != n_in:
    raise ConversionError(f'{source}: output linear takes {n_in} inputs, not '
                          f'{channels} x S x S')
  return dict(num_layers=config['num_layers'], stage_units=config['stage_units'],
              width=config['width'], input_size=16 * side, embedding_dim=emb, mode='ir',
              # TreB1eN's affine=False BatchNorm1d stores no weight / bias.
              affine_output='output_layer.4.weight' in sd)


def convert_state_dict(sd: Mapping[str, Any], source: str = 'checkpoint'):
  """Converts a CurricularFace state dict.

  Args:
    sd: the state dict.
    source: file name for error messages.

  Returns:
    ``(curricularface_kwargs, variables)`` with ``{'params', 'batch_stats'}``
    as numpy arrays.
  """
  config = infer_curricularface(sd, source)
  net = CurricularFace(**config)
  s = config['input_size']
  # Shapes only: a real init would compile the 101-layer network.
  template = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)))
  return config, assign_state_dict(template, sd, arcface_mapper, 'CurricularFace IR', source)


def load_torch_curricularface(path_or_state_dict: Union[str, Mapping[str, Any]]):
  """Loads ``CurricularFace_Backbone.pth`` (or a state dict) as a Flax module.

  Args:
    path_or_state_dict: file or loaded state dict.

  Returns:
    ``(CurricularFace module, variables)``.
  """
  source = path_or_state_dict if isinstance(path_or_state_dict, str) else 'state dict'
  config, variables = convert_state_dict(load_torch_checkpoint(path_or_state_dict), source)
  return CurricularFace(**config), jax.tree_util.tree_map(jnp.asarray, variables)


def convert(src: str, dst: str, overwrite: bool = False) -> str:
  """``convert curricularface SRC DST``.

  Args:
    src: ``CurricularFace_Backbone.pth``.
    dst: output directory (written atomically: nothing on failure).
    overwrite: replace an existing ``dst``.

  Returns:
    The output path.
  """
  check_output_location(dst)  # before the slow part
  config, variables = convert_state_dict(load_torch_checkpoint(src), src)
  meta = {'kind': KIND, 'curricularface': config, 'source': str(src)}
  return artifacts.save_artifact(dst, {'curricularface': variables}, meta, overwrite=overwrite)

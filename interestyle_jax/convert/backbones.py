"""Key mapping and architecture inference for IR-SE / ResNet-34 state dicts.

Shared by the ``restyle`` (encoder), ``irse50`` (ArcFace) and
``curricularface`` (IR-101) converters. Key layouts (PyTorch, after any
``encoder.`` prefix is removed)::

    input_layer.{0 conv, 1 BN, 2 PReLU}                     IR-SE input layer
    body.{i}.shortcut_layer.{0 conv, 1 BN}                  IR-SE unit shortcut
    body.{i}.res_layer.{0 BN, 1 conv, 2 PReLU, 3 conv, 4 BN, 5 SE(fc1, fc2)}
                                                            (no 5 in mode 'ir' units)
    conv1 / bn1 / relu (PReLU)                              ResNet-34 stem
    body.{i}.{conv1, bn1, conv2, bn2, downsample.{0, 1}}    ResNet BasicBlock
    styles.{j}.convs.{k}, styles.{j}.linear                 GradualStyleBlocks
    output_layer.{0 BN2d, 3 Linear, 4 BN1d}                 ArcFace head
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from interestyle_jax.convert.common import IGNORE, ConversionError, count_indexed
from interestyle_jax.models.irse import IRSE_STAGE_UNITS, RESNET34_STAGE_UNITS

_IRSE_RES = {'0': ('res_bn1', 'bn'), '1': ('res_conv1', 'conv'), '2': ('res_prelu', 'prelu'),
             '3': ('res_conv2', 'conv'), '4': ('res_bn2', 'bn')}
_INPUT = {'0': ('input_conv', 'conv'), '1': ('input_bn', 'bn'), '2': ('input_prelu', 'prelu')}
_RESNET_STEM = {'conv1': ('conv1', 'conv'), 'bn1': ('bn1', 'bn'), 'relu': ('relu', 'prelu')}
_BASIC = {'conv1': ('conv1', 'conv'), 'bn1': ('bn1', 'bn'), 'conv2': ('conv2', 'conv'),
          'bn2': ('bn2', 'bn')}
_ARC_HEAD = {'0': ('output_bn', 'bn'), '3': ('output_linear', 'dense'),
             '4': ('output_bn1d', 'bn')}
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def leaf(module_path: Tuple[str, ...], kind: str, name: str, arr: np.ndarray):
  """Maps one tensor of a PyTorch layer of type ``kind`` to its Flax variable.

  Args:
    module_path: Flax module path (without the collection).
    kind: 'conv', 'bn', 'prelu', 'dense', 'fc1x1' (1x1 conv used as a dense
      layer) or 'equal_linear'.
    name: PyTorch tensor name (weight, bias, running_mean, …).
    arr: the tensor.

  Returns:
    ``(path, array)``, IGNORE or None (see ``assign_state_dict``).
  """
  if kind == 'bn':
    if name == 'num_batches_tracked':
      return IGNORE  # PyTorch bookkeeping; Flax keeps no step count
    if name not in _BN:
      return None
    col, var = _BN[name]
    return (col,) + module_path + (var,), arr
  if kind == 'prelu':
    return (('params',) + module_path + ('weight',), arr) if name == 'weight' else None
  path = ('params',) + module_path
  if name == 'bias':
    return path + ('bias',), arr
  if name != 'weight':
    return None
  if kind == 'conv' and arr.ndim == 4:  # OIHW -> HWIO
    return path + ('kernel',), arr.transpose(2, 3, 1, 0)
  if kind == 'fc1x1' and arr.ndim == 4:  # [out, in, 1, 1] -> [in, out]
    return path + ('kernel',), arr.reshape(arr.shape[0], arr.shape[1]).T
  if kind == 'dense' and arr.ndim == 2:
    return path + ('kernel',), arr.T
  if kind == 'equal_linear' and arr.ndim == 2:
    return path + ('weight',), arr.T
  return None


def backbone_mapper(parts: List[str], arr: np.ndarray, backbone: str):
  """Maps a backbone key (split on '.') to ``backbone/...`` Flax variables."""
  name, mods = parts[-1], parts[:-1]
  hit = None
  if backbone == 'ir_se' and len(mods) == 2 and mods[0] == 'input_layer':
    hit = _INPUT.get(mods[1])
  elif backbone == 'resnet34' and len(mods) == 1:
    hit = _RESNET_STEM.get(mods[0])
  if hit is not None:
    return leaf(('backbone', hit[0]), hit[1], name, arr)
  if len(mods) < 3 or mods[0] != 'body' or not mods[1].isdigit():
    return None
  unit, rest = f'body_{int(mods[1])}', mods[2:]
  if backbone == 'ir_se':
    if rest[0] == 'shortcut_layer' and len(rest) == 2 and rest[1] in ('0', '1'):
      hit = ('shortcut_conv', 'conv') if rest[1] == '0' else ('shortcut_bn', 'bn')
    elif rest[0] == 'res_layer' and len(rest) == 2:
      hit = _IRSE_RES.get(rest[1])
    elif rest[:2] == ['res_layer', '5'] and len(rest) == 3 and rest[2] in ('fc1', 'fc2'):
      hit = (f'se/{rest[2]}', 'fc1x1')
  else:
    if len(rest) == 1:
      hit = _BASIC.get(rest[0])
    elif rest[0] == 'downsample' and len(rest) == 2 and rest[1] in ('0', '1'):
      hit = ('downsample_conv', 'conv') if rest[1] == '0' else ('downsample_bn', 'bn')
  if hit is None:
    return None
  return leaf(('backbone', unit) + tuple(hit[0].split('/')), hit[1], name, arr)


def encoder_mapper(backbone: str):
  """Key mapper for a ReStyle encoder state dict (``encoder.`` prefix removed)."""

  def mapper(key: str, arr: np.ndarray):
    parts = key.split('.')
    if parts[0] == 'styles' and len(parts) >= 4 and parts[1].isdigit():
      block = f'styles_{int(parts[1])}'
      if parts[2] == 'convs' and len(parts) == 5 and parts[3].isdigit():
        return leaf((block, f'convs_{int(parts[3])}'), 'conv', parts[4], arr)
      if parts[2] == 'linear' and len(parts) == 4:
        return leaf((block, 'linear'), 'equal_linear', parts[3], arr)
      return None
    return backbone_mapper(parts, arr, backbone)

  return mapper


def arcface_mapper(key: str, arr: np.ndarray):
  """Key mapper for TreB1eN's ArcFace ``Backbone`` state dict."""
  parts = key.split('.')
  if parts[0] == 'output_layer' and len(parts) == 3:
    hit = _ARC_HEAD.get(parts[1])
    return None if hit is None else leaf((hit[0],), hit[1], parts[2], arr)
  return backbone_mapper(parts, arr, 'ir_se')


def _stage_units(widths: Sequence[int], source: str) -> Tuple[int, ...]:
  """Groups per-unit output widths into stages (a stage starts where it changes)."""
  units: List[int] = []
  prev = None
  for w in widths:
    if w != prev:
      units.append(0)
      prev = w
    units[-1] += 1
  if len(units) != 4:
    raise ConversionError(f'{source}: expected 4 backbone stages, found {len(units)} '
                          f'(unit widths {list(widths)})')
  return tuple(units)


def infer_backbone(sd: Mapping[str, Any], source: str = 'checkpoint') -> Dict[str, Any]:
  """Infers backbone type, depth, width and input channels from shapes.

  Args:
    sd: backbone state dict (``encoder.`` prefix removed).
    source: file name for error messages.

  Returns:
    dict with backbone, num_layers, stage_units (None for a standard depth),
    width and input_nc.
  """
  if 'input_layer.0.weight' in sd:
    backbone, stem, unit_key = 'ir_se', 'input_layer.0.weight', 'body.{}.res_layer.1.weight'
  elif 'conv1.weight' in sd:
    backbone, stem, unit_key = 'resnet34', 'conv1.weight', 'body.{}.conv1.weight'
  else:
    keys = ', '.join(list(map(str, sd))[:8])
    raise ConversionError(f'{source}: no IR-SE ("input_layer.0.weight") or ResNet '
                          f'("conv1.weight") backbone found; keys start: {keys}')
  width, input_nc = (int(d) for d in sd[stem].shape[:2])
  n_units = count_indexed(sd, 'body.', '.' + unit_key.split('.', 2)[2])
  try:
    widths = [int(sd[unit_key.format(i)].shape[0]) for i in range(n_units)]
  except KeyError as e:
    raise ConversionError(f'{source}: missing backbone unit {e}') from e
  units = _stage_units(widths, source)
  if widths[0] != width:
    raise ConversionError(f'{source}: first stage has {widths[0]} channels but the '
                          f'stem has {width}')
  out = dict(backbone=backbone, num_layers=50, stage_units=list(units), width=width,
             input_nc=input_nc)
  if backbone == 'ir_se':
    for depth, std in IRSE_STAGE_UNITS.items():
      if units == std:
        out.update(num_layers=depth, stage_units=None)
  elif units == RESNET34_STAGE_UNITS:
    out['stage_units'] = None
  return out


def irse_mode(sd: Mapping[str, Any]) -> str:
  """Which IR unit an ``input_layer``/``body`` state dict holds.

  Args:
    sd: backbone state dict.

  Returns:
    'ir_se' when any unit has squeeze-and-excitation weights
    (``body.N.res_layer.5.fc1.weight``), else 'ir'.
  """
  return 'ir_se' if count_indexed(sd, 'body.', '.res_layer.5.fc1.weight') else 'ir'


def infer_encoder(sd: Mapping[str, Any], source: str = 'checkpoint'):
  """Infers ``BackboneEncoder`` kwargs and the encoder input size.

  Args:
    sd: encoder state dict (``encoder.`` prefix removed).
    source: file name for error messages.

  Returns:
    ``(encoder_kwargs, encoder_size)``; the size follows from the number of
    stride-2 convs per style block (4 → 16x16 map → 256 px).
  """
  config = infer_backbone(sd, source)
  n_styles = count_indexed(sd, 'styles.', '.linear.weight')
  if n_styles == 0 or 'styles.0.linear.weight' not in sd:
    raise ConversionError(f'{source}: no "styles.N.linear.weight" keys: not a ReStyle '
                          'BackboneEncoder (GradualStyleEncoder / e4e are not supported)')
  style_dim = int(sd['styles.0.linear.weight'].shape[0])
  n_convs = count_indexed(sd, 'styles.0.convs.', '.weight')
  # A single conv also serves a 1x1 map; 2x2 (32 px input) is the useful case.
  encoder_size = 16 * 2 ** max(1, n_convs)
  config.update(n_styles=n_styles, style_dim=style_dim)
  return config, encoder_size


def merge_errors(errors: Sequence[Optional[ConversionError]]) -> None:
  """Raises one ConversionError joining every non-None error."""
  errors = [e for e in errors if e is not None]
  if errors:
    raise ConversionError('\n'.join(str(e) for e in errors))

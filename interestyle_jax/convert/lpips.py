"""LPIPS v0.1 AlexNet weights → ``lpips`` model directory.

Two PyTorch files make the metric: the LPIPS linear-layer file (``alex.pth``
of the lpips package, keys ``lin{l}.model.1.weight`` [1, C, 1, 1]) and
torchvision's AlexNet state dict (``features.{k}.weight/bias``; the
``classifier.*`` tensors are not used). ``convert lpips SRC DST --alexnet PATH``.
"""

from typing import Any, Dict, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts
from interestyle_jax.convert.backbones import leaf, merge_errors
from interestyle_jax.convert.common import (IGNORE, ConversionError, assign_state_dict,
                                            check_output_location, load_torch_checkpoint)
from interestyle_jax.models.lpips import ALEXNET_CHANNELS, KIND, LPIPS


def _lin_mapper(key: str, arr: np.ndarray):
  parts = key.split('.')
  if (len(parts) == 4 and parts[0].startswith('lin') and parts[0][3:].isdigit()
      and parts[1:3] == ['model', '1']):
    return leaf((parts[0],), 'fc1x1', parts[3], arr)
  return None


def _alexnet_mapper(key: str, arr: np.ndarray):
  parts = key.split('.')
  if parts[0] == 'classifier':
    return IGNORE  # the classifier head plays no part in LPIPS
  if len(parts) == 3 and parts[0] == 'features' and parts[1].isdigit():
    return leaf(('net', f'features_{int(parts[1])}'), 'conv', parts[2], arr)
  return None


def convert_state_dicts(lin_sd: Mapping[str, Any], alexnet_sd: Mapping[str, Any],
                        lin_source: str = 'lpips weights',
                        alexnet_source: str = 'alexnet weights'):
  """Converts the two LPIPS state dicts.

  Args:
    lin_sd: LPIPS v0.1 linear-layer state dict.
    alexnet_sd: torchvision AlexNet state dict.
    lin_source: file name for error messages.
    alexnet_source: file name for error messages.

  Returns:
    ``(lpips_kwargs, variables)``.
  """
  channels = tuple(int(alexnet_sd[f'features.{k}.weight'].shape[0])
                   if f'features.{k}.weight' in alexnet_sd else c
                   for k, c in zip((0, 3, 6, 8, 10), ALEXNET_CHANNELS))
  net = LPIPS(channels)
  x = jnp.zeros((1, 64, 64, 3))
  template = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, x)['params']
  lin_t = {'params': {k: v for k, v in template.items() if k.startswith('lin')}}
  alex_t = {'params': {'net': template['net']}}
  out, errors = [], []
  for t, sd, mapper, what, src in ((lin_t, lin_sd, _lin_mapper, 'LPIPS v0.1 linear layers',
                                    lin_source),
                                   (alex_t, alexnet_sd, _alexnet_mapper, 'AlexNet features',
                                    alexnet_source)):
    try:
      out.append(assign_state_dict(t, sd, mapper, what, src))
    except ConversionError as e:
      errors.append(e)
  merge_errors(errors)
  params = dict(out[0]['params'], **out[1]['params'])
  config = {} if channels == ALEXNET_CHANNELS else {'channels': list(channels)}
  return config, {'params': params}


def load_torch_lpips(lin_path: Union[str, Mapping[str, Any]],
                     alexnet_path: Union[str, Mapping[str, Any]]):
  """Loads LPIPS from the PyTorch files (needs torch for paths).

  Args:
    lin_path: LPIPS v0.1 ``alex.pth`` (or its state dict).
    alexnet_path: torchvision AlexNet state dict file (or the dict).

  Returns:
    ``(LPIPS module, variables)``.
  """
  config, variables = convert_state_dicts(
      load_torch_checkpoint(lin_path), load_torch_checkpoint(alexnet_path),
      lin_path if isinstance(lin_path, str) else 'lpips weights',
      alexnet_path if isinstance(alexnet_path, str) else 'alexnet weights')
  return LPIPS(**config), jax.tree_util.tree_map(jnp.asarray, variables)


def add_arguments(parser) -> None:
  """Extra CLI flags of ``convert lpips``."""
  parser.add_argument('--alexnet', required=True, metavar='PATH',
                      help='torchvision AlexNet state dict (e.g. alexnet-owt-7be5be79.pth)')


def convert(src: str, dst: str, overwrite: bool = False, alexnet: str = None) -> str:
  """``convert lpips SRC DST --alexnet PATH``.

  Args:
    src: LPIPS v0.1 linear weights (``alex.pth``).
    dst: output directory (written atomically).
    overwrite: replace an existing ``dst``.
    alexnet: torchvision AlexNet state dict file.

  Returns:
    The output path.
  """
  if not alexnet:
    raise ConversionError('convert lpips needs the AlexNet trunk: pass --alexnet PATH '
                          '(torchvision alexnet state dict)')
  check_output_location(dst)  # before the slow part
  lin_sd, alex_sd = load_torch_checkpoint(src), load_torch_checkpoint(alexnet)
  config, variables = convert_state_dicts(lin_sd, alex_sd, src, alexnet)
  meta: Dict[str, Any] = {'kind': KIND, 'lpips': config, 'source': str(src),
                          'alexnet_source': str(alexnet)}
  return artifacts.save_artifact(dst, {'lpips': variables}, meta, overwrite=overwrite)

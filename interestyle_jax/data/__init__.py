"""Data: folder datasets of images + interest masks, the input pipeline, mask making.

Importing this package is cheap: the pipeline (jax, TensorFlow) is loaded on
first use of one of its names, so worker processes that only decode images
(``folder``) never import them.
"""

import importlib

from interestyle_jax.data.folder import DataValidationError

_LAZY = {
    'default_data_config': 'interestyle_jax.data.pipeline',
    'make_train_iterator': 'interestyle_jax.data.pipeline',
    'make_eval_iterator': 'interestyle_jax.data.pipeline',
}
__all__ = ['DataValidationError'] + sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

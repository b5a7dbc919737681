"""Data: folder datasets of images + interest masks, the input pipeline, mask making.

``pipeline`` (training/eval iterators) and ``make_masks`` import TensorFlow
only when used; importing this package is cheap.
"""

from interestyle_jax.data.folder import DataValidationError
from interestyle_jax.data.pipeline import default_data_config
from interestyle_jax.data.pipeline import make_eval_iterator
from interestyle_jax.data.pipeline import make_train_iterator

"""PyTorch checkpoint → Flax conversion.

CLI: ``python -m interestyle_jax.convert KIND SRC DST`` (see ``--help``).
Torch is imported only when a PyTorch file is actually read.
"""

from interestyle_jax.convert.common import ConversionError
from interestyle_jax.convert.stylegan2 import load_stylegan2, load_torch_stylegan2

__all__ = ['ConversionError', 'load_stylegan2', 'load_torch_stylegan2']

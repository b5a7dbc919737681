"""PyTorch checkpoint → Flax conversion.

CLI: ``python -m interestyle_jax.convert KIND SRC DST`` (see ``--help``).
Torch is imported only when a PyTorch file is actually read.
"""

from interestyle_jax.convert.common import ConversionError
from interestyle_jax.convert.irse50 import load_encoder_init, load_torch_arcface
from interestyle_jax.convert.lpips import load_torch_lpips
from interestyle_jax.convert.restyle import load_torch_restyle
from interestyle_jax.convert.stylegan2 import load_stylegan2, load_torch_stylegan2
from interestyle_jax.convert.stylegan2_ada import load_nvidia_stylegan2

__all__ = ['ConversionError', 'load_encoder_init', 'load_stylegan2', 'load_torch_arcface',
           'load_nvidia_stylegan2', 'load_torch_lpips', 'load_torch_restyle',
           'load_torch_stylegan2']

"""Low-level operations shared by the models."""

from interestyle_jax.ops.fused_act import fused_leaky_relu
from interestyle_jax.ops.upfirdn2d import blur, downsample, make_kernel, upfirdn2d, upsample

__all__ = ['blur', 'downsample', 'fused_leaky_relu', 'make_kernel', 'upfirdn2d', 'upsample']

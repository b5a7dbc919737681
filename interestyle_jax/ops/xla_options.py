"""XLA compiler options for the networks' programs, and ``jit`` that applies them.

On CPU, XLA hands convolutions to YNNPACK by default. YNNPACK computes the
kernel gradients of the encoder's large feature maps at 17-40 GFLOP/s (the
256 px, 64-channel one took 434 ms at batch 2), where XLA's Eigen
convolutions take 104 ms; the generator's convolutions are faster on Eigen
too. Keeping YNNPACK for matrix products only made the encoder's
forward+backward 4.07 -> 2.98 s and the 256 px generator's 3.11 -> 2.16 s on a
2-core CPU (``benchmarks/vs_pytorch.py`` measures the whole step).

The option is passed per program (``jax.jit(..., compiler_options=...)``),
so it changes nothing else in the user's process. Set the environment
variable ``INTERESTYLE_XLA_DEFAULTS=1`` to compile with XLA's defaults.
"""

import functools
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp

# The YNNPACK library fusions to keep: matrix products only (no convolutions).
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


@functools.lru_cache(maxsize=None)
def _cpu_options_accepted() -> bool:
  # An XLA without this option (older or newer jaxlib) refuses it at compile
  # time; fall back to its defaults rather than failing every program.
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros(1)).compile()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def compiler_options(backend: Optional[str] = None) -> Optional[Dict[str, Any]]:
  """The options for programs that run the networks on ``backend``.

  Args:
    backend: 'cpu', 'gpu', 'tpu', or None for ``jax.default_backend()``.

  Returns:
    A dict for ``jax.jit(compiler_options=...)``, or None (XLA's defaults)
    off CPU, with ``INTERESTYLE_XLA_DEFAULTS=1``, or where this XLA does not
    know the option.
  """
  if os.environ.get('INTERESTYLE_XLA_DEFAULTS', '') not in ('', '0'):
    return None
  if (backend or jax.default_backend()) != 'cpu' or not _cpu_options_accepted():
    return None
  return dict(CPU_OPTIONS)


def jit(fun, **kwargs):
  """``jax.jit`` with :func:`compiler_options` for the default backend.

  Args:
    fun: the function.
    **kwargs: passed to ``jax.jit`` (static_argnames, donate_argnums, ...).

  Returns:
    The jitted function.
  """
  return jax.jit(fun, compiler_options=compiler_options(), **kwargs)

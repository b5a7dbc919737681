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

:func:`compile_and_release` compiles a program ahead of time and then hands
the compiler's freed heap back to the operating system before the program
first runs (see there: 1.3 GB of the paper step's peak RSS).
"""

import ctypes
import ctypes.util
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


@functools.lru_cache(maxsize=None)
def _malloc_trim():
  name = ctypes.util.find_library('c')
  try:
    return getattr(ctypes.CDLL(name), 'malloc_trim', None) if name else None
  except OSError:
    return None


def release_host_memory() -> bool:
  """Returns the process's freed heap pages to the operating system.

  glibc keeps memory that was freed (by XLA's compiler, by initialisation) in
  its arenas, and RSS stays at its peak. A program's large buffers are fresh
  ``mmap`` pages, not those, so without this the compiler's garbage and the
  step's temporaries add up.

  Returns:
    Whether anything could be asked of the allocator (False where libc has
    no ``malloc_trim``: macOS, musl).
  """
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def compile_and_release(jitted, *args, **kwargs):
  """Compiles ``jitted`` for these arguments, then :func:`release_host_memory`.

  Compiling the paper-scale train step on CPU leaves ~1.3 GB of freed heap
  behind; releasing it before the first run brought the step's peak RSS from
  7.2 to 6.0 GB (256 px config-f generator, IR-SE50, batch 2, T = 5, 2-core
  CPU; ``benchmarks/vs_pytorch.py``).

  Args:
    jitted: a ``jax.jit`` function.
    *args: its arguments (arrays or ``jax.ShapeDtypeStruct``).
    **kwargs: its keyword arguments.

  Returns:
    The compiled function (``jax.stages.Compiled``: same arguments, donation
    kept, no retracing).
  """
  compiled = jitted.lower(*args, **kwargs).compile()
  release_host_memory()
  return compiled

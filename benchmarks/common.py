"""Timing helpers shared by the benchmark scripts."""

import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a checkout without installing
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top

from interestyle_jax.ops import xla_options  # pylint: disable=g-import-not-at-top


def peak_rss_mb() -> float:
  """This process's peak resident set size in MB.

  Linux's ``getrusage`` ``ru_maxrss`` survives ``exec``, so a benchmark
  subprocess would report its parent's peak; ``VmHWM`` belongs to the
  process's own address space.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_ints(s: str):
  """'1,4,8' → [1, 4, 8]."""
  return [int(x) for x in s.split(',') if x]


def bench(fn, args, iters: int, warmup: int):
  """Compiles ``fn`` as the library does (``xla_options.jit``) and times it.

  Args:
    fn: the function to jit.
    args: its positional arguments.
    iters: timed calls.
    warmup: untimed calls after compiling.

  Returns:
    ``(compile seconds, seconds per call)``.
  """
  t0 = time.perf_counter()
  compiled = xla_options.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(compiled(*args))
  return compile_s, (time.perf_counter() - t0) / iters

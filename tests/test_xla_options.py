"""ops.xla_options: per-program CPU options and returning freed heap to the OS."""

import ctypes
import ctypes.util
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax.ops import xla_options


def _rss_mb():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  raise AssertionError('no VmRSS')


def test_compiler_options_off_cpu_and_opt_out(monkeypatch):
  assert xla_options.compiler_options('gpu') is None
  assert xla_options.compiler_options('cpu') == xla_options.CPU_OPTIONS
  monkeypatch.setenv('INTERESTYLE_XLA_DEFAULTS', '1')
  assert xla_options.compiler_options('cpu') is None


@pytest.mark.skipif(platform.system() != 'Linux', reason='VmRSS and glibc malloc_trim')
def test_release_host_memory_returns_freed_heap():
  libc = ctypes.CDLL(ctypes.util.find_library('c'))
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  # 200 MB of small blocks (below the mmap threshold: they live in the heap),
  # all freed but the last, which pins the heap's top so free() cannot shrink it.
  blocks = [libc.malloc(4096) for _ in range(50_000)]
  for p in blocks:
    ctypes.memset(p, 1, 4096)
  for p in blocks[:-1]:
    libc.free(p)
  before = _rss_mb()
  assert xla_options.release_host_memory()
  after = _rss_mb()
  libc.free(blocks[-1])
  assert before - after > 100, (before, after)


def test_compile_and_release_keeps_donation_and_values():
  fn = xla_options.jit(lambda s, x: (s + x, jnp.sum(x)), donate_argnums=(0,))
  s, x = jnp.ones((64,)), jnp.arange(64.0)
  compiled = xla_options.compile_and_release(fn, s, x)
  new, total = compiled(s, x)
  np.testing.assert_array_equal(new, 1 + np.arange(64.0))
  assert float(total) == np.arange(64.0).sum()
  assert s.is_deleted() or jax.default_backend() != 'cpu'  # donated in place

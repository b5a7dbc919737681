"""Fixtures shared by several test modules."""

import jax
import pytest


@pytest.fixture(scope='module')
def unoptimised_xla():
  """XLA without most optimisations for one module: its programs are tiny, compiling is the cost."""
  old = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)

"""IntereStyle (interest-region StyleGAN2 inversion) in JAX/Flax.

``import interestyle_jax`` stays light: heavy entry points such as
:func:`load_inverter` are imported on first use.
"""

__all__ = ['load_inverter']


def __getattr__(name):
  # Lazy so that importing the package does not import jax/flax/orbax.
  if name == 'load_inverter':
    from interestyle_jax.inference import load_inverter  # pylint: disable=g-import-not-at-top
    return load_inverter
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

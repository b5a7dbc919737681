"""Behaviour of the Flax StyleGAN2 generator (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interestyle_jax.models.stylegan2 import (Generator, generator_channels, mix_styles,
                                              n_styles_for, noise_shapes)

SD = 32


@pytest.fixture(scope='module')
def gen16():
  g = Generator(16, style_dim=SD, n_mlp=2, width=16)
  v = g.init(jax.random.PRNGKey(0), jnp.zeros((1, g.n_styles, SD)))
  # Noise weights start at 0; make noise visible so noise tests can fail.
  v = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if any(getattr(k, 'key', None) == 'noise' for k in p) else x, v)
  return g, v


@pytest.mark.parametrize('res', [8, 16, 32, 64])
def test_shapes_and_n_styles(res):
  g = Generator(res, style_dim=SD, n_mlp=1, width=8, channel_multiplier=1)
  assert g.n_styles == n_styles_for(res) == 2 * int(np.log2(res)) - 2
  w = jnp.zeros((2, g.n_styles, SD))
  out = jax.eval_shape(lambda: g.init_with_output(jax.random.PRNGKey(0), w)[0])
  assert out.shape == (2, res, res, 3)
  assert n_styles_for(1024) == 18 and len(noise_shapes(1024)) == 17


def test_channels_match_config_f():
  ch = generator_channels(1024, 2)
  assert [ch[r] for r in (4, 32, 64, 128, 256, 512, 1024)] == [512, 512, 512, 256, 128, 64, 32]


def test_noise_modes(gen16):
  g, v = gen16
  w = jax.random.normal(jax.random.PRNGKey(1), (2, g.n_styles, SD))
  a = g.apply(v, w, noise_mode='const')
  np.testing.assert_array_equal(np.asarray(a), np.asarray(g.apply(v, w, noise_mode='const')))
  r1 = g.apply(v, w, noise_mode='random', rngs={'noise': jax.random.PRNGKey(2)})
  r2 = g.apply(v, w, noise_mode='random', rngs={'noise': jax.random.PRNGKey(3)})
  assert float(jnp.abs(r1 - r2).max()) > 1e-3
  n = g.apply(v, w, noise_mode='none')
  zeros = [jnp.zeros(s) for s in noise_shapes(16)]
  np.testing.assert_allclose(np.asarray(n), np.asarray(g.apply(v, w, noise=zeros)), atol=1e-6)
  assert float(jnp.abs(n - a).max()) > 1e-3
  with pytest.raises(ValueError, match='noise_mode'):
    g.apply(v, w, noise_mode='fixed')


def test_w_latent_broadcasts_and_bad_shape(gen16):
  g, v = gen16
  w = jax.random.normal(jax.random.PRNGKey(4), (2, SD))
  plus = jnp.repeat(w[:, None], g.n_styles, axis=1)
  np.testing.assert_allclose(np.asarray(g.apply(v, w)), np.asarray(g.apply(v, plus)), atol=1e-6)
  with pytest.raises(ValueError, match=r'\[B, 6, 32\]'):
    g.apply(v, jnp.zeros((2, 5, SD)))
  with pytest.raises(ValueError, match='power of two'):
    Generator(48).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 512)))


def test_truncation_zero_gives_average_image(gen16):
  g, v = gen16
  w_avg = g.apply(v, 256, jax.random.PRNGKey(5), method=g.mean_latent)
  z = jax.random.normal(jax.random.PRNGKey(6), (3, SD))
  img, w = g.apply(v, z, truncation=0.0, truncation_latent=w_avg, noise_mode='const',
                   method=g.from_z)
  avg_img = g.apply(v, w_avg, noise_mode='const')
  np.testing.assert_allclose(np.asarray(img), np.broadcast_to(np.asarray(avg_img), img.shape),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(w), np.broadcast_to(np.asarray(w_avg)[:, None], w.shape),
                             atol=1e-6)
  with pytest.raises(ValueError, match='truncation_latent'):
    g.apply(v, jnp.zeros((1, SD)), truncation=0.5)


def test_style_mixing_switches_at_inject_index(gen16):
  g, v = gen16
  wa = jax.random.normal(jax.random.PRNGKey(7), (1, g.n_styles, SD))
  wb = jax.random.normal(jax.random.PRNGKey(8), (1, g.n_styles, SD))
  k = 3
  mixed = np.asarray(mix_styles(wa, wb, k))
  np.testing.assert_array_equal(mixed[:, :k], np.asarray(wa)[:, :k])
  np.testing.assert_array_equal(mixed[:, k:], np.asarray(wb)[:, k:])
  # The mixed image depends on wb only through layers >= k.
  grad_b = jax.grad(lambda b: g.apply(v, mix_styles(wa, b, k)).sum())(wb)
  per_layer = np.abs(np.asarray(grad_b)).sum(-1)[0]
  assert np.all(per_layer[:k] == 0) and np.all(per_layer[k:] > 0)
  za, zb = jax.random.normal(jax.random.PRNGKey(9), (2, 2, SD))
  img, w = g.apply(v, za, mix_z=zb, inject_index=k, noise_mode='const', method=g.from_z)
  wa_z = g.apply(v, za, method=g.mapping)
  wb_z = g.apply(v, zb, method=g.mapping)
  np.testing.assert_allclose(np.asarray(w[:, :k]), np.repeat(np.asarray(wa_z)[:, None], k, 1),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(w[:, k:]),
                             np.repeat(np.asarray(wb_z)[:, None], g.n_styles - k, 1), atol=1e-6)


def test_gradients_reach_every_style(gen16):
  g, v = gen16
  w = jax.random.normal(jax.random.PRNGKey(10), (2, g.n_styles, SD))
  gw = jax.grad(lambda x: jnp.mean(g.apply(v, x) ** 2))(w)
  assert np.all(np.abs(np.asarray(gw)).sum(-1) > 0)


def test_grouped_and_shared_modconv_agree(gen16):
  g, v = gen16
  w = jax.random.normal(jax.random.PRNGKey(11), (3, g.n_styles, SD))
  a = g.apply(v, w)
  b = g.clone(modconv_impl='grouped').apply(v, w)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

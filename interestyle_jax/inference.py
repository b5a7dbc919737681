"""ReStyle iterative inversion of photos with a trained / converted encoder.

    inv = interestyle_jax.load_inverter('ckpt/interestyle')   # or a train.py workdir
    out = inv.invert(uint8_images, n_iters=5)
    out.images       # [B, R, R, 3] final reconstructions (generator size, [-1, 1])
    out.latents      # [B, n_styles, D] W+ latents
    out.iterations   # [T, B, R, R, 3] reconstruction after each iteration

Refinement (ReStyle, :func:`refine`): w₀ = latent_avg, ŷ₀ = pool(G(w₀)) with
the const noise buffers; for t = 1..T: w ← w + E([x, ŷ]) (BatchNorm running
statistics), ŷ ← pool(G(w)), where pool is PyTorch's adaptive average pooling
to the encoder size. :func:`refine` is the one refinement loop of the package:
training's validation and image grids, ``evaluate`` and ``invert`` run it too.
The whole loop is one ``jax.jit`` (a ``lax.scan``), compiled once per input
shape and ``n_iters``.
"""

import functools
import os
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from interestyle_jax import artifacts
from interestyle_jax.models.encoder import BackboneEncoder
from interestyle_jax.models.stylegan2 import Generator
from interestyle_jax.ops import xla_options
from interestyle_jax.ops.pooling import adaptive_avg_pool2d

KIND = 'restyle'


class Inversion(NamedTuple):
  """Result of :meth:`Inverter.invert`.

  Attributes:
    images: ``[B, R, R, 3]`` final reconstructions in [-1, 1] (R = generator
      resolution).
    latents: ``[B, n_styles, D]`` final W+ latents.
    iterations: ``[T, B, R, R, 3]`` reconstruction after each iteration.
    iteration_latents: ``[T, B, n_styles, D]`` latent after each iteration.
  """
  images: jnp.ndarray
  latents: jnp.ndarray
  iterations: jnp.ndarray
  iteration_latents: jnp.ndarray


def average_image(generator: Generator, gen_vars, latent_avg: jnp.ndarray,
                  encoder_size: int) -> jnp.ndarray:
  """ŷ₀ = pool(G(latent_avg)) with const noise, ``[1, S, S, 3]``."""
  avg = generator.apply(gen_vars, latent_avg[None], noise_mode='const')
  return adaptive_avg_pool2d(avg, encoder_size)


def refine(encoder: BackboneEncoder, generator: Generator, encoder_variables,
           generator_variables, latent_avg: jnp.ndarray, x: jnp.ndarray, n_iters: int,
           encoder_size: int, avg_image: Optional[jnp.ndarray] = None) -> Inversion:
  """The ReStyle refinement loop: the one that validation, evaluation and inversion run.

  w₀ = latent_avg, ŷ₀ = the average image; for t = 1..T:
  wₜ = wₜ₋₁ + E([xₜ, ŷₜ₋₁]) with BatchNorm running statistics, and
  ŷₜ = pool(G(wₜ)) with the const noise buffers (pool: PyTorch's adaptive
  average pooling to the encoder size). One ``lax.scan``; jit it.

  Args:
    encoder: the 6-channel ``BackboneEncoder``.
    generator: the StyleGAN2 ``Generator``.
    encoder_variables: ``{'params', 'batch_stats'}``.
    generator_variables: ``{'params', 'noises'}``.
    latent_avg: ``[n_styles, D]`` start latent.
    x: ``[B, S, S, 3]`` encoder inputs in [-1, 1], the same every iteration,
      or ``[T, B, S, S, 3]``: one input per iteration (training's UnF-filtered
      x̃ₜ, shown in the training image grids).
    n_iters: refinement iterations T.
    encoder_size: S.
    avg_image: ŷ₀ ``[S, S, 3]`` or ``[1, S, S, 3]``; it does not depend on
      ``x``, so a cached one saves a generator pass per call (default: computed).

  Returns:
    An :class:`Inversion`; its ``iterations`` are the generator outputs at
    its resolution (pool them to S for what the next iteration saw).
  """
  per_iteration = x.ndim == 5
  if per_iteration and x.shape[0] != n_iters:
    raise ValueError(f'x holds {x.shape[0]} per-iteration inputs, n_iters is {n_iters}')
  b = x.shape[-4]
  w0 = jnp.broadcast_to(latent_avg[None], (b,) + latent_avg.shape)
  if avg_image is None:
    avg_image = average_image(generator, generator_variables, latent_avg, encoder_size)
  y0 = jnp.broadcast_to(avg_image.reshape(avg_image.shape[-3:]), (b,) + avg_image.shape[-3:])

  def step(carry, x_t):
    w, y = carry
    x_t = x if x_t is None else x_t
    w = w + encoder.apply(encoder_variables, jnp.concatenate([x_t, y], axis=-1), train=False)
    img = generator.apply(generator_variables, w, noise_mode='const')
    return (w, adaptive_avg_pool2d(img, encoder_size).astype(y.dtype)), (img, w)

  _, (imgs, ws) = jax.lax.scan(step, (w0, y0.astype(x.dtype)), x if per_iteration else None,
                               length=n_iters)
  return Inversion(images=imgs[-1], latents=ws[-1], iterations=imgs, iteration_latents=ws)


class Inverter:
  """Inverts images into the generator's W+ space with a ReStyle encoder.

  Args:
    encoder: the ``BackboneEncoder`` (6 input channels).
    encoder_variables: ``{'params', 'batch_stats'}``.
    generator: the StyleGAN2 ``Generator``.
    generator_variables: ``{'params', 'noises'}``.
    latent_avg: ``[n_styles, D]`` (or ``[D]``) start latent.
    encoder_size: encoder input resolution (256).
    n_iters: default number of refinement iterations (5).
  """

  def __init__(self, encoder: BackboneEncoder, encoder_variables: Mapping[str, Any],
               generator: Generator, generator_variables: Mapping[str, Any],
               latent_avg, encoder_size: int = 256, n_iters: int = 5):
    if encoder.input_nc != 6:
      raise ValueError(f'iterative inversion needs a 6-channel ([x, y_hat]) encoder; this '
                       f'one takes {encoder.input_nc} channels')
    n, d = generator.n_styles, generator.style_dim
    if (encoder.n_styles, encoder.style_dim) != (n, d):
      raise ValueError(f'encoder predicts [{encoder.n_styles}, {encoder.style_dim}] but the '
                       f'generator takes [{n}, {d}] latents')
    latent_avg = jnp.asarray(latent_avg, jnp.float32)
    if latent_avg.size == d:
      latent_avg = jnp.tile(latent_avg.reshape(1, d), (n, 1))
    if latent_avg.shape != (n, d):
      raise ValueError(f'latent_avg must be [{d}] or [{n}, {d}], got {latent_avg.shape}')
    self.encoder, self.generator = encoder, generator
    self.encoder_variables = jax.tree_util.tree_map(jnp.asarray, dict(encoder_variables))
    self.generator_variables = jax.tree_util.tree_map(jnp.asarray, dict(generator_variables))
    self.latent_avg = latent_avg
    self.encoder_size = int(encoder_size)
    self.n_iters = int(n_iters)
    # Variables are arguments (not closed-over constants) so they are not
    # baked into the compiled program; jit caches per input shape / n_iters.
    self._run = xla_options.jit(functools.partial(refine, encoder, generator),
                                static_argnames=('n_iters', 'encoder_size'))
    self._avg_image = None  # ŷ₀, computed on first use

  @classmethod
  def from_tree(cls, meta: Mapping[str, Any], tree: Mapping[str, Any]) -> 'Inverter':
    """Builds an inverter from ``restyle`` directory contents.

    The architecture in ``meta`` is checked against the arrays in ``tree``
    (names and shapes, by tracing ``init`` without computing), so a damaged or
    mismatched model fails here rather than in the first inversion.

    Args:
      meta: the model.json dict (``encoder``, ``generator``, ``encoder_size``,
        ``n_iters``).
      tree: ``{'encoder', 'generator', 'latent_avg'}``.

    Returns:
      An :class:`Inverter`.

    Raises:
      artifacts.ArtifactError: missing entries, fields the modules do not
        take, or variables that do not fit the described architecture.
    """
    for key in ('encoder', 'generator'):
      if key not in meta or key not in tree:
        raise artifacts.ArtifactError(f'restyle model lacks its {key!r} entry')
    if 'latent_avg' not in tree:
      raise artifacts.ArtifactError("restyle model lacks 'latent_avg'")
    try:
      encoder = BackboneEncoder(**meta['encoder'])
      generator = Generator(**meta['generator'])
      encoder_size, n_iters = int(meta.get('encoder_size', 256)), int(meta.get('n_iters', 5))
    except (TypeError, ValueError) as e:  # unknown / non-mapping fields, non-integers
      raise artifacts.ArtifactError(f'model.json fields do not describe a model ({e})') from e
    check_variables('encoder', encoder, tree['encoder'],
                    jnp.zeros((1, encoder_size, encoder_size, encoder.input_nc)))
    check_variables('generator', generator, tree['generator'],
                    jnp.zeros((1, generator.n_styles, generator.style_dim)))
    try:
      return cls(encoder, tree['encoder'], generator, tree['generator'], tree['latent_avg'],
                 encoder_size=encoder_size, n_iters=n_iters)
    except ValueError as e:  # encoder / generator / latent_avg do not fit together
      raise artifacts.ArtifactError(str(e)) from e

  def preprocess(self, images) -> jnp.ndarray:
    """Validates and converts inputs to float NHWC in [-1, 1] at the encoder size.

    Args:
      images: uint8 ``[H, W, 3]`` / ``[B, H, W, 3]`` (0..255), or float NHWC
        in [-1, 1].

    Returns:
      ``[B, S, S, 3]`` float32.
    """
    x = images if isinstance(images, jax.Array) else np.asarray(images)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected RGB images [B, H, W, 3] or [H, W, 3] (NHWC), got shape '
                       f'{tuple(x.shape)}' + (' — channels-first? transpose to NHWC'
                                              if x.ndim == 4 and x.shape[1] == 3 else ''))
    if x.dtype == np.uint8:
      x = jnp.asarray(x, jnp.float32) / 127.5 - 1.0
    elif jnp.issubdtype(x.dtype, jnp.floating):
      lo, hi = float(jnp.min(x)), float(jnp.max(x))
      if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f'float images must lie in [-1, 1], got values in [{lo:.3g}, '
                         f'{hi:.3g}]; for 0..255 data use x / 127.5 - 1 (or pass uint8)')
      x = jnp.asarray(x, jnp.float32)
    else:
      raise ValueError(f'images must be uint8 or float, got {x.dtype}')
    s = self.encoder_size
    if x.shape[1:3] != (s, s):
      x = jax.image.resize(x, (x.shape[0], s, s, 3), 'linear', antialias=True)
    return x

  def invert(self, images, n_iters: Optional[int] = None) -> Inversion:
    """Inverts a batch of images.

    Args:
      images: uint8 or float [-1, 1] NHWC images (any size; resized to the
        encoder size when needed).
      n_iters: refinement iterations (default: the model's, 5).

    Returns:
      An :class:`Inversion` (images, latents, iterations, iteration_latents).
    """
    n_iters = self.n_iters if n_iters is None else int(n_iters)
    if n_iters < 1:
      raise ValueError(f'n_iters must be >= 1, got {n_iters}')
    x = self.preprocess(images)
    if self._avg_image is None:
      self._avg_image = xla_options.jit(functools.partial(average_image, self.generator),
                                        static_argnames='encoder_size')(
                                    self.generator_variables, self.latent_avg,
                                    encoder_size=self.encoder_size)
    return self._run(self.encoder_variables, self.generator_variables, self.latent_avg, x,
                     n_iters=n_iters, encoder_size=self.encoder_size,
                     avg_image=self._avg_image)


def check_variables(name: str, module, variables, *example_inputs) -> None:
  """Checks that stored variables fit a module, without running it.

  ``module.init`` is traced with ``jax.eval_shape`` (no computation, no
  compilation) and the expected tree of names and shapes is compared with
  ``variables``.

  Args:
    name: what the variables are, for messages ('encoder').
    module: the Flax module described by model.json.
    variables: the restored variables.
    *example_inputs: inputs ``module.init`` takes (only their shapes matter).

  Raises:
    artifacts.ArtifactError: the module cannot be built, or names / shapes
      differ (the first few of each kind are listed).
  """
  try:
    want = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example_inputs))
  except Exception as e:  # pylint: disable=broad-except
    # Flax reports bad fields (unknown backbone, resolution 48…) only when
    # the module is traced: they all mean model.json describes no model.
    first = (str(e).strip().splitlines() or [''])[0][:300]
    raise artifacts.ArtifactError(f'model.json describes no buildable {name} '
                                  f'({type(e).__name__}: {first})') from e
  flat = lambda t: {jax.tree_util.keystr(k): tuple(getattr(v, 'shape', ()))
                    for k, v in jax.tree_util.tree_leaves_with_path(t)}
  try:
    got = flat(dict(variables))
  except (TypeError, ValueError) as e:
    raise artifacts.ArtifactError(f'the stored {name} variables are not a tree of arrays') from e
  want = flat(want)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or shapes:
    show = lambda keys, fmt: ', '.join(fmt(k) for k in keys[:3]) + (' …' if len(keys) > 3 else '')
    parts = ([f'{len(missing)} missing ({show(missing, str)})'] if missing else []) + \
            ([f'{len(extra)} unexpected ({show(extra, str)})'] if extra else []) + \
            ([f'{len(shapes)} of another shape ('
              + show(shapes, lambda k: f'{k}: stored {got[k]}, model {want[k]}') + ')']
             if shapes else [])
    raise artifacts.ArtifactError(f'the stored {name} variables do not fit the architecture '
                                  f'in model.json: {"; ".join(parts)}')


def resolve_model_dir(path: str) -> str:
  """Finds the ``restyle`` model directory in ``path``.

  Args:
    path: a ``convert restyle`` directory or a train.py workdir (whose
      ``inference/`` sub-directory holds the model).

  Returns:
    The directory holding ``model.json``.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; expected a directory written by '
                            '`python -m interestyle_jax.convert restyle` or a train.py workdir')
  if os.path.isfile(os.path.join(path, artifacts.META_FILE)):
    return path
  sub = os.path.join(path, 'inference')
  if os.path.isfile(os.path.join(sub, artifacts.META_FILE)):
    return sub
  raise artifacts.ArtifactError(
      f'{path} has neither {artifacts.META_FILE} nor inference/{artifacts.META_FILE}; '
      'expected a `convert restyle` output directory or a train.py workdir that has '
      'written its inference model')


def load_inverter(path: str) -> Inverter:
  """Loads an inverter from a ``convert restyle`` directory or a training workdir.

  Args:
    path: directory with ``model.json`` (kind 'restyle'), or a workdir with
      ``inference/model.json``.

  Returns:
    An :class:`Inverter`.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    artifacts.ArtifactError: not a restyle model, or a damaged one (model.json
      unreadable or not matching the arrays, arrays truncated); the message
      names the directory.
  """
  model_dir = resolve_model_dir(path)
  meta, tree = artifacts.load_artifact(model_dir, expected_kind=KIND)
  try:
    return Inverter.from_tree(meta, tree)
  except artifacts.ArtifactError as e:
    raise artifacts.ArtifactError(
        f'{os.path.abspath(model_dir)} is not a usable restyle model: {e}; convert it again '
        '(`python -m interestyle_jax.convert restyle`) or re-export it from train.py') from e

"""Training state and the Ranger optimizer (RAdam inside Lookahead).

ReStyle's ``training/ranger.py`` (lessw2020's Ranger 20.4.11) is RAdam
(β = (0.95, 0.999), eps 1e-5, SMA threshold 5) with gradient centralisation of
every weight with more than one dimension, wrapped in Lookahead with k = 6
steps and slow step α = 0.5; the model always runs on the *fast* weights. Here
it is ``optax.lookahead(chain(centralise, radam), sync_period=6,
slow_step_size=0.5)`` over :class:`optax.LookaheadParams`; only the encoder is
optimised (the generator is frozen and lives outside the state).

Differences from the PyTorch code, kept because they are below noise: optax
adds eps to the bias-corrected √v̂ (Ranger adds it to √v), and optax's RAdam
switches to the adaptive step at ρₜ ≥ 5 (Ranger at > 5).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


def centralize_gradients() -> optax.GradientTransformation:
  """Gradient centralisation for Flax layouts.

  Ranger subtracts, from every gradient with more than one dimension, its mean
  over all axes but the output-channel one. PyTorch stores the output channel
  first (OIHW, [out, in]); Flax stores it last (HWIO, [in, out]), so the mean
  is over all axes but the last (``optax.centralize`` assumes PyTorch's order).

  Returns:
    A stateless optax transformation.
  """

  def update_fn(updates, state, params=None):
    del params

    def centre(g):
      if g.ndim <= 1:
        return g
      return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)

    return jax.tree.map(centre, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def ranger(learning_rate: float, b1: float = 0.95, b2: float = 0.999,
           eps: float = 1e-5, sync_period: int = 6, slow_step_size: float = 0.5,
           gradient_centralization: bool = True) -> optax.GradientTransformation:
  """Ranger = Lookahead(RAdam) (+ gradient centralisation), ReStyle's defaults.

  The returned transformation must be applied to :class:`optax.LookaheadParams`
  (``updates, s = tx.update(grads_wrt_fast, s, lookahead_params)``).

  Args:
    learning_rate: RAdam step size (1e-4 in IntereStyle).
    b1: first-moment decay (Ranger uses 0.95).
    b2: second-moment decay.
    eps: RAdam epsilon.
    sync_period: Lookahead k.
    slow_step_size: Lookahead α.
    gradient_centralization: centre multi-dimensional gradients first.

  Returns:
    An optax GradientTransformation over LookaheadParams.
  """
  fast = optax.radam(learning_rate, b1=b1, b2=b2, eps=eps)
  if gradient_centralization:
    fast = optax.chain(centralize_gradients(), fast)
  return optax.lookahead(fast, sync_period=sync_period, slow_step_size=slow_step_size)


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Ranger from a ``config.optim`` ConfigDict.

  Args:
    optim_config: fields lr, b1, b2, eps, lookahead_k, lookahead_alpha,
      grad_centralization.

  Returns:
    The optimizer.
  """
  return ranger(optim_config.lr, optim_config.b1, optim_config.b2, optim_config.eps,
                optim_config.lookahead_k, optim_config.lookahead_alpha,
                optim_config.grad_centralization)


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (checkpointed as one pytree).

  Attributes:
    step: number of optimizer steps taken.
    params: encoder parameters as ``LookaheadParams(fast, slow)``; the model
      runs on ``params.fast``.
    batch_stats: encoder BatchNorm running statistics.
    opt_state: Ranger state.
  """
  step: jnp.ndarray
  params: optax.LookaheadParams
  batch_stats: Any
  opt_state: optax.OptState

  @property
  def encoder_variables(self):
    """``{'params', 'batch_stats'}`` of the encoder, fast weights."""
    return {'params': self.params.fast, 'batch_stats': self.batch_stats}


def create_train_state(encoder_variables, tx: optax.GradientTransformation) -> TrainState:
  """Initial state from encoder variables.

  Args:
    encoder_variables: ``{'params': …, 'batch_stats': …}`` (batch_stats may be
      absent for a BatchNorm-free encoder).
    tx: the optimizer (over LookaheadParams).

  Returns:
    TrainState at step 0 with slow weights equal to the fast ones.
  """
  fast = encoder_variables['params']
  # Distinct buffers for the slow copy (init_synced aliases them), so the state
  # can be donated to the jitted step.
  params = optax.LookaheadParams(fast=fast, slow=jax.tree.map(jnp.copy, fast))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=encoder_variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


def apply_gradients(state: TrainState, grads, batch_stats,
                    tx: optax.GradientTransformation) -> TrainState:
  """One Ranger update from gradients with respect to the fast weights.

  Args:
    state: current state.
    grads: gradients with the structure of ``state.params.fast``.
    batch_stats: the new BatchNorm statistics.
    tx: the optimizer used to create ``state``.

  Returns:
    The next state (step + 1).
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state)

"""Orbax checkpoints of the TrainState and the exported inference model.

``WORKDIR/checkpoints/<step>``: the latest ``keep`` states (resume point).
``WORKDIR/best/<step>``: the state with the lowest validation loss.
``WORKDIR/inference/``: a ``restyle`` model directory (``model.json`` +
Orbax arrays) that ``interestyle_jax.load_inverter(WORKDIR)`` reads; it is
rewritten atomically whenever a checkpoint is saved.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted run never leaves a partial checkpoint behind.
"""

import os
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from interestyle_jax import artifacts

BEST_METRIC = 'val_loss'


class Checkpointer:
  """The 'latest' and 'best' checkpoint managers of a workdir.

  Args:
    workdir: the training workdir.
    keep: latest checkpoints to keep.
  """

  def __init__(self, workdir: str, keep: int):
    self.workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(self.workdir, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m[BEST_METRIC],
            best_mode='min', keep_checkpoints_without_metrics=False))

  def latest_step(self) -> Optional[int]:
    """Step of the newest complete checkpoint, or None."""
    return self.latest.latest_step()

  def restore_latest(self, template):
    """Restores the newest state with the shardings of ``template``.

    Args:
      template: a TrainState of the right structure, placed as wanted.

    Returns:
      The restored state, or None when there is no checkpoint.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self.latest.restore(step, args=ocp.args.StandardRestore(abstract))

  def save(self, step: int, state) -> None:
    """Saves ``state`` as the checkpoint of ``step`` (all processes call this)."""
    self.latest.save(step, args=ocp.args.StandardSave(state), force=True)

  def best_value(self) -> Optional[float]:
    """Validation loss of the kept best checkpoint, or None."""
    step = self.best.best_step()
    if step is None:
      return None
    metrics = self.best.metrics(step)
    return None if metrics is None else float(metrics[BEST_METRIC])

  def maybe_save_best(self, step: int, state, val_loss: float) -> bool:
    """Saves ``state`` to best/ when ``val_loss`` beats the kept one.

    Args:
      step: training step.
      state: the TrainState.
      val_loss: validation loss at ``step``.

    Returns:
      Whether it was saved.
    """
    best = self.best_value()
    if best is not None and not val_loss < best:
      return False
    if step in (self.best.all_steps() or []):
      return False
    self.best.save(step, args=ocp.args.StandardSave(state),
                   metrics={BEST_METRIC: float(val_loss)}, force=True)
    return True

  def wait(self) -> None:
    """Blocks until pending asynchronous writes are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    """Finishes writes and releases the managers."""
    self.latest.close()
    self.best.close()


def export_inference(workdir: str, encoder_kwargs: Dict[str, Any],
                     generator_kwargs: Dict[str, Any], encoder_variables,
                     generator_variables, latent_avg, encoder_size: int, n_iters: int,
                     step: int, extra_meta: Optional[Dict[str, Any]] = None) -> str:
  """Writes ``WORKDIR/inference`` (kind 'restyle') for ``load_inverter``.

  Only process 0 writes; other processes return immediately.

  Args:
    workdir: the training workdir.
    encoder_kwargs: BackboneEncoder keyword arguments.
    generator_kwargs: Generator keyword arguments.
    encoder_variables: ``{'params', 'batch_stats'}`` (fast weights).
    generator_variables: ``{'params', 'noises'}``.
    latent_avg: ``[n_styles, D]``.
    encoder_size: encoder input side.
    n_iters: refinement iterations the encoder was trained with.
    step: training step (recorded in the metadata).
    extra_meta: more JSON fields.

  Returns:
    The directory path.
  """
  dst = os.path.join(os.path.abspath(workdir), 'inference')
  if jax.process_index() != 0:
    return dst
  to_host = lambda t: jax.tree.map(lambda a: np.asarray(jax.device_get(a)), t)
  tree = {'encoder': to_host(dict(encoder_variables)),
          'generator': to_host(dict(generator_variables)),
          'latent_avg': to_host(latent_avg)}
  enc = dict(encoder_kwargs)
  if enc.get('stage_units') is not None:
    enc['stage_units'] = [int(u) for u in enc['stage_units']]
  meta = {'kind': 'restyle', 'encoder': enc, 'generator': dict(generator_kwargs),
          'encoder_size': int(encoder_size), 'n_iters': int(n_iters), 'step': int(step),
          'source': 'train.py'}
  meta.update(extra_meta or {})
  return artifacts.save_artifact(dst, tree, meta, overwrite=True)

"""SIGTERM / SIGINT: save a checkpoint at the next step boundary, then stop.

Preemptible TPU VMs and most GPU schedulers stop a job with SIGTERM (and a
person with Ctrl-C, SIGINT); on a pod every process gets it. The loop asks
:meth:`PreemptionWatch.reached` at every step boundary; when it says yes, every
process saves the same step and the run ends with :class:`Preempted`.

Two mechanisms, one per case:

- Several processes: JAX's preemption sync service (started by
  ``jax.distributed.initialize``; asked through Orbax's
  ``CheckpointManager.reached_preemption``). Its SIGTERM handler tells the
  coordination service, which picks one step all processes save at (the
  fastest process's step + 1), so no process saves a step the others do not.
  It listens to SIGTERM only: SIGINT is forwarded to it as a SIGTERM.
- One process: JAX's service needs ``jax.distributed``, so a Python handler
  of SIGTERM and SIGINT sets a flag the next boundary reads.

The previous handlers come back when the watch closes, so a library caller
(the ablation, a notebook) gets its usual Ctrl-C outside training.
"""

import os
import signal
import threading
from typing import Callable, Optional

import jax
from absl import logging

# Exit statuses of a preempted train.py: the shell's 128 + signal number.
EXIT_STATUS = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}


class Preempted(Exception):
  """The run stopped at a step boundary after a signal; its checkpoint is saved.

  Attributes:
    step: the saved step.
    signum: the signal this process received (SIGTERM when the notice came
      from another process).
  """

  def __init__(self, step: int, signum: int):
    self.step = int(step)
    self.signum = int(signum)
    super().__init__(f'preempted at step {self.step}, checkpoint saved')

  @property
  def exit_status(self) -> int:
    return EXIT_STATUS.get(self.signum, 128 + self.signum)


class PreemptionWatch:
  """Answers "stop here?" at step boundaries; use as a context manager.

  Args:
    start_step: the step the run resumes from (JAX's service must see it
      before the first boundary: it computes the stopping step from the last
      step each process reported).
    reached_fn: ``fn(step) -> bool`` of JAX's service, e.g. Orbax's
      ``CheckpointManager.reached_preemption``; used with several processes.
  """

  def __init__(self, start_step: int, reached_fn: Optional[Callable[[int], bool]] = None):
    self.start_step = int(start_step)
    self.multi = jax.process_count() > 1
    self.reached_fn = reached_fn
    self.signum: Optional[int] = None
    self._previous = {}

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    first = self.signum is None
    self.signum = self.signum or signum
    if self.multi and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier listens to SIGTERM only
    if first:
      logging.warning('Received %s: saving a checkpoint at the next step boundary',
                      signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.info('Not on the main thread: SIGTERM/SIGINT are not watched')
      return self
    # With several processes JAX's C++ handler owns SIGTERM.
    signums = (signal.SIGINT,) if self.multi else (signal.SIGTERM, signal.SIGINT)
    for s in signums:
      self._previous[s] = signal.signal(s, self._on_signal)
    if self.multi and self.reached_fn is not None:
      self.reached_fn(self.start_step)  # anchors the service's step counter
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def reached(self, step: int) -> bool:
    """Whether to save ``step`` and stop (call at every step boundary, every process).

    Args:
      step: the step just finished.

    Returns:
      True on every process at the same step once any process was signalled.
    """
    if self.multi:
      if self.reached_fn is None or not self.reached_fn(step):
        return False
      self.signum = self.signum or signal.SIGTERM
      return True
    return self.signum is not None

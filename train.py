"""Trains an IntereStyle encoder.

    python train.py --config configs/synthetic.py --workdir runs/synthetic
    python train.py --config configs/ffhq.py --workdir runs/ffhq \
        --config.data.train_dir=/data/ffhq --config.batch_size=16

Any config field can be overridden with ``--config.<field>=value``. Re-running
the same command resumes from the latest checkpoint in the workdir.

Several processes (pods, clusters) train one model with ``--distributed``:
each process runs this same command; JAX takes the job layout from the cluster
(Cloud TPU, SLURM, Open MPI, Kubernetes) or from ``--coordinator_address``,
``--num_processes`` and ``--process_id``. See the README's "Training on
several hosts".

Exit statuses:

- 0: trained (or re-evaluated) to ``num_train_steps``.
- 2: refused before it starts, one line ``train.py: error: <message>``: an
  invalid config, a workdir in use by another train.py, a re-run whose config
  differs from the saved run's, no restorable checkpoint, bad ``--distributed``
  flags, processes started with different configs, a coordinator not reached.
- 143 / 130: stopped by SIGTERM / SIGINT (preemption, Ctrl-C) after saving a
  checkpoint at the next step boundary (``preempted at step N, checkpoint
  saved``); the same command resumes from it.
- 1: the disk is full (one line naming the workdir; the unfinished checkpoint
  is removed), or another process of a multi-process job was lost (or an
  unexpected error); fix it and re-run to resume from the latest checkpoint.
"""

import os
import sys
import traceback

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from interestyle_jax.data.tf_setup import import_tf

# clu (imported by the loop) loads TensorFlow: hide the accelerators from it and
# filter its start-up notices, which only works before its first import.
try:
  import_tf()
except ImportError as _e:
  print(f'train.py: error: {_e}', file=sys.stderr)
  sys.exit(2)
from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top,g-bad-import-order
from interestyle_jax.training import distributed, logs, loop  # pylint: disable=g-import-not-at-top,g-bad-import-order
from interestyle_jax.training.config import ConfigError  # pylint: disable=g-import-not-at-top,g-bad-import-order
from interestyle_jax.training.preemption import Preempted  # pylint: disable=g-import-not-at-top,g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-process job (jax.distributed.initialize) before training.')
flags.DEFINE_string('coordinator_address', None,
                    'With --distributed: HOST:PORT of process 0 (default: from the cluster).')
flags.DEFINE_integer('num_processes', None,
                     'With --distributed: processes in the job (default: from the cluster).')
flags.DEFINE_integer('process_id', None,
                     'With --distributed: this process, 0..num_processes-1 (default: from '
                     'the cluster).')
flags.DEFINE_integer('initialization_timeout', 300,
                     'With --distributed: seconds to wait for every process to connect.')
flags.DEFINE_integer('heartbeat_timeout', distributed.DEFAULT_HEARTBEAT_TIMEOUT,
                     'With --distributed: seconds of silence after which a process counts '
                     'as lost and the job stops.')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file (configs/*.py).', lock_config=True)


def _error(message: str) -> None:
  print(f'train.py: error: {" ".join(message.split())}', file=sys.stderr, flush=True)


def _hard_exit(status: int) -> None:
  """Exits without jax.distributed's shutdown barrier, which waits for a lost peer."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def _join_job() -> None:
  named = [f'--{n}' for n in ('coordinator_address', 'num_processes', 'process_id')
           if FLAGS[n].value is not None]
  if not FLAGS.distributed:
    if named:
      raise ConfigError(f'{", ".join(named)} only apply to a multi-process job: add '
                        '--distributed')
    return
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         initialization_timeout=FLAGS.initialization_timeout,
                         heartbeat_timeout=FLAGS.heartbeat_timeout,
                         on_peer_lost=_peer_lost)


def _peer_lost(message: str) -> None:
  _error(message)
  _hard_exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  logs.quiet_libraries()  # before jax probes its backends (the 'tpu' notice)
  try:
    _join_job()
    logging.info('JAX process %d / %d, %d local devices (%s)', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.default_backend())
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    distributed.finish()
  except ConfigError as e:
    # The message names the field or file and the fix; a traceback would bury it.
    distributed.finish()
    _error(str(e))
    sys.exit(2)
  except Preempted as p:
    distributed.finish()
    logging.warning('%s', p)
    print(f'train.py: {p}; re-run the same command to resume', file=sys.stderr, flush=True)
    sys.exit(p.exit_status)
  except Exception as e:  # pylint: disable=broad-except
    if artifacts.is_disk_full(e):
      _error(str(artifacts.NoSpaceError(FLAGS.workdir)))
      if jax.process_count() > 1:
        _hard_exit(1)
      sys.exit(1)
    if jax.process_count() == 1:
      raise
    # A normal exit would wait in jax.distributed's shutdown barrier for the
    # other processes, which may be gone or stuck in a collective with us.
    message = distributed.peer_lost_message(e)
    if message is None:
      traceback.print_exc()
      message = f'process {jax.process_index()} failed ({type(e).__name__}); see above'
    _error(message)
    _hard_exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)

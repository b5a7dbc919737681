"""Trains an IntereStyle encoder.

    python train.py --config configs/synthetic.py --workdir runs/synthetic
    python train.py --config configs/ffhq.py --workdir runs/ffhq \
        --config.data.train_dir=/data/ffhq --config.batch_size=16

Any config field can be overridden with ``--config.<field>=value``. Re-running
the same command resumes from the latest checkpoint in the workdir.

A run refused before it starts (an invalid config, a workdir in use by another
train.py, a re-run whose config differs from the saved run's, no restorable
checkpoint) prints one line, ``train.py: error: <message>``, and exits with
status 2.
"""

import sys

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
from interestyle_jax.training import logs, loop  # pylint: disable=g-import-not-at-top,g-bad-import-order
from interestyle_jax.training.config import ConfigError  # pylint: disable=g-import-not-at-top,g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first (multi-host jobs).')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file (configs/*.py).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  logs.quiet_libraries()  # before jax probes its backends (the 'tpu' notice)
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info('JAX process %d / %d, %d local devices (%s)', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.default_backend())
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except ConfigError as e:
    # The message names the field or file and the fix; a traceback would bury it.
    message = ' '.join(str(e).split())
    print(f'train.py: error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)

"""train.py as a real multi-process job: jax.distributed on CPU with gloo.

Two processes of 2 CPU devices each must train what one process of 4 devices
trains (to float32 rounding; bit for bit within one layout); SIGTERM / SIGINT
save a checkpoint at a step boundary every process agrees on; a process killed with SIGKILL stops its
peer with one line; a damaged latest checkpoint is moved aside once and both
processes fall back to the same step; and every refusal is one line on every
process. Nothing is mocked: the processes are train.py itself (see
tests/multiprocess_job.py).
"""

import glob
import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from interestyle_jax import artifacts
from interestyle_jax.inference import load_inverter
from interestyle_jax.training import preemption
# fast_compiles is an autouse fixture: importing it shares its compilation
# cache (through the environment) with the train.py processes started here.
from tests.test_training_loop import fast_compiles  # noqa: F401  pylint: disable=unused-import
from tests import multiprocess_job as mpj

LAST = mpj.TINY['num_train_steps']
# Runs compared by their parameters only skip the held-out family evaluation.
QUICK = {'synthetic.test_families': '()'}
# The lifeline should stop the survivor within a second; JAX's heartbeats are
# shortened too, so that a lifeline that failed would show as status -6 (JAX's
# abort) within the test's 2 minutes rather than as a slow pass.
HEARTBEAT = ('--heartbeat_timeout=20',)


def _encoder(workdir):
  """Final encoder variables of a run, from its inference export."""
  meta, tree = artifacts.load_artifact(os.path.join(workdir, 'inference'), 'restyle')
  return meta, jax.tree_util.tree_leaves_with_path(tree['encoder'])


def _assert_same_encoder(a, b, tol):
  """Parameters and BatchNorm statistics equal (tol 0) or within tol (rel. and abs.)."""
  meta_a, leaves_a = _encoder(a)
  meta_b, leaves_b = _encoder(b)
  assert meta_a['step'] == meta_b['step'] == LAST
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  names = {jax.tree_util.keystr(p).split("'")[1] for p, _ in leaves_a}
  assert names == {'params', 'batch_stats'}  # BatchNorm statistics are compared too
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    if tol == 0:
      np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(y, x, rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return json.load(f)


def _finished(job, timeout=400):
  rcs = job.wait(timeout)
  assert rcs == [0] * len(rcs), job.tails()


@pytest.fixture(scope='module')
def logs(tmp_path_factory):
  return str(tmp_path_factory.mktemp('logs'))


@pytest.fixture(scope='module')
def one_process(tmp_path_factory, logs):
  """The reference: one process of 4 devices, uninterrupted."""
  workdir = str(tmp_path_factory.mktemp('one') / 'run')
  _finished(mpj.launch(workdir, logs, processes=1, devices=4, tag='one'))
  return workdir


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory, logs):
  """Two processes of 2 devices, uninterrupted; returns (workdir, job)."""
  workdir = str(tmp_path_factory.mktemp('two') / 'run')
  job = mpj.launch(workdir, logs, processes=2, devices=2, tag='two')
  _finished(job)
  return workdir, job


def _files(workdir):
  """Every file of a run outside Orbax's internals, relative to the workdir."""
  out = set()
  for path in glob.glob(os.path.join(workdir, '**'), recursive=True):
    rel = os.path.relpath(path, workdir)
    if os.path.isfile(path) and not rel.startswith(('checkpoints/', 'best/', 'inference/')):
      out.add('events' if 'tfevents' in rel else rel)
  return out


def test_two_processes_train_what_one_process_trains(one_process, two_processes):
  two, job = two_processes
  a, b = _metrics(one_process), _metrics(two)
  assert a['devices'] == b['devices'] == 4
  # The data, the held-out set and the step-0 validation do not depend on the
  # layout at all.
  assert b['initial_eval'] == a['initial_eval']
  # Training agrees to float32 rounding, not bit for bit: XLA:CPU splits a
  # device's convolutions by the devices sharing its process (the weight
  # gradients of the first two convolutions differ in the last bits with 2 or
  # 4 local devices), and gloo adds the devices' gradients in another order.
  # Measured after 12 steps: parameters and BatchNorm statistics (|x| up to
  # 1.6) within 7e-6, metrics within 1e-5 relative, images within 2e-5.
  _assert_same_encoder(one_process, two, tol=1e-5)
  assert a['test_families'].keys() == b['test_families'].keys() == {'skin'}
  for got, want in ((b['eval'], a['eval']), (b['test_families']['skin'],
                                             a['test_families']['skin'])):
    assert got.keys() == want.keys()
    for key, value in want.items():
      np.testing.assert_allclose(got[key], value, rtol=2e-5, err_msg=key)
  x = np.random.RandomState(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  ra, rb = load_inverter(one_process).invert(x), load_inverter(two).invert(x)
  np.testing.assert_allclose(rb.images, ra.images, atol=1e-4)
  np.testing.assert_allclose(rb.latents, ra.latents, atol=1e-4)
  # Exactly one copy of every output: the same files as the one-process run
  # (one TensorBoard event file, written by process 0), the same steps saved.
  assert _files(two) == _files(one_process)
  assert len(glob.glob(os.path.join(two, 'events.out.tfevents.*'))) == 1
  assert sorted(os.listdir(os.path.join(two, 'checkpoints'))) == sorted(
      os.listdir(os.path.join(one_process, 'checkpoints')))
  assert not glob.glob(os.path.join(two, '**', '*tmp*'), recursive=True)
  assert not os.path.exists(os.path.join(two, '.lock'))
  # Only process 0 writes (and says it wrote) the export.
  assert 'Exported the latest state' in job.output(0)
  assert 'Exported' not in job.output(1)


def test_preemption_of_two_processes_resumes_to_the_same_result(tmp_path, logs,
                                                                two_processes):
  """SIGINT to process 0 and SIGTERM to process 1; then SIGKILL; then a damaged step."""
  two, _ = two_processes  # same layout, same all-reduce: bit for bit
  workdir = str(tmp_path / 'run')
  # 1. Signals once training started: both stop at one agreed step N.
  job = mpj.launch(workdir, logs, processes=2, devices=2, overrides=QUICK, tag='pre')
  job.wait_for(lambda: 'Training steps' in job.output(0), what='training start')
  job.signal(0, signal.SIGINT)
  job.signal(1, signal.SIGTERM)
  assert job.wait() == [130, 143], job.tails()
  said = [[l for l in job.output(i).splitlines() if 'preempted at step' in l]
          for i in range(2)]
  steps = {int(l.split('preempted at step ')[1].split(',')[0]) for s in said for l in s}
  assert len(steps) == 1 and all(said), job.tails()
  n = steps.pop()
  assert 1 <= n < LAST
  assert str(n) in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert not os.path.exists(os.path.join(workdir, '.lock'))
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))

  # 2. Resume; SIGKILL process 1 once a later checkpoint exists: the survivor
  # stops within 2 minutes, with one line saying why.
  job = mpj.launch(workdir, logs, processes=2, devices=2, overrides=QUICK, extra=HEARTBEAT,
                   tag='kill')
  later = lambda: [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                   if s.isdigit() and int(s) > n]
  job.wait_for(lambda: later(), what='a checkpoint after the resumed step')
  assert f'at step {n}' in job.output(0)  # "Resumed from ... at step n"
  job.procs[1].kill()
  t0 = time.time()
  rc = job.procs[0].wait(120)
  # The lifeline tells process 0 at once, whatever it is doing (JAX's
  # heartbeats alone would abort it with SIGABRT after --heartbeat_timeout).
  assert time.time() - t0 < 120 and rc == 1, job.tails()
  assert ('train.py: error: lost contact with another process of this job: process 1 is '
          'gone') in job.output(0), job.tails()
  job.wait()

  # 3. Damage the newest checkpoint; both processes fall back to the same older
  # step (moved aside once) and finish with what the uninterrupted run has.
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if s.isdigit())
  newest, older = steps[-1], steps[-2]
  data = glob.glob(os.path.join(workdir, 'checkpoints', str(newest), 'default',
                                'ocdbt.process_*', 'd', '*'))
  os.remove(max(data, key=os.path.getsize))
  job = mpj.launch(workdir, logs, processes=2, devices=2, overrides=QUICK, tag='fallback')
  _finished(job)
  for i in range(2):
    assert f'at step {older}' in job.output(i), job.tails()
  moved = [l for i in range(2) for l in job.output(i).splitlines()
           if 'Moved the damaged checkpoint' in l]
  assert len(moved) == 1
  assert len(os.listdir(os.path.join(workdir, 'checkpoints_corrupt'))) == 1
  # Same layout, same reductions: bit for bit.
  _assert_same_encoder(two, workdir, tol=0)
  np.testing.assert_array_equal(_metrics(workdir)['eval']['loss'],
                                _metrics(two)['eval']['loss'])
  assert not os.path.exists(os.path.join(workdir, 'preempted.json'))


def test_preemption_of_one_process_resumes_bit_for_bit(tmp_path, logs, one_process):
  workdir = str(tmp_path / 'run')
  job = mpj.launch(workdir, logs, processes=1, devices=4, overrides=QUICK, tag='sigterm')
  job.wait_for(lambda: 'Training steps' in job.output(0), what='training start')
  job.signal(0, signal.SIGTERM)
  assert job.wait() == [143], job.tails()
  out = job.output(0)
  n = int(out.split('preempted at step ')[1].split(',')[0])
  assert 'checkpoint saved' in out and 1 <= n < LAST
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[-1] == str(n)
  _finished(mpj.launch(workdir, logs, processes=1, devices=4, overrides=QUICK,
                       tag='sigterm-resume'))
  _assert_same_encoder(one_process, workdir, tol=0)
  a, b = _metrics(one_process), _metrics(workdir)
  assert a['eval'] == b['eval']
  # A validation due at the preempted step runs on resume: best/ is the same.
  assert os.listdir(os.path.join(workdir, 'best')) == os.listdir(
      os.path.join(one_process, 'best'))


def test_signal_watch_in_one_process():
  """The handler itself: Ctrl-C becomes a stop at the next boundary, then is restored."""
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionWatch(0) as watch:
    assert not watch.reached(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs the handler between bytecodes
    assert watch.reached(2)
  assert signal.getsignal(signal.SIGINT) is before
  assert preemption.Preempted(2, watch.signum).exit_status == 130


def _refused(job, timeout=120):
  rcs = job.wait(timeout)
  lines = [job.output(i).strip().splitlines()[-1] for i in range(len(rcs))]
  assert rcs == [2] * len(rcs), job.tails()
  for i in range(len(rcs)):
    assert 'Traceback' not in job.output(i), job.tails()
  return lines


def test_refusals_are_one_line_on_every_process(tmp_path, logs):
  # A process whose config differs from process 0's.
  job = mpj.launch(str(tmp_path / 'a'), logs, processes=2, devices=2, tag='cfg',
                   per_process=[[], ['--config.seed=7']])
  for line in _refused(job):
    assert line.startswith('train.py: error:') and 'config.seed=7' in line, line
  # A global batch the 4 devices cannot split: nothing is written.
  job = mpj.launch(str(tmp_path / 'b'), logs, processes=2, devices=2, tag='batch',
                   overrides={'batch_size': 6})
  for line in _refused(job):
    assert 'config.batch_size=6 is not divisible by the 4 devices of the 2 processes' in line
  assert not os.path.exists(tmp_path / 'b')
  # A workdir locked by another live train.py (process 0 holds the job's lock).
  locked = tmp_path / 'c'
  locked.mkdir()
  (locked / '.lock').write_text(json.dumps({'pid': os.getpid(), 'host': os.uname().nodename,
                                            'started': time.time(), 'token': 'x'}))
  job = mpj.launch(str(locked), logs, processes=2, devices=2, tag='lock')
  lines = _refused(job)
  assert 'another train.py' in lines[0] and 'process 0 refused the run' in lines[1]


def test_bad_distributed_flags(tmp_path):
  def run(*flags, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_'))}
    out = subprocess.run(mpj.train_args(str(tmp_path / 'w')) + list(flags), cwd=mpj.REPO,
                         env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 2, out.stderr[-3000:]
    assert 'Traceback' not in out.stderr
    return out.stderr.strip().splitlines()[-1]

  assert 'out of range' in run('--distributed', '--coordinator_address=localhost:1',
                               '--num_processes=2', '--process_id=2')
  assert 'add --distributed' in run('--num_processes=2')
  assert 'no cluster environment' in run('--distributed')
  # Nobody listens on the port: one line after the timeout, not a hang.
  t0 = time.time()
  line = run('--distributed', f'--coordinator_address=localhost:{mpj.free_port()}',
             '--num_processes=2', '--process_id=1', '--initialization_timeout=5')
  assert 'could not reach process 0 at localhost:' in line
  # Process 0 alone: the missing process is named.
  line = run('--distributed', f'--coordinator_address=localhost:{mpj.free_port()}',
             '--num_processes=2', '--process_id=0', '--initialization_timeout=5')
  assert 'did not reach the coordinator' in line and 'missing --process_id 1' in line
  assert time.time() - t0 < 90
  assert not os.path.exists(tmp_path / 'w')


def test_processes_that_disagree_on_the_job_size(tmp_path, logs):
  port = mpj.free_port()
  job = mpj.launch(str(tmp_path / 'w'), logs, processes=2, devices=2, tag='size', port=port,
                   per_process=[[], ['--num_processes=3', '--process_id=2']])
  for line in _refused(job):
    assert 'process 2 was started with --num_processes=3, process 0 with 2' in line, line

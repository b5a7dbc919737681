"""Workdir safety: damaged checkpoints, the lock, resume checks, exports, refusals.

One tiny run (checkpoints at steps 2 and 4) is trained once per module; each
test damages or re-runs a copy of it.
"""

import glob
import hashlib
import json
import logging as py_logging
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from interestyle_jax.training import checkpointing, loop
from interestyle_jax.training import config as config_lib
from interestyle_jax.training import setup as setup_lib
from interestyle_jax.training import state as state_lib
from interestyle_jax.training import workdir as workdir_lib
# fast_compiles is an autouse fixture: importing it makes it apply here too.
from tests.test_training_loop import REPO, TINY, encoder_params, fast_compiles, tiny_config  # noqa: F401  pylint: disable=unused-import


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished tiny run: checkpoints/2, checkpoints/4, best/, inference/."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  loop.train_and_evaluate(tiny_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  return workdir


@pytest.fixture(scope='module')
def template():
  """A TrainState of the tiny config's structure (the restore template)."""
  c = tiny_config()
  s = setup_lib.build(c)
  return state_lib.create_train_state(s.encoder_variables, state_lib.make_optimizer(c.optim))


def copy_run(trained, tmp_path):
  dst = str(tmp_path / 'run')
  shutil.copytree(trained, dst)
  return dst


def orbax_restore(workdir, step, template):
  """The state of ``checkpoints/<step>`` read by Orbax alone (no checks)."""
  mgr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  state = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
  mgr.close()
  return state


def assert_trees_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, 'default', 'ocdbt.process_*', 'd', '*'))
  return max(files, key=os.path.getsize)


def truncate_metadata(step_dir):
  path = os.path.join(step_dir, 'default', '_METADATA')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])


def flip_bytes(step_dir):
  # Orbax reads this back without complaint: only the digest notices.
  path = largest_array_file(step_dir)
  data = bytearray(open(path, 'rb').read())
  for i in range(len(data) // 2, len(data) // 2 + 16):
    data[i] ^= 0xFF
  open(path, 'wb').write(bytes(data))


def remove_file(step_dir):
  os.remove(largest_array_file(step_dir))


@pytest.fixture
def warnings_log(caplog):
  caplog.set_level(py_logging.WARNING, logger='absl')
  return caplog


# ---------------------------------------------------------------------------
# 1. Damaged checkpoints.


# A report of an abandoned Orbax read leaking out of the restore fails the test.
QUIET = pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')


@QUIET
@pytest.mark.parametrize('damage,reason', [(truncate_metadata, 'changed (first: default/_METADATA'),
                                           (flip_bytes, 'changed (first: default/ocdbt'),
                                           (remove_file, 'missing (first: default/ocdbt')],
                         ids=lambda f: getattr(f, '__name__', ''))
def test_damaged_latest_checkpoint_falls_back_to_older(trained, template, tmp_path, damage,
                                                       reason, warnings_log):
  run = copy_run(trained, tmp_path)
  damage(os.path.join(run, 'checkpoints', '4'))
  ckpt = checkpointing.Checkpointer(run, 3)
  state = ckpt.restore_latest(template)
  assert int(state.step) == 2
  assert_trees_equal(state, orbax_restore(trained, 2, template))
  # Step 4 moved aside (kept), outside Orbax's directory, which saw the move.
  assert os.listdir(os.path.join(run, 'checkpoints')) == ['2']
  assert ckpt.latest_step() == 2
  moved = os.listdir(os.path.join(run, checkpointing.CORRUPT_DIR))
  assert len(moved) == 1 and moved[0].startswith('4-'), moved
  assert os.path.isdir(os.path.join(run, checkpointing.CORRUPT_DIR, moved[0], 'default'))
  text = warnings_log.text
  assert os.path.join(run, 'checkpoints', '4') in text and 'does not restore' in text
  assert os.path.join(run, checkpointing.CORRUPT_DIR, moved[0]) in text
  # Found by the file list before Orbax read anything.
  assert reason in text and f'listed in {checkpointing.DIGEST_FILE}' in text, text
  ckpt.close()


@QUIET
def test_damage_without_file_list_falls_back_through_orbax_quietly(trained, template,
                                                                   tmp_path, warnings_log):
  # Digests written before the file list existed: Orbax's own read fails, and
  # the hundreds of reports of its abandoned reads are dropped, not printed.
  run = copy_run(trained, tmp_path)
  step_dir = os.path.join(run, 'checkpoints', '4')
  path = os.path.join(step_dir, checkpointing.DIGEST_FILE)
  record = json.load(open(path))
  del record['files']
  json.dump(record, open(path, 'w'))
  remove_file(step_dir)
  ckpt = checkpointing.Checkpointer(run, 3)
  state = ckpt.restore_latest(template)
  assert int(state.step) == 2
  assert 'does not restore: Exception: Encountered error while reading' in warnings_log.text
  assert 'listed in' not in warnings_log.text
  ckpt.close()


def test_file_digest_lists_the_state_files(trained):
  step_dir = os.path.join(trained, 'checkpoints', '2')
  record = json.load(open(os.path.join(step_dir, checkpointing.DIGEST_FILE)))
  on_disk = {os.path.relpath(os.path.join(d, n), step_dir)
             for d, _, names in os.walk(os.path.join(step_dir, 'default')) for n in names}
  assert set(record['files']) == on_disk and '_CHECKPOINT_METADATA' not in record['files']
  some = sorted(on_disk)[0]
  meta = record['files'][some]
  data = open(os.path.join(step_dir, some), 'rb').read()
  assert meta['size'] == len(data)
  assert meta['sha256'] == hashlib.sha256(data).hexdigest()
  checkpointing.check_files(step_dir, record['files'])  # intact: no error


def test_no_restorable_checkpoint_is_one_line_error(trained, template, tmp_path):
  run = copy_run(trained, tmp_path)
  truncate_metadata(os.path.join(run, 'checkpoints', '4'))
  remove_file(os.path.join(run, 'checkpoints', '2'))
  ckpt = checkpointing.Checkpointer(run, 3)
  with pytest.raises(checkpointing.CheckpointError) as err:
    ckpt.restore_latest(template)
  msg = str(err.value)
  assert '\n' not in msg and isinstance(err.value, config_lib.ConfigError)
  for step in ('2', '4'):
    assert os.path.join(run, 'checkpoints', step) in msg
  assert '1 file(s) changed (first: default/_METADATA' in msg and '1 file(s) missing' in msg
  assert 'nothing was moved' in msg and 'backup' in msg
  # Nothing moved: the next attempt sees the same checkpoints.
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['2', '4']
  assert not os.path.exists(os.path.join(run, checkpointing.CORRUPT_DIR))
  ckpt.close()


def test_checkpoint_without_digest_still_restores(trained, template, tmp_path):
  # Checkpoints written before digests existed restore with Orbax's checks only.
  run = copy_run(trained, tmp_path)
  os.remove(os.path.join(run, 'checkpoints', '4', checkpointing.DIGEST_FILE))
  ckpt = checkpointing.Checkpointer(run, 3)
  assert int(ckpt.restore_latest(template).step) == 4
  ckpt.close()


def test_damaged_best_checkpoint_is_moved_aside(trained, template, tmp_path, warnings_log):
  # A truncated metrics file used to stop Orbax from even opening best/.
  run = copy_run(trained, tmp_path)
  (step,) = os.listdir(os.path.join(run, 'best'))
  path = os.path.join(run, 'best', step, 'metrics', 'metrics')
  open(path, 'w').write(open(path).read()[:5])
  ckpt = checkpointing.Checkpointer(run, 3)
  assert ckpt.best_step() is None and ckpt.restore_best(template) is None
  assert os.listdir(os.path.join(run, checkpointing.CORRUPT_DIR))[0].startswith(f'best-{step}-')
  assert 'damaged metrics file' in warnings_log.text
  ckpt.close()
  # Damaged arrays: restore_best gives None and moves the step aside.
  run = copy_run(trained, tmp_path / 'flip')
  flip_bytes(os.path.join(run, 'best', step))
  ckpt = checkpointing.Checkpointer(run, 3)
  assert ckpt.best_step() == int(step) and ckpt.restore_best(template) is None
  assert ckpt.best_step() is None and os.listdir(os.path.join(run, 'best')) == []
  assert os.listdir(os.path.join(run, checkpointing.CORRUPT_DIR))[0].startswith(f'best-{step}-')
  ckpt.close()


def test_rerun_after_damaged_latest_resumes_from_older(trained, tmp_path):
  run = copy_run(trained, tmp_path)
  truncate_metadata(os.path.join(run, 'checkpoints', '4'))
  report = loop.train_and_evaluate(tiny_config(), run)
  assert report['step'] == 4
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['2', '4']
  assert [n.split('-')[0] for n in os.listdir(os.path.join(run, checkpointing.CORRUPT_DIR))
          ] == ['4']
  # Steps 3-4 retrained from step 2 reproduce the uninterrupted run.
  _, a = encoder_params(trained)
  _, b = encoder_params(run)
  assert_trees_equal(a, b)
  assert not os.path.exists(os.path.join(run, workdir_lib.LOCK_FILE))


# ---------------------------------------------------------------------------
# 2. The workdir lock.


def write_lock(workdir, pid, host=None, started=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), 'w') as f:
    json.dump({'pid': pid, 'host': host or socket.gethostname(),
               'started': time.time() if started is None else started}, f)


def test_lock_held_by_a_live_process_refuses_a_second_run(tmp_path):
  run = str(tmp_path / 'run')
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    write_lock(run, sleeper.pid)
    with pytest.raises(workdir_lib.WorkdirError) as err:
      loop.train_and_evaluate(tiny_config(), run)
    msg = str(err.value)
    assert f'PID {sleeper.pid}' in msg and socket.gethostname() in msg
    assert os.path.join(run, '.lock') in msg and '\n' not in msg
    assert not os.path.exists(os.path.join(run, 'config.json'))  # refused before writing
    assert json.load(open(os.path.join(run, '.lock')))['pid'] == sleeper.pid  # untouched
  finally:
    sleeper.kill()
    sleeper.wait()


def test_lock_of_another_host_is_refused(tmp_path):
  run = str(tmp_path / 'run')
  write_lock(run, 12345, host='some-other-host')
  with pytest.raises(workdir_lib.WorkdirError, match='PID 12345 on host some-other-host'):
    with workdir_lib.lock(run):
      pass


def test_lock_is_exclusive_taken_over_when_stale_and_released(tmp_path, warnings_log):
  run = str(tmp_path / 'run')
  os.makedirs(run)
  lock_path = os.path.join(run, workdir_lib.LOCK_FILE)
  with workdir_lib.lock(run) as path:
    assert path == lock_path
    held = json.load(open(lock_path))
    assert held['pid'] == os.getpid() and held['host'] == socket.gethostname()
    with pytest.raises(workdir_lib.WorkdirError, match=f'PID {os.getpid()}'):
      with workdir_lib.lock(run):
        pass
    assert json.load(open(lock_path)) == held  # the refused attempt left it alone
  assert not os.path.exists(lock_path)
  # A lock whose process has exited is taken over, with a warning.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  write_lock(run, dead.pid)
  with workdir_lib.lock(run):
    assert json.load(open(lock_path))['pid'] == os.getpid()
  assert f'stale lock {lock_path} of PID {dead.pid}' in warnings_log.text
  assert not os.path.exists(lock_path)
  # Released on an exception too.
  with pytest.raises(RuntimeError):
    with workdir_lib.lock(run):
      raise RuntimeError('boom')
  assert not os.path.exists(lock_path)
  assert os.listdir(run) == []  # no temporary files left


# ---------------------------------------------------------------------------
# 3. Resume config checks.


@pytest.mark.parametrize('field,old,new', [('synthetic.seed', 0, 1),
                                           ('model.encoder.width', 4, 8),
                                           ('optim.lr', 2e-3, 4e-3)])
def test_resume_with_a_changed_model_or_world_is_refused(trained, tmp_path, field, old, new):
  run = copy_run(trained, tmp_path)
  before = open(os.path.join(run, 'config.json')).read()
  with pytest.raises(workdir_lib.WorkdirError) as err:
    loop.train_and_evaluate(tiny_config(**{field: new}), run)
  msg = str(err.value)
  assert f'config.{field} was {json.dumps(old)}, now {json.dumps(new)}' in msg, msg
  assert '--workdir' in msg and f'--config.{field}={old}' in msg and '\n' not in msg
  assert open(os.path.join(run, 'config.json')).read() == before
  assert not os.path.exists(os.path.join(run, workdir_lib.LOCK_FILE))


def test_config_may_change_when_nothing_was_saved(tmp_path):
  run = str(tmp_path / 'run')
  os.makedirs(run)
  workdir_lib.write_config(tiny_config(), run)  # a run that died before its first checkpoint
  workdir_lib.check_resume(tiny_config(**{'synthetic.seed': 1}), run)
  os.makedirs(os.path.join(run, 'checkpoints', '2'))
  with pytest.raises(workdir_lib.WorkdirError, match=r'holds a run \(checkpoints\)'):
    workdir_lib.check_resume(tiny_config(**{'synthetic.seed': 1}), run)


def test_resume_with_more_steps_is_accepted_and_logged(trained, tmp_path, caplog):
  caplog.set_level(py_logging.INFO, logger='absl')
  run = copy_run(trained, tmp_path)
  report = loop.train_and_evaluate(tiny_config(num_train_steps=6, log_every_steps=3), run)
  assert report['step'] == 6
  assert 'config.num_train_steps changed: 4 -> 6' in caplog.text
  assert 'config.log_every_steps changed: 2 -> 3' in caplog.text
  saved = json.load(open(os.path.join(run, 'config.json')))
  assert saved['num_train_steps'] == 6  # config.json describes the run now
  assert '6' in os.listdir(os.path.join(run, 'checkpoints'))


# ---------------------------------------------------------------------------
# 4-5. The inference export.


def test_deleted_inference_of_finished_run_is_re_exported(trained, template, tmp_path):
  run = copy_run(trained, tmp_path)
  shutil.rmtree(os.path.join(run, 'inference'))
  mtime = os.path.getmtime(os.path.join(run, 'checkpoints', '4'))
  report = loop.train_and_evaluate(tiny_config(), run)
  assert report['step'] == 4
  meta, enc = encoder_params(run)
  assert (meta['export'], meta['step']) == ('latest', 4)
  assert_trees_equal(enc, orbax_restore(trained, 4, template).encoder_variables)
  # Step 4 was not saved again.
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['2', '4']
  assert os.path.getmtime(os.path.join(run, 'checkpoints', '4')) == mtime


def test_export_best_holds_the_best_state(template, tmp_path, monkeypatch):
  # Validation losses that get worse each evaluation (steps 0, 2, 4), so the
  # best state (step 2) differs from the latest (step 4).
  calls = []
  evaluate = loop.evaluate

  def worsening(*args, **kwargs):
    result = evaluate(*args, **kwargs)
    calls.append(None)
    return dict(result, loss=result['loss'] + 10.0 * len(calls))

  monkeypatch.setattr(loop, 'evaluate', worsening)
  run = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(export='best'), run)
  meta, enc = encoder_params(run)
  assert (meta['export'], meta['step']) == ('best', 2)
  ckpt = checkpointing.Checkpointer(run, 3)
  step, best = ckpt.restore_best(template)
  assert step == 2
  assert_trees_equal(enc, best.encoder_variables)
  latest = orbax_restore(run, 4, template).encoder_variables
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(enc),
                                                      jax.tree.leaves(latest)))
  ckpt.close()
  assert checkpointing.exported(run) == ('best', 2)


# ---------------------------------------------------------------------------
# 6-7. Refusals before anything runs.


@pytest.mark.parametrize('overrides,match', [
    ({'optim.lr': 0.0}, r'config\.optim\.lr=0\.0 must be > 0'),
    ({'optim.lr': float('nan')}, r'config\.optim\.lr=nan must be a finite number'),
    ({'filter.sigmas': (16.0, float('inf'))}, r'config\.filter\.sigmas=.*must be a finite'),
    ({'loss.ind': float('nan')}, r'config\.loss\.ind=nan must be a finite number'),
    ({'synthetic.num_heldout': 0}, r'config\.synthetic\.num_heldout=0 must be positive'),
    ({'num_grid_images': 0}, r'config\.num_grid_images=0 must be positive'),
    ({'optim.lookahead_k': 0}, r'config\.optim\.lookahead_k=0 must be >= 1'),
    ({'optim.lookahead_alpha': 0.0}, r'config\.optim\.lookahead_alpha=0\.0 must be in \(0, 1\]'),
    ({'optim.lookahead_alpha': 1.5}, r'config\.optim\.lookahead_alpha=1\.5 must be in'),
    ({'export': 'final'}, r"config\.export='final' must be one of \('latest', 'best'\)"),
])
def test_validate_refuses(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config(**overrides), 1)


def test_validate_accepts_the_edges():
  config_lib.validate(tiny_config(**{'optim.lookahead_alpha': 1.0, 'optim.lookahead_k': 1}), 1)


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / 'run'
  path.write_text('not a directory')
  with pytest.raises(workdir_lib.WorkdirError, match=r'is a file, not a directory'):
    loop.train_and_evaluate(tiny_config(), str(path))
  with pytest.raises(workdir_lib.WorkdirError, match=r'is under .*run, which is a file'):
    loop.train_and_evaluate(tiny_config(), str(path / 'sub'))


def _train_py(workdir, *extra):
  args = [sys.executable, os.path.join(REPO, 'train.py'), '--config',
          os.path.join(REPO, 'configs', 'synthetic.py'), '--workdir', workdir]
  args += [f'--config.{k}={v}' for k, v in TINY.items()]
  return subprocess.run(args + list(extra), cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_train_py_prints_one_line_errors(tmp_path):
  out = _train_py(str(tmp_path / 'bad'), '--config.optim.lr=0')
  assert out.returncode == 2, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('train.py: error: invalid config: config.optim.lr=0') and 'must be' in last
  assert not os.path.exists(tmp_path / 'bad')  # refused before the workdir was made
  (tmp_path / 'file').write_text('')
  out = _train_py(str(tmp_path / 'file'))
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith('train.py: error: --workdir ')

"""Model directories: atomic writes, and single-writer use in a multi-process job."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from interestyle_jax import artifacts

_WORKER = r'''
import sys, time
import jax
jax.config.update('jax_platforms', 'cpu')
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=rank)
jax.devices()  # every process joins the (collective) backend start, as in train.py
import numpy as np
from interestyle_jax import artifacts
if rank == 0:  # as train.py's inference export: the other process does not take part
  artifacts.save_artifact(out, {'w': np.arange(6.0).reshape(2, 3)}, {'kind': 'test'})
  meta, tree = artifacts.load_artifact(out, 'test')
  print('RESULT', float(tree['w'].sum()), flush=True)
else:
  time.sleep(1)
  print('RESULT idle', flush=True)
'''


def test_load_warns_on_non_finite_arrays(tmp_path, caplog):
  w = np.ones((3, 4), np.float32)
  w[0, 1], w[2, 3] = np.nan, np.inf
  tree = {'enc': {'w': w, 'ok': np.zeros(5, np.float32)}, 'step': np.arange(3)}
  path = artifacts.save_artifact(str(tmp_path / 'm'), tree, {'kind': 'test'})
  with caplog.at_level('WARNING', logger='interestyle_jax.convert'):
    artifacts.load_artifact(path, 'test')
  assert path in caplog.text and "['enc']['w'] (1 NaN, 1 inf of 12)" in caplog.text
  assert "['ok']" not in caplog.text  # only arrays holding NaN / inf are named
  caplog.clear()
  artifacts.save_artifact(path, {'enc': {'w': np.ones(3)}}, {'kind': 'test'}, overwrite=True)
  with caplog.at_level('WARNING', logger='interestyle_jax.convert'):
    artifacts.load_artifact(path, 'test')
  assert not caplog.text


def test_save_and_load_round_trip(tmp_path):
  tree = {'a': {'b': np.arange(4, dtype=np.float32)}, 'c': np.ones((2, 2), np.int32)}
  path = artifacts.save_artifact(str(tmp_path / 'm'), tree, {'kind': 'test', 'x': [1, 2]})
  meta, back = artifacts.load_artifact(path, expected_kind=('other', 'test'))
  assert meta['x'] == [1, 2] and meta['format_version'] == artifacts.FORMAT_VERSION
  np.testing.assert_array_equal(np.asarray(back['a']['b']), tree['a']['b'])
  assert np.asarray(back['c']).dtype == np.int32
  with pytest.raises(FileExistsError, match='overwrite'):
    artifacts.save_artifact(path, tree, {'kind': 'test'})


def test_failed_write_leaves_nothing(tmp_path):
  with pytest.raises(TypeError):
    artifacts.save_artifact(str(tmp_path / 'm'), {'a': np.zeros(2)},
                            {'kind': 'test', 'bad': object()})  # not JSON-serialisable
  assert os.listdir(tmp_path) == []


def test_only_process_zero_writes_in_a_two_process_job(tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = str(s.getsockname()[1])
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = str(tmp_path / 'model')
  procs = [subprocess.Popen([sys.executable, '-c', _WORKER, str(i), port, out], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail('a process hung: the write waited for the process that does not write')
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert 'RESULT 15.0' in logs[0]
  assert json.load(open(os.path.join(out, artifacts.META_FILE)))['kind'] == 'test'

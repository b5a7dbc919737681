"""benchmarks/trace_summary.py: interval union and grouping on a hand-made trace."""

import gzip
import importlib.util
import json
import os

import pytest


def _load_trace_summary():
  # By file path: putting benchmarks/ on sys.path would let benchmarks/mtcnn.py shadow the
  # installed mtcnn package for every later test (test_mtcnn looks it up by name).
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                      'trace_summary.py')
  spec = importlib.util.spec_from_file_location('benchmarks_trace_summary', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


trace_summary = _load_trace_summary()

HLO = """
ENTRY %main {
  %fusion.1 = f32[4]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(f)/while/body/closed_call/jvp(Generator)/convs_3/mul"}
  %fusion.2 = f32[4]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(f)/jvp(Generator)/convs_12/mul"}
  %wrapped_reduce-window.7 = f32[2]{0} fusion(%p), kind=kLoop, metadata={stack_frame_id=3}
}
"""


def _write(tmp_path):
  ev = lambda name, ts, dur, tid=1: {'ph': 'X', 'name': name, 'ts': ts, 'dur': dur, 'tid': tid}
  events = [ev('ThunkExecutor::Execute (wait for completion)', 0, 1000, 0),
            ev('fusion.1', 100, 200), ev('fusion.2', 250, 150, 2),  # overlap: union 100-400
            ev('wrapped_reduce-window.7', 600, 100), ev('$python frame', 0, 900),
            ev('fusion.1', 2000, 50)]  # after the execution: not counted
  d = tmp_path / 'trace' / 'plugins' / 'profile' / 'run'
  d.mkdir(parents=True)
  with gzip.open(d / 'host.trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)
  return str(tmp_path / 'trace')


def test_union_and_groups(tmp_path):
  events = trace_summary.load_events(_write(tmp_path))
  wall, covered, groups = trace_summary.summarize(events, trace_summary.op_names(HLO))
  assert wall == 1.0 and abs(covered - 0.4) < 1e-9  # (400 - 100) + 100 µs
  assert dict(groups) == {'jvp(Generator)/convs_N/mul': 0.35,
                          '(compiler-made wrapped_reduce-window)': 0.1}


def test_missing_trace_names_the_directory(tmp_path):
  with pytest.raises(SystemExit) as e:
    trace_summary.load_events(str(tmp_path))
  assert str(tmp_path) in str(e.value) and 'jax.profiler.trace' in str(e.value)

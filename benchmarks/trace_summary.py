"""Where a compiled program's time goes, from a ``jax.profiler`` trace.

    python benchmarks/trace_summary.py DIR [--hlo FILE] [--top 25]

``DIR`` holds a trace written by ``jax.profiler.trace(..., create_perfetto_trace=True)``
(``benchmarks/train_step.py --profile DIR`` writes one per T, with the
compiled program's HLO next to it as ``DIR/T<t>.hlo``). Prints:

* the wall time of the program's execution and how much of it the traced XLA
  operations (fusions, reductions, copies, matrix products run as
  thunks) cover. XLA:CPU's Eigen convolutions run on the intra-op pool without
  trace events of their own, so on CPU the uncovered rest is mostly
  convolution time;
* with the HLO, the traced time summed by JAX op name (``jvp(Generator)/…``:
  forward, ``transpose(jvp(…))``: backward; layer indices folded), the
  largest first. Times are summed over threads, so they can exceed wall time.
"""

import argparse
import collections
import glob
import gzip
import json
import re
from typing import Dict, List, Optional, Tuple


def load_events(trace_dir: str) -> List[dict]:
  """The complete ('X') events of the newest trace under ``trace_dir``."""
  files = sorted(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True))
  if not files:
    raise SystemExit(f'trace_summary: no *.trace.json.gz under {trace_dir}: write one with '
                     'jax.profiler.trace(DIR, create_perfetto_trace=True)')
  with gzip.open(files[-1]) as f:
    events = json.load(f)['traceEvents']
  return [e for e in events if e.get('ph') == 'X' and 'dur' in e]


def op_names(hlo_text: str) -> Dict[str, str]:
  """HLO instruction name -> JAX op name (layer indices folded to N)."""
  names = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = ', line)
    if not m:
      continue
    op = re.search(r'op_name="([^"]*)"', line)
    # XLA's own rewrites (tree reductions, copies, collectives) carry no op name.
    kind = re.sub(r'[.]\d+$', '', m.group(1))
    name = op.group(1) if op else f'(compiler-made {kind})'
    name = re.sub(r'^jit\([^)]*\)/', '', name).replace('while/body/closed_call/', '')
    names[m.group(1)] = re.sub(r'_\d+', '_N', name)
  return names


def summarize(events: List[dict], names: Optional[Dict[str, str]] = None,
              top: int = 25) -> Tuple[float, float, List[Tuple[str, float]]]:
  """Execution wall time, time covered by traced ops, and the top op names.

  Args:
    events: complete trace events.
    names: instruction -> op name (None: group by instruction kind).
    top: how many groups to return.

  Returns:
    ``(wall_ms, covered_ms, [(group, thread_ms), ...])``.
  """
  runs = [e for e in events if e['name'].startswith('ThunkExecutor::Execute (wait')]
  if not runs:
    runs = [e for e in events if e['name'].startswith('ThunkExecutor::Execute')]
  if not runs:
    raise SystemExit('trace_summary: the trace has no XLA:CPU execution (ThunkExecutor) '
                     'events; it reads traces of programs run on CPU')
  t0 = min(e['ts'] for e in runs)
  t1 = max(e['ts'] + e['dur'] for e in runs)
  ops = [e for e in events if not e['name'].startswith(('$', 'ThunkExecutor'))
         and t0 <= e['ts'] <= t1]
  covered, end = 0.0, float('-inf')  # length of the union of the ops' intervals
  for a, b in sorted((e['ts'], e['ts'] + e['dur']) for e in ops):
    covered += max(0.0, b - max(a, end))
    end = max(end, b)
  groups = collections.Counter()
  for e in ops:
    key = names.get(e['name'], e['name']) if names else re.sub(r'\.\d+$', '', e['name'])
    groups[key] += e['dur']
  return (t1 - t0) / 1e3, covered / 1e3, [(k, v / 1e3) for k, v in groups.most_common(top)]


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('trace_dir')
  p.add_argument('--hlo', help='compiled HLO text (default: TRACE_DIR.hlo if it exists)')
  p.add_argument('--top', type=int, default=25)
  args = p.parse_args()
  hlo = args.hlo or args.trace_dir.rstrip('/') + '.hlo'
  names = None
  try:
    with open(hlo) as f:
      names = op_names(f.read())
  except OSError:
    if args.hlo:
      raise SystemExit(f'trace_summary: cannot read --hlo {args.hlo}')
  wall, covered, groups = summarize(load_events(args.trace_dir), names, args.top)
  print(f'execution wall {wall:.0f} ms; traced XLA ops cover {covered:.0f} ms '
        f'({covered / wall:.0%}); the rest is mostly convolutions on CPU')
  for k, v in groups:
    print(f'{v:9.1f} ms  {k}')


if __name__ == '__main__':
  main()

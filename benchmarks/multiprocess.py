"""The synthetic train step on 1 process × 4 devices against 2 processes × 2 devices.

    python benchmarks/multiprocess.py            # configs/synthetic.py, T = 3
    python benchmarks/multiprocess.py --iters 3 --steps 20 -- --config.batch_size=16

Each layout runs ``benchmarks/train_step.py --single=T`` (the data-parallel
train step of train.py, jit + shard_map, Ranger) in fresh processes on this
machine's CPU with ``XLA_FLAGS=--xla_force_host_platform_device_count``; the
two-process layout joins a real ``jax.distributed`` job with gloo collectives,
started as the README's "N processes on one machine". Printed per layout: the
step time, the time of the cross-device gradient average alone (``lax.pmean``
over the encoder's parameter tree), and the overhead of going across
processes. Informational: the figures depend on the machine and its load.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_layout(processes: int, devices: int, t: int, extra) -> dict:
  """Runs train_step.py --single=t as ``processes`` × ``devices``; process 0's result."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  base = [sys.executable, os.path.join(HERE, 'train_step.py'), f'--single={t}'] + extra
  port = _port()
  procs = []
  for i in range(processes):
    cmd = list(base)
    if processes > 1:
      cmd += [f'--coordinator_address=localhost:{port}', f'--num_processes={processes}',
              f'--process_id={i}']
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate() for p in procs]
  for p, (out, err) in zip(procs, outs):
    if p.returncode:
      sys.exit(f'{processes} x {devices} failed (status {p.returncode}):\n{err[-3000:]}')
  lines = [l for l in outs[0][0].splitlines() if l.startswith('RESULT ')]
  return json.loads(lines[-1][len('RESULT '):])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--iters', type=int, default=3, help='refinement iterations T')
  parser.add_argument('--batch', type=int, default=8, help='global batch')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per repeat')
  parser.add_argument('--repeats', type=int, default=3, help='timing repeats (median)')
  parser.add_argument('--config', default=os.path.join(os.path.dirname(HERE), 'configs',
                                                       'synthetic.py'))
  args, rest = parser.parse_known_args()
  extra = [f'--config={args.config}', f'--batch={args.batch}', f'--steps={args.steps}',
           f'--repeats={args.repeats}'] + [a for a in rest if a != '--']
  rows = [('1 process x 4 devices', run_layout(1, 4, args.iters, extra)),
          ('2 processes x 2 devices', run_layout(2, 2, args.iters, extra))]
  print(f"{'layout':<24} {'step_s':>8} {'images/s':>9} {'reduce_s':>9} {'compile_s':>9}")
  for name, r in rows:
    print(f"{name:<24} {r['step_s']:>8} {r['images_per_s']:>9} {r['reduce_s']:>9} "
          f"{r['compile_s']:>9}")
  (_, one), (_, two) = rows
  print(f"step: 2x2 / 1x4 = {two['step_s'] / one['step_s']:.2f} "
        f"({(two['step_s'] - one['step_s']) * 1e3:+.0f} ms); the gradient average alone: "
        f"{two['reduce_s'] * 1e3:.1f} ms across processes (gloo), {one['reduce_s'] * 1e3:.1f} "
        f"ms within one process ({(two['reduce_s'] - one['reduce_s']) * 1e3:+.0f} ms)")
  print(json.dumps({'1x4': one, '2x2': two}))


if __name__ == '__main__':
  main()

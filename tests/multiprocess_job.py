"""Starts train.py as a real multi-process JAX job on this CPU (tests' helper).

Each process is ``python train.py --distributed --coordinator_address
localhost:PORT --num_processes N --process_id I`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=D``: the recipe of the
README's "N processes on one machine". Output goes to one log file per
process, which the tests poll to time signals.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/synthetic.py shrunk to seconds: a 16 px world, T = 2, 2 images per
# device on 4 devices (BatchNorm sees 2 samples), one held-out family.
TINY = {
    'num_train_steps': 12, 'batch_size': 8, 'eval_batch_size': 8, 'log_every_steps': 2,
    'eval_every_steps': 4, 'checkpoint_every_steps': 4, 'image_every_steps': 12,
    'num_grid_images': 2, 'model.encoder_size': 16, 'model.n_iters': 2,
    'model.encoder.width': 4, 'filter.sigmas': '(16.0,0.0)', 'synthetic.resolution': 16,
    'synthetic.style_dim': 16, 'synthetic.width': 8, 'synthetic.n_mlp': 1,
    'synthetic.num_heldout': 8, 'data.image_size': 16, 'synthetic.test_families': '("skin",)',
    # The main job's 2e-3 amplifies the layouts' float32 rounding differences to
    # 2.5e-5 relative in 12 steps (a BatchNorm variance); at 1e-3 they stay
    # within 7e-6, under the 1e-5 the layout test holds them to.
    'optim.lr': 1e-3,
}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def train_args(workdir: str, overrides: Optional[Dict[str, object]] = None) -> List[str]:
  args = [sys.executable, os.path.join(REPO, 'train.py'), '--config',
          os.path.join(REPO, 'configs', 'synthetic.py'), '--workdir', workdir]
  for key, value in {**TINY, **(overrides or {})}.items():
    args.append(f'--config.{key}={value}')
  return args


class Job:
  """The processes of one launch; ``wait()`` returns their exit statuses."""

  def __init__(self, procs: Sequence[subprocess.Popen], logs: Sequence[str]):
    self.procs, self.logs = list(procs), list(logs)

  def output(self, i: int) -> str:
    with open(self.logs[i], errors='replace') as f:
      return f.read()

  def wait_for(self, predicate, timeout: float = 300, what: str = '') -> None:
    """Polls ``predicate()`` every 20 ms; fails when a process ends or time runs out."""
    end = time.time() + timeout
    while not predicate():
      if time.time() > end or any(p.poll() is not None for p in self.procs):
        self.kill()
        raise AssertionError(f'never saw {what}:\n' + self.tails())
      time.sleep(0.02)

  def signal(self, i: int, signum: int) -> None:
    self.procs[i].send_signal(signum)

  def wait(self, timeout: float = 400) -> List[int]:
    end = time.time() + timeout
    for p in self.procs:
      try:
        p.wait(max(1.0, end - time.time()))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f'job still running after {timeout} s:\n' + self.tails())
    return [p.returncode for p in self.procs]

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()

  def tails(self, n: int = 3000) -> str:
    return '\n'.join(f'--- process {i} (rc={p.poll()}):\n{self.output(i)[-n:]}'
                     for i, p in enumerate(self.procs))


def launch(workdir: str, log_dir: str, processes: int, devices: int,
           overrides: Optional[Dict[str, object]] = None,
           per_process: Optional[Sequence[Sequence[str]]] = None,
           extra: Sequence[str] = (), port: Optional[int] = None, tag: str = 'run') -> Job:
  """Starts ``processes`` train.py processes of ``devices`` CPU devices each.

  Args:
    workdir: --workdir of the job.
    log_dir: where ``<tag>.<i>.log`` files go.
    processes: 1 runs plain train.py; more add --distributed and the flags.
    devices: CPU devices per process.
    overrides: --config.* values on top of TINY.
    per_process: extra arguments of each process (e.g. a different override).
    extra: extra arguments of every process.
    port: coordinator port (default: a free one).
    tag: log file prefix.

  Returns:
    The Job.
  """
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  # The cluster detection of jax.distributed would otherwise read these.
  for key in list(env):
    if key.startswith(('SLURM_', 'OMPI_', 'TPU_', 'CLOUD_TPU')):
      del env[key]
  port = port or free_port()
  procs, logs = [], []
  for i in range(processes):
    args = train_args(workdir, overrides) + list(extra)
    if processes > 1:
      args += ['--distributed', f'--coordinator_address=localhost:{port}',
               f'--num_processes={processes}', f'--process_id={i}']
    if per_process:
      args += list(per_process[i])
    log = os.path.join(log_dir, f'{tag}.{i}.log')
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=f,
                                    stderr=subprocess.STDOUT))
    logs.append(log)
  return Job(procs, logs)

"""Several processes as one training job: start-up, agreement, lost peers.

``train.py --distributed`` runs one process per host (or per GPU group). JAX
connects them through a coordinator (process 0) and then every process runs
the same program over the global device mesh. What this module adds:

- :func:`initialize`: ``jax.distributed.initialize`` with explicit or
  auto-detected (Cloud TPU, SLURM, Open MPI, Kubernetes) settings, CPU
  collectives (gloo) turned on, and every failure as one :class:`DistributedError`
  line instead of a traceback or a hang. With an explicit layout the processes
  first meet in :func:`_rendezvous`: JAX's coordination client *aborts* the
  process (a C++ fatal error and stack trace, after the whole timeout) when it
  cannot register (coordinator unreachable, a process id the coordinator does
  not expect, a process missing), so those cases are found before it runs.
- :func:`agree`: a refusal on any process (a config error, the workdir lock
  held by another run) stops every process with the same message. Without it
  the others would go on and wait forever in their first collective.
- :func:`check_same_config`: every process must run process 0's config.
- :func:`all_true`: a decision (e.g. "this checkpoint restored") taken by all
  processes together.
- :func:`peer_lost_message`: recognises the error a collective raises when
  another process of the job died.
- The lifeline: with an explicit layout every process keeps one TCP
  connection to process 0 from the rendezvous on. The kernel closes it the
  moment a process dies (kill -9, a crash, ``os._exit``), so the others stop
  at once with one line, whatever they are doing. Without it, a process that
  is outside a collective when its peer dies (compiling, evaluating, writing)
  learns of it only from JAX's heartbeats, and JAX's coordination client then
  *aborts* the process (SIGABRT, a C++ fatal error); its Python
  ``missed_heartbeat_callback`` cannot be used either (jaxlib 0.10 throws
  ``std::bad_cast`` converting the status). :func:`finish` says goodbye on
  the lifeline, so an orderly exit is not taken for a death.

With one process every function is a local no-op, so single-host runs take
no collective at all.
"""

import json
import os
import select
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from interestyle_jax.training.config import ConfigError

# Seconds a missing peer goes unnoticed outside collectives. JAX's default is
# 100 s; 60 s keeps "a peer died" under a minute and is still far above any
# pause of a healthy process (heartbeats come from a separate thread).
DEFAULT_HEARTBEAT_TIMEOUT = 60


class DistributedError(ConfigError):
  """The multi-process job cannot start or go on (one line, with the fix)."""


# The lifeline's connections to the other processes, as (socket, process id):
# process 0 holds one per process, the others one to process 0.
_lifelines: List[Tuple[socket.socket, int]] = []
_finishing = threading.Event()
_BYE = b'bye\n'


def _first_line(error: BaseException, limit: int = 300) -> str:
  lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[:limit] + '…'


def _check_flags(coordinator_address: Optional[str], num_processes: Optional[int],
                 process_id: Optional[int]) -> None:
  """Refuses inconsistent flags before anything connects."""
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f'--num_processes={num_processes} must be >= 1')
  if process_id is not None:
    if process_id < 0:
      raise DistributedError(f'--process_id={process_id} must be >= 0')
    if num_processes is not None and process_id >= num_processes:
      raise DistributedError(
          f'--process_id={process_id} is out of range for --num_processes={num_processes}: '
          f'give each process an id from 0 to {num_processes - 1}')
  if coordinator_address is not None:
    host, sep, port = coordinator_address.rpartition(':')
    if not sep or not host or not port.isdigit():
      raise DistributedError(
          f'--coordinator_address={coordinator_address!r} is not HOST:PORT (e.g. '
          '10.0.0.1:12345, the address of process 0 and a free port)')
  given = [n for n, v in (('--coordinator_address', coordinator_address),
                          ('--num_processes', num_processes),
                          ('--process_id', process_id)) if v is not None]
  if given and len(given) < 3 and num_processes != 1:
    missing = sorted({'--coordinator_address', '--num_processes', '--process_id'} -
                     set(given))
    logging.info('%s not given: taken from the cluster environment', ', '.join(missing))


def _reply(conn: socket.socket, text: str) -> None:
  try:
    conn.sendall(text.encode() + b'\n')
  except OSError:
    pass  # that process is gone; the others still get their answer
  conn.close()


def _read_line(conn: socket.socket, deadline: float) -> str:
  data = b''
  while not data.endswith(b'\n'):
    conn.settimeout(max(0.1, deadline - time.time()))
    chunk = conn.recv(4096)
    if not chunk:
      break
    data += chunk
  return data.decode(errors='replace').strip()


def _serve_rendezvous(port: int, num_processes: int, deadline: float) -> None:
  """Process 0: waits for every other process's hello on ``port``, checks the layout."""
  try:
    if socket.has_dualstack_ipv6():
      server = socket.create_server(('', port), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
      server = socket.create_server(('', port))
  except OSError as e:
    raise DistributedError(
        f'process 0 cannot listen on port {port} of --coordinator_address ({e.strerror}): '
        'choose a free port') from e
  # The lifeline listens on a port of the OS's choosing, told to the others in
  # the verdict, so that JAX's service can take the coordinator's port.
  lifeline = socket.create_server(('', 0), family=server.family,
                                  dualstack_ipv6=server.family == socket.AF_INET6)
  seen: Dict[int, socket.socket] = {}
  problems = []
  with server:
    while len(seen) < num_processes - 1 and not problems:
      server.settimeout(max(0.1, deadline - time.time()))
      try:
        conn, _ = server.accept()
      except socket.timeout:
        break
      try:
        hello = json.loads(_read_line(conn, deadline))
        n, i = int(hello['num_processes']), int(hello['process_id'])
      except (OSError, ValueError, KeyError, TypeError):
        conn.close()  # not one of ours (a port scanner, a health check)
        continue
      if n != num_processes:
        problems.append(f'process {i} was started with --num_processes={n}, process 0 with '
                        f'{num_processes}')
      elif i in seen:
        problems.append(f'two processes were started with --process_id={i}')
      seen.setdefault(i, conn)
      if seen[i] is not conn:
        _reply(conn, 'error ' + problems[-1])
    missing = sorted(set(range(1, num_processes)) - set(seen))
    if not problems and missing:
      problems.append(
          f'{len(missing)} of the {num_processes} processes did not reach the coordinator '
          f'within the --initialization_timeout (missing --process_id '
          f'{", ".join(map(str, missing))})')
    answer = ('error ' + '; '.join(problems) if problems
              else f'ok {lifeline.getsockname()[1]}')
    for conn in seen.values():
      _reply(conn, answer)
  with lifeline:
    if problems:
      raise DistributedError('; '.join(problems) + '. Start every process with the same '
                             '--coordinator_address and --num_processes and its own '
                             '--process_id')
    _accept_lifelines(lifeline, num_processes, deadline)


def _accept_lifelines(server: socket.socket, num_processes: int, deadline: float) -> None:
  """Process 0: takes one lifeline connection from every other process."""
  ids = set()
  while len(ids) < num_processes - 1:
    server.settimeout(max(0.1, deadline - time.time()))
    try:
      conn, _ = server.accept()
      i = int(_read_line(conn, deadline))
    except socket.timeout:
      break
    except (OSError, ValueError):
      continue
    conn.settimeout(None)
    ids.add(i)
    _lifelines.append((conn, i))
  missing = sorted(set(range(1, num_processes)) - ids)
  if missing:
    raise DistributedError(
        f'process(es) {", ".join(map(str, missing))} passed the rendezvous but never '
        'opened their lifeline to process 0 within the --initialization_timeout (did they '
        'die, or does a firewall block ports other than the coordinator\'s?)')


def _join_rendezvous(host: str, port: int, num_processes: int, process_id: int,
                     deadline: float) -> None:
  """Processes 1..N-1: says hello to process 0 (retrying until it listens) and awaits the verdict."""
  hello = json.dumps({'num_processes': num_processes, 'process_id': process_id})
  last = None
  while time.time() < deadline:
    try:
      with socket.create_connection((host, port), timeout=max(0.1, deadline - time.time())) as c:
        c.sendall(hello.encode() + b'\n')
        answer = _read_line(c, deadline)
    except OSError as e:
      last = e.strerror or str(e)
      time.sleep(0.25)
      continue
    if answer.startswith('ok '):
      _open_lifeline(host, int(answer.split()[1]), process_id, deadline)
      return
    if answer.startswith('error '):
      raise DistributedError(f'process 0 refused this process: {answer[6:]}. Start every '
                             'process with the same --coordinator_address and '
                             '--num_processes and its own --process_id')
    last = 'no answer'
    time.sleep(0.25)
  raise DistributedError(
      f'could not reach process 0 at {host}:{port} within the --initialization_timeout '
      f'({last}). Start process 0 (it hosts the coordinator) and check the address is this '
      'host\'s route to it')


def _open_lifeline(host: str, port: int, process_id: int, deadline: float) -> None:
  """Processes 1..N-1: connects the lifeline to process 0 and names itself."""
  try:
    conn = socket.create_connection((host, port), timeout=max(0.1, deadline - time.time()))
    conn.sendall(f'{process_id}\n'.encode())
  except OSError as e:
    raise DistributedError(
        f'could not open the lifeline to process 0 at {host}:{port} ({e.strerror or e}): '
        'the hosts must reach each other on any TCP port, as gloo and NCCL need too') from e
  conn.settimeout(None)
  _lifelines.append((conn, 0))


def _watch_lifelines(on_lost: Callable[[str], None]) -> None:
  """Calls ``on_lost`` once a lifeline closes without a goodbye (runs in a thread)."""
  live = dict(_lifelines)
  while live:
    readable, _, _ = select.select(list(live), [], [])
    for conn in readable:
      try:
        data = conn.recv(64)
      except OSError:
        data = b''
      if data.startswith(_BYE):
        live.pop(conn)  # that process ended in order
        continue
      if data or _finishing.is_set():
        continue
      i = live.pop(conn)
      on_lost(f'lost contact with another process of this job: process {i} is gone (it '
              'was killed, crashed or lost its host). The job stops; restart every process '
              'with the same command to resume from the latest checkpoint')
      return


def finish() -> None:
  """Says goodbye on the lifelines: this process ends in order (success, refusal, preemption).

  Call it before an orderly exit of a multi-process job; without it the other
  processes take the closing connection for a death and stop with status 1.
  """
  _finishing.set()
  for conn, _ in _lifelines:
    try:
      conn.sendall(_BYE)
    except OSError:
      pass  # that process is gone already


def _rendezvous(coordinator_address: str, num_processes: int, process_id: int,
                timeout: float) -> None:
  """Every process of an explicitly laid-out job checks in with process 0 first.

  Runs on the coordinator's port before JAX's service binds it, so process 0
  learns each process's ``--num_processes`` and ``--process_id`` and every
  process gets one verdict: go, or the line saying which flag is wrong.
  """
  host, _, port = coordinator_address.rpartition(':')
  deadline = time.time() + timeout
  if process_id == 0:
    _serve_rendezvous(int(port), num_processes, deadline)
  else:
    _join_rendezvous(host.strip('[]'), int(port), num_processes, process_id, deadline)


def _enable_cpu_collectives() -> None:
  # XLA:CPU has no cross-process collectives unless told which library to use;
  # GPU and TPU ignore the option, so it is set unconditionally.
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except (AttributeError, ValueError) as e:  # a jaxlib without the option
    logging.warning('CPU collectives (gloo) unavailable: %s', e)


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               initialization_timeout: int = 300,
               heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT,
               on_peer_lost: Optional[Callable[[str], None]] = None) -> None:
  """Joins this process to the job (``jax.distributed.initialize``).

  Arguments left None are detected by JAX from the cluster environment
  (Cloud TPU, SLURM, Open MPI, Kubernetes).

  Args:
    coordinator_address: ``HOST:PORT`` of process 0's coordinator.
    num_processes: processes in the job.
    process_id: this process's index, 0 .. num_processes - 1.
    initialization_timeout: seconds to wait for all processes to connect.
    heartbeat_timeout: seconds without a heartbeat after which a process is
      declared dead and the others stop.
    on_peer_lost: called (from a thread) with a one-line message when another
      process of an explicitly laid-out job dies; it should end this process.
      Auto-detected jobs rely on JAX's heartbeats alone.

  Raises:
    DistributedError: bad flags, no cluster environment to detect, a
      coordinator that cannot be reached in time, or a job whose size
      disagrees with ``num_processes``.
  """
  _check_flags(coordinator_address, num_processes, process_id)
  _enable_cpu_collectives()
  explicit = None not in (coordinator_address, num_processes, process_id)
  if explicit and num_processes > 1:
    _rendezvous(coordinator_address, num_processes, process_id, initialization_timeout)
  where = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or 'auto-detected'
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except ValueError as e:
    if 'should be defined' in str(e) or 'must be defined' in str(e):
      raise DistributedError(
          f'--distributed found no cluster environment to take the job layout from '
          f'({_first_line(e)}); outside Cloud TPU, SLURM, Open MPI or Kubernetes give '
          '--coordinator_address HOST:PORT --num_processes N --process_id I') from e
    raise DistributedError(f'jax.distributed.initialize: {_first_line(e)}') from e
  except Exception as e:  # pylint: disable=broad-except
    # XlaRuntimeError / JaxRuntimeError with a gRPC status (DEADLINE_EXCEEDED,
    # UNAVAILABLE, INVALID_ARGUMENT, ...).
    raise DistributedError(
        f'could not join the job through the coordinator at {where} within '
        f'{initialization_timeout} s ({_first_line(e)}). Start process 0 (which hosts the '
        'coordinator) and every other process with the same --coordinator_address and '
        '--num_processes, each with its own --process_id, and check that the address is '
        'reachable from this host') from e
  wrong = num_processes is not None and jax.process_count() != num_processes
  if on_peer_lost is not None and _lifelines:
    threading.Thread(target=_watch_lifelines, args=(on_peer_lost,), daemon=True,
                     name='lifeline').start()
  agree(DistributedError(
      f'--num_processes={num_processes}, but the job has {jax.process_count()} processes: '
      'start every process with the same --num_processes') if wrong else None)


def _allgather_bytes(data: bytes) -> Sequence[bytes]:
  """Every process's ``data``, in process order (a collective)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data))))
  width = max(1, int(sizes.max()))
  buf = np.zeros(width, np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(buf))
  return [bytes(rows[i, :int(sizes[i])]) for i in range(len(sizes))]


def agree(error: Optional[BaseException]) -> None:
  """Raises on every process if any process has an error (a collective).

  Args:
    error: this process's refusal, or None.

  Raises:
    ConfigError: the first process's error with its message (the original
      exception on the process that had it).
  """
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  text = '' if error is None else ' '.join(str(error).split())
  messages = [m.decode() for m in _allgather_bytes(text.encode())]
  if error is not None:
    raise error
  for i, message in enumerate(messages):
    if message:
      raise ConfigError(f'process {i} refused the run: {message}')


def all_true(flag: bool) -> bool:
  """Whether ``flag`` holds on every process (a collective with several)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).all())


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_same_config(config) -> None:
  """Refuses the run on every process if any process's config differs from process 0's.

  Args:
    config: this process's training config.

  Raises:
    DistributedError: naming the process and the differing fields.
  """
  if jax.process_count() == 1:
    return
  mine = config.to_json_best_effort(sort_keys=True)
  texts = [t.decode() for t in _allgather_bytes(mine.encode())]
  lead = _flatten(json.loads(texts[0]))
  problems = []
  for i, text in enumerate(texts[1:], start=1):
    other = _flatten(json.loads(text))
    fields = sorted(f for f in set(lead) | set(other) if lead.get(f) != other.get(f))
    if fields:
      shown = '; '.join(f'config.{f}={json.dumps(other.get(f))} (process 0: '
                        f'{json.dumps(lead.get(f))})' for f in fields[:4])
      more = f' and {len(fields) - 4} more' if len(fields) > 4 else ''
      problems.append(f'process {i} has {shown}{more}')
  if problems:
    raise DistributedError(
        'the processes of this job were started with different configs: '
        + ' | '.join(problems) + '. Start every process with the same --config and '
        '--config.* overrides')


# Substrings of the errors a collective or barrier raises when another process
# of the job is gone (gloo's TCP transport, the coordination service).
_PEER_LOST = ('connection closed by peer', 'connection reset by peer', 'gloo',
              'heartbeat', 'coordination service', 'task has been set to error',
              'barrier timed out', 'unavailable:', 'socket closed', 'broken pipe')


def peer_lost_message(error: BaseException) -> Optional[str]:
  """A one-line explanation when ``error`` means another process died, else None.

  Args:
    error: an exception raised during a multi-process run.

  Returns:
    The message, or None when the error looks unrelated to a lost peer.
  """
  if jax.process_count() == 1:
    return None
  text = str(error).lower()
  if not any(s in text for s in _PEER_LOST):
    return None
  return (f'lost contact with another process of this job ({_first_line(error)}). '
          'The job stops; restart every process with the same command to resume from '
          'the latest checkpoint')

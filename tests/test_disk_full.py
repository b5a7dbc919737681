"""A full disk under convert, invert and train.py: one line, status 1, nothing half-written.

Each case writes onto a small tmpfs mounted for the test (root only: the
filesystem must really run out, a mock would not exercise Orbax's and
TensorStore's own failure paths).
"""

import glob
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from tests import tiny_checkpoint as tc
from tests.multiprocess_job import train_args
# Unoptimised XLA and a compilation cache for the train.py subprocess.
from tests.test_training_loop import fast_compiles  # noqa: F401  pylint: disable=unused-import

torch = pytest.importorskip('torch')
from tests.torch_ref.stylegan2 import RefGenerator  # noqa: E402  pylint: disable=g-import-not-at-top


def _mount(path, size: str):
  os.makedirs(path, exist_ok=True)
  out = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                       capture_output=True, text=True)
  if out.returncode:
    pytest.skip(f'cannot mount a small tmpfs to fill ({out.stderr.strip()}); needs root')


@pytest.fixture()
def small_disk(tmp_path):
  """``make(size)`` mounts a tmpfs of ``size`` and returns its path; unmounted afterwards."""
  mounted = []

  def make(size):
    path = tmp_path / f'disk{len(mounted)}'
    _mount(path, size)
    mounted.append(path)
    return path

  yield make
  for path in mounted:
    subprocess.run(['umount', str(path)], check=False)


def _run(cmd, timeout=600):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tc.REPO)


def _leftovers(root):
  return [p for p in glob.glob(os.path.join(str(root), '**', '*'), recursive=True)
          if 'tmp' in os.path.basename(p) or 'partial' in os.path.basename(p)
          or os.path.basename(p).startswith('.')]


def test_convert_onto_a_full_disk(small_disk, tmp_path):
  src = tmp_path / 'g.pt'  # a 32 px generator: 0.4 MB, more than the disk holds
  ref = RefGenerator(32, 64, 2, cm=2, width=32).randomize(1).eval()
  torch.save({'g_ema': ref.state_dict(), 'latent_avg': torch.randn(64)}, src)
  disk = small_disk('64k')
  out = _run([sys.executable, '-m', 'interestyle_jax.convert', 'stylegan2', str(src),
              str(disk / 'g')])
  assert out.returncode == 1, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith(f'error: no space left on the device holding {disk / "g"}')
  assert os.listdir(disk) == []  # the partial directory is gone


def test_invert_onto_a_full_disk_keeps_whole_outputs(small_disk, tmp_path):
  model = tc.make_restyle_dir(str(tmp_path / 'model'))
  photos = tmp_path / 'photos'
  photos.mkdir()
  for i, im in enumerate(tc.photos(12, 48)):
    Image.fromarray(im).save(photos / f'p{i:02d}.png')
  disk = small_disk('64k')  # room for a few images' outputs, not 12
  out = _run([sys.executable, '-m', 'interestyle_jax.invert', '--checkpoint', model,
              '--input', str(photos), '--output', str(disk / 'out'), '--no_progress'])
  assert out.returncode == 1, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert lines[0].startswith('error: stopped after ')
  assert f'no space left on the device holding {disk / "out"}' in lines[0]
  names = os.listdir(disk / 'out')
  stems = {n.split('.')[0].replace('_iterations', '') for n in names if n != 'summary.json'}
  assert 0 < len(stems) < 12
  for stem in stems:  # every image's outputs whole, or none of them
    assert {f'{stem}.png', f'{stem}_iterations.png', f'{stem}.npy'} <= set(names), names
  assert not _leftovers(disk)
  if 'summary.json' not in names:  # no room left even for it: the line says so
    assert 'summary.json could not be written either' in lines[0]


def test_train_onto_a_full_disk(small_disk):
  # The run needs about 5.5 MB at its peak (3 checkpoints of ~1 MB kept, best/,
  # inference/, grids, events): 3 MB runs out after the first checkpoints.
  disk = small_disk('3m')
  workdir = str(disk / 'run')
  out = _run(train_args(workdir, {'num_train_steps': 40, 'checkpoint_every_steps': 2,
                                  'eval_every_steps': 2, 'batch_size': 4,
                                  'synthetic.test_families': '()'}))
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  # Besides the log (glog-style lines: a cold compile may add XLA's slow-op notices), one line.
  errors = [l for l in out.stderr.splitlines() if not re.match(r'[IWEF]\d{4} ', l)]
  assert len(errors) == 1, errors
  assert errors[0].startswith(f'train.py: error: no space left on the device holding {workdir} (')
  assert not glob.glob(os.path.join(workdir, '**', '*orbax-checkpoint-tmp*'), recursive=True)
  assert not os.path.exists(os.path.join(workdir, '.lock'))

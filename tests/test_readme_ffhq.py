"""The README's FFHQ walk-through, run command by command as a user would.

The commands are *parsed out of README.md's code blocks* (the ``convert``
commands of the two "Converting …" sections, then every command of "Training
on FFHQ / CelebA-HQ": ``celebahq_split``, both ``make_masks``,
``folder_builder`` and ``train.py --config configs/ffhq.py``) and run in that
order with ``subprocess`` in a fresh directory holding what the README tells
the user to download or produce, under the file names the README uses:

* ``stylegan2-ffhq-config-f.pt``: a random StyleGAN2 in the rosinality layout,
  1024 px like the real one (so 18 styles, and ``--as_encoder_backbone 18``
  and the 256 px encoder of configs/ffhq.py fit as written) but 8 channels
  wide with 32-d latents;
* ``model_ir_se50.pth``: a random IR-SE ArcFace in TreB1eN's layout, one unit
  per stage, 8 channels, 112 px input;
* ``alex.pth`` + ``alexnet-owt-7be5be79.pth``: LPIPS linear layers and an
  8-channel AlexNet in the lpips / torchvision layouts;
* ``CelebAMask-HQ/`` (images, part annotations, the CelebA mapping) and
  ``list_eval_partition.txt``; FFHQ images in ``data/ffhq/images/00000/`` and
  face-parser label maps in ``data/ffhq_parsing/``.

Only what cannot be run at full size on a CPU is changed, by *appending*
flags to the README's command (argparse and absl take the last value): the
encoder initialisation gets ``--style_dim 32`` (the tiny generator's latent
width; the real one is 512, the default); train.py gets a 2-step schedule,
batch 2 and the tiny encoder (``stage_units=(1,1,1,1)``, width 8, which the
converted ArcFace trunk fixes); folder_builder runs in-process
(``--workers 1``). Every path, the config file, the λs, T = 5, σ, the filter
region and the networks' kinds stay as the README and configs/ffhq.py say, so
a README path that disagrees with the config fails here.

Run time: about 2 minutes on 2 CPU cores, most of it train.py compiling the
1024 px generator's step.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')

from tests.torch_ref.irse import RefArcFace, randomize  # noqa: E402
from tests.torch_ref.lpips import RefLPIPS  # noqa: E402
from tests.torch_ref.stylegan2 import RefGenerator  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')

STYLE_DIM = 32  # the tiny generator's latent width (FFHQ: 512)
# Appended to the README's commands (see the module docstring).
CONVERT_EXTRA = {'encoder_init': ['--style_dim', str(STYLE_DIM)]}
BUILDER_EXTRA = ['--workers', '1']
TRAIN_EXTRA = [
    '--config.num_train_steps=2', '--config.batch_size=2', '--config.eval_batch_size=2',
    '--config.log_every_steps=1', '--config.eval_every_steps=2',
    '--config.checkpoint_every_steps=2', '--config.image_every_steps=2',
    '--config.num_grid_images=2', '--config.profile_steps=0',
    '--config.model.encoder.stage_units=(1,1,1,1)', '--config.model.encoder.width=8',
    '--config.data.shuffle_buffer=16', '--config.data.prepare_workers=1',
]


# --- README parsing -----------------------------------------------------------


def section(text: str, title: str) -> str:
  """The body of the ``## <title>`` section of ``text`` (up to the next ``## ``)."""
  m = re.search(r'^## ' + re.escape(title) + r'[^\n]*\n(.*?)(?=^## |\Z)', text, re.M | re.S)
  assert m, f'README.md has no "## {title}" section'
  return m.group(1)


def commands(markdown: str) -> List[List[str]]:
  """Shell commands of the ```bash blocks, continuation lines joined, comments dropped."""
  out = []
  for block in re.findall(r'```bash\n(.*?)```', markdown, re.S):
    for line in re.sub(r'\\\n\s*', ' ', block).splitlines():
      argv = shlex.split(line, comments=True)
      if argv:
        out.append(argv)
  return out


def _flag(argv: List[str], name: str) -> str:
  """The value of ``--name=V`` or ``--name V`` in ``argv``."""
  for i, a in enumerate(argv):
    if a.startswith(f'--{name}='):
      return a.split('=', 1)[1]
    if a == f'--{name}':
      return argv[i + 1]
  raise AssertionError(f'{name} not in {argv}')


def walkthrough() -> Dict[str, object]:
  """The README's FFHQ commands, by role, in the order a user runs them."""
  text = open(README, encoding='utf-8').read()
  converting = (commands(section(text, 'Converting PyTorch checkpoints'))
                + commands(section(text, 'Converting ReStyle / IntereStyle / ArcFace / LPIPS')))
  ffhq = commands(section(text, 'Training on FFHQ / CelebA-HQ'))
  convert = {}
  for argv in converting:
    # restyle (a trained model) and curricularface (the paper's ID metric) are
    # not inputs of training.
    if (argv[:3] == ['python', '-m', 'interestyle_jax.convert']
        and argv[3] not in ('restyle', 'curricularface')):
      role = 'encoder_init' if '--as_encoder_backbone' in argv else argv[3]
      convert[role] = argv

  def module(name):
    return [a for a in ffhq if a[:3] == ['python', '-m', f'interestyle_jax.data.{name}']]

  trains = [a for a in ffhq if a[:2] == ['python', 'train.py']]
  masks = module('make_masks')
  assert set(convert) == {'stylegan2', 'irse50', 'encoder_init', 'lpips'}, convert
  assert len(module('celebahq_split')) == 1 and len(masks) == 2 and len(trains) == 1
  assert len(module('folder_builder')) == 1
  return dict(convert=convert, split=module('celebahq_split')[0],
              masks_celebahq=next(a for a in masks if '--match_dir' in ' '.join(a)),
              masks_ffhq=next(a for a in masks if '--match_dir' not in ' '.join(a)),
              builder=module('folder_builder')[0], train=trains[0])


def load_config(name: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize('name', ['ffhq', 'ffhq_release'])
def test_readme_paths_are_the_config_paths(name):
  """Every path the README's FFHQ walk-through writes is where the config reads it."""
  w = walkthrough()
  c = load_config(name)
  cv = w['convert']
  assert cv['stylegan2'][5] == c.model.generator_path
  assert cv['encoder_init'][5] == c.model.encoder_init_path
  # 18 styles: the 1024 px generator's W+ (2 log2(1024) - 2).
  assert _flag(cv['encoder_init'], 'as_encoder_backbone') == '18'
  assert cv['irse50'][5] == c.loss.id_path
  assert cv['lpips'][5] == c.loss.lpips_path
  split_out = _flag(w['split'], 'output_dir')
  assert split_out == os.path.join(c.data.test_dir, 'images')
  assert _flag(w['masks_celebahq'], 'output_dir') == os.path.join(c.data.test_dir, 'masks')
  assert _flag(w['masks_celebahq'], 'match_dir') == split_out
  assert _flag(w['masks_ffhq'], 'output_dir') == os.path.join(c.data.train_dir, 'masks')
  assert _flag(w['builder'], 'train_dir') == c.data.train_dir
  assert _flag(w['builder'], 'test_dir') == c.data.test_dir
  # train.py's default data_dir ('' = tfds/ beside train_dir) is where the builder writes.
  assert c.data.data_dir == ''
  assert _flag(w['builder'], 'data_dir') == os.path.join(os.path.dirname(c.data.train_dir),
                                                        'tfds')
  train = w['train']
  assert _flag(train, 'config') == 'configs/ffhq.py'
  assert _flag(train, 'config.data.train_dir') == c.data.train_dir
  assert _flag(train, 'config.data.test_dir') == c.data.test_dir


# --- what the user downloads / produces, tiny and random ---------------------


def write_stylegan2(path: str) -> None:
  """A random 1024 px generator, 8 channels, in rosinality's checkpoint layout."""
  torch.manual_seed(0)
  g = RefGenerator(1024, STYLE_DIM, 2, cm=1, width=8).randomize(1).eval()
  with torch.no_grad():
    latent_avg = g.mapping(torch.randn(1000, STYLE_DIM)).mean(0)
  torch.save({'g_ema': g.state_dict(), 'latent_avg': latent_avg}, path)


def write_arcface(path: str) -> None:
  """A random IR-SE ArcFace (one unit per stage, width 8, 112 px, 16-d)."""
  torch.manual_seed(1)
  torch.save(randomize(RefArcFace((1, 1, 1, 1), 8, 112, 16), 2).state_dict(), path)


def write_lpips(lin_path: str, alexnet_path: str) -> None:
  """LPIPS v0.1 linear layers and an 8-channel AlexNet (lpips / torchvision keys)."""
  ref = RefLPIPS(channels=(8,) * 5, seed=3)
  torch.save(ref.lins.state_dict(), lin_path)
  torch.save(ref.alexnet.state_dict(), alexnet_path)


def face(rng, size: int):
  """A face-ish picture and its label map (face-parsing class ids)."""
  yy, xx = np.mgrid[:size, :size] / size
  cy, cx = rng.uniform(0.4, 0.6, 2)
  r = ((yy - cy) / 0.32) ** 2 + ((xx - cx) / 0.25) ** 2
  labels = np.zeros((size, size), np.uint8)
  labels[r < 1.6] = 17  # hair
  labels[r < 1.0] = 1  # skin
  labels[(r < 1.0) & (np.abs(yy - cy - 0.12) < 0.03)] = 11  # mouth
  img = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)  # the background
  img[labels == 1] = (220, 170, 140)
  img[labels == 17] = (60, 40, 20)
  return img, labels


def write_datasets(root: str, w) -> None:
  """CelebAMask-HQ + CelebA partition file; FFHQ images + face-parser label maps."""
  rng = np.random.default_rng(0)
  hq = os.path.join(root, _flag(w['split'], 'celebamask_hq_dir'))
  os.makedirs(os.path.join(hq, 'CelebA-HQ-img'))
  anno = os.path.join(root, _flag(w['masks_celebahq'], 'input_dir'))
  # (CelebA-HQ idx, CelebA file): CelebA's test partition starts at 182638.jpg.
  rows = [(0, '119614.jpg'), (1, '182638.jpg'), (2, '200122.jpg'), (3, '099095.jpg'),
          (4, '190001.jpg'), (5, '170001.jpg')]
  with open(os.path.join(hq, 'CelebA-HQ-to-CelebA-mapping.txt'), 'w') as f:
    f.write('idx         orig_idx    orig_file  \n')
    for idx, name in rows:
      f.write(f'{idx:<12d}{int(name[:6]) - 1:<12d}{name}\n')
  with open(os.path.join(root, _flag(w['split'], 'partition_file')), 'w') as f:
    for _, name in sorted(rows, key=lambda r: r[1]):
      n = int(name[:6])
      f.write(f'{name} {2 if n >= 182638 else 1 if n >= 162771 else 0}\n')
  for idx, _ in rows:
    img, labels = face(rng, 48)
    Image.fromarray(img).save(os.path.join(hq, 'CelebA-HQ-img', f'{idx}.jpg'))
    # Part annotations: <idx:05d>_<part>.png in folders of 2,000.
    folder = os.path.join(anno, str(idx // 2000))
    os.makedirs(folder, exist_ok=True)
    for part, cls in (('skin', 1), ('hair', 17), ('mouth', 11)):
      Image.fromarray(np.where(labels == cls, 255, 0).astype(np.uint8)).save(
          os.path.join(folder, f'{idx:05d}_{part}.png'))
  ffhq_images = os.path.join(root, _flag(w['builder'], 'train_dir'), 'images', '00000')
  parsing = os.path.join(root, _flag(w['masks_ffhq'], 'input_dir'))
  os.makedirs(ffhq_images)
  os.makedirs(parsing)
  for i in range(4):
    img, labels = face(rng, 64)
    Image.fromarray(img).save(os.path.join(ffhq_images, f'{i:05d}.png'))
    Image.fromarray(labels, 'L').save(os.path.join(parsing, f'{i:05d}.png'))


# --- the walk-through ---------------------------------------------------------


def _run(argv: List[str], cwd: str, timeout: int = 600) -> str:
  """Runs a README command (``python`` = this interpreter); returns its output."""
  argv = [sys.executable if argv[0] == 'python' else argv[0]] + argv[1:]
  # Unoptimised XLA: the 1024 px generator's training step compiles in a
  # fraction of the time, and the walk-through checks paths, not speed.
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
  log = out.stdout[-3000:] + out.stderr[-5000:]
  assert out.returncode == 0, f'{shlex.join(argv)} failed ({out.returncode}):\n{log}'
  return log


def test_readme_ffhq_walkthrough(tmp_path):
  w = walkthrough()
  root = str(tmp_path)
  # The README's commands run from the repository root: train.py and configs/.
  shutil.copy(os.path.join(REPO, 'train.py'), root)
  shutil.copytree(os.path.join(REPO, 'configs'), os.path.join(root, 'configs'))
  cv = w['convert']
  write_stylegan2(os.path.join(root, cv['stylegan2'][4]))
  assert cv['irse50'][4] == cv['encoder_init'][4]  # one ArcFace file for both
  write_arcface(os.path.join(root, cv['irse50'][4]))
  write_lpips(os.path.join(root, cv['lpips'][4]),
              os.path.join(root, _flag(cv['lpips'], 'alexnet')))
  write_datasets(root, w)

  # 1. Converting: one process per command, as a user types them.
  for role in ('stylegan2', 'irse50', 'encoder_init', 'lpips'):
    log = _run(cv[role] + CONVERT_EXTRA.get(role, []), root)
    assert 'wrote' in log, log
    assert not [l for l in log.splitlines() if l.startswith('warning: ')], log  # no NaN
  for role in cv:
    meta = json.load(open(os.path.join(root, cv[role][5], 'model.json')))
    assert meta['kind'] == {'irse50': 'arcface'}.get(role, role)
  gen_meta = json.load(open(os.path.join(root, cv['stylegan2'][5], 'model.json')))
  assert gen_meta['generator']['resolution'] == 1024 and gen_meta['has_latent_avg']

  # 2. Data: the CelebA-HQ test split, its masks, the FFHQ masks, the TFDS copy.
  _run(w['split'], root)
  test_images = os.path.join(root, _flag(w['split'], 'output_dir'))
  assert sorted(os.listdir(test_images)) == ['1.jpg', '2.jpg', '4.jpg']
  _run(w['masks_celebahq'], root)
  assert sorted(os.listdir(os.path.join(root, _flag(w['masks_celebahq'], 'output_dir')))) == [
      '1.png', '2.png', '4.png']
  _run(w['masks_ffhq'], root)
  ffhq_masks = os.path.join(root, _flag(w['masks_ffhq'], 'output_dir'))
  assert sorted(os.listdir(ffhq_masks)) == [f'{i:05d}.png' for i in range(4)]
  mask = np.asarray(Image.open(os.path.join(ffhq_masks, '00000.png')))
  assert mask.shape == (256, 256) and mask.max() == 255 and mask.min() == 0
  _run(w['builder'] + BUILDER_EXTRA, root)
  # The prepared copy is where the README says to delete it after editing files.
  stale = re.search(r'delete\s+`([^`]+)`', section(open(README, encoding='utf-8').read(),
                                                 'Training on FFHQ / CelebA-HQ'))
  assert stale and os.path.isdir(os.path.join(root, stale.group(1))), stale

  # 3. Train (the README's command + the size overrides).
  workdir = os.path.join(root, _flag(w['train'], 'workdir'))
  _run(w['train'] + TRAIN_EXTRA, root, timeout=900)
  metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
  text = json.dumps(metrics)
  for key in ('lpips', 'id'):  # the perceptual networks were loaded and used
    assert key in text, text[:2000]
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['model']['generator_path'] == cv['stylegan2'][5]
  inference = json.load(open(os.path.join(workdir, 'inference', 'model.json')))
  assert inference['kind'] == 'restyle' and inference['generator']['resolution'] == 1024

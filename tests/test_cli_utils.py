"""Output-path checks and the help layout shared by the command-line tools."""

import argparse
import os

import pytest

from interestyle_jax import cli_utils


def test_check_output_dir(tmp_path, monkeypatch):
  assert cli_utils.check_output_dir(str(tmp_path / 'a' / 'b'), '--out') == str(tmp_path / 'a' / 'b')
  assert not (tmp_path / 'a').exists()  # checked, not created
  (tmp_path / 'f').write_text('x')
  with pytest.raises(cli_utils.OutputPathError, match=r'^--out .*f is a file, not a folder'):
    cli_utils.check_output_dir(str(tmp_path / 'f'), '--out')
  with pytest.raises(cli_utils.OutputPathError, match=r'cannot be created: .*f is a file'):
    cli_utils.check_output_dir(str(tmp_path / 'f' / 'g'), '--out')
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda p, mode: False if p == str(tmp_path) else
                      real_access(p, mode))
  with pytest.raises(cli_utils.OutputPathError, match='is not writable'):
    cli_utils.check_output_dir(str(tmp_path), '--out')
  with pytest.raises(cli_utils.OutputPathError, match=r'cannot be created: .* is not writable'):
    cli_utils.check_output_dir(str(tmp_path / 'new'), '--out')
  with pytest.raises(cli_utils.OutputPathError, match='is empty'):
    cli_utils.check_output_dir('', '--out')


def test_check_output_file(tmp_path):
  assert cli_utils.check_output_file(str(tmp_path / 'x' / 'r.json'), '--output')
  with pytest.raises(cli_utils.OutputPathError, match=r'is a folder; give a file path, e.g. .*r.json'):
    cli_utils.check_output_file(str(tmp_path), '--output', example='r.json')
  (tmp_path / 'f').write_text('x')
  with pytest.raises(cli_utils.OutputPathError, match='is a file, not a folder'):
    cli_utils.check_output_file(str(tmp_path / 'f' / 'r.json'), '--output')
  assert cli_utils.check_output_file(str(tmp_path / 'f'), '--output')  # overwriting a file is fine


def test_help_formatter_shows_only_useful_defaults():
  p = argparse.ArgumentParser(formatter_class=cli_utils.HelpFormatter, description='one line')
  p.add_argument('--size', type=int, default=256, help='output side')
  p.add_argument('--fmt', default='{id}%', help='50%% of it')
  p.add_argument('--name', required=True, help='required')
  p.add_argument('--opt', default=None, help='optional')
  p.add_argument('--flag', action='store_true', help='a switch')
  p.add_argument('--n', type=int, default=3, help='count (default: three)')
  p.add_argument('--many', type=float, nargs='+', default=[1.0, 2.0], help='list')
  text = ' '.join(p.format_help().split())
  assert 'output side (default: 256)' in text and '50% of it (default: {id}%)' in text
  assert 'list (default: 1.0 2.0)' in text
  assert text.count('(default') == 4  # not for required, None, switches; no repeat


def test_atomic_outputs_leave_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from interestyle_jax import editing  # pylint: disable=g-import-not-at-top

  png = str(tmp_path / 'sub' / 'x.png')
  old = np.full((4, 4, 3), 200, np.uint8)
  editing.save_png(old, png)  # creates sub/
  np.testing.assert_array_equal(np.asarray(Image.open(png)), old)

  def killed_mid_write(self, fp, format=None, **kwargs):  # pylint: disable=redefined-builtin
    with open(fp, 'wb') as f:
      f.write(b'\x89PNG\r\n')  # a truncated PNG
    raise OSError('No space left on device')

  monkeypatch.setattr(Image.Image, 'save', killed_mid_write)
  with pytest.raises(OSError, match='No space'):
    editing.save_png(np.zeros((4, 4, 3), np.uint8), png)
  monkeypatch.undo()
  np.testing.assert_array_equal(np.asarray(Image.open(png)), old)  # still the old image
  assert os.listdir(tmp_path / 'sub') == ['x.png']  # no temporary file left

  latent = np.arange(6, dtype=np.float32).reshape(2, 3)
  assert cli_utils.save_npy(latent, str(tmp_path / 'w.npy')) == str(tmp_path / 'w.npy')
  np.testing.assert_array_equal(np.load(tmp_path / 'w.npy'), latent)
  cli_utils.save_json({'a': [1, 2]}, str(tmp_path / 's.json'))
  assert sorted(os.listdir(tmp_path)) == ['s.json', 'sub', 'w.npy']
  assert '"a": [' in (tmp_path / 's.json').read_text()

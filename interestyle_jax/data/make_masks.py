r"""Interest masks (face + hair) from face-parsing output.

``python -m interestyle_jax.data.make_masks --input_dir=IN --output_dir=OUT``

Two input formats (``--format=auto`` tells them apart by file names):

* ``parts`` — CelebAMask-HQ annotations, one binary PNG per part named
  ``<stem>_<part>.png`` (``00000_hair.png``, ``00000_l_brow.png``…), in any
  sub-folders (the release spreads them over ``0/``…``14/``).
* ``labels`` — one single-channel PNG of class ids per image, as written by a
  face parser (``<stem>.png``).

Class ids follow ``--convention``:

* ``face_parsing`` (default) — the 19-class order of face-parsing.PyTorch
  (BiSeNet, ``79999_iter.pth``) and most parsers trained on CelebAMask-HQ:
  0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g,
  7 l_ear, 8 r_ear, 9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck,
  15 neck_l, 16 cloth, 17 hair, 18 hat.
* ``celebamask_hq`` — the order of the CelebAMask-HQ repository's own
  ``g_mask.py`` (its ``CelebAMask-HQ-mask`` label maps): 0 background, 1 skin,
  2 nose, 3 eye_g, 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear, 9 r_ear,
  10 mouth, 11 u_lip, 12 l_lip, 13 hair, 14 hat, 15 ear_r, 16 neck_l,
  17 neck, 18 cloth.

The mask is the union of ``--classes`` (default: skin, brows, eyes, ears, nose,
mouth, lips, hair — not glasses, earrings, neck, necklace, cloth or hat),
dilated by a disk of ``--dilate`` pixels, softened by a Gaussian of
``--sigma`` pixels (edges replicated, so a face touching the border stays 1
there), resized to ``--size`` and written as an 8-bit PNG (255 = interest).
``--dilate`` and ``--sigma`` are in pixels of the written mask; the work is
done at the input resolution with both scaled, then resized.

Every output name is computed, and the output folder checked, before any mask
is written: a ``--stem_format`` that cannot name an input (``{id}`` of a
non-numeric stem) or gives two inputs the same name (``0042`` and ``42`` under
``{id}``) stops the run with nothing written. Exit status: 0 when masks were
written, 1 when none could be, 2 for an unusable argument.
"""

import argparse
import concurrent.futures
import os
import re
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from interestyle_jax import cli_utils
from interestyle_jax.data.mask_ops import finish

FACE_PARSING = ('background', 'skin', 'l_brow', 'r_brow', 'l_eye', 'r_eye', 'eye_g',
                'l_ear', 'r_ear', 'ear_r', 'nose', 'mouth', 'u_lip', 'l_lip', 'neck',
                'neck_l', 'cloth', 'hair', 'hat')
CELEBAMASK_HQ = ('background', 'skin', 'nose', 'eye_g', 'l_eye', 'r_eye', 'l_brow',
                 'r_brow', 'l_ear', 'r_ear', 'mouth', 'u_lip', 'l_lip', 'hair', 'hat',
                 'ear_r', 'neck_l', 'neck', 'cloth')
CONVENTIONS = {'face_parsing': FACE_PARSING, 'celebamask_hq': CELEBAMASK_HQ}
PARTS = frozenset(FACE_PARSING[1:])
ALIASES = {
    'brows': ('l_brow', 'r_brow'), 'eyes': ('l_eye', 'r_eye'), 'ears': ('l_ear', 'r_ear'),
    'lips': ('u_lip', 'l_lip'),
    'face': ('skin', 'l_brow', 'r_brow', 'l_eye', 'r_eye', 'l_ear', 'r_ear', 'nose',
             'mouth', 'u_lip', 'l_lip'),
}
DEFAULT_CLASSES = 'face,hair'
# A part stem is "<image stem>_<part>"; longest part names first so that
# "00000_l_lip" is read as (00000, l_lip), never as a shorter suffix.
_PART_RE = re.compile(r'^(?P<stem>.+)_(?P<part>' +
                      '|'.join(sorted(PARTS, key=len, reverse=True)) + r')$')


def parse_classes(spec: str) -> Tuple[str, ...]:
  """Turns ``'face,hair'`` / ``'skin,l_eye'`` into sorted part names.

  Args:
    spec: comma-separated part names or aliases (brows, eyes, ears, lips, face).

  Returns:
    The sorted, de-duplicated part names.

  Raises:
    ValueError: an unknown name (the message lists the valid ones).
  """
  names = set()
  for tok in (t.strip() for t in spec.split(',')):
    if not tok:
      continue
    if tok in ALIASES:
      names.update(ALIASES[tok])
    elif tok in PARTS:
      names.add(tok)
    else:
      raise ValueError(f'unknown class {tok!r} in --classes; use part names '
                       f'{", ".join(FACE_PARSING[1:])} or aliases {", ".join(ALIASES)}')
  if not names:
    raise ValueError('--classes selects nothing')
  return tuple(sorted(names))


def class_ids(classes: Sequence[str], convention: str) -> List[int]:
  """Label ids of ``classes`` under a convention.

  Args:
    classes: part names.
    convention: 'face_parsing' or 'celebamask_hq'.

  Returns:
    Sorted ids.
  """
  order = CONVENTIONS[convention]
  return sorted(order.index(c) for c in classes)


def _load(path: str) -> Image.Image:
  img = Image.open(path)
  img.load()  # decode now so a truncated file fails here
  return img


def binary_from_labels(path: str, ids: Sequence[int], num_classes: int) -> np.ndarray:
  """Reads a label map and returns the union of ``ids``.

  Args:
    path: single-channel PNG of class ids (L, P or 16-bit; an RGB file whose
      channels are equal is accepted).
    ids: class ids to keep.
    num_classes: ids must be below this.

  Returns:
    bool ``[H, W]``.

  Raises:
    ValueError: a colour visualisation or out-of-range ids (not a label map).
  """
  img = _load(path)
  arr = np.asarray(img)
  if arr.ndim == 3:
    if arr.shape[-1] in (2, 4):  # LA / RGBA: drop alpha
      arr = arr[..., :-1]
    if not (arr == arr[..., :1]).all():
      raise ValueError(f'{path} is a colour image, not a map of class ids; give the '
                       "parser's raw label output (one id per pixel)")
    arr = arr[..., 0]
  top = int(arr.max())
  if top >= num_classes:
    raise ValueError(f'{path} holds value {top} but class ids stop at {num_classes - 1}; '
                     'is this a binary mask or a scaled visualisation?')
  return np.isin(arr, np.asarray(ids))


def binary_from_parts(paths: Dict[str, str], classes: Sequence[str]) -> Tuple[np.ndarray, bool]:
  """Union of the chosen part masks of one image.

  Args:
    paths: part name → PNG path for one image (any subset of parts).
    classes: parts to keep.

  Returns:
    (bool ``[H, W]``, any_chosen) where ``any_chosen`` says whether a chosen
    part file existed at all.
  """
  shape, out, any_chosen = None, None, False
  for part in sorted(paths):
    img = _load(paths[part])
    if shape is None:
      shape = img.size[::-1]
      out = np.zeros(shape, bool)
    if img.size[::-1] != shape:
      raise ValueError(f'{paths[part]} is {img.size[0]}x{img.size[1]} but other parts of '
                       f'this image are {shape[1]}x{shape[0]}')
    if part in classes:
      any_chosen = True
      out |= np.asarray(img.convert('L')) > 127
  return out, any_chosen


class Job(NamedTuple):
  stem: str
  source: object  # labels: a path; parts: {part: path}


def job_file(job: Job) -> str:
  """One input file of a job, to name it in messages.

  Args:
    job: the job.

  Returns:
    The label map, or the first part file (sorted by part name).
  """
  if isinstance(job.source, dict):
    return job.source[sorted(job.source)[0]]
  return str(job.source)


def find_jobs(input_dir: str, fmt: str) -> Tuple[str, List[Job]]:
  """Lists the inputs and decides the format.

  Args:
    input_dir: folder searched recursively for ``.png`` files.
    fmt: 'parts', 'labels' or 'auto'.

  Returns:
    (format, jobs sorted by stem).
  """
  pngs = []
  for dirpath, dirnames, files in os.walk(input_dir):
    dirnames.sort()
    pngs += [os.path.join(dirpath, f) for f in sorted(files)
             if f.lower().endswith('.png') and not f.startswith('.')]
  if not pngs:
    raise ValueError(f'{input_dir} holds no .png file (label maps and part masks must be '
                     'PNG: JPEG would alter the ids)')
  if fmt == 'auto':
    n_parts = sum(bool(_PART_RE.match(os.path.splitext(os.path.basename(p))[0])) for p in pngs)
    fmt = 'parts' if n_parts > len(pngs) // 2 else 'labels'
  jobs: Dict[str, object] = {}
  if fmt == 'parts':
    for p in pngs:
      m = _PART_RE.match(os.path.splitext(os.path.basename(p))[0])
      if m:
        parts = jobs.setdefault(m['stem'], {})
        if m['part'] in parts:  # one would silently replace the other
          raise ValueError(f'{parts[m["part"]]} and {p} are both the {m["part"]!r} part of '
                           f'image {m["stem"]!r}; remove one of them')
        parts[m['part']] = p
  else:
    for p in pngs:
      stem = os.path.splitext(os.path.basename(p))[0]
      if stem in jobs:
        raise ValueError(f'{p} and {jobs[stem]} share the stem {stem!r}; make stems unique')
      jobs[stem] = p
  return fmt, [Job(s, jobs[s]) for s in sorted(jobs)]


def output_name(stem: str, stem_format: str) -> str:
  """Output file name for an input stem.

  Args:
    stem: input stem, e.g. '00042'.
    stem_format: Python format string with ``{stem}`` and ``{id}`` (the stem
      as an integer, for numeric stems): '{id}' turns '00042' into '42', the
      naming of CelebAMask-HQ's CelebA-HQ-img folder.

  Returns:
    ``<name>.png``.

  Raises:
    ValueError: the format is malformed, uses a field this stem lacks
      (``{id}`` of a non-numeric stem), or names something other than a
      plain file.
  """
  fields = {'stem': stem}
  if re.fullmatch(r'[0-9]+', stem):  # not str.isdigit: '²' is a digit int() refuses
    fields['id'] = int(stem)
  try:
    name = stem_format.format(**fields)
  except KeyError as e:
    if e.args and e.args[0] == 'id':
      raise ValueError(f"--stem_format={stem_format!r} needs numeric stems, but stem {stem!r} "
                       "is not a number") from e
    raise ValueError(f'--stem_format={stem_format!r} uses {{{e.args[0]}}}; the fields are '
                     '{stem} and {id}') from e
  except (IndexError, ValueError) as e:
    raise ValueError(f'--stem_format={stem_format!r} is not a valid format for stem {stem!r} '
                     f'({e}); use e.g. \'{{stem}}\' or \'{{id}}\'') from e
  if not name or name in ('.', '..') or '/' in name or os.sep in name:
    raise ValueError(f'--stem_format={stem_format!r} turns stem {stem!r} into {name!r}, not a '
                     'plain file name')
  return name + '.png'


def output_names(jobs: Sequence[Job], stem_format: str) -> Dict[str, str]:
  """Every output file name, computed before anything is written.

  Args:
    jobs: all inputs.
    stem_format: see :func:`output_name`.

  Returns:
    stem → ``<name>.png``, one distinct name per job.

  Raises:
    ValueError: one line naming the first input that cannot be named (and
      how many more), or the first two inputs given the same name (and how
      many more collisions), with the fix.
  """
  names: Dict[str, str] = {}
  owner: Dict[str, Job] = {}
  unnamed: List[Tuple[Job, ValueError]] = []
  clashes: List[Tuple[Job, Job, str]] = []
  for job in jobs:
    try:
      name = output_name(job.stem, stem_format)
    except ValueError as e:
      unnamed.append((job, e))
      continue
    # Case-insensitive file systems (macOS, Windows) would merge A.png and a.png.
    key = name.lower()
    if key in owner:
      clashes.append((owner[key], job, name))
      continue
    owner[key] = job
    names[job.stem] = name
  if unnamed:
    job, e = unnamed[0]
    more = f' (and {len(unnamed) - 1} more input(s) like it)' if len(unnamed) > 1 else ''
    if "needs numeric stems" in str(e):
      raise ValueError(f"--stem_format={stem_format!r} needs numeric stems, but {job_file(job)} "
                       f"has the stem {job.stem!r}{more}; remove or rename such files, or use "
                       "--stem_format='{stem}' (nothing was written)")
    raise ValueError(f'{e} ({job_file(job)}{more}; nothing was written)')
  if clashes:
    a, b, name = clashes[0]
    more = f' (and {len(clashes) - 1} more collision(s))' if len(clashes) > 1 else ''
    raise ValueError(f'--stem_format={stem_format!r} gives {job_file(a)} (stem {a.stem!r}) and '
                     f'{job_file(b)} (stem {b.stem!r}) the same output name {name}{more}; '
                     "remove or rename one of them, or use a --stem_format that keeps them "
                     "apart such as '{stem}' (nothing was written)")
  return names


def match_images(jobs: List[Job], image_dir: str, stem_format: str,
                 names: Optional[Dict[str, str]] = None) -> List[Job]:
  """Keeps the jobs whose output name matches an image in ``image_dir``.

  Args:
    jobs: all inputs.
    image_dir: folder of images (searched recursively).
    stem_format: see :func:`output_name`.
    names: :func:`output_names` of ``jobs``, when already computed.

  Returns:
    The matching jobs.

  Raises:
    ValueError: some images have no input (listed), or none match.
  """
  from interestyle_jax.data import folder  # pylint: disable=g-import-not-at-top
  names = output_names(jobs, stem_format) if names is None else names
  images = folder.list_files(image_dir, folder.IMAGE_EXTS)
  by_out = {names[j.stem][:-len('.png')]: j for j in jobs}
  lacking = sorted(set(images) - set(by_out))
  if lacking:
    raise ValueError(f'{len(lacking)} image(s) in {image_dir} have no parsing input: '
                     f'{folder.list_examples(lacking)} (check --stem_format: input stems look '
                     f'like {jobs[0].stem!r})')
  return [by_out[s] for s in sorted(images)]


def process(job: Job, fmt: str, args, name: Optional[str] = None
            ) -> Tuple[str, Optional[str], bool]:
  """Makes and writes one mask.

  Args:
    job: the input.
    fmt: 'parts' or 'labels'.
    args: parsed CLI options (classes, ids, dilate, sigma, size, output…).
    name: the output file name (default: from ``args.stem_format``).

  Returns:
    (stem, problem or None, empty) — ``problem`` says why it was skipped.
  """
  out = os.path.join(args.output_dir, name or output_name(job.stem, args.stem_format))
  if args.skip_existing and os.path.exists(out):
    return job.stem, None, False
  try:
    if fmt == 'parts':
      binary, _ = binary_from_parts(job.source, args.class_names)
    else:
      binary = binary_from_labels(job.source, args.ids, len(CONVENTIONS[args.convention]))
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many exception types for damaged files; each means "skip".
    return job.stem, f'{type(e).__name__}: {e}', False
  mask = finish(binary, args.dilate, args.sigma, args.size)
  tmp = out + '.tmp'
  Image.fromarray(mask, 'L').save(tmp, format='PNG')
  os.replace(tmp, out)  # never leave a half-written mask behind
  return job.stem, None, not mask.any()


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser."""
  p = argparse.ArgumentParser(prog='python -m interestyle_jax.data.make_masks',
                              description=__doc__.split('\n\n')[0],
                              formatter_class=cli_utils.HelpFormatter,
                              epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--input_dir', required=True, help='part masks or label maps (searched recursively)')
  p.add_argument('--output_dir', required=True, help='where <stem>.png masks are written')
  p.add_argument('--format', default='auto', choices=('auto', 'parts', 'labels'),
                 help='input format; auto tells them apart by file names')
  p.add_argument('--convention', default='face_parsing', choices=sorted(CONVENTIONS),
                 help='class-id order of label maps (ignored for parts)')
  p.add_argument('--classes', default=DEFAULT_CLASSES,
                 help='parts and aliases (brows, eyes, ears, lips, face) in the mask')
  p.add_argument('--dilate', type=float, default=5.0, help='dilation radius, output pixels')
  p.add_argument('--sigma', type=float, default=2.5, help='Gaussian sigma, output pixels (0 = hard)')
  p.add_argument('--size', type=int, default=256, help='output side (0 = input size)')
  p.add_argument('--stem_format', default='{stem}',
                 help="output name: '{stem}' keeps it, '{id}' drops leading zeros")
  p.add_argument('--match_dir', default=None,
                 help='only make masks for the images in this folder (matched by output name), '
                      'e.g. the 2,824 CelebA-HQ test images out of 30,000 annotations')
  p.add_argument('--skip_existing', action='store_true', help='keep masks already written')
  p.add_argument('--workers', type=int, default=0, help='threads, 0 = one per CPU')
  return p


def check_outputs(output_dir: str, names: Sequence[str]) -> None:
  """Checks, before any work, that every mask can be written.

  Args:
    output_dir: ``--output_dir``.
    names: the output file names.

  Raises:
    cli_utils.OutputPathError: the folder is a file or not writable, or a
      folder stands where a mask goes.
  """
  cli_utils.check_output_dir(output_dir, '--output_dir')
  blocked = [n for n in names if os.path.isdir(os.path.join(output_dir, n))]
  if blocked:
    raise cli_utils.OutputPathError(
        f'--output_dir {output_dir} holds a folder {blocked[0]} where a mask goes'
        + (f' (and {len(blocked) - 1} more)' if len(blocked) > 1 else '')
        + '; move it away or choose another --output_dir')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    0 when at least one mask was written, 1 when none was, 2 for an unusable
    argument (reported before anything is written).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  args = build_parser().parse_args(argv)
  try:
    if args.workers < 0:
      raise ValueError(f'--workers must be >= 0, got {args.workers}')
    cli_utils.check_output_dir(args.output_dir, '--output_dir')
    args.class_names = parse_classes(args.classes)
    args.ids = class_ids(args.class_names, args.convention)
    if not os.path.isdir(args.input_dir):
      raise ValueError(f'--input_dir {args.input_dir} is not a folder')
    fmt, jobs = find_jobs(args.input_dir, args.format)
    names = output_names(jobs, args.stem_format)  # every name before any write
    if args.match_dir:
      jobs = match_images(jobs, args.match_dir, args.stem_format, names)
    check_outputs(args.output_dir, [names[j.stem] for j in jobs])
  except ValueError as e:  # OutputPathError included
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(args.output_dir, exist_ok=True)
  print(f'{len(jobs)} {fmt} inputs → {args.output_dir}; classes {",".join(args.class_names)}'
        + (f' (ids {args.ids}, {args.convention})' if fmt == 'labels' else ''))
  workers = args.workers or os.cpu_count() or 1
  skipped, empty, written = [], [], 0
  # Threads: Pillow and the NumPy array ops release the GIL, and threads
  # avoid forking a process that may hold TensorFlow state.
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(process, j, fmt, args, names[j.stem]) for j in jobs]
    for f in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                  unit='mask', file=sys.stderr):
      stem, problem, is_empty = f.result()
      if problem:
        skipped.append(f'{stem}: {problem}')
        continue
      written += 1
      if is_empty:
        empty.append(stem)
  print(f'wrote {written} masks to {args.output_dir}')
  if skipped:
    skipped.sort()
    print(f'warning: skipped {len(skipped)} unreadable input(s):\n  ' +
          '\n  '.join(skipped[:8]) + ('\n  …' if len(skipped) > 8 else ''), file=sys.stderr)
  if empty:
    empty.sort()
    print(f'warning: {len(empty)} mask(s) are all zero (none of the classes found): '
          + ', '.join(empty[:8]) + (' …' if len(empty) > 8 else ''), file=sys.stderr)
  return 0 if written else 1


if __name__ == '__main__':
  sys.exit(main())

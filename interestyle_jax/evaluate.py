"""``python -m interestyle_jax.evaluate``: reconstruction metrics of an inverter.

    python -m interestyle_jax.evaluate --checkpoint ckpt/interestyle \\
        --data data/celebahq_test [--lpips ckpt/lpips] [--arcface ckpt/arcface]
    python -m interestyle_jax.evaluate --checkpoint runs/synthetic --data synthetic

For every refinement iteration t = 1..T it reports MSE and SSIM (and LPIPS /
ID similarity when ``--lpips`` / ``--arcface`` give converted networks; the
paper's MTCNN + CurricularFace ID protocol with ``--id_protocol paper``, see
:mod:`interestyle_jax.id_metric`), each
on the whole image and on the interest region (``m ⊙ ŷ`` vs ``m ⊙ y``, see
:mod:`interestyle_jax.metrics`), averaged over the images: a printed table and,
with ``--output``, a JSON file (nothing is written without it). Reconstructions are compared at the encoder size (the generator
output average-pooled, as in training) with const noise and running BatchNorm
statistics: the refinement is ``inference.refine``, the function the training
run's validation and the ``Inverter`` run.

``--data`` is a folder with ``images/`` and ``masks/`` (paired by file stem,
decoded by ``interestyle_jax.data.folder``; the target is the input image), or
``synthetic``: the held-out set of the synthetic training world, rebuilt from
the training config (``WORKDIR/config.json``, or ``--config``), whose targets
are the clean generator images and whose true latents add ``latent_mse``;
``synthetic:FAMILY`` is the same held-out images with the uninterest content
of one family (``synthetic:skin``; families in
:mod:`interestyle_jax.synthetic_families`), e.g. one kept out of training.

The batch is split over all local devices: ``jax.jit`` of ``jax.shard_map``
over a 1-D mesh with axis 'batch'. A progress bar goes to stderr
(``--no_progress`` turns it off). Exit status: 0 on success, 2 for an
unusable checkpoint, network, data folder or argument (the output path is
checked before any work).
"""

import argparse
import os
import sys
from typing import List, Tuple

import jax

from interestyle_jax import artifacts, cli_utils, id_metric, synthetic_families
from interestyle_jax.data import folder
from interestyle_jax.inference import load_inverter
# The library names, importable from here as before (the notebook, scripts).
from interestyle_jax.scoring import (evaluate, folder_batches, format_table,  # noqa: F401
                                     load_net, load_training_config, make_eval_fn, make_mesh,
                                     synthetic_batches, workdir_of)


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser."""
  p = argparse.ArgumentParser(
      prog='python -m interestyle_jax.evaluate', formatter_class=cli_utils.HelpFormatter,
      description='MSE / SSIM / LPIPS / ID similarity of the inversions, whole image and '
                  'interest region, after every refinement iteration. Exit status 2 for an '
                  'unusable checkpoint, network, data folder or argument.')
  p.add_argument('--checkpoint', required=True,
                 help='`convert restyle` directory or train.py workdir')
  p.add_argument('--data', required=True,
                 help="folder with images/ and masks/, 'synthetic' (the held-out set "
                      'of the training world; needs a train.py workdir or --config) or '
                      "'synthetic:FAMILY' (those images with one uninterest family, e.g. "
                      "'synthetic:skin')")
  p.add_argument('--n_iters', type=int, default=None,
                 help="refinement iterations (default: the model's)")
  p.add_argument('--batch_size', type=int, default=8,
                 help='images per step over all local devices (rounded up to a multiple '
                      'of the device count)')
  p.add_argument('--lpips', default=None, help='`convert lpips` directory (adds LPIPS)')
  p.add_argument('--arcface', default=None,
                 help='`convert irse50` directory (adds ID similarity)')
  p.add_argument('--id_protocol', choices=('fast', 'paper'), default='fast',
                 help="ID similarity: 'fast' = --arcface on ReStyle's fixed face box (the "
                      "training loss's network); 'paper' = MTCNN-aligned faces embedded by "
                      'CurricularFace IR-101, as the paper reports (needs --curricularface, '
                      '--mtcnn)')
  p.add_argument('--curricularface', default=None,
                 help='`convert curricularface` directory (--id_protocol paper)')
  p.add_argument('--mtcnn', default=None, help='`convert mtcnn` directory (--id_protocol paper)')
  p.add_argument('--config', default=None,
                 help="training config for --data synthetic (default: WORKDIR/config.json)")
  p.add_argument('--limit', type=int, default=None,
                 help='evaluate only the first N images (default: all)')
  p.add_argument('--output', default=None,
                 help='JSON file to write the results to (default: none, only printed)')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  return p


def _print_skipped(skipped: List[Tuple[str, str]]) -> None:
  for file, reason in skipped:
    print(f'skipped {file}: {reason}', file=sys.stderr)


def main(argv=None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    0 on success, 2 for an unusable checkpoint, network, data or argument.
  """
  args = build_parser().parse_args(argv)
  for name in ('n_iters', 'batch_size', 'limit'):
    value = getattr(args, name)
    if value is not None and value < 1:
      print(f'error: --{name} must be >= 1, got {value}', file=sys.stderr)
      return 2
  problem = id_metric.check_args(args.id_protocol, args.arcface, args.curricularface,
                                 args.mtcnn)
  if problem:
    print(f'error: {problem}', file=sys.stderr)
    return 2
  n_dev = jax.local_device_count()
  batch_size = -(-args.batch_size // n_dev) * n_dev
  skipped: List[Tuple[str, str]] = []
  try:
    if args.output is not None:
      cli_utils.check_output_file(args.output, '--output', example='evaluation.json')
    inverter = load_inverter(args.checkpoint)
    n_iters = args.n_iters or inverter.n_iters
    from interestyle_jax.models.arcface import load_arcface  # pylint: disable=g-import-not-at-top
    from interestyle_jax.models.lpips import load_lpips  # pylint: disable=g-import-not-at-top
    size = inverter.encoder_size
    lpips_net = load_net('--lpips', args.lpips, 'lpips', load_lpips, size) if args.lpips else None
    arcface_net = (load_net('--arcface', args.arcface, 'arcface', load_arcface, size)
                   if args.arcface else None)
    paper_id = (id_metric.load_paper_id(args.curricularface, args.mtcnn)
                if args.id_protocol == 'paper' else None)
    source, _, family = args.data.partition(':')
    if source == 'synthetic' and not os.path.isdir(args.data):
      if family:
        synthetic_families.check_families((family,), f'--data {args.data}')
      config = load_training_config(workdir_of(args.checkpoint), args.config)
      total = config.synthetic.get('num_heldout')
      total = min(total, args.limit) if total and args.limit else total
      batches = synthetic_batches(inverter, config, batch_size, args.limit, family or None)
    else:
      pairs = folder.pair_folder(args.data)[:args.limit]
      total = len(pairs)
      batches = folder_batches(args.data, size, batch_size, args.limit, skipped, pairs=pairs)
    result = evaluate(inverter, batches, n_iters, lpips_net, arcface_net, total=total,
                      progress=not args.no_progress, paper_id=paper_id)
  except (FileNotFoundError, artifacts.ArtifactError, folder.DataValidationError,
          ValueError) as e:  # OutputPathError is a ValueError
    _print_skipped(skipped)
    print(f'error: {e}', file=sys.stderr)
    return 2
  _print_skipped(skipped)
  result.update(checkpoint=args.checkpoint, data=args.data, devices=n_dev,
                id_protocol=args.id_protocol,
                skipped=[{'file': f, 'reason': r} for f, r in skipped])
  print(format_table(result))
  print(f'{result["n_images"]} image(s), {n_dev} device(s)'
        + (f', {len(skipped)} skipped' if skipped else ''))
  if 'id_paper' in result:
    print(id_metric.format_summary(result['id_paper']))
  if args.output is not None:
    cli_utils.save_json(result, args.output)
    print(f'wrote {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""``python -m interestyle_jax.convert KIND SRC DST``.

Exit status: 0 written; 1 the conversion failed (unreadable or mismatching
checkpoint, DST exists without ``--overwrite``, torch missing); 2 a path on
the command line is unusable (SRC missing, DST a file or not writable), told
in one line before anything slow runs.
"""

import argparse
import importlib
import logging
import os
import sys

from interestyle_jax import artifacts
from interestyle_jax.convert.common import (ConversionError, PathError,
                                            check_output_location, logger, trust_checkpoints)

# kind -> (module, help). Each module exposes ``convert(src, dst, overwrite, **extra)``.
CONVERTERS = {
    'stylegan2': ('interestyle_jax.convert.stylegan2',
                  'StyleGAN2 generator (.pt with g_ema [+ latent_avg], a bare state dict, '
                  'or an NVIDIA StyleGAN2-ADA / StyleGAN3-stylegan2 network .pkl)'),
    'restyle': ('interestyle_jax.convert.restyle',
                'ReStyle-pSp / IntereStyle checkpoint (.pt with state_dict, latent_avg, opts)'),
    'irse50': ('interestyle_jax.convert.irse50',
               'ArcFace IR-SE50 model_ir_se50.pth (ID loss; or an encoder init with '
               '--as_encoder_backbone)'),
    'curricularface': ('interestyle_jax.convert.curricularface',
                       "CurricularFace IR-101 CurricularFace_Backbone.pth (the paper's ID "
                       'metric: evaluate --id_protocol paper)'),
    'lpips': ('interestyle_jax.convert.lpips',
              'LPIPS v0.1 AlexNet linear weights (alex.pth) plus --alexnet PATH'),
    'mtcnn': ('interestyle_jax.convert.mtcnn',
              'MTCNN face detector: pnet/rnet/onet .pt (facenet-pytorch) or .npy (pSp / ReStyle)'),
}


def build_parser() -> argparse.ArgumentParser:
  """The CLI parser, one sub-command per checkpoint kind."""
  parser = argparse.ArgumentParser(
      prog='python -m interestyle_jax.convert',
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      description='Convert a PyTorch checkpoint into a Flax model directory '
                  '(Orbax checkpoint + model.json).')
  sub = parser.add_subparsers(dest='kind', required=True)
  for kind, (module, help_text) in CONVERTERS.items():
    p = sub.add_parser(kind, help=help_text,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mod = importlib.import_module(module)
    p.add_argument('src', help=getattr(mod, 'SRC_HELP', 'PyTorch checkpoint file'))
    p.add_argument('dst', help='output directory (must not exist)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing DST')
    p.add_argument('--trust_checkpoint', action='store_true',
                   help='unpickle SRC in full (can run code in the file); by default only '
                        'tensors and plain containers are read')
    if hasattr(mod, 'add_arguments'):
      mod.add_arguments(p)
  return parser


# Arguments that name an input file, per converter (besides SRC).
INPUT_FLAGS = {'lpips': ('alexnet',)}
# Converters whose SRC may be a folder (MTCNN's three weight files).
SRC_MAY_BE_DIR = ('mtcnn',)


def check_paths(args) -> None:
  """Fails fast, in one line, on input files that are missing or an unusable DST.

  Args:
    args: the parsed command line.

  Raises:
    PathError: naming the path and the fix.
  """
  inputs = [('SRC', args.src)] + [(f'--{f}', getattr(args, f)) for f in
                                   INPUT_FLAGS.get(args.kind, ()) if getattr(args, f, None)]
  for what, path in inputs:
    if what == 'SRC' and args.kind in SRC_MAY_BE_DIR:
      if not os.path.exists(path):
        raise PathError(f'SRC {path} does not exist: give the folder (or facenet-pytorch '
                        '.whl) holding the pnet/rnet/onet weights')
      continue
    if not os.path.isfile(path):
      state = 'is a directory' if os.path.isdir(path) else 'does not exist'
      raise PathError(f'{what} {path} {state}: give the path of the PyTorch '
                                'checkpoint file to convert')
  check_output_location(args.dst)


class _StderrHandler(logging.Handler):
  """Prints records to the *current* ``sys.stderr`` (which tests swap per call)."""

  def emit(self, record):
    try:
      print(self.format(record), file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def _print_warnings() -> None:
  """Shows the converters' warnings (NaN / inf tensors) on stderr, once per process."""
  if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    handler = _StderrHandler(logging.WARNING)
    handler.setFormatter(logging.Formatter('warning: %(message)s'))
    logger.addHandler(handler)


def main(argv=None) -> int:
  """Runs the converter CLI; returns the process exit code."""
  args = build_parser().parse_args(argv)
  module = importlib.import_module(CONVERTERS[args.kind][0])
  extra = {k: v for k, v in vars(args).items() if k not in ('kind', 'src', 'dst', 'overwrite',
                                                       'trust_checkpoint')}
  try:
    # Paths first: reading and converting a 1024 px generator takes minutes.
    check_paths(args)
  except PathError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  _print_warnings()
  try:
    # Refuse an existing DST before spending minutes reading the source.
    artifacts.check_destination(args.dst, args.overwrite)
    with trust_checkpoints(args.trust_checkpoint):
      out = module.convert(args.src, args.dst, overwrite=args.overwrite, **extra)
  except (ConversionError, OSError, ImportError) as e:  # OSError: e.g. disk full
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

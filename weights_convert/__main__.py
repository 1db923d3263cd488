"""Command line: torchvision weights -> fna_jax seed checkpoint.

Usage (one command line)::

    python -m weights_convert --arch mobilenet_v2 --src mobilenet_v2-b0353104.pth
        --dst seeds/mobilenet_v2 [--overwrite] [--num_classes N]
        [--check [--check_size 224] [--check_batch 2] [--impl cpu|xla] [--tol 1e-4]]

Writes an orbax checkpoint (``fna_jax.seeds.save_seed``) and prints the path and parameter count.
``--check`` (needs torchvision) reloads the written checkpoint, runs one random batch through it
and through torchvision's model with the same weights, both in eval mode, prints the largest
absolute logit difference and exits with status 1 when it exceeds ``--tol * max(1, max |logit|)``.
Bad input (missing file, existing ``--dst`` without ``--overwrite``, keys or shapes that do not fit
the architecture) prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

import jax

from fna_jax import arch as arch_lib
from fna_jax import seeds
from weights_convert import torchvision as tv


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m weights_convert', description=__doc__.split('\n')[0])
  p.add_argument('--arch', required=True, choices=sorted(arch_lib.SEEDS),
                 help='torchvision network the weights belong to')
  p.add_argument('--src', required=True, help='torchvision .pth file (a state dict, possibly '
                 "wrapped in {'state_dict': ...} or {'model': ...})")
  p.add_argument('--dst', required=True, help='seed checkpoint directory to create')
  p.add_argument('--num_classes', type=int, default=None,
                 help='classifier outputs (default: read from the weights)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing --dst')
  p.add_argument('--check', action='store_true',
                 help='compare logits with torchvision on a random batch (needs torchvision)')
  p.add_argument('--check_size', type=int, default=224, help='image side of the check batch')
  p.add_argument('--check_batch', type=int, default=2, help='images in the check batch')
  p.add_argument('--impl', choices=('cpu', 'xla'), default=None,
                 help='fna_jax conv implementation for --check (default: per backend)')
  p.add_argument('--tol', type=float, default=1e-4,
                 help='largest allowed |logit error| / max(1, max |torch logit|)')
  return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
  """Converts, writes and optionally checks; returns the exit status."""
  arch = arch_lib.seed(args.arch)
  state_dict = tv.load_torchvision_checkpoint(args.src)
  variables = tv.convert(state_dict, arch, num_classes=args.num_classes)
  path = seeds.save_seed(args.dst, arch, variables, overwrite=args.overwrite)
  n_params = tv.count_params(variables)
  n_stats = sum(v.size for v in jax.tree.leaves(variables['batch_stats']))
  print(f'wrote {path}: {args.arch}, {n_params:,} parameters '
        f'(+ {n_stats:,} batch-norm statistics) from {args.src}')
  if not args.check:
    return 0
  _, restored = seeds.load_seed(path)
  err, scale = tv.logit_parity(arch, state_dict, restored, batch=args.check_batch,
                               size=args.check_size, impl=args.impl)
  bound = args.tol * max(1.0, scale)
  print(f'check: {args.check_batch}x3x{args.check_size}x{args.check_size} random batch, '
        f'max |logit error| = {err:.3e} (max |torch logit| = {scale:.3e}, allowed {bound:.3e})')
  if scale < 1e-3:
    print('check: note: the logits are all near zero (untrained weights?), so this check says '
          'little', file=sys.stderr)
  if not err <= bound:
    print(f'check FAILED: fna_jax and torchvision logits differ by {err:.3e} > {bound:.3e}',
          file=sys.stderr)
    return 1
  print('check passed')
  return 0


def main(argv=None) -> int:
  """Entry point; bad input (files, keys, shapes) gives a one-line error and status 2."""
  args = parse_args(argv)
  try:
    return run(args)
  except (tv.ConversionError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())

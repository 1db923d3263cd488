"""Params and MAdds of a whole task network (backbone of an architecture + the config's head).

  python scripts/count_cost.py --config=configs/seg_cityscapes.py --arch=ARCH \
      [--input_size=1024,2048] [--output_stride=8]

prints exactly one line, ``params=<int> madds=<int>``: parameter scalars (BN scale/bias included,
running statistics not) and multiply-accumulates for one image of ``--input_size`` (height,width;
default ``config.cost_input_size``), counted by :mod:`fna_jax.cost`.

``ARCH`` is a JSON file (``arch.json`` of a search), a file in the release notation (``arch.txt``)
or a seed name (``mobilenet_v2``).  The backbone is used as the task uses it, i.e. as the config's
search space runs its architectures (:meth:`fna_jax.spaces.SearchSpace.task_arch`): for the
segmentation space at output stride 16 (strides traded for dilation; ``--output_stride=8`` for
paper Tab. 2's last rows, where the ASPP rates double to 12/24/36) and without MobileNetV2's last
1280-channel 1x1 conv, so that ``--arch=mobilenet_v2`` counts the seed's network as the task
network uses it (MobileNetV2 + DeepLabv3, the paper's baseline) and a searched ``arch.json``
counts what the search reported.  The head is the config's (``config.head``: DeepLabv3 for
Cityscapes, SimpleBaseline for MPII, RetinaNet for COCO) with the config's outputs.  E.g. paper
Tab. 4's MobileNetV2 RetinaNet (11.49M, 133.05B)::

  python scripts/count_cost.py --config=configs/det_coco_retinanet.py --arch=mobilenet_v2 \
      --input_size=800,1088
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fna_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file',
                                          lock_config=True)
_ARCH = flags.DEFINE_string(
    'arch', None, 'a JSON architecture file, a file in the release notation, or a seed name '
    '(mobilenet_v2, resnet18, resnet34, resnet50)')
_INPUT_SIZE = flags.DEFINE_list(
    'input_size', None, 'height,width of the image the MAdds are counted for '
    '(default: config.cost_input_size)')
_OUTPUT_STRIDE = flags.DEFINE_integer(
    'output_stride', None, "the backbone's output stride, e.g. 8 (default: the search space's, 16 "
    'for segmentation); the head adapts to it (DeepLab: ASPP rates 12/24/36 at 8)')


class CountCostError(ValueError):
  """An architecture or input size that cannot be counted (reported without a traceback)."""


def parse_input_size(values, default) -> tuple[int, int]:
  """``['1024', '2048']`` (or the default) -> ``(1024, 2048)``; CountCostError when malformed."""
  values = default if values is None else values
  try:
    size = tuple(int(v) for v in values)
  except (TypeError, ValueError):
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise CountCostError(f'--input_size must be two positive integers HEIGHT,WIDTH, got '
                         f'{",".join(str(v) for v in values)!r}')
  return size


def count_task_cost(config, arch_spec: str, input_size=None, output_stride: int | None = None):
  """``Cost(params, madds)`` of the task network of ``arch_spec`` (path or seed name)."""
  from fna_jax import arch as arch_lib  # light: errors below come before jax is imported
  size = parse_input_size(input_size, config.cost_input_size)
  if output_stride is not None and output_stride not in (8, 16, 32):
    raise CountCostError(f'--output_stride must be 8, 16 or 32, got {output_stride}')
  try:
    arch = arch_lib.load(arch_spec)
  except (arch_lib.ArchError, ValueError, UnicodeDecodeError) as e:
    raise CountCostError(f'--arch={arch_spec}: cannot read an architecture: {e}') from None
  from fna_jax import build
  from fna_jax import cost as cost_lib
  arch = build.space(config).task_arch(arch, output_stride)
  return cost_lib.count(build.task_network(config, arch), None, (1, *size, 3))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # keep stderr to warnings and errors
  try:
    params, madds = count_task_cost(_CONFIG.value, _ARCH.value, _INPUT_SIZE.value,
                                    _OUTPUT_STRIDE.value)
  except CountCostError as e:
    sys.exit(f'count_cost.py: error: {e}')
  print(f'params={params} madds={madds}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'arch'])
  cli.run(main)

"""Params and MAdds of a whole task network (backbone of an architecture + the config's head).

  python scripts/count_cost.py --config=configs/seg_cityscapes.py --arch=ARCH \
      [--input_size=1024,2048]

prints exactly one line, ``params=<int> madds=<int>``: parameter scalars (BN scale/bias included,
running statistics not) and multiply-accumulates for one image of ``--input_size`` (height,width;
default ``config.cost_input_size``), counted by :mod:`fna_jax.cost`.

``ARCH`` is a JSON file (``arch.json`` of a search), a file in the release notation (``arch.txt``)
or a seed name (``mobilenet_v2``).  The backbone is used as the task uses it, i.e. as the config's
search space runs its architectures (see :func:`task_arch`): for the segmentation space at output
stride 16 (strides traded for dilation) and without MobileNetV2's last 1280-channel 1x1 conv, so
that ``--arch=mobilenet_v2`` counts the seed's network as the task network uses it (MobileNetV2 +
DeepLabv3, the paper's baseline) and a searched ``arch.json`` counts what the search reported.
The head is the config's (``config.head``: DeepLabv3 for Cityscapes) with
``config.data.num_classes`` outputs.
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


class CountCostError(ValueError):
  """An architecture or input size that cannot be counted (reported without a traceback)."""


def task_arch(arch, space):
  """``arch`` as the task network of ``space`` runs it.

  * Output stride: when ``arch``'s output stride is larger than that of ``space`` (16 for the
    segmentation space), strides are traded for dilation by
    :meth:`~fna_jax.arch.Arch.with_output_stride`.  An architecture already at that output stride
    (e.g. one derived by the search) keeps its strides and dilations; dilation changes neither
    Params nor MAdds.
  * The last 1x1 conv: ``space.last_channels`` (``None`` for segmentation: DeepLabv3 reads the
    last stage's 320 channels, so MobileNetV2's 1280-channel conv is not part of the network).
  """
  target = space.skeleton().output_stride
  if arch.output_stride > target:
    arch = arch.with_output_stride(target)
  return arch.replace(last_channels=space.last_channels)


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


def count_task_cost(config, arch_spec: str, input_size=None):
  """``Cost(params, madds)`` of the task network of ``arch_spec`` (path or seed name)."""
  from fna_jax import arch as arch_lib  # light: errors below come before jax is imported
  size = parse_input_size(input_size, config.cost_input_size)
  try:
    arch = arch_lib.load(arch_spec)
  except (arch_lib.ArchError, ValueError, UnicodeDecodeError) as e:
    raise CountCostError(f'--arch={arch_spec}: cannot read an architecture: {e}') from None
  from fna_jax import build
  from fna_jax import cost as cost_lib
  arch = task_arch(arch, build.space(config))
  return cost_lib.count(build.task_network(config, arch), None, (1, *size, 3))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # keep stderr to warnings and errors
  try:
    params, madds = count_task_cost(_CONFIG.value, _ARCH.value, _INPUT_SIZE.value)
  except CountCostError as e:
    sys.exit(f'count_cost.py: error: {e}')
  print(f'params={params} madds={madds}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'arch'])
  cli.run(main)

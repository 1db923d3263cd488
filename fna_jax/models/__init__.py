"""Flax (linen) networks built from architectures.

``build(arch, num_classes=1000)`` gives the ImageNet classifier of an :class:`~fna_jax.arch.Arch`;
``Backbone`` is its body.  Inputs are NHWC float32 images normalised as torchvision does.
"""

from fna_jax import arch as arch_lib
from fna_jax.models.backbone import Backbone, Classifier, Stage
from fna_jax.models.blocks import BasicBlock, Bottleneck, MBConv, make_block
from fna_jax.ops import Conv


def build(arch, num_classes: int = 1000, conv=Conv) -> Classifier:
  """The linen classifier for ``arch`` (an :class:`~fna_jax.arch.Arch` or a seed name).

  Use as ``variables = module.init(rng, x, train=False)``; ``x`` is ``(N, H, W, 3)`` float32.
  ``conv``: the convolution module (:func:`fna_jax.ops.conv_module` fixes its implementation).
  """
  if isinstance(arch, str):
    arch = arch_lib.seed(arch)
  return Classifier(arch, num_classes, conv)


__all__ = ['Backbone', 'BasicBlock', 'Bottleneck', 'Classifier', 'MBConv', 'Stage', 'build',
           'make_block']

"""Building blocks, each built from one op name (see :mod:`fna_jax.arch`).

Parameter names inside a block are fixed, so converters and remapping address them by path:

* :class:`MBConv`: ``expand_conv``/``expand_bn`` (absent when expansion is 1), ``dw_conv``/``dw_bn``,
  ``project_conv``/``project_bn``.
* :class:`BasicBlock`: ``conv1``/``bn1`` (the searched conv), ``conv2``/``bn2``, and
  ``downsample_conv``/``downsample_bn`` when stride or width change.
* :class:`Bottleneck`: ``conv1``/``bn1`` (1x1), ``conv2``/``bn2`` (the searched conv),
  ``conv3``/``bn3`` (1x1), ``downsample_conv``/``downsample_bn``.

All blocks take and return NHWC float arrays and a ``train`` flag that selects batch statistics
(train) or running averages (eval).  BatchNorm matches torch: eps 1e-5, running-average momentum 0.1
(flax ``momentum=0.9``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from fna_jax import arch as arch_lib
from fna_jax.ops import Conv

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # flax convention: new = m * old + (1 - m) * batch; torch's momentum 0.1


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      name=name)


class MBConv(nn.Module):
  """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise -> BN -> ReLU6 -> 1x1 -> BN.

  The residual is added when ``stride == 1 and c_in == c_out``.  Hidden width is
  ``c_in * expansion``.  The depthwise conv has dilation ``dilation`` and padding
  ``dilation * (kernel - 1) // 2``.
  """
  c_in: int
  c_out: int
  kernel: int
  expansion: int
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    hidden = self.c_in * self.expansion
    h = x
    if self.expansion != 1:
      h = conv(hidden, 1, name='expand_conv')(h)
      h = jax.nn.relu6(batch_norm(train, 'expand_bn')(h))
    h = conv(hidden, self.kernel, self.stride, self.dilation, groups=hidden, name='dw_conv')(h)
    h = jax.nn.relu6(batch_norm(train, 'dw_bn')(h))
    h = conv(self.c_out, 1, name='project_conv')(h)
    h = batch_norm(train, 'project_bn')(h)
    if self.stride == 1 and self.c_in == self.c_out:
      h = h + x
    return h


class BasicBlock(nn.Module):
  """ResNet basic block; ``conv1`` is the searched ``kernel x kernel`` conv with ``groups``."""
  c_in: int
  c_out: int
  kernel: int = 3
  groups: int = 1
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    h = conv(self.c_out, self.kernel, self.stride, self.dilation, self.groups, name='conv1')(x)
    h = jax.nn.relu(batch_norm(train, 'bn1')(h))
    h = conv(self.c_out, 3, 1, self.dilation, name='conv2')(h)
    h = batch_norm(train, 'bn2')(h)
    shortcut = x
    if self.stride != 1 or self.c_in != self.c_out:
      shortcut = conv(self.c_out, 1, self.stride, name='downsample_conv')(x)
      shortcut = batch_norm(train, 'downsample_bn')(shortcut)
    return jax.nn.relu(h + shortcut)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck (stride on the middle conv); ``conv2`` is the searched conv.

  Width of the middle convs is ``c_out // 4``.
  """
  c_in: int
  c_out: int
  kernel: int = 3
  groups: int = 1
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    width = self.c_out // arch_lib.BOTTLENECK_EXPANSION
    h = conv(width, 1, name='conv1')(x)
    h = jax.nn.relu(batch_norm(train, 'bn1')(h))
    h = conv(width, self.kernel, self.stride, self.dilation, self.groups, name='conv2')(h)
    h = jax.nn.relu(batch_norm(train, 'bn2')(h))
    h = conv(self.c_out, 1, name='conv3')(h)
    h = batch_norm(train, 'bn3')(h)
    shortcut = x
    if self.stride != 1 or self.c_in != self.c_out:
      shortcut = conv(self.c_out, 1, self.stride, name='downsample_conv')(x)
      shortcut = batch_norm(train, 'downsample_bn')(shortcut)
    return jax.nn.relu(h + shortcut)


def make_block(family: str, op_name: str, c_in: int, c_out: int, stride: int, dilation: int,
               name: str, conv: Any = Conv) -> nn.Module | None:
  """The block for one layer of an architecture; ``None`` for ``skip`` (identity)."""
  op = arch_lib.parse_op(op_name)
  if op.is_skip:
    return None
  if family == arch_lib.MBCONV:
    return MBConv(c_in, c_out, op.kernel, op.expansion, stride, dilation, conv=conv, name=name)
  cls = BasicBlock if family == arch_lib.RESNET_BASIC else Bottleneck
  return cls(c_in, c_out, op.kernel, op.groups, stride, dilation, conv=conv, name=name)

"""The network body of an :class:`~fna_jax.arch.Arch`, and the ImageNet classifier on top of it.

Parameter paths (stable; converters and remapping rely on them)::

    backbone/stem_conv, backbone/stem_bn
    backbone/stage{i}/layer{j}/...        (block names: see fna_jax.models.blocks)
    backbone/last_conv, backbone/last_bn  (MBConv nets with last_channels, e.g. 1280)
    classifier                            (Dense, ImageNet head)

Skip layers own nothing and have no entry.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fna_jax import arch as arch_lib
from fna_jax.models.blocks import batch_norm, make_block
from fna_jax.ops import Conv


def activation(family: str):
  """ReLU6 for MBConv networks (MobileNetV2), ReLU for ResNets."""
  return jax.nn.relu6 if family == arch_lib.MBCONV else jax.nn.relu


class Stage(nn.Module):
  """The layers of one stage, applied in order (``skip`` layers are the identity)."""
  family: str
  stage: arch_lib.Stage
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    st = self.stage
    for j, op in enumerate(st.ops):
      c_in, c_out, stride = st.layer_io(j)
      block = make_block(self.family, op, c_in, c_out, stride, st.dilation, f'layer{j}',
                         self.conv)
      if block is not None:
        x = block(x, train)
    return x


class Backbone(nn.Module):
  """Stem, stages and optional last 1x1 conv of ``arch``.

  ``__call__(x, train)`` takes ``x`` of shape ``(N, H, W, 3)`` and returns a dict of feature maps:
  ``'stem'``, ``'stage0'`` ... ``'stage{n-1}'`` and, when ``arch.last_channels`` is set, ``'last'``;
  ``'out'`` is the final one.  Strides: ``arch.stage_output_strides()``.
  """
  arch: arch_lib.Arch
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = self.arch
    feats = {}
    x = feats['stem'] = stem(a.family, a.stem, x, train, self.conv)
    for i, st in enumerate(a.stages):
      x = feats[f'stage{i}'] = Stage(a.family, st, self.conv, name=f'stage{i}')(x, train)
    if a.last_channels:
      x = feats['last'] = last_conv(a.family, a.last_channels, x, train, self.conv)
    feats['out'] = x
    return feats


def stem(family: str, s: arch_lib.Stem, x, train: bool, conv: Any = Conv):
  """``stem_conv`` -> ``stem_bn`` -> activation [-> 3x3/2 max-pool]; call inside a compact module."""
  x = conv(s.channels, s.kernel, s.stride, name='stem_conv')(x)
  x = activation(family)(batch_norm(train, 'stem_bn')(x))
  if s.max_pool:
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  return x


def last_conv(family: str, channels: int, x, train: bool, conv: Any = Conv):
  """``last_conv`` (1x1) -> ``last_bn`` -> activation; call inside a compact module."""
  x = conv(channels, 1, name='last_conv')(x)
  return activation(family)(batch_norm(train, 'last_bn')(x))


class Classifier(nn.Module):
  """ImageNet classifier: backbone -> global average pool -> dropout -> Dense(num_classes).

  Dropout is 0.2 for MBConv networks (torchvision's MobileNetV2) and 0 for ResNets; it needs a
  ``'dropout'`` rng when ``train=True``.  Returns logits ``(N, num_classes)``.
  """
  arch: arch_lib.Arch
  num_classes: int = 1000
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    feats = Backbone(self.arch, self.conv, name='backbone')(x, train)
    h = jnp.mean(feats['out'], axis=(1, 2))
    if self.arch.family == arch_lib.MBCONV:
      h = nn.Dropout(0.2, deterministic=not train)(h)
    return nn.Dense(self.num_classes, name='classifier')(h)

"""DeepLabv3 and DeepLabv3+ heads (paper Sec. 4.1.1, Tab. 2): ASPP on the last searched stage's output.

ASPP: a 1x1 branch, three atrous 3x3 branches (rates 6, 12, 18 at output stride 16) and an
image-pooling branch, 256 channels each; concatenated -> 1x1 conv -> BN -> ReLU -> dropout 0.1 ->
1x1 classifier with bias.  The dropout is channel-wise (:func:`channel_dropout`), as the
``nn.Dropout2d(0.1)`` of the authors' release (``fna_seg/.../head/ASPP_Sep.py`` in
github.com/JaminFong/FNA).  The logits are returned at feature resolution; the network upsamples
them bilinearly.  The atrous branches are either depthwise-separable (``separable=True``: dw conv
with dilation r, BN, ReLU, 1x1 conv, BN, ReLU) or regular 3x3 convs with dilation r, BN, ReLU.

* ``deeplabv3`` (:class:`DeepLabV3Head`): separable ASPP.  MobileNetV2 + this head is the paper's
  DeepLabv3 row of Tab. 2 (2.57M Params, 24.52B MAdds at 1024x2048, output stride 16).
* ``deeplabv3+`` (:class:`DeepLabV3PlusHead`, ``separable=False``): the DeepLabv3+ network of the
  paper's Tab. 2 (FNA++ with DeepLabv3+: 5.71M Params, 210.11B MAdds at output stride 16).  Regular
  3x3 atrous ASPP branches; a decoder (Chen et al. 2018): the low-level feature map (MobileNetV2:
  the 24-channel stage at stride 4) -> 1x1 conv to 48 channels -> BN -> ReLU; the ASPP output
  upsampled bilinearly to its size (aligned corners by default, ``align_corners``) and
  concatenated; two regular 3x3 convs of ``channels``, each
  followed by BN and ReLU; the classifier.  Logits are returned at the low-level resolution.
* ``deeplabv3+_light`` (:class:`DeepLabV3PlusHead`, ``separable=True``): the same layout with
  depthwise-separable atrous branches and decoder convs (about 2.6M Params and 44B MAdds with
  MobileNetV2 at 1024x2048); the embedded demo uses it.

Parameter paths under the head: ``aspp/b0_conv``, ``aspp/b0_bn``; separable atrous branches
``aspp/b{1,2,3}_dw_conv``, ``..._dw_bn``, ``..._pw_conv``, ``..._pw_bn``, regular ones
``aspp/b{1,2,3}_conv``, ``..._bn``; ``aspp/pool_conv``, ``aspp/pool_bn``, ``aspp/project_conv``,
``aspp/project_bn``, ``classifier``.  Decoder: ``decoder/low_conv``, ``decoder/low_bn``; separable
``decoder/sep{1,2}_{dw,pw}_{conv,bn}``, regular ``decoder/fuse{1,2}_conv``,
``decoder/fuse{1,2}_bn``.  Everything two heads share has the same path, so a DeepLabv3 head's
1x1, pooling, projection and classifier layers remap into either DeepLabv3+ head (and its
separable atrous branches into the light one).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fna_jax.models.blocks import batch_norm
from fna_jax.ops import Conv
from fna_jax.tasks.seg.resize import resize_bilinear


def relu_bn(y, train: bool, name: str):
  """BatchNorm ``name`` then ReLU; call inside a compact module (creates ``name`` there)."""
  return jax.nn.relu(batch_norm(train, name)(y))


def channel_dropout(y, rate: float, train: bool):
  """torch's ``nn.Dropout2d`` on NHWC ``y``: in training each (example, channel) map is zeroed
  with probability ``rate`` as a whole, else scaled by ``1 / (1 - rate)``; identity in eval.

  Call inside a compact module (creates an ``nn.Dropout`` there; needs a ``'dropout'`` rng when
  ``train``).
  """
  return nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train)(y)


def separable_conv(x, channels: int, train: bool, prefix: str, dilation: int = 1,
                   conv: Any = Conv):
  """Depthwise 3x3 (dilation ``dilation``) -> BN -> ReLU -> 1x1 to ``channels`` -> BN -> ReLU.

  Call inside a compact module; creates ``{prefix}_dw_conv``, ``{prefix}_dw_bn``,
  ``{prefix}_pw_conv`` and ``{prefix}_pw_bn`` there.
  """
  y = conv(x.shape[-1], 3, dilation=dilation, groups=x.shape[-1], name=f'{prefix}_dw_conv')(x)
  y = relu_bn(y, train, f'{prefix}_dw_bn')
  return relu_bn(conv(channels, 1, name=f'{prefix}_pw_conv')(y), train,
                 f'{prefix}_pw_bn')


def atrous_conv(x, channels: int, train: bool, prefix: str, dilation: int = 1,
                conv: Any = Conv):
  """Regular 3x3 conv (dilation ``dilation``) to ``channels`` -> BN -> ReLU.

  Call inside a compact module; creates ``{prefix}_conv`` and ``{prefix}_bn`` there.
  """
  return relu_bn(conv(channels, 3, dilation=dilation, name=f'{prefix}_conv')(x), train,
                 f'{prefix}_bn')


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling; ``(N, h, w, C) -> (N, h, w, channels)``.

  ``separable``: depthwise-separable atrous branches (DeepLabv3 here) or regular 3x3 ones (the
  paper's DeepLabv3+, Tab. 2).
  """
  channels: int = 256
  rates: tuple[int, ...] = (6, 12, 18)
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  separable: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = self.channels
    branches = [relu_bn(self.conv(c, 1, name='b0_conv')(x), train, 'b0_bn')]
    for i, r in enumerate(self.rates, start=1):
      branch = separable_conv if self.separable else atrous_conv
      branches.append(branch(x, c, train, f'b{i}', dilation=r, conv=self.conv))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = relu_bn(self.conv(c, 1, name='pool_conv')(pooled), train, 'pool_bn')
    # Upsampling a 1x1 map bilinearly (either rule) repeats its value: a broadcast.
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (c,)))
    y = jnp.concatenate(branches, axis=-1)
    return relu_bn(self.conv(c, 1, name='project_conv')(y), train, 'project_bn')


class DeepLabV3Head(nn.Module):
  """ASPP -> dropout -> 1x1 classifier; ``feats['out'] (N, h, w, C) -> (N, h, w, num_classes)``.

  Channel-wise dropout (:func:`channel_dropout`) needs a ``'dropout'`` rng when ``train=True``.
  """
  num_classes: int
  channels: int = 256
  rates: tuple[int, ...] = (6, 12, 18)
  dropout: float = 0.1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, feats, train: bool = False):
    y = ASPP(self.channels, tuple(self.rates), self.conv, name='aspp')(feats['out'], train)
    y = channel_dropout(y, self.dropout, train)
    return self.conv(self.num_classes, 1, use_bias=True, name='classifier')(y)


class DeepLabV3PlusHead(nn.Module):
  """ASPP + decoder on ``feats[low_level]``; ``-> (N, h_low, w_low, num_classes)``.

  ``low_level``: key of the backbone feature dict to decode with (MobileNetV2: ``'stage1'``, the
  24-channel stage at stride 4).  ``separable=False`` (default): regular 3x3 convs in the ASPP's
  atrous branches and the decoder, the paper's DeepLabv3+ network (Tab. 2: 5.71M Params, 210.11B
  MAdds at 1024x2048, output stride 16); ``True``: depthwise-separable ones (the light head of
  the demo).  ``align_corners``: the ASPP output is upsampled to the low-level size with aligned
  corners (True, as the authors' release upsamples) or half-pixel centres (``jax.image.resize``).
  Channel-wise dropout (:func:`channel_dropout`) on the ASPP output needs a ``'dropout'`` rng when
  ``train=True``.
  """
  num_classes: int
  channels: int = 256
  rates: tuple[int, ...] = (6, 12, 18)
  dropout: float = 0.1
  low_level: str = 'stage1'
  low_channels: int = 48
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  separable: bool = False
  align_corners: bool = True

  @nn.compact
  def __call__(self, feats, train: bool = False):
    y = ASPP(self.channels, tuple(self.rates), self.conv, self.separable,
             name='aspp')(feats['out'], train)
    y = channel_dropout(y, self.dropout, train)
    low = feats[self.low_level]
    dec = _Decoder(self.channels, self.low_channels, self.conv, self.separable, name='decoder')
    y = dec(resize_bilinear(y, low.shape[1:3], self.align_corners), low, train)
    return self.conv(self.num_classes, 1, use_bias=True, name='classifier')(y)


class _Decoder(nn.Module):
  """DeepLabv3+ decoder: concat(upsampled ASPP, 1x1-reduced low-level) -> two 3x3 convs
  (depthwise-separable when ``separable``, else regular, each + BN + ReLU)."""
  channels: int
  low_channels: int
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  separable: bool = True

  @nn.compact
  def __call__(self, y, low, train: bool = False):
    low = relu_bn(self.conv(self.low_channels, 1, name='low_conv')(low), train,
                  'low_bn')
    y = jnp.concatenate([y, low], axis=-1)
    for i in (1, 2):
      if self.separable:
        y = separable_conv(y, self.channels, train, f'sep{i}', conv=self.conv)
      else:
        y = atrous_conv(y, self.channels, train, f'fuse{i}', conv=self.conv)
    return y

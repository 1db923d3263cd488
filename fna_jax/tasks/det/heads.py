"""RetinaNet's neck and head (Lin et al. 2017) as the paper uses them (Sec. 4.2.1, Tab. 4), in
MMDetection v1's form (``mmdet/models/necks/fpn.py``, ``mmdet/models/anchor_heads/retina_head.py``).

:class:`FPN`: the body's feature maps ``in_features`` (MobileNetV2: the 32-, 96- and 320-channel
stages at strides 8, 16 and 32; the 24-channel stage is not used) -> lateral 1x1 convs to
``channels`` -> top-down pathway (nearest-neighbour 2x upsampling, sum) -> 3x3 output convs: P3-P5;
P6 = stride-2 3x3 conv on the last body output C5 (not on P5), P7 = stride-2 3x3 conv on ReLU(P6).
Every conv has a bias and no normalisation.

:class:`RetinaNetHead`: the FPN, then two branches shared over the levels, each ``num_convs`` x
(3x3 conv to ``channels`` + ReLU); the classification branch ends in a 3x3 conv to
``num_anchors * num_classes`` logits (sigmoid, no background class), the box branch in a 3x3 conv
to ``num_anchors * 4`` box deltas.

Outputs: ``{'cls': (N, A, num_classes), 'box': (N, A, 4)}`` with the levels P3..P7 concatenated and,
within a level, anchors ordered by row, column, then anchor (the channel order ``a * C + c`` of
MMDetection's ``permute(0, 2, 3, 1).reshape(N, -1, C)``): the order of
:func:`fna_jax.tasks.det.anchors.retinanet_anchors`.

Initialisation (MMDetection v1's ``init_weights``): FPN convs xavier-uniform, bias 0; head convs
normal(0, 0.01^2), bias 0; the classifier's bias ``-log((1 - p) / p)`` for the prior ``p = 0.01``
(focal loss paper, Sec. 4.1), so that training starts with every anchor at probability 0.01.
:func:`fna_jax.models.init.random_like` (what the loops use) draws them so: rules registered here.
(``module.init`` alone gives kaiming kernels and zero biases, :class:`fna_jax.ops.Conv`'s.)

Parameter paths under the head: ``fpn/lateral{i}``, ``fpn/output{i}``, ``fpn/p6``, ``fpn/p7``,
``cls_conv{i}``, ``box_conv{i}``, ``cls_out``, ``box_out`` (each ``kernel``, ``bias``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.models import init as init_lib
from fna_jax.ops import Conv

PRIOR_PROB = 0.01   # focal loss paper Sec. 4.1: the classifier's initial foreground probability
HEAD_STD = 0.01     # MMDetection v1 RetinaHead.init_weights: normal_init(std=0.01)


def prior_bias(prior: float = PRIOR_PROB) -> float:
  """``-log((1 - prior) / prior)``: sigmoid(bias) == prior (MMDetection's bias_init_with_prob)."""
  return -math.log((1.0 - prior) / prior)


def _xavier_uniform(shape, dtype, rng):
  """torch's ``xavier_uniform_`` on a conv kernel ``(kh, kw, C_in, C_out)``: U(-a, a),
  ``a = sqrt(6 / (fan_in + fan_out))``, fans times the kernel area."""
  kh, kw, c_in, c_out = shape
  a = math.sqrt(6.0 / (kh * kw * (c_in + c_out)))
  return rng.uniform(-a, a, shape).astype(dtype)


def _keys_match(pattern: str):
  rx = re.compile(pattern)
  return lambda keys: 'head' in keys and rx.fullmatch('/'.join(keys[keys.index('head') + 1:]))


init_lib.register_leaf_init(_keys_match(r'fpn/(lateral\d+|output\d+|p6|p7)/kernel'),
                            _xavier_uniform)
init_lib.register_leaf_init(
    _keys_match(r'cls_out/bias'),
    lambda shape, dtype, rng: np.full(shape, prior_bias(), dtype))
init_lib.register_normal_init(_keys_match(r'(cls_conv\d+|box_conv\d+|cls_out|box_out)/kernel'),
                              HEAD_STD)


def upsample_nearest_2x(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """``(N, h, w, C) -> (N, H, W, C)``: each pixel repeated 2x2, cropped to ``size`` (exactly
  torch's ``interpolate(scale_factor=2, mode='nearest')`` when ``size == (2h, 2w)``)."""
  y = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return y[:, :size[0], :size[1]]


class FPN(nn.Module):
  """``feats -> [P3, P4, P5, P6, P7]``, each ``(N, h_l, w_l, channels)`` (module docstring)."""
  in_features: Sequence[str] = ('stage2', 'stage4', 'stage6')
  channels: int = 256
  conv: Any = Conv

  @nn.compact
  def __call__(self, feats):
    inputs = [feats[k] for k in self.in_features]
    laterals = [self.conv(self.channels, 1, use_bias=True, name=f'lateral{i}')(x)
                for i, x in enumerate(inputs)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + upsample_nearest_2x(laterals[i],
                                                              laterals[i - 1].shape[1:3])
    outs = [self.conv(self.channels, 3, use_bias=True, name=f'output{i}')(x)
            for i, x in enumerate(laterals)]
    p6 = self.conv(self.channels, 3, stride=2, use_bias=True, name='p6')(inputs[-1])
    p7 = self.conv(self.channels, 3, stride=2, use_bias=True, name='p7')(jax.nn.relu(p6))
    return outs + [p6, p7]


class RetinaNetHead(nn.Module):
  """``feats -> {'cls': (N, A, num_classes), 'box': (N, A, 4)}`` (module docstring).

  Attributes:
    num_classes: object classes (COCO: 80; no background class, sigmoid outputs).
    channels: FPN and head width (256).
    num_convs: 3x3 convs per branch before the outputs (4).
    num_anchors: anchors per position (3 scales x 3 ratios = 9).
    in_features: body feature maps the FPN reads, finest first (strides 8, 16, 32).
    conv: the convolution module (:func:`fna_jax.build.conv`).
  """
  num_classes: int = 80
  channels: int = 256
  num_convs: int = 4
  num_anchors: int = 9
  in_features: Sequence[str] = ('stage2', 'stage4', 'stage6')
  conv: Any = Conv

  @nn.compact
  def __call__(self, feats, train: bool = False):
    del train  # no normalisation or dropout in RetinaNet's neck and head
    levels = FPN(tuple(self.in_features), self.channels, self.conv, name='fpn')(feats)
    # Created once and applied to every level: the branches are shared over the levels.
    cls_convs = [self.conv(self.channels, 3, use_bias=True, name=f'cls_conv{i}')
                 for i in range(self.num_convs)]
    box_convs = [self.conv(self.channels, 3, use_bias=True, name=f'box_conv{i}')
                 for i in range(self.num_convs)]
    cls_out = self.conv(self.num_anchors * self.num_classes, 3, use_bias=True, name='cls_out')
    box_out = self.conv(self.num_anchors * 4, 3, use_bias=True, name='box_out')
    cls, box = [], []
    for p in levels:
      c = b = p
      for conv in cls_convs:
        c = jax.nn.relu(conv(c))
      for conv in box_convs:
        b = jax.nn.relu(conv(b))
      n = p.shape[0]
      cls.append(cls_out(c).reshape(n, -1, self.num_classes))
      box.append(box_out(b).reshape(n, -1, 4))
    return {'cls': jnp.concatenate(cls, axis=1), 'box': jnp.concatenate(box, axis=1)}

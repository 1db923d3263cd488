"""Semantic segmentation: pixel-wise cross-entropy that ignores label 255."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_LABEL = 255


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL):
  """Mean softmax cross-entropy over the pixels whose label is not ``ignore_label``.

  Args:
    logits: ``(N, H, W, C)`` float.
    labels: ``(N, H, W)`` int, values in ``[0, C)`` or ``ignore_label``.

  Returns:
    A scalar; 0 when every pixel is ignored.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# --------------------------------------------------------------------------- the task network
HEADS = ('deeplabv3', 'deeplabv3+')


def make_head(config, name: str | None = None, impl: str | None = None):
  """The segmentation head of ``config.head`` (``name`` overrides ``config.head.name``).

  ``'deeplabv3'``: :class:`~fna_jax.models.heads.DeepLabV3Head`; ``'deeplabv3+'``: the same ASPP
  plus the decoder on ``config.head.low_level`` (default ``'stage1'``, MobileNetV2's stride-4
  stage), :class:`~fna_jax.models.heads.DeepLabV3PlusHead`.
  """
  from fna_jax.models.heads import DeepLabV3Head, DeepLabV3PlusHead
  h = config.head
  name = name or h.get('name', 'deeplabv3')
  common = dict(num_classes=config.data.num_classes, channels=h.channels, rates=tuple(h.rates),
                dropout=h.dropout, impl=impl or config.get('conv_impl') or None)
  if name == 'deeplabv3':
    return DeepLabV3Head(**common)
  if name == 'deeplabv3+':
    return DeepLabV3PlusHead(**common, low_level=h.get('low_level', 'stage1'))
  raise ValueError(f'unknown head {name!r}; expected one of {HEADS}')


def make_network(body, config, head: str | None = None, frozen_bn: bool = False,
                 impl: str | None = None):
  """``SegmentationNet(body, make_head(config, head, impl))``; ``body`` a Backbone or Supernet."""
  from fna_jax.models.segmentation import SegmentationNet
  return SegmentationNet(body, make_head(config, head, impl), frozen_bn=frozen_bn)

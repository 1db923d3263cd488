"""Segmentation network: a body (``Backbone`` or ``Supernet``) + a DeepLabv3 head.

``SegmentationNet(body, head)(x, train, **body_kwargs)`` maps images ``(N, H, W, 3)`` to logits
``(N, H, W, num_classes)``: the head's logits at the body's output stride, upsampled bilinearly
(half-pixel centres) to the input size.  ``body_kwargs`` go to the body: ``path=`` or
``op_weights=`` for a supernet.  Parameter paths: ``backbone/...`` and ``head/...``.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class SegmentationNet(nn.Module):
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = False, **body_kwargs):
    feats = self.backbone(x, train, **body_kwargs)
    logits = self.head(feats, train)
    n, h, w, _ = x.shape
    return jax.image.resize(logits, (n, h, w, logits.shape[-1]), 'bilinear')

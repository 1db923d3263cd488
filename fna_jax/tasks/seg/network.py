"""Segmentation network: a body (``Backbone`` or ``Supernet``) + a DeepLab head.

``SegmentationNet(body, head)(x, train, **body_kwargs)`` maps images ``(N, H, W, 3)`` to logits
``(N, H, W, num_classes)``: the head's logits (at the body's output stride for DeepLabv3, at the
low-level stride for DeepLabv3+), upsampled bilinearly to the input size: with aligned corners
(``align_corners=True``, the default: the authors' release upsamples with
``F.interpolate(..., mode='bilinear', align_corners=True)``,
:func:`fna_jax.tasks.seg.resize.resize_bilinear_align_corners`) or half-pixel centres
(``jax.image.resize``).
``body_kwargs`` go to the body: ``path=`` or ``op_weights=`` for a supernet.  Parameter paths:
``backbone/...`` and ``head/...``.

``frozen_bn=True`` runs the body's BatchNorm layers on their running statistics even when
``train=True`` and leaves those statistics unchanged (their scale and bias still train); the head
trains normally.  Fine-tuning with small per-device batches is the usual reason.
"""

from __future__ import annotations

import flax.linen as nn

from fna_jax.tasks.seg.resize import resize_bilinear


class SegmentationNet(nn.Module):
  backbone: nn.Module
  head: nn.Module
  frozen_bn: bool = False
  align_corners: bool = True

  def __call__(self, x, train: bool = False, **body_kwargs):
    feats = self.backbone(x, train and not self.frozen_bn, **body_kwargs)
    logits = self.head(feats, train)
    n, h, w, _ = x.shape
    return resize_bilinear(logits, (h, w), self.align_corners)

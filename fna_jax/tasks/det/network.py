"""Detection network: a body (``Backbone`` or ``Supernet``) + RetinaNet's FPN and head (paper
Sec. 4.2).

``DetectionNet(body, head)(x, train, **body_kwargs)`` maps images ``(N, H, W, 3)`` to
``{'cls': (N, A, num_classes), 'box': (N, A, 4)}`` (:class:`~fna_jax.tasks.det.heads.RetinaNetHead`;
``A`` anchors over P3-P7).  ``body_kwargs`` go to the body (``path=`` or ``op_weights=`` for a
supernet).  Parameter paths: ``backbone/...`` and ``head/...``.

``frozen_bn=True`` runs the body's BatchNorm layers on their running statistics even when
``train=True`` (as :class:`fna_jax.tasks.seg.SegmentationNet`).
"""

from __future__ import annotations

import flax.linen as nn


class DetectionNet(nn.Module):
  backbone: nn.Module
  head: nn.Module
  frozen_bn: bool = False

  def __call__(self, x, train: bool = False, **body_kwargs):
    feats = self.backbone(x, train and not self.frozen_bn, **body_kwargs)
    return self.head(feats, train)

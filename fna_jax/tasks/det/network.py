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

from fna_jax.tasks.base import BodyHeadNet


class DetectionNet(BodyHeadNet):
  """:class:`~fna_jax.tasks.base.BodyHeadNet` (the module docstring says what goes in and out)."""

"""Pose network: a body (``Backbone`` or ``Supernet``) + a heatmap head (paper Sec. 4.3).

``PoseNet(body, head)(x, train, **body_kwargs)`` maps person crops ``(N, H, W, 3)`` to joint
heatmaps ``(N, H/4, W/4, num_joints)`` with SimpleBaseline's head on a stride-32 body (256x256 ->
64x64x16).  ``body_kwargs`` go to the body (``path=`` or ``op_weights=`` for a supernet).
Parameter paths: ``backbone/...`` and ``head/...``.

``frozen_bn=True`` runs the body's BatchNorm layers on their running statistics even when
``train=True`` (as :class:`fna_jax.tasks.seg.SegmentationNet`); the head trains normally.
"""

from __future__ import annotations

from fna_jax.tasks.base import BodyHeadNet


class PoseNet(BodyHeadNet):
  """:class:`~fna_jax.tasks.base.BodyHeadNet` (the module docstring says what goes in and out)."""

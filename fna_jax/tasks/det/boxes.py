"""Box geometry for RetinaNet (paper Sec. 4.2.1): IoU, delta coding and the max-IoU assigner.

The paper builds its detectors on MMDetection v1 (Sec. 4.2.1); everything here follows v1,
including its pixel convention: a box is ``(x1, y1, x2, y2)`` in pixels with INCLUSIVE
right/bottom edges, so its width is ``x2 - x1 + 1`` and its area ``(x2-x1+1) * (y2-y1+1)``
(v1 ``mmdet/core/bbox/geometry.py``, ``mmdet/core/bbox/transforms.py``; MMDetection v2 dropped
the ``+ 1``).

All functions here are jit-able with static shapes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
  """numpy when every input is a numpy array (or list), else jax.numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def box_iou(a, b):
  """IoU of every box of ``a`` ``(N, 4)`` with every box of ``b`` ``(M, 4)`` -> ``(N, M)``.

  MMDetection v1 ``bbox_overlaps`` (``mmdet/core/bbox/geometry.py``, mode 'iou'): intersection
  sides ``min(x2) - max(x1) + 1`` clamped at 0, areas with ``+ 1``.  jax arrays give a jax
  array (jit-able); numpy inputs give a numpy array (used by the numpy NMS).
  """
  xp = _xp(a, b)
  a = xp.asarray(a, dtype=xp.float32)
  b = xp.asarray(b, dtype=xp.float32)
  lt = xp.maximum(a[:, None, :2], b[None, :, :2])
  rb = xp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = xp.maximum(rb - lt + 1.0, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
  area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode(anchors, gt, means: Sequence[float] = (0., 0., 0., 0.),
           stds: Sequence[float] = (1., 1., 1., 1.)):
  """Regression targets of ``gt`` boxes w.r.t. ``anchors`` (both ``(..., 4)``) -> ``(..., 4)``.

  MMDetection v1 ``bbox2delta`` (``mmdet/core/bbox/transforms.py``): centres ``(x1 + x2) / 2``,
  sizes ``x2 - x1 + 1``; ``dx = (gx - px) / pw``, ``dw = log(gw / pw)`` (same for y, h); then
  ``(d - means) / stds``.  RetinaNet in v1 uses means 0 and stds 1.
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt = jnp.asarray(gt, jnp.float32)
  px = (anchors[..., 0] + anchors[..., 2]) * 0.5
  py = (anchors[..., 1] + anchors[..., 3]) * 0.5
  pw = anchors[..., 2] - anchors[..., 0] + 1.0
  ph = anchors[..., 3] - anchors[..., 1] + 1.0
  gx = (gt[..., 0] + gt[..., 2]) * 0.5
  gy = (gt[..., 1] + gt[..., 3]) * 0.5
  gw = gt[..., 2] - gt[..., 0] + 1.0
  gh = gt[..., 3] - gt[..., 1] + 1.0
  deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], -1)
  return (deltas - jnp.asarray(means, jnp.float32)) / jnp.asarray(stds, jnp.float32)


def decode(anchors, deltas, means: Sequence[float] = (0., 0., 0., 0.),
           stds: Sequence[float] = (1., 1., 1., 1.), max_shape=None,
           wh_ratio_clip: float = 16 / 1000):
  """Boxes from ``deltas`` relative to ``anchors`` (both ``(..., 4)``) -> ``(..., 4)``.

  MMDetection v1 ``delta2bbox`` (``mmdet/core/bbox/transforms.py``): ``d * stds + means``;
  ``dw, dh`` clamped to ``+-|log(wh_ratio_clip)|``; ``gx = px + pw * dx``, ``gw = pw * exp(dw)``;
  ``x1 = gx - gw/2 + 0.5``, ``x2 = gx + gw/2 - 0.5`` (the inverse of :func:`encode` under the
  inclusive convention); with ``max_shape = (H, W)`` x is clipped to ``[0, W-1]`` and y to
  ``[0, H-1]``.  ``max_shape`` may be a pair of numbers or an array broadcasting against the
  leading axes, ``(..., 2)``.
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  d = jnp.asarray(deltas, jnp.float32) * jnp.asarray(stds, jnp.float32) + jnp.asarray(
      means, jnp.float32)
  max_ratio = float(np.abs(np.log(wh_ratio_clip)))
  dw = jnp.clip(d[..., 2], -max_ratio, max_ratio)
  dh = jnp.clip(d[..., 3], -max_ratio, max_ratio)
  px = (anchors[..., 0] + anchors[..., 2]) * 0.5
  py = (anchors[..., 1] + anchors[..., 3]) * 0.5
  pw = anchors[..., 2] - anchors[..., 0] + 1.0
  ph = anchors[..., 3] - anchors[..., 1] + 1.0
  gw = pw * jnp.exp(dw)
  gh = ph * jnp.exp(dh)
  gx = px + pw * d[..., 0]
  gy = py + ph * d[..., 1]
  x1 = gx - gw * 0.5 + 0.5
  y1 = gy - gh * 0.5 + 0.5
  x2 = gx + gw * 0.5 - 0.5
  y2 = gy + gh * 0.5 - 0.5
  if max_shape is not None:
    shape = jnp.asarray(max_shape, jnp.float32)
    h_max, w_max = shape[..., 0] - 1.0, shape[..., 1] - 1.0
    x1 = jnp.clip(x1, 0.0, w_max)
    x2 = jnp.clip(x2, 0.0, w_max)
    y1 = jnp.clip(y1, 0.0, h_max)
    y2 = jnp.clip(y2, 0.0, h_max)
  return jnp.stack([x1, y1, x2, y2], -1)


def assign(anchors, gt_boxes, gt_valid, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4,
           min_pos_iou: float = 0.0):
  """Max-IoU assignment of anchors ``(A, 4)`` to gt boxes ``(M, 4)`` -> ``(assigned, state)``.

  MMDetection v1 ``MaxIoUAssigner.assign_wrt_overlaps``
  (``mmdet/core/bbox/assigners/max_iou_assigner.py``) with ``gt_max_assign_all=True`` and no
  ignored gts, RetinaNet's configuration (``pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0``):

  1. every anchor starts ignored;
  2. an anchor whose largest IoU with any gt is in ``[0, neg_iou_thr)`` is negative;
  3. an anchor whose largest IoU is ``>= pos_iou_thr`` is positive for its best gt (on a tie,
     the first such gt);
  4. for each gt ``i`` in order, every anchor whose IoU with it equals that gt's largest IoU
     over the anchors is positive for gt ``i`` (also when step 2 made it negative, or step 3
     gave it another gt: a later gt overwrites, as v1's loop does), provided that largest IoU
     is ``>= min_pos_iou`` AND ``> 0``.

  The ``> 0`` is ours: v1 tests only ``>= min_pos_iou``, so with RetinaNet's
  ``min_pos_iou=0`` a gt that overlaps no anchor at all (max IoU 0) would make EVERY anchor
  with IoU 0 to it (nearly all of them) a positive for it.  Such a gt cannot occur with
  RetinaNet's dense anchors and the non-degenerate boxes v1 trains on, and we skip it.

  Padding gts (``gt_valid`` False) never match anything.  With no valid gt, every anchor is
  negative (v1 raises instead; images without boxes are dropped from its training set).

  Args:
    anchors: ``(A, 4)`` anchor boxes.
    gt_boxes: ``(M, 4)`` gt boxes (padding rows are arbitrary).
    gt_valid: ``(M,)`` bool, False for padding rows.
  Returns:
    ``assigned`` ``(A,)`` int32: index of the gt a positive anchor regresses to, -1 for the
    others; ``state`` ``(A,)`` int32: 1 positive, 0 negative, -1 ignored.
  """
  gt_valid = jnp.asarray(gt_valid, bool)
  num_anchors = anchors.shape[0]
  if gt_valid.shape[0] == 0:  # static: no gt rows at all
    return jnp.full((num_anchors,), -1, jnp.int32), jnp.zeros((num_anchors,), jnp.int32)
  overlaps = box_iou(gt_boxes, jnp.asarray(anchors))  # (M, A), as v1 orders it
  # Padding gts get IoU -1: below every real IoU (>= 0), so they are never an anchor's best gt.
  overlaps = jnp.where(gt_valid[:, None], overlaps, -1.0)
  # Step 4 compares IoUs for exact equality with their maxima: materialise them once, so that
  # XLA cannot recompute them in two fusions that might round differently (e.g. with FMA).
  overlaps = jax.lax.optimization_barrier(overlaps)
  any_gt = jnp.any(gt_valid)
  max_overlaps = jnp.max(overlaps, axis=0)          # per anchor, over gts
  argmax_overlaps = jnp.argmax(overlaps, axis=0)    # first maximum
  gt_max_overlaps = jnp.max(overlaps, axis=1)       # per gt, over anchors

  state = jnp.full(max_overlaps.shape, -1, jnp.int32)
  state = jnp.where((max_overlaps >= 0) & (max_overlaps < neg_iou_thr), 0, state)
  pos = max_overlaps >= pos_iou_thr
  assigned = jnp.where(pos, argmax_overlaps, -1).astype(jnp.int32)

  # Step 4, vectorised: for every anchor the LAST gt (largest index) whose max-IoU anchors
  # include it wins, as the sequential overwrites of v1's loop leave it.
  gt_ok = gt_valid & (gt_max_overlaps >= min_pos_iou) & (gt_max_overlaps > 0)
  low_quality = gt_ok[:, None] & (overlaps == gt_max_overlaps[:, None])  # (M, A)
  num_gts = overlaps.shape[0]
  last = (num_gts - 1 - jnp.argmax(low_quality[::-1], axis=0)).astype(jnp.int32)
  has_low_quality = jnp.any(low_quality, axis=0)
  assigned = jnp.where(has_low_quality, last, assigned)

  state = jnp.where(assigned >= 0, 1, state)
  state = jnp.where(any_gt, state, 0)
  assigned = jnp.where(any_gt, assigned, -1)
  return assigned, state

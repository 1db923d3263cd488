"""RetinaNet loss (paper Sec. 4.2.1: RetinaNet trained as in MMDetection v1).

Sigmoid focal loss for classification (Lin et al. 2017; v1 ``mmdet/models/losses/focal_loss.py``,
``alpha=0.25, gamma=2``) and smooth L1 on the box deltas (v1
``mmdet/models/losses/smooth_l1_loss.py``, ``beta=0.11`` in v1's RetinaNet config), both summed
and divided by the number of positive anchors, as v1's ``AnchorHead.loss`` does with
``avg_factor=num_total_samples`` (``mmdet/models/anchor_heads/anchor_head.py``,
``mmdet/core/anchor/anchor_target.py``, no sampling for RetinaNet).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from fna_jax.tasks.det import boxes as box_ops


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Element-wise sigmoid focal loss (v1 ``py_sigmoid_focal_loss``).

  ``BCE(logits, t) * (alpha t + (1 - alpha)(1 - t)) * pt ** gamma`` with ``p = sigmoid(x)``,
  ``pt = (1 - p) t + p (1 - t)`` (one minus the probability of the true outcome).  The binary
  cross-entropy is the stable ``max(x, 0) - x t + log1p(exp(-|x|))``.
  """
  x = logits.astype(jnp.float32)
  t = targets.astype(jnp.float32)
  p = jax.nn.sigmoid(x)
  pt = (1.0 - p) * t + p * (1.0 - t)
  weight = (alpha * t + (1.0 - alpha) * (1.0 - t)) * jnp.power(pt, gamma)
  bce = jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
  return bce * weight


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 0.11) -> jax.Array:
  """Element-wise smooth L1 (v1 ``smooth_l1_loss``): ``0.5 d^2 / beta`` if ``d < beta`` else
  ``d - 0.5 beta``, with ``d = |pred - target|``."""
  d = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def retinanet_loss(cls_logits: jax.Array, box_deltas: jax.Array, anchors, gt_boxes: jax.Array,
                   gt_labels: jax.Array, *, num_classes: int, pos_iou_thr: float = 0.5,
                   neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0,
                   means: Sequence[float] = (0., 0., 0., 0.),
                   stds: Sequence[float] = (1., 1., 1., 1.), alpha: float = 0.25,
                   gamma: float = 2.0, beta: float = 0.11):
  """The RetinaNet loss of a batch -> ``(total, {'cls', 'box', 'num_pos'})``.

  Per image, anchors are assigned with :func:`~fna_jax.tasks.det.boxes.assign` (v1
  ``MaxIoUAssigner``).  Classification: the focal loss over every class of every non-ignored
  anchor, target 1 only for a positive anchor's gt class (a negative's targets are all 0).
  Regression: smooth L1 of the 4 predicted deltas of each positive anchor against
  :func:`~fna_jax.tasks.det.boxes.encode` of its gt.  Both sums are divided by
  ``max(total positives in the batch, 1)``.  v1 normalises per GPU by the sum over its images
  of ``max(positives, 1)``; here the whole (global) batch is one normaliser, and an image
  with no positive adds nothing to it (v1 drops images without boxes from training, and with
  boxes every gt has at least one positive anchor).

  Args:
    cls_logits: ``(B, A, C)`` classification logits (no background column).
    box_deltas: ``(B, A, 4)`` predicted deltas.
    anchors: ``(A, 4)`` anchors, in the order of the predictions.
    gt_boxes: ``(B, M, 4)`` gt boxes; padding rows arbitrary (zeros).
    gt_labels: ``(B, M)`` int32 class ids ``0..C-1``, ``-1`` for padding rows.
  Returns:
    ``total = cls + box`` and the float32 scalars ``cls``, ``box`` and ``num_pos`` (positive
    anchors in the batch).
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt_valid = gt_labels >= 0
  assign = jax.vmap(lambda g, v: box_ops.assign(anchors, g, v, pos_iou_thr, neg_iou_thr,
                                                min_pos_iou))
  assigned, state = assign(gt_boxes, gt_valid)   # (B, A) each
  pos = state == 1
  safe = jnp.maximum(assigned, 0)
  labels = jnp.take_along_axis(gt_labels, safe, axis=1)             # (B, A)
  matched = jnp.take_along_axis(gt_boxes, safe[..., None], axis=1)  # (B, A, 4)
  # Non-positive anchors regress to themselves (target 0): finite even where the gathered
  # padding gt is degenerate, so no NaN can leak into the gradient through the mask.
  matched = jnp.where(pos[..., None], matched, anchors[None])

  onehot = jax.nn.one_hot(jnp.where(pos, labels, -1), num_classes, dtype=jnp.float32)
  cls_weight = (state >= 0).astype(jnp.float32)[..., None]
  cls_sum = jnp.sum(sigmoid_focal_loss(cls_logits, onehot, alpha, gamma) * cls_weight)

  targets = box_ops.encode(anchors[None], matched, means, stds)
  box_sum = jnp.sum(smooth_l1(box_deltas, targets, beta) * pos[..., None].astype(jnp.float32))

  num_pos = jnp.sum(pos).astype(jnp.float32)
  norm = jnp.maximum(num_pos, 1.0)
  cls_loss = cls_sum / norm
  box_loss = box_sum / norm
  return cls_loss + box_loss, {'cls': cls_loss, 'box': box_loss, 'num_pos': num_pos}

"""RetinaNet inference post-processing (paper Sec. 4.2.1: RetinaNet tested as in MMDetection v1).

v1's ``AnchorHead.get_bboxes_single`` (``mmdet/models/anchor_heads/anchor_head.py``) with
RetinaNet's test config (``nms_pre=1000, score_thr=0.05, nms iou_thr=0.5, max_per_img=100``):
per FPN level keep the ``nms_pre`` anchors of highest max-over-classes sigmoid score, decode
them, then class-wise NMS (``mmdet/core/post_processing/bbox_nms.py`` ``multiclass_nms``).
The first half (:func:`top_candidates`) is jit-able and runs on the device with static shapes;
the NMS is numpy on the host (its output size is data-dependent).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.tasks.det import boxes as box_ops


def top_candidates(cls_logits: jax.Array, box_deltas: jax.Array, anchors,
                   level_counts: Sequence[int], nms_pre: int = 1000, *, image_hw,
                   means: Sequence[float] = (0., 0., 0., 0.),
                   stds: Sequence[float] = (1., 1., 1., 1.)):
  """The decoded top candidates of each level -> ``boxes (B, K, 4), scores (B, K, C)``.

  On each level (``level_counts`` anchors, in the order of ``anchors``) the ``nms_pre``
  anchors of highest ``max_c sigmoid(logit)`` are kept (all of them when the level has no
  more, or when ``nms_pre <= 0``), their deltas decoded with ``max_shape=image_hw`` (v1
  ``delta2bbox``); ``K = sum_l min(nms_pre, count_l)``.  Scores are sigmoid probabilities,
  in descending order of the max score within a level (``lax.top_k``; ties keep the lower
  anchor index first).

  Args:
    cls_logits: ``(B, A, C)``; box_deltas: ``(B, A, 4)``; anchors: ``(A, 4)``.
    level_counts: static anchors per level, summing to ``A``.
    nms_pre: static candidates per level.
    image_hw: ``(H, W)`` to clip the boxes to (the padded canvas; the evaluator clips to the
      real image after rescaling), or an array ``(B, 2)`` of per-image sizes.
  """
  level_counts = tuple(int(c) for c in level_counts)
  if sum(level_counts) != cls_logits.shape[1]:
    raise ValueError(f'level_counts {level_counts} sum to {sum(level_counts)}, '
                     f'not the {cls_logits.shape[1]} anchors of the predictions')
  anchors = jnp.asarray(anchors, jnp.float32)
  hw = jnp.asarray(image_hw, jnp.float32)
  if hw.ndim == 1:
    hw = jnp.broadcast_to(hw, (cls_logits.shape[0], 2))
  out_boxes, out_scores = [], []
  start = 0
  for count in level_counts:
    scores = jax.nn.sigmoid(cls_logits[:, start:start + count].astype(jnp.float32))
    deltas = box_deltas[:, start:start + count].astype(jnp.float32)
    level_anchors = jnp.broadcast_to(anchors[start:start + count], deltas.shape)
    if 0 < nms_pre < count:
      _, idx = jax.lax.top_k(jnp.max(scores, axis=-1), nms_pre)  # (B, nms_pre)
      scores = jnp.take_along_axis(scores, idx[..., None], axis=1)
      deltas = jnp.take_along_axis(deltas, idx[..., None], axis=1)
      level_anchors = jnp.take_along_axis(level_anchors, idx[..., None], axis=1)
    out_boxes.append(box_ops.decode(level_anchors, deltas, means, stds,
                                    max_shape=hw[:, None, :]))
    out_scores.append(scores)
    start += count
  return jnp.concatenate(out_boxes, axis=1), jnp.concatenate(out_scores, axis=1)


def nms(boxes, scores, iou_thr: float) -> np.ndarray:
  """Greedy NMS (numpy) -> indices of the kept boxes, in descending score order.

  v1's NMS (``mmdet/ops/nms/src/nms_kernel.cu``): visit boxes by descending score (ties: lower
  index first, a stable sort), keep a box unless a kept box overlaps it with IoU ``> iou_thr``
  (v1 ``+ 1`` areas, :func:`~fna_jax.tasks.det.boxes.box_iou`).
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scores = np.asarray(scores, np.float32).reshape(-1)
  order = np.argsort(-scores, kind='stable')
  keep = []
  while order.size:
    i = order[0]
    keep.append(i)
    if order.size == 1:
      break
    iou = box_ops.box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
    order = order[1:][iou <= iou_thr]
  return np.asarray(keep, np.int64)


def multiclass_nms(boxes, scores, score_thr: float = 0.05, iou_thr: float = 0.5,
                   max_num: int = 100):
  """Class-wise NMS (numpy) -> ``dets (n, 5) [x1, y1, x2, y2, score], labels (n,)``.

  v1 ``multiclass_nms`` (``mmdet/core/post_processing/bbox_nms.py``) for boxes shared by all
  classes: for each class ``c`` the candidates with score ``> score_thr`` go through
  :func:`nms`, kept ones labelled ``c``; classes are concatenated in order (each in descending
  score); when more than ``max_num`` remain, the ``max_num`` highest scores are kept, sorted by
  descending score (stable).  ``max_num <= 0`` keeps all.

  Args:
    boxes: ``(K, 4)`` candidate boxes.
    scores: ``(K, C)`` per-class probabilities (no background column: labels are ``0..C-1``).
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scores = np.asarray(scores, np.float32)
  dets, labels = [], []
  for c in range(scores.shape[1]):
    sel = np.nonzero(scores[:, c] > score_thr)[0]
    if sel.size == 0:
      continue
    keep = sel[nms(boxes[sel], scores[sel, c], iou_thr)]
    dets.append(np.concatenate([boxes[keep], scores[keep, c][:, None]], axis=1))
    labels.append(np.full(keep.shape, c, np.int64))
  if not dets:
    return np.zeros((0, 5), np.float32), np.zeros((0,), np.int64)
  dets = np.concatenate(dets, axis=0).astype(np.float32)
  labels = np.concatenate(labels, axis=0)
  if 0 < max_num < dets.shape[0]:
    order = np.argsort(-dets[:, 4], kind='stable')[:max_num]
    dets, labels = dets[order], labels[order]
  return dets, labels

"""Pictures of detections next to the ground truth (paper Sec. 4.2's detection results)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from fna_jax.data import transforms as _transforms

GT_COLOUR = (40, 220, 40)
PRED_COLOUR = (240, 40, 40)


def draw_boxes(image, boxes, labels, class_names: Sequence[str], scores=None,
               colour=PRED_COLOUR) -> np.ndarray:
  """uint8 ``(H, W, 3)`` ``image`` (normalised float or uint8) with ``boxes`` ``(n, 4)`` (x1, y1,
  x2, y2 in its pixels, inclusive corners) outlined and labelled ``class [score]``."""
  img = Image.fromarray(_transforms.unnormalize(image).copy())
  draw = ImageDraw.Draw(img)
  boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, np.float64)
  labels = np.zeros((0,), int) if labels is None else np.asarray(labels)
  for i, (box, label) in enumerate(zip(boxes, labels)):
    if label < 0:
      continue
    draw.rectangle([float(v) for v in box], outline=colour, width=1)
    text = class_names[int(label)] if 0 <= label < len(class_names) else str(int(label))
    if scores is not None:
      text += f' {float(scores[i]):.2f}'
    draw.text((float(box[0]) + 2, float(box[1]) + 1), text, fill=colour)
  return np.asarray(img)


def save_detection_pair(path, image, gt_boxes, gt_labels, boxes, labels, scores,
                        class_names: Sequence[str]) -> np.ndarray:
  """Writes one PNG: the image with its ground-truth boxes | with the detections.

  Args:
    image: ``(H, W, 3)`` ImageNet-normalised float (the rescaled evaluation image) or uint8.
    gt_boxes, boxes: ``(n, 4)`` in that image's pixels (``gt_boxes`` None: left empty).
    gt_labels, labels: ``(n,)`` class indices; scores: ``(n,)`` the detections' scores.
  """
  out = np.concatenate([draw_boxes(image, gt_boxes, gt_labels, class_names, None, GT_COLOUR),
                        draw_boxes(image, boxes, labels, class_names, scores, PRED_COLOUR)],
                       axis=1)
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(out).save(path, format='PNG')
  return out

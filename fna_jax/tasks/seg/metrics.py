"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy (paper Sec. 4.1).

The evaluation protocol is Cityscapes': mIoU over the 19 train ids, pixels labelled 255 ignored.
:func:`confusion_matrix` runs on the device (jit-able, also on batch-sharded arrays, where it gives
the global matrix); everything after it is host-side numpy on the small ``(C, C)`` matrix.

Accumulating over a dataset: the per-batch matrix is int32 (exact up to 2**31 - 1 pixels per
cell, about 1000 Cityscapes images); sum the batches on the host in int64::

  total = np.zeros((C, C), np.int64)
  for batch in batches:
    total += np.asarray(cm_fn(batch['label'], preds), np.int64)
  print(format_iou_table(iou_from_confusion(total), CITYSCAPES_CLASSES))
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.data import demo as _demo
from fna_jax.data.transforms import IGNORE_LABEL
from fna_jax.tasks.seg import cityscapes as _cityscapes

# The 19 Cityscapes train ids in order (train id k is CITYSCAPES_CLASSES[k]).
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(_cityscapes.CLASS_NAMES)
# The embedded demo's 6 classes: 0 background, 1..5 the shapes (fna_jax.data.demo).
DEMO_CLASSES: tuple[str, ...] = tuple(_demo.CLASS_NAMES)


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """Pixel confusion matrix, rows = ground truth, columns = prediction.

  Pixels whose label is ``ignore_label`` or outside ``[0, num_classes)`` are not counted.
  Predictions must lie in ``[0, num_classes)`` (an ``argmax`` over the class axis does); a pixel
  with a prediction outside it is not counted either.  Pure jax: jit-able; when ``labels`` and
  ``preds`` are sharded (e.g. on the batch axis over a mesh) under jit, the result is the matrix
  over all shards.

  Args:
    labels: integer ground truth of any shape, e.g. ``(N, H, W)`` (uint8 or int32).
    preds: integer predicted classes, the same shape.
    num_classes: C.
    ignore_label: label value to skip (255).

  Returns:
    int32 ``(C, C)``: ``cm[g, p]`` = number of pixels of class ``g`` predicted as ``p``.
  """
  labels = jnp.asarray(labels)
  preds = jnp.asarray(preds)
  if labels.shape != preds.shape:
    raise ValueError(f'labels {labels.shape} and preds {preds.shape} must have the same shape')
  c = int(num_classes)
  if c <= 0:
    raise ValueError(f'num_classes must be positive, got {num_classes}')
  labels = labels.astype(jnp.int32)
  preds = preds.astype(jnp.int32)
  valid = ((labels != ignore_label) & (labels >= 0) & (labels < c) & (preds >= 0) & (preds < c))
  index = jnp.where(valid, labels * c + preds, 0).reshape(-1)
  counts = jnp.zeros((c * c,), jnp.int32).at[index].add(valid.reshape(-1).astype(jnp.int32))
  return counts.reshape(c, c)


def _check_square(cm) -> np.ndarray:
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'a confusion matrix must be square (C, C), got shape {cm.shape}')
  return cm.astype(np.float64)


def iou_from_confusion(cm) -> np.ndarray:
  """Per-class intersection over union ``TP / (TP + FP + FN)``.

  Args:
    cm: ``(C, C)`` confusion matrix (rows ground truth, columns prediction), numpy or jax.

  Returns:
    float64 ``(C,)``; NaN for a class that occurs neither in the ground truth nor in the
    predictions (0 for one that is predicted but absent from the ground truth).
  """
  cm = _check_square(cm)
  tp = np.diag(cm)
  union = cm.sum(axis=0) + cm.sum(axis=1) - tp  # TP + FP + FN
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm) -> float:
  """Mean of :func:`iou_from_confusion` over the classes whose IoU is defined (not NaN).

  Returns NaN when no class is defined (an empty matrix).
  """
  iou = iou_from_confusion(cm)
  defined = ~np.isnan(iou)
  return float(iou[defined].mean()) if defined.any() else float('nan')


def pixel_accuracy(cm) -> float:
  """Fraction of counted pixels predicted correctly, ``trace(cm) / sum(cm)`` (NaN when empty)."""
  cm = _check_square(cm)
  total = cm.sum()
  return float(np.trace(cm) / total) if total > 0 else float('nan')


def format_iou_table(iou, class_names: Sequence[str]) -> str:
  """A per-class IoU table (percent, 2 decimals) ending with the mIoU line.

  Classes with an undefined (NaN) IoU show ``n/a`` and do not enter the mean.

  Args:
    iou: ``(C,)`` per-class IoU in [0, 1] (from :func:`iou_from_confusion`).
    class_names: C names.

  Returns:
    The table, lines joined by newlines (no trailing newline).
  """
  iou = np.asarray(iou, np.float64)
  names = [str(n) for n in class_names]
  if iou.ndim != 1 or len(names) != iou.shape[0]:
    raise ValueError(f'{len(names)} class names for IoU of shape {iou.shape}')
  width = max([len('class'), len('mIoU')] + [len(n) for n in names])
  rule = '-' * (width + 10)
  lines = [f'{"class":<{width}}  {"IoU (%)":>8}', rule]
  for name, v in zip(names, iou):
    lines.append(f'{name:<{width}}  {"n/a" if np.isnan(v) else f"{100 * v:.2f}":>8}')
  defined = ~np.isnan(iou)
  m = iou[defined].mean() if defined.any() else float('nan')
  lines.append(rule)
  lines.append(f'{"mIoU":<{width}}  {"n/a" if np.isnan(m) else f"{100 * m:.2f}":>8}'
               f'  ({int(defined.sum())}/{len(names)} classes)')
  return '\n'.join(lines)

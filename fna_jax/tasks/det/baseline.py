"""The trivial baseline a detector must beat: boxes at the class prior.

Every validation image gets the same detections, learnt from the training boxes without looking
at any image: per class, the training boxes (corners as fractions of their image's width and
height) are clustered into at most ``per_class`` boxes (k-means, a few Lloyd iterations), and each
cluster centre becomes a detection of that class scaled to the validation image, scored by the
class's share of the training boxes times the cluster's share of the class.  Its COCO AP is what
"knowing where objects of each class usually are, and how large" scores; a network that detects
must be far above it.
"""

from __future__ import annotations

import numpy as np

from fna_jax.tasks.det import coco_eval


def _kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> tuple[np.ndarray,
                                                                            np.ndarray]:
  """``(centres (k', 4), counts (k',))`` of Lloyd's k-means on ``x`` ``(n, 4)`` (empty clusters
  dropped), initialised with ``k`` distinct points chosen at random."""
  rng = np.random.default_rng(seed)
  centres = x[rng.choice(len(x), size=min(k, len(x)), replace=False)]
  for _ in range(iters):
    assign = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    centres = np.stack([x[assign == j].mean(0) if np.any(assign == j) else centres[j]
                        for j in range(len(centres))])
  assign = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
  counts = np.bincount(assign, minlength=len(centres))
  keep = counts > 0
  return centres[keep], counts[keep]


def prior_boxes(train_source, num_classes: int, per_class: int = 20,
                indices=None) -> list[tuple[int, np.ndarray, float]]:
  """``[(class, box (4,) as fractions of width/height, score), ...]`` from the training boxes."""
  indices = range(len(train_source)) if indices is None else indices
  boxes = {c: [] for c in range(num_classes)}
  for i in indices:
    e = train_source[i]
    h, w = np.asarray(e['image']).shape[:2]
    for box, label in zip(np.asarray(e['boxes'], np.float64), np.asarray(e['labels'])):
      boxes[int(label)].append(box / [w, h, w, h])
  total = sum(len(v) for v in boxes.values())
  out = []
  for c, v in boxes.items():
    if not v:
      continue
    centres, counts = _kmeans(np.asarray(v), per_class, seed=c)
    for centre, n in zip(centres, counts):
      out.append((c, centre, len(v) / total * n / len(v)))
  return out


def prior_boxes_ap(train_source, val_source, num_classes: int, per_class: int = 20) -> dict:
  """COCO AP, AP50, ... (:func:`fna_jax.tasks.det.coco_eval.evaluate`) of :func:`prior_boxes`
  predicted on every image of ``val_source``."""
  priors = prior_boxes(train_source, num_classes, per_class)
  gt = val_source.coco_gt()
  category_ids = tuple(int(c) for c in val_source.CATEGORY_IDS)
  dets = []
  for im in gt['images']:
    w, h = im['width'], im['height']
    boxes = np.asarray([b * [w, h, w, h] for _, b, _ in priors])
    scores = np.asarray([s for _, _, s in priors])
    labels = np.asarray([c for c, _, _ in priors])
    dets += coco_eval.to_coco_detections(im['id'], np.concatenate([boxes, scores[:, None]], 1),
                                         labels, category_ids)
  metrics, _ = coco_eval.evaluate(gt, dets)
  return metrics

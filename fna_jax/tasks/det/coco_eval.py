"""COCO box mAP with pycocotools (paper Sec. 4.2.2, Tab. 4: mAP on MS-COCO).

As MMDetection v1 evaluates (``mmdet/core/evaluation/coco_utils.py`` ``coco_eval`` and
``det2json``/``xyxy2xywh`` in ``mmdet/datasets/coco.py``): detections become COCO result dicts
with ``bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` (v1's inclusive pixel convention), then
``COCOeval(iouType='bbox')`` over every image of the ground truth; the metrics are its first
six ``stats``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Sequence

import numpy as np

METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def to_coco_detections(image_id: int, dets, labels, category_ids: Sequence[int]) -> list[dict]:
  """One image's detections -> COCO result dicts.

  Args:
    image_id: the COCO image id.
    dets: ``(n, 5)`` ``[x1, y1, x2, y2, score]`` in the original image's pixels.
    labels: ``(n,)`` contiguous class ids ``0..C-1``.
    category_ids: class id -> dataset category id.
  Returns:
    ``[{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}]`` with ``w = x2 - x1 + 1``
    (v1 ``xyxy2xywh``).
  """
  dets = np.asarray(dets, np.float64).reshape(-1, 5)
  labels = np.asarray(labels).reshape(-1)
  out = []
  for (x1, y1, x2, y2, score), label in zip(dets, labels):
    out.append({'image_id': int(image_id), 'category_id': int(category_ids[int(label)]),
                'bbox': [float(x1), float(y1), float(x2 - x1 + 1), float(y2 - y1 + 1)],
                'score': float(score)})
  return out


def evaluate(gt_dataset: dict, detections: list[dict]) -> tuple[dict[str, float], str]:
  """COCO box AP of ``detections`` against ``gt_dataset`` -> ``(metrics, summary_text)``.

  ``metrics`` maps ``AP, AP50, AP75, APs, APm, APl`` to fractions (``COCOeval.stats[:6]``);
  ``summary_text`` is what pycocotools printed (its summary table included).  Every image of
  ``gt_dataset`` counts (v1 sets ``params.imgIds`` to all of them), also those without a
  detection.  Without any detection pycocotools' ``loadRes`` would fail; the evaluation then
  runs against an empty result set instead, so every AP is 0.  As in pycocotools, a metric is
  -1 when no gt falls in its range (e.g. ``APs`` with no small object).

  Args:
    gt_dataset: ground truth in COCO json format (``images``, ``annotations`` with ``bbox``,
      ``area``, ``iscrowd``, ``id``, ``image_id``, ``category_id``; ``categories``).
    detections: COCO result dicts, e.g. from :func:`to_coco_detections`.
  """
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    gt = COCO()
    gt.dataset = copy.deepcopy(gt_dataset)
    gt.createIndex()
    if detections:
      # loadRes adds keys (area, id, segmentation) to the dicts it gets: give it copies.
      dt = gt.loadRes(copy.deepcopy(list(detections)))
    else:
      dt = COCO()
      dt.dataset = {'images': copy.deepcopy(gt_dataset['images']), 'annotations': [],
                    'categories': copy.deepcopy(gt_dataset['categories'])}
      dt.createIndex()
    coco_eval = COCOeval(gt, dt, iouType='bbox')
    coco_eval.params.imgIds = sorted(gt.getImgIds())
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  metrics = {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats[:6])}
  return metrics, buf.getvalue()

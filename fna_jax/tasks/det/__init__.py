"""Object detection (paper Sec. 4.2, Tab. 4, 5, 11): RetinaNet on MS-COCO, as MMDetection v1 (the
toolkit the paper used) builds, trains and tests it.

* :mod:`~fna_jax.tasks.det.task`: :class:`DetectionTask` (the task interface) and its COCO-mAP
  evaluator;
* :mod:`~fna_jax.tasks.det.network`: :class:`DetectionNet` (body + head -> class logits, box
  deltas);
* :mod:`~fna_jax.tasks.det.heads`: RetinaNet's FPN and shared heads;
* :mod:`~fna_jax.tasks.det.anchors`, :mod:`~fna_jax.tasks.det.boxes`: anchors, IoU, assignment,
  box coding;
* :mod:`~fna_jax.tasks.det.loss`: focal loss + smooth L1 over assigned anchors;
* :mod:`~fna_jax.tasks.det.postprocess`, :mod:`~fna_jax.tasks.det.coco_eval`: top-k, NMS,
  pycocotools' COCOeval;
* :mod:`~fna_jax.tasks.det.coco`, :mod:`~fna_jax.tasks.det.demo_data`,
  :mod:`~fna_jax.tasks.det.pipeline`: COCO 2017 prepared into ArrayRecord, the generated demo set,
  grain pipelines;
* :mod:`~fna_jax.tasks.det.visualize`, :mod:`~fna_jax.tasks.det.baseline`: pictures, and the
  class-prior boxes a detector must beat.
"""

from fna_jax.tasks.det.heads import FPN, RetinaNetHead
from fna_jax.tasks.det.network import DetectionNet
from fna_jax.tasks.det.task import DetectionEvaluator, DetectionTask

__all__ = ['FPN', 'DetectionEvaluator', 'DetectionNet', 'DetectionTask', 'RetinaNetHead']

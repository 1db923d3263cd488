"""Object detection with RetinaNet (paper Sec. 4.2, Tab. 4/5/11): everything only detection uses.

Where the paper is silent, the package follows MMDetection v1 (the toolkit the paper used,
Sec. 4.2.1), including its pixel convention: boxes are ``(x1, y1, x2, y2)`` in pixels with
inclusive right/bottom edges (width ``x2 - x1 + 1``).

* :mod:`~fna_jax.tasks.det.boxes`: IoU, delta encoding/decoding and the max-IoU anchor assigner;
* :mod:`~fna_jax.tasks.det.anchors`: RetinaNet anchors and the feature-map sizes per level;
* :mod:`~fna_jax.tasks.det.loss`: sigmoid focal loss, smooth L1 and the RetinaNet loss;
* :mod:`~fna_jax.tasks.det.postprocess`: top candidates per level, NMS and multi-class NMS;
* :mod:`~fna_jax.tasks.det.coco_eval`: COCO-format detections and COCO mAP (pycocotools);
* :mod:`~fna_jax.tasks.det.heads`, :mod:`~fna_jax.tasks.det.network`,
  :mod:`~fna_jax.tasks.det.task`: the RetinaNet head, body + FPN + head, the task interface;
* :mod:`~fna_jax.tasks.det.pipeline`: grain pipelines (keep-ratio rescale, flip, pad);
* datasets: :mod:`~fna_jax.tasks.det.coco` (COCO 2017 in ArrayRecord) and
  :mod:`~fna_jax.tasks.det.demo_data` (generated shapes, no download).
"""

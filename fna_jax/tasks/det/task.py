"""Object detection as an FNA++ task (paper Sec. 4.2, Tab. 4, 5, 11): RetinaNet on MS-COCO, COCO mAP.

:class:`DetectionTask` implements :class:`fna_jax.tasks.base.Task` for images with boxes:

* batches ``{'image' (B, H, W, 3), 'boxes' (B, M, 4), 'labels' (B, M)}`` from
  :mod:`fna_jax.tasks.det.pipeline`: every image rescaled keeping its aspect ratio (short side
  ``data.scale[0]``, long side at most ``data.scale[1]``: 800 and 1088 in the paper), flipped at
  random, padded to the fixed canvas ``data.canvas`` (``(H, W)``, a multiple of 32; jit needs one
  shape), boxes moved with every transform and padded to ``data.max_boxes`` with label -1;
* the loss :func:`fna_jax.tasks.det.loss.retinanet_loss` (IoU assignment, focal loss + smooth L1,
  normalised by the number of positive anchors) against the anchors of
  :func:`fna_jax.tasks.det.anchors.retinanet_anchors` for the canvas;
* :class:`DetectionEvaluator`: per level the ``eval.nms_pre`` best anchors, decoded, score
  threshold ``eval.score_thr``, class-wise NMS at IoU ``eval.nms_iou``, ``eval.max_per_image``
  detections, in original image pixels; COCO mAP by pycocotools' COCOeval (bbox).

Training images without boxes are left out, as MMDetection v1 does (``CocoDataset`` filters them).
Box conventions are MMDetection v1's (inclusive pixel corners; :mod:`fna_jax.tasks.det.boxes`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.runtime import mesh as mesh_lib
from fna_jax.tasks import base
from fna_jax.tasks.det import anchors as anchors_lib
from fna_jax.tasks.det import coco_eval, loss as loss_lib, pipeline, postprocess, visualize
from fna_jax.tasks.det.network import DetectionNet

DEFAULT_CANVAS = (800, 1088)   # the paper's 800x1088 input (Tab. 4), H x W
EVAL_KEYS = ('image_id', 'scale_factor', 'input_hw', 'valid', 'index')


def anchor_settings(head_cfg) -> dict[str, Any]:
  """The anchor generator's settings from ``config.head`` (RetinaNet's defaults)."""
  return dict(strides=tuple(head_cfg.get('strides', (8, 16, 32, 64, 128))),
              octave_base_scale=head_cfg.get('octave_base_scale', 4),
              scales_per_octave=head_cfg.get('scales_per_octave', 3),
              ratios=tuple(head_cfg.get('ratios', (0.5, 1.0, 2.0))))


class DetectionTask(base.Task):
  """Object detection (paper Sec. 4.2); headline metric ``'AP'`` (COCO's mAP@[.5:.95] as a
  fraction, higher is better)."""

  name = 'det'
  metric = 'AP'

  def network(self, body, head, *, frozen_bn: bool = False) -> DetectionNet:
    return DetectionNet(body, head, frozen_bn=frozen_bn)

  # ----------------------------------------------------------------- anchors and loss
  def anchors(self, image_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(anchors (A, 4), anchors per level)`` for images of ``image_hw`` (static shapes)."""
    s = anchor_settings(self.config.head)
    sizes = anchors_lib.feature_sizes(image_hw, s['strides'])
    per_level = tuple(int(h * w * s['scales_per_octave'] * len(s['ratios'])) for h, w in sizes)
    return anchors_lib.retinanet_anchors(sizes, **s), per_level

  def loss(self, outputs, batch):
    total, _ = self.loss_terms(outputs, batch)
    return total

  def loss_terms(self, outputs, batch):
    """``(loss, {'cls', 'box', 'num_pos'})`` of ``outputs`` for ``batch`` (jit-able)."""
    anchors, _ = self.anchors(tuple(batch['image'].shape[1:3]))
    if outputs['cls'].shape[1] != anchors.shape[0]:
      raise ValueError(f'the head gives {outputs["cls"].shape[1]} anchors, the anchor generator '
                       f'{anchors.shape[0]}: head.strides / anchors do not match the network')
    h = self.config.head
    return loss_lib.retinanet_loss(
        outputs['cls'], outputs['box'], jnp.asarray(anchors), batch['boxes'], batch['labels'],
        num_classes=self.config.data.num_classes,
        pos_iou_thr=h.get('pos_iou_thr', 0.5), neg_iou_thr=h.get('neg_iou_thr', 0.4),
        means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0),
        alpha=h.get('focal_alpha', 0.25), gamma=h.get('focal_gamma', 2.0),
        beta=h.get('smooth_l1_beta', 0.11))

  # ----------------------------------------------------------------- data
  def input_size(self, stage: str) -> tuple[int, int]:
    base.check_stage(stage)
    h, w = base.as_pair(self.config.data.get('canvas', DEFAULT_CANVAS))
    if h % 32 or w % 32:
      raise ValueError(f'data.canvas {(h, w)} must be a multiple of 32 (the body\'s stride)')
    return h, w

  def _scale(self) -> tuple[int, int]:
    short, long_max = self.config.data.get('scale', DEFAULT_CANVAS)
    return int(short), int(long_max)

  def train_data(self, source, indices, *, batch_size: int, seed: int, stage: str):
    d = self.config.data
    return iter(pipeline.make_det_pipeline(
        source, indices, batch_size=batch_size, seed=seed, canvas=self.input_size(stage),
        scale=self._scale(), flip=d.get('flip', True), max_boxes=d.max_boxes,
        worker_count=d.get('worker_count', 0)))

  def batch_shapes(self, batch_size: int, stage: str):
    h, w = self.input_size(stage)
    m = self.config.data.max_boxes
    # Training images are uint8 with their extent before padding ('input_hw'), normalised and
    # zero-padded inside the steps (fna_jax.runtime.inputs).
    return {'image': jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.uint8),
            'boxes': jax.ShapeDtypeStruct((batch_size, m, 4), jnp.float32),
            'labels': jax.ShapeDtypeStruct((batch_size, m), jnp.int32),
            'input_hw': jax.ShapeDtypeStruct((batch_size, 2), jnp.int32)}

  def eval_data(self, source, *, batch_size: int):
    return iter(pipeline.make_det_eval_pipeline(
        source, batch_size=batch_size, canvas=self.input_size('adapt'), scale=self._scale()))

  # ----------------------------------------------------------------- evaluation
  def evaluator(self, model, variables, mesh, *, source=None, out_dir=None):
    if source is None:
      raise ValueError('detection evaluation needs the validation source (its COCO annotations)')
    anchors, per_level = self.anchors(self.input_size('adapt'))
    return DetectionEvaluator(model, variables, mesh, self.config.eval, anchors, per_level,
                              source, out_dir)

  def format_metric(self, value: float) -> str:
    return f'{100 * value:.2f} COCO AP'


class DetectionEvaluator(base.Evaluator):
  """COCO mAP of a detection network over batches of :meth:`DetectionTask.eval_data`.

  Per batch one jitted step (the network, then per level the ``eval.nms_pre`` anchors of highest
  score, decoded: :func:`fna_jax.tasks.det.postprocess.top_candidates`), replicated to every
  process; then on the host, per image as MMDetection v1's ``get_bboxes_single``: boxes clipped to
  the rescaled image, divided by the scale factor (original pixels), scores above
  ``eval.score_thr``, class-wise NMS at ``eval.nms_iou``, the ``eval.max_per_image`` best.
  :meth:`result` runs pycocotools' COCOeval (bbox) against ``source.coco_gt()`` restricted to the
  evaluated images.  ``eval.num_visualize``: the first images saved with ground truth | detections
  (score >= ``eval.show_score``) under ``out_dir/predictions`` (single-process runs).
  """

  table_file = 'coco_eval.txt'

  def __init__(self, model, variables, mesh, eval_cfg, anchors: np.ndarray,
               level_counts: tuple[int, ...], source, out_dir: str | None = None):
    self.cfg, self.mesh, self.out_dir, self.source = eval_cfg, mesh, out_dir, source
    self.category_ids = tuple(int(c) for c in source.CATEGORY_IDS)
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    self.variables = jax.device_put(variables, rep)
    nms_pre = int(eval_cfg.get('nms_pre', 1000))
    anchors = jnp.asarray(anchors)

    def predict(v, images):
      out = model.apply(v, images, False)
      return postprocess.top_candidates(out['cls'], out['box'], anchors, level_counts,
                                        nms_pre=nms_pre, image_hw=images.shape[1:3])

    self.predict = jax.jit(predict, in_shardings=(rep, data), out_shardings=rep)
    self.gather = jax.jit(lambda t: t, out_shardings=rep)
    self.detections: list[dict] = []
    self.image_ids: list[int] = []
    self.shown = 0
    self._evaluated = (-1, None)   # (detections it was computed for, COCOeval's result)

  def add(self, host_batch):
    b = mesh_lib.put_batch({k: host_batch[k] for k in ('image',) + EVAL_KEYS}, self.mesh)
    boxes, scores = self.predict(self.variables, b['image'])
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    meta = jax.tree.map(np.asarray, self.gather({k: b[k] for k in EVAL_KEYS}))
    c = self.cfg
    for k in np.flatnonzero(meta['valid'].astype(bool)):
      sf = float(meta['scale_factor'][k])
      h, w = (int(v) for v in meta['input_hw'][k])   # the rescaled image inside the canvas
      bx = boxes[k].copy()
      bx[:, 0::2] = np.clip(bx[:, 0::2], 0, w - 1)
      bx[:, 1::2] = np.clip(bx[:, 1::2], 0, h - 1)
      dets, labels = postprocess.multiclass_nms(
          bx / sf, scores[k], score_thr=c.get('score_thr', 0.05), iou_thr=c.get('nms_iou', 0.5),
          max_num=c.get('max_per_image', 100))
      image_id = int(meta['image_id'][k])
      self.image_ids.append(image_id)
      self.detections += coco_eval.to_coco_detections(image_id, dets, labels, self.category_ids)
      self._show(host_batch, int(meta['index'][k]), k, dets, labels, sf, (h, w))

  def _show(self, host_batch, index, k, dets, labels, sf, hw):
    if not (self.out_dir and self.shown < self.cfg.get('num_visualize', 0)
            and jax.process_count() == 1):
      return
    ex = self.source[index]
    image = host_batch['image'][k][:hw[0], :hw[1]]
    gt_boxes, gt_labels = np.asarray(ex['boxes']) * sf, np.asarray(ex['labels'])
    keep = dets[:, 4] >= self.cfg.get('show_score', 0.3)
    visualize.save_detection_pair(
        os.path.join(self.out_dir, 'predictions', f'{self.shown:03d}.png'), image,
        gt_boxes, gt_labels, dets[keep, :4] * sf, labels[keep], dets[keep, 4],
        tuple(self.source.CLASS_NAMES))
    self.shown += 1

  def _gt(self) -> dict:
    gt = self.source.coco_gt()
    ids = set(self.image_ids)
    return dict(gt, images=[im for im in gt['images'] if im['id'] in ids],
                annotations=[a for a in gt['annotations'] if a['image_id'] in ids])

  def _evaluate(self):
    if self._evaluated[0] != len(self.detections):
      self._evaluated = (len(self.detections), coco_eval.evaluate(self._gt(), self.detections))
    return self._evaluated[1]

  def result(self) -> dict[str, Any]:
    metrics, _ = self._evaluate()
    return dict({k: float(v) for k, v in metrics.items()}, num_images=len(self.image_ids),
                num_detections=len(self.detections))

  def table(self) -> str:
    _, summary = self._evaluate()
    return summary

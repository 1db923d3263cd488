"""Semantic segmentation as an FNA++ task (paper Sec. 4.1): DeepLab heads, mIoU.

:class:`SegmentationTask` implements :class:`fna_jax.tasks.base.Task` for dense labels
(``'label'``: ``int32 (B, H, W)``, 255 = ignore): the pixel-wise cross-entropy of
:func:`fna_jax.tasks.seg.loss.cross_entropy`, random-crop training pipelines (search: fixed resize
then ``data.crop_size`` crops; fine-tuning: random scale then ``adapt.crop_size`` crops; paper
Sec. 4.1.1) and an evaluator that accumulates one confusion matrix over the sharded batches
(whole images or sliding windows, ``eval.mode``) and reports mIoU.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.data.transforms import IGNORE_LABEL
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.tasks import base
from fna_jax.tasks.seg import inference, metrics, visualize
from fna_jax.tasks.seg.loss import segmentation_loss
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.tasks.seg.pipeline import make_eval_pipeline, make_seg_pipeline

EVAL_MODES = ('whole', 'sliding')


def _optional_pair(values):
  return tuple(values) if values else None


class SegmentationTask(base.Task):
  """Semantic segmentation (paper Sec. 4.1); headline metric ``'miou'`` (higher is better)."""

  name = 'seg'
  metric = 'miou'

  def network(self, body, head, *, frozen_bn: bool = False) -> SegmentationNet:
    # head.align_corners: logits upsampled as the authors' release does (aligned corners).
    return SegmentationNet(body, head, frozen_bn=frozen_bn,
                           align_corners=self.config.head.get('align_corners', True))

  def loss(self, outputs, batch):
    return segmentation_loss(outputs, batch)

  def input_size(self, stage: str) -> tuple[int, int]:
    crop = self.config.data.crop_size if base.check_stage(stage) == 'search' else (
        self.config.adapt.crop_size)
    return base.as_pair(crop)

  def train_data(self, source, indices, *, batch_size: int, seed: int, stage: str):
    c = self.config
    if base.check_stage(stage) == 'search':
      crop, resize, scales = c.data.crop_size, _optional_pair(c.data.resize_to), None
    else:
      crop, resize = c.adapt.crop_size, _optional_pair(c.adapt.resize_to)
      scales = _optional_pair(c.adapt.scales)
    return iter(make_seg_pipeline(
        source, indices=indices, batch_size=batch_size, crop_size=crop, resize_to=resize,
        scales=scales, flip=c.data.flip, seed=seed, worker_count=c.data.worker_count))

  def batch_shapes(self, batch_size: int, stage: str):
    # Training images are uint8, normalised inside the steps (fna_jax.runtime.inputs).
    h, w = self.input_size(stage)
    return {'image': jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.uint8),
            'label': jax.ShapeDtypeStruct((batch_size, h, w), jnp.int32)}

  def eval_data(self, source, *, batch_size: int):
    return iter(make_eval_pipeline(source, batch_size=batch_size,
                                   resize_to=_optional_pair(self.config.eval.resize_to),
                                   pad_remainder=True))

  def evaluator(self, model, variables, mesh, *, source=None, out_dir=None) -> 'SegEvaluator':
    names = getattr(source, 'CLASS_NAMES', None)
    num_classes = self.config.data.num_classes
    if names is None or len(names) != num_classes:
      names = tuple(f'class{i}' for i in range(num_classes))
    palette = getattr(source, 'PALETTE', None)
    return SegEvaluator(model, variables, mesh, self.config.eval, num_classes, tuple(names),
                        visualize.demo_palette() if palette is None else palette, out_dir)

  def format_metric(self, value: float) -> str:
    return f'{100 * value:.2f}% mIoU'


class SegEvaluator(base.Evaluator):
  """mIoU of a segmentation network: one confusion matrix over every batch (label 255 ignored).

  ``eval_cfg``: ``mode`` (``'whole'`` or ``'sliding'``: windows of ``crop_size`` with a stride of
  ``stride_fraction * crop_size``, their softmax probabilities averaged where they overlap, as the
  authors' release adds them; :func:`~fna_jax.tasks.seg.inference.sliding_window_logits`),
  ``num_visualize`` (the first images saved as input | ground truth | prediction
  PNGs under ``out_dir/predictions``, single-process runs).
  """

  table_file = 'iou.txt'

  def __init__(self, model, variables, mesh, eval_cfg, num_classes: int, class_names, palette,
               out_dir: str | None = None):
    if eval_cfg.mode not in EVAL_MODES:
      raise ValueError(f'eval.mode must be one of {EVAL_MODES}, got {eval_cfg.mode!r}')
    self.cfg, self.mesh, self.num_classes = eval_cfg, mesh, num_classes
    self.class_names, self.palette, self.out_dir = class_names, palette, out_dir
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    self.variables = jax.device_put(variables, rep)
    self.forward = jax.jit(lambda v, x: model.apply(v, x, False), in_shardings=(rep, data),
                           out_shardings=data)
    # Sliding windows add class probabilities where they overlap, as the release does (it adds
    # exp(log_softmax)); averaging logits could pick another class there.
    self.forward_probs = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, False), -1),
                                 in_shardings=(rep, data), out_shardings=data)
    self.count_cm = jax.jit(
        lambda labels, preds: metrics.confusion_matrix(labels, preds, num_classes),
        in_shardings=(data, data), out_shardings=rep)
    self.cm = np.zeros((num_classes, num_classes), np.int64)
    self.shown = self.num_images = 0

  def add(self, host_batch):
    b = mesh_lib.put_batch(host_batch, self.mesh)
    if self.cfg.mode == 'whole':
      logits = inference.predict_whole(lambda x: self.forward(self.variables, x), b['image'])
    else:
      logits = inference.sliding_window_logits(
          lambda x: self.forward_probs(self.variables, x), b['image'], self.num_classes,
          self.cfg.crop_size, self.cfg.stride_fraction)
    preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    self.cm += np.asarray(self.count_cm(b['label'], preds), np.int64)
    valid = np.any(host_batch['label'] != IGNORE_LABEL, axis=(1, 2))  # not eval padding
    self.num_images += int(valid.sum())
    # Pictures need the whole batch's predictions on this host: single-process runs only.
    if self.out_dir and self.shown < self.cfg.num_visualize and jax.process_count() == 1:
      local_preds = np.asarray(preds)
      for k in np.flatnonzero(valid)[:self.cfg.num_visualize - self.shown]:
        visualize.save_triptych(
            os.path.join(self.out_dir, 'predictions', f'{self.shown:03d}.png'),
            host_batch['image'][k], host_batch['label'][k], local_preds[k], self.palette)
        self.shown += 1

  def result(self) -> dict[str, Any]:
    iou = metrics.iou_from_confusion(self.cm)
    return {'miou': metrics.mean_iou(self.cm), 'pixel_accuracy': metrics.pixel_accuracy(self.cm),
            'iou': {n: (None if np.isnan(v) else float(v))
                    for n, v in zip(self.class_names, iou)},
            'mode': self.cfg.mode, 'num_images': self.num_images}

  def table(self) -> str:
    return metrics.format_iou_table(metrics.iou_from_confusion(self.cm), self.class_names)

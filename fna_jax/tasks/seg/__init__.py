"""Semantic segmentation (paper Sec. 4.1): everything only segmentation uses.

* :mod:`~fna_jax.tasks.seg.task`: :class:`SegmentationTask` (the task interface) and its mIoU
  evaluator;
* :mod:`~fna_jax.tasks.seg.network`: :class:`SegmentationNet` (body + head, logits upsampled);
* :mod:`~fna_jax.tasks.seg.heads`: DeepLabv3 / DeepLabv3+ heads;
* :mod:`~fna_jax.tasks.seg.loss`: pixel-wise cross-entropy with label 255 ignored;
* :mod:`~fna_jax.tasks.seg.pipeline`: grain pipelines (training crops, whole-image evaluation);
* :mod:`~fna_jax.tasks.seg.metrics`, :mod:`~fna_jax.tasks.seg.inference`,
  :mod:`~fna_jax.tasks.seg.visualize`: confusion matrix and mIoU, sliding-window inference,
  colour maps and pictures;
* datasets: :mod:`~fna_jax.tasks.seg.cityscapes` (ArrayRecord via ``tfds.data_source``) and
  :mod:`~fna_jax.tasks.seg.demo_data` (generated shapes, no download).
"""

from fna_jax.tasks.seg.heads import DeepLabV3Head, DeepLabV3PlusHead
from fna_jax.tasks.seg.loss import cross_entropy, segmentation_loss
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.tasks.seg.task import SegEvaluator, SegmentationTask

__all__ = ['DeepLabV3Head', 'DeepLabV3PlusHead', 'SegEvaluator', 'SegmentationNet',
           'SegmentationTask', 'cross_entropy', 'segmentation_loss']

"""Segmentation evaluation: metrics, whole-image / sliding-window inference, pictures, checks.

* :mod:`~fna_jax.evaluation.metrics`: :func:`confusion_matrix` (jit-able, sharding-aware),
  :func:`iou_from_confusion`, :func:`mean_iou`, :func:`pixel_accuracy`,
  :func:`format_iou_table`, :data:`CITYSCAPES_CLASSES`, :data:`DEMO_CLASSES`.
* :mod:`~fna_jax.evaluation.inference`: :func:`predict_whole`, :func:`sliding_window_logits`
  (769 crops, 2/3 overlap by default; SPEC section 5).
* :mod:`~fna_jax.evaluation.visualize`: :func:`colorize`, :data:`CITYSCAPES_PALETTE`,
  :func:`demo_palette` / :data:`DEMO_PALETTE`, :func:`save_triptych`.
* :mod:`~fna_jax.evaluation.checks`: :func:`check_variables_match`,
  :class:`VariableMismatchError`.
"""

from fna_jax.evaluation.checks import VariableMismatchError, check_variables_match
from fna_jax.evaluation.inference import (predict_whole, sliding_stride, sliding_window_logits,
                                          window_starts)
from fna_jax.evaluation.metrics import (CITYSCAPES_CLASSES, DEMO_CLASSES, IGNORE_LABEL,
                                        confusion_matrix, format_iou_table, iou_from_confusion,
                                        mean_iou, pixel_accuracy)
from fna_jax.evaluation.visualize import (CITYSCAPES_PALETTE, DEMO_PALETTE, colorize,
                                          demo_palette, save_triptych, unnormalize)

__all__ = [
    'CITYSCAPES_CLASSES', 'CITYSCAPES_PALETTE', 'DEMO_CLASSES', 'DEMO_PALETTE', 'IGNORE_LABEL',
    'VariableMismatchError', 'check_variables_match', 'colorize', 'confusion_matrix',
    'demo_palette', 'format_iou_table', 'iou_from_confusion', 'mean_iou', 'pixel_accuracy',
    'predict_whole', 'save_triptych', 'sliding_stride', 'sliding_window_logits', 'unnormalize',
    'window_starts',
]

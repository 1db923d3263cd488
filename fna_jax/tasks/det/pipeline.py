"""grain pipelines of detection examples: MMDetection v1's RetinaNet data on a fixed canvas.

Built on :mod:`fna_jax.data.pipeline` (determinism, resume with ``get_state``/``set_state``,
per-process sharding, workers: see there).  Per example, as MMDetection v1's ``CustomDataset``
(``mmdet/datasets/custom.py``, ``transforms.py``) with ``keep_ratio=True`` (paper Sec. 4.2.1 and
Tab. 4: an 800x1088 input, i.e. short side 800, long side at most 1088):

* keep-ratio rescale (mmcv's ``imrescale``): factor ``sf = min(long_max / max(h, w),
  short / min(h, w))``, new size ``int(h * sf + 0.5) x int(w * sf + 0.5)`` (PIL bilinear,
  antialiased when shrinking, where v1 uses OpenCV's bilinear); boxes multiplied by ``sf`` and
  clipped to ``[0, w' - 1] x [0, h' - 1]`` (v1 ``BboxTransform``);
* training only: horizontal flip with probability 1/2 (v1 ``bbox_flip``:
  ``x1' = w' - x2 - 1``, ``x2' = w' - x1 - 1``);
* ImageNet normalisation (:func:`fna_jax.data.transforms.normalize`), then zero padding at the
  bottom and right.

Training batches carry the image as ``uint8`` (padded with raw 0) and its extent before padding,
``'input_hw'`` ``int32 (B, 2)``; the jitted steps normalise on the device and set everything
outside that extent to 0 (:func:`fna_jax.runtime.inputs.model_images`), which is exactly v1's
normalise-then-pad.  Evaluation batches are normalised and padded here (``float32``).

Static shapes.  v1 pads each batch to a multiple of 32 of its largest image; a jitted step needs
one shape, so every image is padded to a fixed ``canvas = (H, W)`` instead, and the factor is
additionally capped at ``min(H / h, W / w)`` so that the rescaled image fits: with the COCO
config's (800, 1088) scale and canvas a landscape image is never capped, a portrait one is fit
into the 800 rows (smaller than v1 would run it); a (1088, 1088) canvas never caps, at 1.36x
the compute.  The demo uses its image size.  Boxes are in
v1's pixel convention (inclusive right/bottom edges) and padded (or truncated, first
``max_boxes``) to ``max_boxes`` rows: padding rows have box 0 and label -1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from fna_jax.data import pipeline
from fna_jax.data import transforms as T

PAD_LABEL = -1  # label of the padding rows of 'boxes' / 'labels'


def rescale_factor(hw: tuple[int, int], scale: tuple[int, int],
                   canvas: tuple[int, int]) -> float:
  """mmcv ``imrescale``'s factor for ``scale = (short, long_max)``, capped to fit ``canvas``."""
  h, w = int(hw[0]), int(hw[1])
  short, long_max = scale
  sf = min(long_max / max(h, w), short / min(h, w))
  return float(min(sf, canvas[0] / h, canvas[1] / w))


def rescale(image: np.ndarray, boxes: np.ndarray, scale: tuple[int, int],
            canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
  """Keep-ratio rescale of an image and its boxes (module docstring).

  Args:
    image: uint8 (h, w, 3).
    boxes: (n, 4) v1 xyxy in pixels of ``image``.
    scale: (short, long_max) of the rescaled image.
    canvas: (H, W) the rescaled image must fit in.

  Returns:
    (image uint8 (h', w', 3), boxes float32 (n, 4) scaled and clipped, factor).
  """
  h, w = image.shape[:2]
  sf = rescale_factor((h, w), scale, canvas)
  new_hw = (int(h * sf + 0.5), int(w * sf + 0.5))
  image, _ = T.resize(image, None, new_hw)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(sf)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, new_hw[1] - 1)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, new_hw[0] - 1)
  return image, boxes, sf


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """MMDetection v1 ``bbox_flip``: ``x1' = width - x2 - 1``, ``x2' = width - x1 - 1``."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  out = boxes.copy()
  out[:, 0] = width - boxes[:, 2] - 1
  out[:, 2] = width - boxes[:, 0] - 1
  return out


def pad_boxes(boxes: np.ndarray, labels: np.ndarray,
              max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
  """The first ``max_boxes`` boxes / labels, padded with zero boxes labelled -1."""
  n = min(len(labels), max_boxes)
  out_boxes = np.zeros((max_boxes, 4), np.float32)
  out_labels = np.full((max_boxes,), PAD_LABEL, np.int32)
  out_boxes[:n] = np.asarray(boxes, np.float32).reshape(-1, 4)[:n]
  out_labels[:n] = np.asarray(labels, np.int32)[:n]
  return out_boxes, out_labels


def _canvas_image(image: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
  """normalize, then pad bottom/right with 0 to the canvas (v1 pads the normalised image)."""
  out, _ = T.pad_to(T.normalize(image), None, canvas)
  return out


@dataclasses.dataclass(frozen=True)
class DetTrainTransform(grain.transforms.RandomMap):
  """rescale -> random flip -> pad to the canvas (uint8; normalised and its padding set to 0 on
  the device, :func:`fna_jax.runtime.inputs.model_images`, from ``'input_hw'``, the rescaled
  size); boxes padded to ``max_boxes``.

  Attributes:
    canvas: (H, W) of every output image.
    scale: (short, long_max) of mmcv's keep-ratio rescale (the paper's detection recipe: (800, 1088)).
    flip: random horizontal flip with probability 1/2.
    max_boxes: rows of 'boxes' / 'labels'.
  """
  canvas: tuple[int, int]
  scale: tuple[int, int]
  flip: bool = True
  max_boxes: int = 100

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, boxes, _ = rescale(np.asarray(element['image']), element['boxes'], self.scale,
                              self.canvas)
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
      boxes = flip_boxes(boxes, image.shape[1])
    boxes, labels = pad_boxes(boxes, element['labels'], self.max_boxes)
    padded, _ = T.pad_to(np.ascontiguousarray(image, np.uint8), None, self.canvas)
    return {'image': padded, 'boxes': boxes, 'labels': labels,
            'input_hw': np.asarray(image.shape[:2], np.int32)}


@dataclasses.dataclass(frozen=True)
class DetEvalTransform(grain.transforms.Map):
  """rescale -> normalize -> pad to the canvas, with what mapping detections back needs.

  Outputs ``image``, ``image_id`` (-1 for padding), ``scale_factor`` (detections / factor =
  original pixels, v1 ``rescale=True``), ``image_hw`` (original size), ``input_hw`` (the
  rescaled image's size in the canvas: v1's ``img_shape``, which it clips decoded boxes to) and
  ``valid``, and ``index``: the example's index in the source (-1 for padding; the evaluator's
  pictures look the ground truth up with it).
  """
  canvas: tuple[int, int]
  scale: tuple[int, int]

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    image = np.asarray(element['image'])
    hw = image.shape[:2]
    resized, _, sf = rescale(image, np.zeros((0, 4), np.float32), self.scale, self.canvas)
    valid = bool(element.get('valid', True))
    return {'image': _canvas_image(resized, self.canvas),
            'image_id': np.int32(element['image_id'] if valid else -1),
            'scale_factor': np.float32(sf), 'image_hw': np.asarray(hw, np.int32),
            'input_hw': np.asarray(resized.shape[:2], np.int32), 'valid': np.bool_(valid),
            'index': np.int32(element.get('index', -1) if valid else -1)}


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
  out = pipeline.pair(size, what)
  assert out is not None
  return out


def train_indices(source: Any, indices: Sequence[int] | np.ndarray | None,
                  drop_empty: bool) -> np.ndarray:
  """``indices`` (default all) without the examples that have no box when ``drop_empty``.

  MMDetection v1's ``CocoDataset._filter_imgs`` trains only on images with annotations; this
  uses the source's ``num_boxes()`` (non-crowd boxes).
  """
  idx = pipeline.base_indices(source, indices)
  if drop_empty and hasattr(source, 'num_boxes'):
    idx = idx[np.asarray(source.num_boxes())[idx] > 0]
  return idx


def make_det_pipeline(source: Any, indices: Sequence[int] | np.ndarray | None = None, *,
                      batch_size: int, seed: int = 0, canvas: int | Sequence[int],
                      scale: Sequence[int], flip: bool = True, max_boxes: int = 100,
                      drop_empty: bool = True, shuffle: bool = True,
                      num_epochs: int | None = None, worker_count: int = 0,
                      shard_by_process: bool | tuple[int, int] = True, read_threads: int = 4,
                      prefetch_batches: int = 4) -> grain.IterDataset:
  """Training pipeline for detection (paper Sec. 4.2.1, MMDetection v1's RetinaNet data).

  Args:
    source: random-access detection examples ``{'image', 'boxes', 'labels', ...}``
      (:class:`~fna_jax.tasks.det.demo_data.DemoDetection`, the COCO source).
    indices: source indices to use (e.g. a half of ``pipeline.split_train_arch``); default all.
    batch_size: examples per batch on this process.
    seed: seed of the shuffle and the flips.
    canvas: (H, W) of the padded images (or one int).
    scale: (short, long_max) of the keep-ratio rescale (the paper's detection recipe: (800, 1088)).
    flip: random horizontal flips.
    max_boxes: rows of 'boxes' / 'labels' (extra boxes are dropped, in source order).
    drop_empty: leave out examples without boxes (``source.num_boxes() == 0``), as v1.
    shuffle: shuffle the examples (a new order every epoch).
    num_epochs: passes over the data, None for an endless stream.
    worker_count, shard_by_process, read_threads, prefetch_batches: as
      :func:`fna_jax.tasks.seg.pipeline.make_seg_pipeline`.

  Returns:
    A ``grain.IterDataset`` of ``{'image': uint8 (B, H, W, 3) (padded with 0; normalised in the
    steps), 'boxes': float32 (B, M, 4), 'labels': int32 (B, M), 'input_hw': int32 (B, 2) the
    rescaled image's (height, width) inside the canvas}`` (``M = max_boxes``, padding rows
    label -1 and box 0).
  """
  if max_boxes <= 0:
    raise ValueError(f'max_boxes must be positive, got {max_boxes}')
  transform = DetTrainTransform(canvas=_pair(canvas, 'canvas'), scale=_pair(scale, 'scale'),
                                flip=bool(flip), max_boxes=int(max_boxes))
  idx = train_indices(source, indices, drop_empty)
  ds = pipeline.train_dataset(source, idx, batch_size, transform, shuffle, seed, num_epochs,
                              shard_by_process)
  return pipeline.iter_dataset(ds, worker_count, read_threads, prefetch_batches)


def make_det_eval_pipeline(source: Any, *, batch_size: int, canvas: int | Sequence[int],
                           scale: Sequence[int],
                           indices: Sequence[int] | np.ndarray | None = None,
                           worker_count: int = 0,
                           shard_by_process: bool | tuple[int, int] = True,
                           read_threads: int = 4, prefetch_batches: int = 4) -> grain.IterDataset:
  """Evaluation pipeline: every example once, in order, rescaled and padded, full batches.

  The index list is padded to a multiple of ``batch_size * process_count`` with copies of the
  first example marked ``valid = False`` (``image_id = -1``), so every batch is full and every
  process yields the same number of batches; the evaluator must skip them.  Each ``iter()``
  starts from the beginning.

  Args:
    source: random-access detection examples with ``'image_id'``.
    batch_size: examples per batch on this process.
    canvas: (H, W) of the padded images (or one int).
    scale: (short, long_max) of the keep-ratio rescale.
    indices: source indices to evaluate; default all.
    worker_count, shard_by_process, read_threads, prefetch_batches: as
      :func:`fna_jax.tasks.seg.pipeline.make_seg_pipeline`.

  Returns:
    A ``grain.IterDataset`` of ``{'image': float32 (B, H, W, 3), 'image_id': int32 (B,),
    'scale_factor': float32 (B,), 'image_hw': int32 (B, 2) original (height, width),
    'input_hw': int32 (B, 2) rescaled (height, width) inside the canvas, 'valid': bool (B,),
    'index': int32 (B,) source index (-1: padding)}``.
  """
  ds = pipeline.marked_eval_dataset(
      source, indices, batch_size,
      DetEvalTransform(canvas=_pair(canvas, 'canvas'), scale=_pair(scale, 'scale')),
      shard_by_process)
  return pipeline.iter_dataset(ds, worker_count, read_threads, prefetch_batches)

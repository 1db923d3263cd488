"""grain pipelines of segmentation examples: training crops and whole-image evaluation.

Built on :mod:`fna_jax.data.pipeline` (determinism, resume, per-process sharding, workers: see
there).  Batches are host-local numpy ``{'image': (B, h, w, 3), 'label': int32 (B, h, w)}``,
labels class ids with 255 = ignore.  Training images are ``uint8`` RGB, ImageNet-normalised on
the device inside the jitted steps (:func:`fna_jax.runtime.inputs.model_images`); crops padded
with raw 0 before normalising (black), which uint8 holds exactly.  Evaluation images are
``float32``, normalised here: sliding-window inference
(:mod:`fna_jax.tasks.seg.inference`) pads them in normalised units.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from fna_jax.data import pipeline
from fna_jax.data import transforms as T


@dataclasses.dataclass(frozen=True)
class SegTrainTransform(grain.transforms.RandomMap):
  """resize -> random scale -> random crop (pad 0 / 255) -> random flip; image stays uint8
  (normalised on the device: :func:`fna_jax.runtime.inputs.model_images`).

  With ``scales`` the scale and the crop are one step
  (:func:`~fna_jax.data.transforms.random_scale_crop`): only the crop's source region is resized,
  not the whole frame.

  Attributes:
    crop_size: (height, width) of the output, pixels.
    resize_to: fixed (height, width) every image is first resized to (search: 512x1024), or None.
    scales: random scale factors (fine-tuning: :data:`transforms.FINETUNE_SCALES`), or None.
    flip: random left-right flip with probability 1/2.
  """
  crop_size: tuple[int, int]
  resize_to: tuple[int, int] | None = None
  scales: tuple[float, ...] | None = None
  flip: bool = True

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = np.asarray(element['image']), np.asarray(element['label'])
    if self.resize_to is not None:
      image, label = T.resize(image, label, self.resize_to)
    if self.scales is not None:
      # = random_scale then random_crop (same draws), resizing only the window's source region
      image, label = T.random_scale_crop(image, label, rng, self.scales, self.crop_size)
    else:
      image, label = T.random_crop(image, label, rng, self.crop_size)
    if self.flip:
      image, label = T.random_flip(image, label, rng)
    return {'image': np.ascontiguousarray(image, np.uint8), 'label': label.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class SegEvalTransform(grain.transforms.Map):
  """Optional resize (image bilinear, label nearest) -> normalize; no randomness."""
  resize_to: tuple[int, int] | None = None

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    image, label = np.asarray(element['image']), np.asarray(element['label'])
    if self.resize_to is not None:
      image, label = T.resize(image, label, self.resize_to)
    return {'image': T.normalize(image), 'label': label.astype(np.int32)}



def make_seg_pipeline(source: Any, *, indices: Sequence[int] | np.ndarray | None = None,
                      batch_size: int, crop_size: int | Sequence[int],
                      resize_to: int | Sequence[int] | None = None,
                      scales: Sequence[float] | None = None, flip: bool = True,
                      shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                      worker_count: int = 0, shard_by_process: bool | tuple[int, int] = True,
                      read_threads: int = 4, prefetch_batches: int = 4) -> grain.IterDataset:
  """Training pipeline for segmentation (search: resize + crop + flip; fine-tuning: + scales).

  Per example: ``resize_to`` (bilinear / nearest) -> random scale from ``scales`` -> random
  ``crop_size`` crop (padded with 0 / 255 when smaller) -> random flip; images stay uint8 (the
  train steps normalise them on the device).  Examples are
  shuffled per epoch (shuffle then repeat), batches never mix sizes and the last incomplete batch
  is dropped.

  Args:
    source: random access ``{'image': uint8 (H, W, 3), 'label': uint8 (H, W)}`` examples
      (:class:`~fna_jax.tasks.seg.cityscapes.CityscapesSource`,
      :class:`~fna_jax.data.demo.DemoSegmentation`).
    indices: source indices to use (e.g. a half of :func:`split_train_arch`); default all.
    batch_size: examples per batch on this process.
    crop_size: (height, width) of the training crops, or one int.
    resize_to: (height, width) every image is resized to first (search: (512, 1024)), or None.
    scales: random rescaling factors (fine-tuning: ``transforms.FINETUNE_SCALES``), or None.
    flip: random left-right flips.
    shuffle: shuffle the examples (a new order every epoch).
    seed: seed of the shuffle and the augmentations.
    num_epochs: passes over the data, None for an endless stream.
    worker_count: grain worker processes (0: read in this process with ``read_threads`` threads).
    shard_by_process: True: shard over ``jax.process_index()/process_count()``; False: no
      sharding; ``(index, count)``: that shard.
    read_threads: threads reading and transforming batches (per worker when ``worker_count > 0``).
    prefetch_batches: batches read ahead per reading process.

  Returns:
    A ``grain.IterDataset`` of ``{'image': uint8 (B, h, w, 3), 'label': int32 (B, h, w)}``.
  """
  transform = SegTrainTransform(crop_size=pipeline.pair(crop_size, 'crop_size'),
                                resize_to=pipeline.pair(resize_to, 'resize_to'),
                                scales=None if scales is None else tuple(float(s) for s in scales),
                                flip=bool(flip))
  ds = pipeline.train_dataset(source, indices, batch_size, transform, shuffle, seed, num_epochs,
                      shard_by_process)
  return pipeline.iter_dataset(ds, worker_count, read_threads, prefetch_batches)


def make_eval_pipeline(source: Any, *, indices: Sequence[int] | np.ndarray | None = None,
                       batch_size: int, resize_to: int | Sequence[int] | None = None,
                       pad_remainder: bool = False, worker_count: int = 0,
                       shard_by_process: bool | tuple[int, int] = True, read_threads: int = 4,
                       prefetch_batches: int = 4) -> grain.IterDataset:
  """Evaluation pipeline: every example once, in order, no random ops.

  Images are used whole (all examples of a batch must then share a size, as Cityscapes' do) or
  resized to ``resize_to`` (labels by nearest neighbour, so metrics are then computed at that
  resolution).  Each ``iter()`` starts from the beginning.

  Args:
    source: random access ``{'image', 'label'}`` examples.
    indices: source indices to evaluate; default all.
    batch_size: examples per batch on this process.
    resize_to: (height, width) to resize to, or None for full images.
    pad_remainder: False keeps a smaller last batch (and, with several processes, shards of
      unequal length).  True pads the index list to a multiple of ``batch_size * process_count``
      with copies of the first example whose labels are all 255: every batch is full, every
      process yields the same number of batches, and the padding adds nothing to an
      ignore-aware metric.
    worker_count: grain worker processes (0: this process).
    shard_by_process: as in :func:`make_seg_pipeline`.
    read_threads: threads reading batches (per worker when ``worker_count > 0``).
    prefetch_batches: batches read ahead per reading process.

  Returns:
    A ``grain.IterDataset`` of ``{'image': float32 (B, h, w, 3), 'label': int32 (B, h, w)}``.
  """
  ds = pipeline.eval_dataset(source, indices, batch_size,
                            SegEvalTransform(resize_to=pipeline.pair(resize_to, 'resize_to')),
                            pad_remainder, shard_by_process)
  return pipeline.iter_dataset(ds, worker_count, read_threads, prefetch_batches)

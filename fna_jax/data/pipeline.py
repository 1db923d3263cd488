"""grain input pipelines feeding the segmentation search, fine-tuning and evaluation.

A pipeline is a ``grain.IterDataset``; ``it = iter(pipeline)`` yields host-local numpy batches

* segmentation: ``{'image': float32 (B, h, w, 3), 'label': int32 (B, h, w)}``, images
  ImageNet-normalised RGB, labels class ids with 255 = ignore;
* classification: ``{'image': float32 (B, S, S, 3), 'label': int32 (B,)}``.

Determinism and resume.  Everything random is drawn from ``seed``: the shuffle order of each epoch
and every augmentation (grain seeds each example's ``np.random.Generator`` from the pipeline seed
and the example's position), so a pipeline's output is a pure function of (source, indices,
arguments, process shard).  All per-example work and the batching happen in a
``grain.MapDataset`` (random access), so batch ``k`` is the same whatever ``worker_count`` is.
``it.get_state()`` is a small JSON-compatible dict (``{'next_index': k}`` without workers) to store
in checkpoints; ``it.set_state(state)`` on a fresh iterator of an identically built pipeline (same
``worker_count``: the state layout depends on it) resumes exactly.

Multi-host.  With ``shard_by_process`` the example indices are split as
``indices[jax.process_index()::jax.process_count()]`` (training first truncates them to a multiple
of the process count, so every process yields the same number of batches), and ``batch_size`` is
per process.  The training loop puts a batch on devices with
``jax.make_array_from_process_local_data(sharding, batch)``; this module never touches devices.

Workers.  ``worker_count > 0`` decodes and augments in spawned processes
(``mp_prefetch``): sources and transforms are picklable top-level classes, and scripts that use
workers need an ``if __name__ == '__main__':`` guard.  Close iterators with workers (``it.close()``)
when done.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from fna_jax.data import transforms as T

IGNORE_LABEL = T.IGNORE_LABEL
_PAD = -1  # index marker of an eval padding example


def split_train_arch(num_examples: int, arch_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic split of a training set into weight-step and arch-step examples.

  FNA++ (paper Sec. 4.1.1) holds out 20% of the training images for the architecture-parameter
  updates.  This takes ``perm = np.random.default_rng(seed).permutation(num_examples)``; the first
  ``round(arch_fraction * num_examples)`` entries are the arch split, the rest the weight split;
  both are returned sorted.  Same (num_examples, arch_fraction, seed) -> same split (numpy's
  ``Generator.permutation`` on PCG64 is stable across numpy releases; a run that needs bit-exact
  provenance can also store the returned indices).

  Args:
    num_examples: size of the training set.
    arch_fraction: share of the arch split, in (0, 1).
    seed: permutation seed.

  Returns:
    (weight_indices, arch_indices): disjoint, sorted int64 arrays covering ``range(num_examples)``.
  """
  if not 0.0 < arch_fraction < 1.0:
    raise ValueError(f'arch_fraction must be in (0, 1), got {arch_fraction}')
  n_arch = int(round(arch_fraction * num_examples))
  if n_arch == 0 or n_arch == num_examples:
    raise ValueError(f'num_examples={num_examples} is too small for arch_fraction={arch_fraction}: '
                     f'one split would be empty')
  perm = np.random.default_rng(seed).permutation(num_examples)
  return np.sort(perm[n_arch:]), np.sort(perm[:n_arch])


class IndexedSource:
  """A random-access view ``source[indices[i]]``; index ``-1`` is an eval padding example.

  A padding example is ``source[pad_from]`` with every label set to 255 (ignored), so it keeps the
  shapes of the real examples and adds nothing to any metric.  Picklable.

  Args:
    source: anything with ``__len__`` and ``__getitem__(int) -> {'image', 'label'}``.
    indices: int array of source indices (or -1).
    pad_from: the source index that padding examples copy.
  """

  def __init__(self, source: Any, indices: np.ndarray, pad_from: int = 0):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.pad_from = int(pad_from)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    j = int(self.indices[i])
    if j == _PAD:
      ex = dict(self.source[self.pad_from])
      ex['label'] = np.full_like(np.asarray(ex['label']), IGNORE_LABEL)
      return ex
    return self.source[j]

  def __repr__(self) -> str:
    return f'IndexedSource({self.source!r}, {len(self)} indices)'


@dataclasses.dataclass(frozen=True)
class SegTrainTransform(grain.transforms.RandomMap):
  """resize -> random scale -> random crop (pad 0 / 255) -> random flip -> normalize.

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
      image, label = T.random_scale(image, label, rng, self.scales)
    image, label = T.random_crop(image, label, rng, self.crop_size)
    if self.flip:
      image, label = T.random_flip(image, label, rng)
    return {'image': T.normalize(image), 'label': label.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class SegEvalTransform(grain.transforms.Map):
  """Optional resize (image bilinear, label nearest) -> normalize; no randomness."""
  resize_to: tuple[int, int] | None = None

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    image, label = np.asarray(element['image']), np.asarray(element['label'])
    if self.resize_to is not None:
      image, label = T.resize(image, label, self.resize_to)
    return {'image': T.normalize(image), 'label': label.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class ClsTransform(grain.transforms.RandomMap):
  """Classification: optional random flip -> normalize; integer label -> int32."""
  flip: bool = True

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = np.asarray(element['image'])
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': T.normalize(image), 'label': np.int32(element['label'])}


def _pair(size: int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
  if size is None:
    return None
  return T._hw(size, what)  # pylint: disable=protected-access


def _shard_spec(shard_by_process: bool | tuple[int, int]) -> tuple[int, int]:
  """(index, count) of this process's shard."""
  if shard_by_process is False:
    return 0, 1
  if shard_by_process is True:
    import jax  # pylint: disable=g-import-not-at-top  (workers never need jax)
    return jax.process_index(), jax.process_count()
  index, count = (int(v) for v in shard_by_process)
  if not 0 <= index < count:
    raise ValueError(f'shard_by_process=(index, count) needs 0 <= index < count, got '
                     f'{shard_by_process}')
  return index, count


def _base_indices(source: Any, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
  n = len(source)
  if indices is None:
    return np.arange(n, dtype=np.int64)
  idx = np.asarray(indices, np.int64).reshape(-1)
  if idx.size and (idx.min() < 0 or idx.max() >= n):
    raise IndexError(f'indices must lie in [0, {n}) for {source!r}, got range '
                     f'[{idx.min()}, {idx.max()}]')
  return idx


def shard_indices(indices: np.ndarray, index: int, count: int, *, even: bool) -> np.ndarray:
  """This process's share ``indices[index::count]``; ``even`` first truncates to a multiple."""
  if even:
    indices = indices[:len(indices) // count * count]
  return indices[index::count]


def _iter_dataset(ds: grain.MapDataset, worker_count: int, read_threads: int,
                  prefetch_batches: int) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch_batches))
  if worker_count > 0:
    # grain reads absl flags when it starts workers; outside an absl app (pytest, notebooks, plain
    # scripts) they are unparsed and grain raises UnparsedFlagAccessError: use their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


def _train_dataset(source: Any, indices: Any, batch_size: int, transform: Any, shuffle: bool,
                   seed: int, num_epochs: int | None,
                   shard_by_process: bool | tuple[int, int]) -> grain.MapDataset:
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive or None (forever), got {num_epochs}')
  index, count = _shard_spec(shard_by_process)
  idx = shard_indices(_base_indices(source, indices), index, count, even=True)
  if len(idx) < batch_size:
    raise ValueError(f'process shard {index}/{count} holds {len(idx)} examples of {source!r}, '
                     f'fewer than batch_size={batch_size}')
  ds = grain.MapDataset.source(IndexedSource(source, idx)).seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)  # reseeds the shuffle and the augmentations every epoch
  ds = ds.random_map(transform)
  return ds.batch(batch_size, drop_remainder=True)


def make_seg_pipeline(source: Any, *, indices: Sequence[int] | np.ndarray | None = None,
                      batch_size: int, crop_size: int | Sequence[int],
                      resize_to: int | Sequence[int] | None = None,
                      scales: Sequence[float] | None = None, flip: bool = True,
                      shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                      worker_count: int = 0, shard_by_process: bool | tuple[int, int] = True,
                      read_threads: int = 4, prefetch_batches: int = 4) -> grain.IterDataset:
  """Training pipeline for segmentation (search: resize + crop + flip; fine-tuning: + scales).

  Per example: ``resize_to`` (bilinear / nearest) -> random scale from ``scales`` -> random
  ``crop_size`` crop (padded with 0 / 255 when smaller) -> random flip -> normalize.  Examples are
  shuffled per epoch (shuffle then repeat), batches never mix sizes and the last incomplete batch
  is dropped.

  Args:
    source: random access ``{'image': uint8 (H, W, 3), 'label': uint8 (H, W)}`` examples
      (:class:`~fna_jax.data.cityscapes.CityscapesSource`,
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
    A ``grain.IterDataset`` of ``{'image': float32 (B, h, w, 3), 'label': int32 (B, h, w)}``.
  """
  transform = SegTrainTransform(crop_size=_pair(crop_size, 'crop_size'),
                                resize_to=_pair(resize_to, 'resize_to'),
                                scales=None if scales is None else tuple(float(s) for s in scales),
                                flip=bool(flip))
  ds = _train_dataset(source, indices, batch_size, transform, shuffle, seed, num_epochs,
                      shard_by_process)
  return _iter_dataset(ds, worker_count, read_threads, prefetch_batches)


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
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  index, count = _shard_spec(shard_by_process)
  idx = _base_indices(source, indices)
  if len(idx) == 0:
    raise ValueError(f'no examples to evaluate in {source!r}')
  pad_from = int(idx[0])
  if pad_remainder:
    total = -(-len(idx) // (batch_size * count)) * batch_size * count
    idx = np.concatenate([idx, np.full(total - len(idx), _PAD, np.int64)])
  idx = shard_indices(idx, index, count, even=False)
  ds = grain.MapDataset.source(IndexedSource(source, idx, pad_from=pad_from))
  ds = ds.map(SegEvalTransform(resize_to=_pair(resize_to, 'resize_to')))
  ds = ds.batch(batch_size, drop_remainder=False)
  return _iter_dataset(ds, worker_count, read_threads, prefetch_batches)


def make_cls_pipeline(source: Any, *, indices: Sequence[int] | np.ndarray | None = None,
                      batch_size: int, flip: bool = True, shuffle: bool = True, seed: int = 0,
                      num_epochs: int | None = None, drop_remainder: bool = True,
                      worker_count: int = 0, shard_by_process: bool | tuple[int, int] = True,
                      read_threads: int = 4, prefetch_batches: int = 4) -> grain.IterDataset:
  """Classification pipeline (e.g. :class:`~fna_jax.data.demo.DemoClassification` pretraining).

  Args:
    source: random access ``{'image': uint8 (S, S, 3), 'label': int}`` examples.
    indices: source indices to use; default all.
    batch_size: examples per batch on this process.
    flip: random left-right flips.
    shuffle: shuffle the examples (a new order every epoch); False with ``flip=False`` gives a
      deterministic in-order pass for evaluation.
    seed: seed of the shuffle and the flips.
    num_epochs: passes over the data, None for an endless stream.
    drop_remainder: drop the last incomplete batch.
    worker_count: grain worker processes.
    shard_by_process: as in :func:`make_seg_pipeline` (shards are equalised when
      ``drop_remainder``).
    read_threads: threads reading batches.
    prefetch_batches: batches read ahead per reading process.

  Returns:
    A ``grain.IterDataset`` of ``{'image': float32 (B, S, S, 3), 'label': int32 (B,)}``.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive or None (forever), got {num_epochs}')
  index, count = _shard_spec(shard_by_process)
  idx = shard_indices(_base_indices(source, indices), index, count, even=drop_remainder)
  if drop_remainder and len(idx) < batch_size:
    raise ValueError(f'process shard {index}/{count} holds {len(idx)} examples of {source!r}, '
                     f'fewer than batch_size={batch_size}')
  ds = grain.MapDataset.source(IndexedSource(source, idx)).seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(ClsTransform(flip=bool(flip)))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return _iter_dataset(ds, worker_count, read_threads, prefetch_batches)

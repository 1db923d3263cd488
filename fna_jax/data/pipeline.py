"""grain input pipelines: what every task's training and evaluation input shares.

A pipeline is a ``grain.IterDataset``; ``it = iter(pipeline)`` yields host-local numpy batches of
dicts.  Training pipelines yield images as ``uint8 (B, h, w, 3)`` RGB, normalised on the device
inside the jitted steps (:func:`fna_jax.runtime.inputs.model_images`: a quarter of the bytes of
float32 sent per step); evaluation pipelines yield them ``float32``, ImageNet-normalised.
Tasks build theirs from
:func:`train_dataset` / :func:`eval_dataset` + :func:`iter_dataset` with their own per-example
transform (segmentation: :mod:`fna_jax.tasks.seg.pipeline`); :func:`make_cls_pipeline` is the
classification pipeline (``'label': int32 (B,)``) of the demo seed's pretraining.

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

IGNORE_LABEL = T.IGNORE_LABEL  # the label of every padding example (counts in no metric)
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
class ClsTransform(grain.transforms.RandomMap):
  """Classification: optional random flip; image uint8 (normalised on the device, or here with
  ``normalize=True``); integer label -> int32."""
  flip: bool = True
  normalize: bool = False

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = np.asarray(element['image'])
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    image = T.normalize(image) if self.normalize else np.ascontiguousarray(image, np.uint8)
    return {'image': image, 'label': np.int32(element['label'])}


def pair(size: int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
  if size is None:
    return None
  return T._hw(size, what)  # pylint: disable=protected-access


def shard_spec(shard_by_process: bool | tuple[int, int]) -> tuple[int, int]:
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


def base_indices(source: Any, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
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


def iter_dataset(ds: grain.MapDataset, worker_count: int, read_threads: int,
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


def train_dataset(source: Any, indices: Any, batch_size: int, transform: Any, shuffle: bool,
                   seed: int, num_epochs: int | None,
                   shard_by_process: bool | tuple[int, int]) -> grain.MapDataset:
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive or None (forever), got {num_epochs}')
  index, count = shard_spec(shard_by_process)
  idx = shard_indices(base_indices(source, indices), index, count, even=True)
  if len(idx) < batch_size:
    raise ValueError(f'process shard {index}/{count} holds {len(idx)} examples of {source!r}, '
                     f'fewer than batch_size={batch_size}')
  ds = grain.MapDataset.source(IndexedSource(source, idx)).seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)  # reseeds the shuffle and the augmentations every epoch
  ds = ds.random_map(transform)
  return ds.batch(batch_size, drop_remainder=True)


def eval_dataset(source: Any, indices: Sequence[int] | np.ndarray | None, batch_size: int,
                 transform: Any, pad_remainder: bool,
                 shard_by_process: bool | tuple[int, int],
                 source_cls: type[IndexedSource] | None = None) -> grain.MapDataset:
  """Every example of ``indices`` once, in order, through ``transform``, batched.

  ``pad_remainder`` pads the index list to a multiple of ``batch_size * process_count`` with
  padding examples (made by ``source_cls``, default :class:`IndexedSource`), so every batch is
  full and every process yields the same number of batches; a smaller last batch is kept
  otherwise.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  index, count = shard_spec(shard_by_process)
  idx = base_indices(source, indices)
  if len(idx) == 0:
    raise ValueError(f'no examples to evaluate in {source!r}')
  pad_from = int(idx[0])
  if pad_remainder:
    total = -(-len(idx) // (batch_size * count)) * batch_size * count
    idx = np.concatenate([idx, np.full(total - len(idx), _PAD, np.int64)])
  idx = shard_indices(idx, index, count, even=False)
  ds = grain.MapDataset.source((source_cls or IndexedSource)(source, idx, pad_from=pad_from))
  return ds.map(transform).batch(batch_size, drop_remainder=False)


class MarkedIndexedSource(IndexedSource):
  """``source[indices[i]]`` with its source ``'index'`` and ``'valid'``; index -1 (padding) is a
  copy of ``source[pad_from]`` with ``valid`` False and ``index`` -1 (for tasks whose examples
  have no ignore label to pad with: the evaluator drops invalid examples).  Picklable."""

  def __getitem__(self, i: int) -> dict[str, Any]:
    j = int(self.indices[i])
    ex = dict(self.source[self.pad_from if j < 0 else j])
    ex['index'] = np.int32(j)
    ex['valid'] = np.bool_(j >= 0)
    return ex


def marked_eval_dataset(source: Any, indices: Sequence[int] | np.ndarray | None,
                        batch_size: int, transform: Any,
                        shard_by_process: bool | tuple[int, int]) -> grain.MapDataset:
  """Every example of ``indices`` once, in order, through ``transform``, in full batches.

  The index list is padded to a multiple of ``batch_size * process_count`` with copies of the
  first example marked ``valid = False`` (:class:`MarkedIndexedSource`), so every batch is full
  and every process yields the same number of batches; metrics must skip them.
  """
  return eval_dataset(source, indices, batch_size, transform, True, shard_by_process,
                      MarkedIndexedSource)


def make_cls_pipeline(source: Any, *, indices: Sequence[int] | np.ndarray | None = None,
                      batch_size: int, flip: bool = True, shuffle: bool = True, seed: int = 0,
                      num_epochs: int | None = None, drop_remainder: bool = True,
                      worker_count: int = 0, shard_by_process: bool | tuple[int, int] = True,
                      read_threads: int = 4, prefetch_batches: int = 4,
                      normalize: bool = False) -> grain.IterDataset:
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
    normalize: False (default): images stay uint8, for the train steps, which normalise them
      (:func:`fna_jax.runtime.inputs.model_images`); True: float32 ImageNet-normalised here.

  Returns:
    A ``grain.IterDataset`` of ``{'image': uint8 (B, S, S, 3) (float32 with ``normalize``),
    'label': int32 (B,)}``.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive or None (forever), got {num_epochs}')
  index, count = shard_spec(shard_by_process)
  idx = shard_indices(base_indices(source, indices), index, count, even=drop_remainder)
  if drop_remainder and len(idx) < batch_size:
    raise ValueError(f'process shard {index}/{count} holds {len(idx)} examples of {source!r}, '
                     f'fewer than batch_size={batch_size}')
  ds = grain.MapDataset.source(IndexedSource(source, idx)).seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(ClsTransform(flip=bool(flip), normalize=bool(normalize)))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return iter_dataset(ds, worker_count, read_threads, prefetch_batches)

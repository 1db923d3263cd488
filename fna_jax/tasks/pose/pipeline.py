"""grain pipelines of person examples: augmented training crops with heatmap targets, and
evaluation crops with what decoding and PCKh need.

Built on :mod:`fna_jax.data.pipeline` (determinism, resume with ``get_state``/``set_state``,
per-process sharding, workers: see there).  Per example, as SimpleBaseline's
``JointsDataset.__getitem__`` (Xiao et al. 2018, the paper's reference [10] for Sec. 4.3):

* training augmentation: scale ``s *= clip(N(0,1) * sf + 1, 1 - sf, 1 + sf)`` (sf 0.25), with
  probability 0.6 a rotation ``clip(N(0,1) * rf, -2 rf, 2 rf)`` degrees (rf 30), with
  probability 0.5 a horizontal flip (image mirrored, joints ``x -> W - 1 - x`` with the
  :data:`~fna_jax.tasks.pose.joints.FLIP_PAIRS` swapped and invisible joints zeroed as its
  ``fliplr_joints``, centre ``x -> W - 1 - x``);
* the person crop by :func:`~fna_jax.tasks.pose.affine.get_affine_transform` (bilinear), the
  visible joints moved by the same matrix;
* Gaussian heatmap targets as its ``generate_target`` (:func:`generate_target`), ImageNet
  normalisation: on the device for training (images sent as ``uint8``,
  :func:`fna_jax.runtime.inputs.model_images`; the warp's border is raw 0, black, before
  normalising, so uint8 holds it exactly), here for evaluation (``float32``).

Sizes here are (height, width) as elsewhere in fna_jax; SimpleBaseline's (width, height) only
appear inside :mod:`~fna_jax.tasks.pose.affine`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from fna_jax.data import pipeline
from fna_jax.data import transforms as T
from fna_jax.tasks.pose import affine
from fna_jax.tasks.pose.joints import FLIP_PAIRS


def fliplr_joints(joints: np.ndarray, visible: np.ndarray,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
  """SimpleBaseline's ``fliplr_joints``: ``x -> width - 1 - x``, left/right pairs swapped, then
  joints multiplied by their visibility (invisible joints at 0)."""
  joints = np.array(joints, np.float32)
  visible = np.array(visible, np.float32)
  joints[:, 0] = width - joints[:, 0] - 1
  for a, b in FLIP_PAIRS:
    joints[[a, b]] = joints[[b, a]]
    visible[[a, b]] = visible[[b, a]]
  return joints * visible[:, None], visible


def generate_target(joints: np.ndarray, visible: np.ndarray, input_size: tuple[int, int],
                    heatmap_size: tuple[int, int],
                    sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """SimpleBaseline's Gaussian heatmap targets (``JointsDataset.generate_target``).

  For joint ``j`` at crop pixel ``(x, y)``: ``feat_stride = input / heatmap`` per axis,
  ``mu = int(x / stride_x + 0.5), int(y / stride_y + 0.5)`` (Python's ``int``, truncating toward
  zero), and an unnormalised Gaussian ``exp(-d^2 / (2 sigma^2))`` (peak 1) on the
  ``(6 sigma + 1)^2`` window around ``mu``, cut at the heatmap border.  The weight is the
  visibility, and 0 when the window lies wholly outside the heatmap (its heatmap is then 0).

  Args:
    joints: (J, 2) x, y in input-crop pixels.
    visible: (J,) 1 / 0.
    input_size: (height, width) of the crop.
    heatmap_size: (height, width) of the heatmaps.
    sigma: Gaussian standard deviation in heatmap pixels.

  Returns:
    (target float32 (h, w, J), target_weight float32 (J,)).
  """
  hh, hw = heatmap_size
  stride_x, stride_y = input_size[1] / hw, input_size[0] / hh
  num = joints.shape[0]
  target = np.zeros((hh, hw, num), np.float32)
  weight = np.asarray(visible, np.float32).copy()
  tmp = sigma * 3
  size = int(2 * tmp + 1)
  x = np.arange(0, size, 1, np.float32)
  y = x[:, None]
  x0 = y0 = size // 2
  g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2)).astype(np.float32)
  for j in range(num):
    mu_x = int(joints[j, 0] / stride_x + 0.5)
    mu_y = int(joints[j, 1] / stride_y + 0.5)
    ul = (int(mu_x - tmp), int(mu_y - tmp))
    br = (int(mu_x + tmp + 1), int(mu_y + tmp + 1))
    if ul[0] >= hw or ul[1] >= hh or br[0] < 0 or br[1] < 0:
      weight[j] = 0
      continue
    gx = max(0, -ul[0]), min(br[0], hw) - ul[0]
    gy = max(0, -ul[1]), min(br[1], hh) - ul[1]
    ix = max(0, ul[0]), min(br[0], hw)
    iy = max(0, ul[1]), min(br[1], hh)
    if weight[j] > 0.5:
      target[iy[0]:iy[1], ix[0]:ix[1], j] = g[gy[0]:gy[1], gx[0]:gx[1]]
  return target, weight


def sample_augmentation(rng: np.random.Generator, scale_factor: float, rotation: float,
                        flip: bool) -> tuple[float, float, bool]:
  """(scale multiplier, rotation degrees, flip?) drawn as SimpleBaseline's training loader."""
  sf, rf = scale_factor, rotation
  mult = float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
  rot = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf)) if rng.random() <= 0.6 else 0.0
  do_flip = bool(flip and rng.random() <= 0.5)
  return mult, rot, do_flip


def person_crop(element: dict[str, Any], input_size: tuple[int, int], scale_mult: float = 1.0,
                rot: float = 0.0, flip: bool = False) -> dict[str, np.ndarray]:
  """The crop of one example under a given augmentation (no randomness).

  Returns:
    ``{'image': uint8 (h, w, 3), 'joints': float32 (16, 2) crop pixels (visible joints moved by
    the crop matrix, the others left as they are), 'visible', 'center', 'scale', 'rotation',
    'trans': (2, 3) image -> crop matrix}``.
  """
  image = np.asarray(element['image'])
  joints = np.asarray(element['joints'], np.float32)
  visible = np.asarray(element['visible'], np.float32)
  center = np.array(element['center'], np.float32)
  scale = np.float32(element['scale']) * np.float32(scale_mult)
  if flip:
    image = image[:, ::-1]
    joints, visible = fliplr_joints(joints, visible, image.shape[1])
    center[0] = image.shape[1] - center[0] - 1
  out_wh = (input_size[1], input_size[0])
  trans = affine.get_affine_transform(center, scale, rot, out_wh)
  crop = affine.warp_affine(image, trans, out_wh)
  moved = np.where(visible[:, None] > 0, affine.affine_transform(joints, trans), joints)
  return {'image': crop, 'joints': moved.astype(np.float32), 'visible': visible,
          'center': center, 'scale': np.float32(scale), 'rotation': np.float32(rot),
          'trans': trans}


@dataclasses.dataclass(frozen=True)
class PoseTrainTransform(grain.transforms.RandomMap):
  """Random scale / rotation / flip -> person crop -> heatmap targets; the crop stays uint8
  (normalised on the device: :func:`fna_jax.runtime.inputs.model_images`).

  Attributes:
    input_size: (height, width) of the crops.
    heatmap_size: (height, width) of the targets.
    sigma: heatmap Gaussian sigma (heatmap pixels).
    augment: draw the random scale, rotation and flip (else the plain crop).
    scale_factor, rotation, flip: SimpleBaseline's SCALE_FACTOR, ROT_FACTOR (degrees), FLIP.
  """
  input_size: tuple[int, int] = (256, 256)
  heatmap_size: tuple[int, int] = (64, 64)
  sigma: float = 2.0
  augment: bool = True
  scale_factor: float = 0.25
  rotation: float = 30.0
  flip: bool = True

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if self.augment:
      mult, rot, flip = sample_augmentation(rng, self.scale_factor, self.rotation, self.flip)
    else:
      mult, rot, flip = 1.0, 0.0, False
    c = person_crop(element, self.input_size, mult, rot, flip)
    target, weight = generate_target(c['joints'], c['visible'], self.input_size,
                                     self.heatmap_size, self.sigma)
    return {'image': np.ascontiguousarray(c['image'], np.uint8), 'target': target,
            'target_weight': weight}


@dataclasses.dataclass(frozen=True)
class PoseEvalTransform(grain.transforms.Map):
  """The plain person crop (centre and scale as given, no rotation) and the ground truth."""
  input_size: tuple[int, int] = (256, 256)

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    c = person_crop(element, self.input_size)
    return {'image': T.normalize(c['image']),
            'center': np.asarray(element['center'], np.float32),
            'scale': np.float32(element['scale']),
            'joints': np.asarray(element['joints'], np.float32),
            'visible': np.asarray(element['visible'], np.float32),
            'headbox': np.asarray(element['headbox'], np.float32),
            'index': np.int32(element['index']), 'valid': np.bool_(element['valid'])}


def make_pose_pipeline(source: Any, indices: Sequence[int] | np.ndarray | None = None, *,
                       batch_size: int, seed: int = 0,
                       input_size: int | Sequence[int] = (256, 256),
                       heatmap_size: int | Sequence[int] = (64, 64), sigma: float = 2.0,
                       augment: bool = True, scale_factor: float = 0.25, rotation: float = 30.0,
                       flip: bool = True, shuffle: bool = True, num_epochs: int | None = None,
                       worker_count: int = 0, shard_by_process: bool | tuple[int, int] = True,
                       read_threads: int = 4, prefetch_batches: int = 4) -> grain.IterDataset:
  """Training pipeline for pose (paper Sec. 4.3.1: SimpleBaseline's training data).

  Args:
    source: random-access person examples (:class:`~fna_jax.tasks.pose.mpii.MPIISource`,
      :class:`~fna_jax.tasks.pose.demo_data.DemoPose`).
    indices: source indices to use (e.g. a half of ``pipeline.split_train_arch``); default all.
    batch_size: examples per batch on this process.
    seed: seed of the shuffle and the augmentations.
    input_size: (height, width) of the crops (or one int).
    heatmap_size: (height, width) of the heatmaps (or one int).
    sigma: heatmap Gaussian sigma.
    augment: random scale, rotation and flip.
    scale_factor, rotation, flip: the augmentation's ranges (SimpleBaseline's MPII: 0.25, 30,
      True).
    shuffle: shuffle the examples (a new order every epoch).
    num_epochs: passes over the data, None for an endless stream.
    worker_count, shard_by_process, read_threads, prefetch_batches: as
      :func:`fna_jax.tasks.seg.pipeline.make_seg_pipeline`.

  Returns:
    A ``grain.IterDataset`` of ``{'image': uint8 (B, h, w, 3), 'target': float32
    (B, hh, hw, 16), 'target_weight': float32 (B, 16)}``.
  """
  transform = PoseTrainTransform(
      input_size=pipeline.pair(input_size, 'input_size'),
      heatmap_size=pipeline.pair(heatmap_size, 'heatmap_size'), sigma=float(sigma),
      augment=bool(augment), scale_factor=float(scale_factor), rotation=float(rotation),
      flip=bool(flip))
  ds = pipeline.train_dataset(source, indices, batch_size, transform, shuffle, seed, num_epochs,
                              shard_by_process)
  return pipeline.iter_dataset(ds, worker_count, read_threads, prefetch_batches)


def make_pose_eval_pipeline(source: Any, *, batch_size: int,
                            input_size: int | Sequence[int] = (256, 256),
                            indices: Sequence[int] | np.ndarray | None = None,
                            worker_count: int = 0,
                            shard_by_process: bool | tuple[int, int] = True,
                            read_threads: int = 4,
                            prefetch_batches: int = 4) -> grain.IterDataset:
  """Evaluation pipeline: every example once, in order, plain crops, padded to full batches.

  The index list is padded to a multiple of ``batch_size * process_count`` with copies of the
  first example marked ``valid = False`` (``index = -1``), so every batch is full and every
  process yields the same number of batches; metrics must skip them.

  Returns:
    A ``grain.IterDataset`` of ``{'image': float32 (B, h, w, 3), 'center': (B, 2), 'scale':
    (B,), 'joints': (B, 16, 2) full-image pixels, 'visible': (B, 16), 'headbox': (B, 2, 2),
    'index': int32 (B,), 'valid': bool (B,)}``.
  """
  ds = pipeline.marked_eval_dataset(
      source, indices, batch_size,
      PoseEvalTransform(input_size=pipeline.pair(input_size, 'input_size')), shard_by_process)
  return pipeline.iter_dataset(ds, worker_count, read_threads, prefetch_batches)

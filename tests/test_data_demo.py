"""Tests of the demo dataset, the numpy transforms and the grain pipelines (fna_jax.data)."""

from __future__ import annotations

import gc
import pickle

import chex
import numpy as np
import pytest

from fna_jax.data import demo
from fna_jax.data import pipeline
from fna_jax.data import transforms as T
from fna_jax.tasks.seg import demo_data
from fna_jax.tasks.seg import pipeline as seg_pipeline

VALID_LABELS = set(range(demo.NUM_CLASSES)) | {demo.IGNORE_LABEL}


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Demo dataset


def test_demo_segmentation_is_deterministic_per_split_and_index():
  a = demo_data.DemoSegmentation('train', 10, seed=3)
  b = demo_data.DemoSegmentation('train', 10, seed=3)
  for i in (0, 7):
    assert _same(a[i], b[i])
  assert _same(a[-1], b[9])
  assert not np.array_equal(a[0]['image'], a[1]['image'])
  val = demo_data.DemoSegmentation('val', 10, seed=3)
  assert not np.array_equal(a[0]['image'], val[0]['image'])
  assert _same(val[2], demo_data.DemoSegmentation('validation', 10, seed=3)[2])
  other_seed = demo_data.DemoSegmentation('train', 10, seed=4)
  assert not np.array_equal(a[0]['image'], other_seed[0]['image'])
  # A dataset of another length holds the same examples: example i depends on (seed, split, i).
  assert _same(a[4], demo_data.DemoSegmentation('train', 1000, seed=3)[4])
  # Pickling (grain workers) keeps the content.
  assert _same(pickle.loads(pickle.dumps(a))[5], a[5])


def test_demo_segmentation_shapes_dtypes_and_label_values():
  ds = demo_data.DemoSegmentation('train', 4, image_size=40)
  assert len(ds) == 4
  for i in range(4):
    ex = ds[i]
    chex.assert_shape(ex['image'], (40, 40, 3))
    chex.assert_shape(ex['label'], (40, 40))
    assert ex['image'].dtype == np.uint8 and ex['label'].dtype == np.uint8
    assert set(np.unique(ex['label']).tolist()) <= VALID_LABELS
  assert demo_data.DemoSegmentation.NUM_CLASSES == len(demo_data.DemoSegmentation.CLASS_NAMES) == 6
  with pytest.raises(IndexError, match='out of range'):
    ds[4]
  with pytest.raises(ValueError, match='unknown demo split'):
    demo_data.DemoSegmentation('training', 4)


def test_demo_segmentation_class_balance_and_ignore_band():
  ds = demo_data.DemoSegmentation('train', 40)
  labels = np.stack([ds[i]['label'] for i in range(len(ds))])
  images_with = [(labels == c).any(axis=(1, 2)).sum() for c in range(demo.NUM_CLASSES)]
  # Every shape class appears in many of the 40 images (each image draws 3-7 shapes).
  assert min(images_with[1:]) >= 15, images_with
  freq = np.bincount(labels[labels != 255], minlength=demo.NUM_CLASSES) / (labels != 255).sum()
  assert 0.5 < freq[0] < 0.8, freq
  # Classes cover similar areas (per-class radius factors).
  assert freq[1:].min() > 0.03 and freq[1:].max() < 2.0 * freq[1:].min(), freq
  ignore = (labels == 255).mean()
  assert 0.003 < ignore < 0.05, ignore


def _pixels(ds: demo_data.DemoSegmentation) -> tuple[np.ndarray, np.ndarray]:
  images = np.stack([ds[i]['image'] for i in range(len(ds))]).reshape(-1, 3)
  labels = np.stack([ds[i]['label'] for i in range(len(ds))]).reshape(-1)
  keep = labels != 255
  return images[keep].astype(np.int64), labels[keep].astype(np.int64)


def _miou(pred: np.ndarray, y: np.ndarray, n: int) -> float:
  ious = [((pred == c) & (y == c)).sum() / max(((pred == c) | (y == c)).sum(), 1) for c in range(n)]
  return float(np.mean(ious))


def test_demo_per_pixel_colour_is_far_from_enough():
  """The best per-pixel colour rules, fitted on train, stay far from segmenting val images."""
  x, y = _pixels(demo_data.DemoSegmentation('train', 80))
  xv, yv = _pixels(demo_data.DemoSegmentation('val', 30))
  n = demo.NUM_CLASSES
  # Nearest class-mean colour.
  means = np.stack([x[y == c].mean(0) for c in range(n)])
  pred = np.argmin(((xv[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  acc_mean = (pred == yv).mean()
  # Colour-histogram Bayes classifier (16 bins per channel): the best per-pixel colour rule.
  def q(v):
    return (v // 16) @ np.array([256, 16, 1])
  hist = np.zeros((4096, n))
  np.add.at(hist, (q(x), y), 1)
  pred_h = np.argmax(hist[q(xv)], axis=1)
  acc_hist = (pred_h == yv).mean()
  majority = (yv == 0).mean()
  assert acc_mean < 0.9 and acc_hist < 0.9, (acc_mean, acc_hist)
  assert _miou(pred, yv, n) < 0.5 and _miou(pred_h, yv, n) < 0.5
  # Colour still carries some information (classes have preferred hues): above the majority rule.
  assert acc_hist > majority + 0.03, (acc_hist, majority)


def test_demo_examples_are_made_on_access():
  """Nothing is generated or stored up front: an example is made when indexed (about 3 ms each
  on an idle core, measured), so any length costs nothing and grain workers get a tiny pickle.

  (No wall-clock assertion: a loaded machine would make one flaky.)
  """
  big = demo_data.DemoSegmentation('train', 10**12, image_size=32)
  ex = big[10**12 - 1]
  chex.assert_shape(ex['image'], (32, 32, 3))
  assert _same(ex, demo_data.DemoSegmentation('train', 10**12, image_size=32)[-1])
  # 200 stored 32x32 examples would pickle to ~800 kB; the source is a few plain attributes.
  assert len(pickle.dumps(demo_data.DemoSegmentation('train', 200, image_size=32))) < 2000
  assert len(pickle.dumps(demo.DemoClassification('train', 200, image_size=32))) < 2000


def test_demo_classification():
  ds = demo.DemoClassification('train', 100, image_size=32, seed=1)
  labels = np.array([ds[i]['label'] for i in range(100)])
  assert set(labels.tolist()) <= set(range(5))
  assert np.bincount(labels, minlength=5).min() >= 8
  ex = ds[3]
  chex.assert_shape(ex['image'], (32, 32, 3))
  assert ex['image'].dtype == np.uint8 and isinstance(ex['label'], int)
  assert _same(ex, demo.DemoClassification('train', 100, image_size=32, seed=1)[3])
  val = demo.DemoClassification('val', 100, 32, seed=1)
  assert not np.array_equal(ex['image'], val[3]['image'])
  # A different stream from the segmentation images.
  seg = demo_data.DemoSegmentation('train', 100, 32, seed=1)
  assert not np.array_equal(ex['image'], seg[3]['image'])
  assert demo.DemoClassification.NUM_CLASSES == len(demo.DemoClassification.CLASS_NAMES) == 5


# ----------------------------------------------------------------------------------------------
# Transforms


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_random_crop_pads_with_zero_and_ignore():
  image = np.full((10, 12, 3), 7, np.uint8)
  label = np.full((10, 12), 3, np.uint8)
  out_i, out_l = T.random_crop(image, label, _rng(), (16, 16))
  chex.assert_shape(out_i, (16, 16, 3))
  np.testing.assert_array_equal(out_l[:10, :12], 3)
  np.testing.assert_array_equal(out_l[10:], 255)
  np.testing.assert_array_equal(out_l[:, 12:], 255)
  np.testing.assert_array_equal(out_i[:10, :12], 7)
  np.testing.assert_array_equal(out_i[10:], 0)
  np.testing.assert_array_equal(out_i[:, 12:], 0)


def test_random_crop_is_a_window_and_covers_offsets():
  h, w = 9, 30
  image = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3).astype(np.uint16)
  label = (np.arange(h * w).reshape(h, w) % 250).astype(np.uint8)
  offsets = set()
  for seed in range(40):
    out_i, out_l = T.random_crop(image, label, _rng(seed), (8, 16))
    chex.assert_shape(out_i, (8, 16, 3))
    y, x = np.unravel_index(int(out_i[0, 0, 0]) // 3, (h, w))
    np.testing.assert_array_equal(out_i, image[y:y + 8, x:x + 16])
    np.testing.assert_array_equal(out_l, label[y:y + 8, x:x + 16])
    offsets.add((int(y), int(x)))
  ys = {o[0] for o in offsets}
  xs = {o[1] for o in offsets}
  assert ys == {0, 1} and min(xs) == 0 and max(xs) == 14 and len(xs) > 8
  # An int seed is the same as a generator made from it.
  by_seed = T.random_crop(image, label, 7, (8, 16))
  by_rng = T.random_crop(image, label, _rng(7), (8, 16))
  np.testing.assert_array_equal(by_seed[0], by_rng[0])
  np.testing.assert_array_equal(by_seed[1], by_rng[1])
  with pytest.raises(TypeError, match='rng must be'):
    T.random_crop(image, label, 0.5, (8, 16))


def test_random_flip_flips_image_and_label_together():
  image = _rng(1).integers(0, 256, (6, 9, 3)).astype(np.uint8)
  label = (image[..., 0] % 19).astype(np.uint8)
  flipped = 0
  for seed in range(20):
    out_i, out_l = T.random_flip(image, label, _rng(seed))
    np.testing.assert_array_equal(out_l, out_i[..., 0] % 19)
    if np.array_equal(out_i, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out_i, image)
  assert 3 <= flipped <= 17


def test_resize_label_nearest_keeps_values_and_image_bilinear():
  label = np.zeros((8, 10), np.uint8)
  label[:4] = 3
  label[4:, 5:] = 7
  label[0, 0] = 255
  image = np.full((8, 10, 3), 90, np.uint8)
  image[:, 5:] = 200
  out_i, out_l = T.resize(image, label, (13, 7))
  chex.assert_shape(out_i, (13, 7, 3))
  chex.assert_shape(out_l, (13, 7))
  assert set(np.unique(out_l).tolist()) <= {0, 3, 7, 255}
  assert {3, 7} <= set(np.unique(out_l).tolist())
  # Bilinear: the left and right plateaus keep their values, the seam gets values in between.
  np.testing.assert_array_equal(out_i[:, 0], 90)
  np.testing.assert_array_equal(out_i[:, -1], 200)
  mid = out_i[:, 3, 0]
  assert ((mid > 90) & (mid < 200)).all(), mid
  # Identity size returns the inputs.
  same_i, same_l = T.resize(image, label, (8, 10))
  assert same_i is image and same_l is label


def test_random_scale_picks_a_listed_scale():
  image = np.zeros((20, 30, 3), np.uint8)
  label = np.zeros((20, 30), np.uint8)
  out_i, out_l = T.random_scale(image, label, _rng(), (2.0,))
  chex.assert_shape(out_i, (40, 60, 3))
  chex.assert_shape(out_l, (40, 60))
  sizes = {T.random_scale(image, label, _rng(s))[0].shape[:2] for s in range(60)}
  expected = {(round(20 * s), round(30 * s)) for s in T.FINETUNE_SCALES}
  assert sizes == expected


def test_pil_nearest_indices_are_pils_own():
  """The label gather of random_scale_crop reads the source pixels PIL's NEAREST resize reads,
  on short axes of every size and on a Cityscapes-length axis (2048 -> 3584 at scale 1.75),
  where the closed form floor((i + 0.5) * scale) differs from PIL's running sum."""
  from PIL import Image
  for n_in, n_out in [(4, 15), (7, 3), (1, 5), (5, 1), (97, 131), (2048, 3584), (1024, 768)]:
    index = np.arange(n_in, dtype=np.int32)[None].repeat(2, 0)
    want = np.asarray(Image.fromarray(index).resize((n_out, 2), Image.Resampling.NEAREST))[0]
    np.testing.assert_array_equal(T._pil_nearest_indices(n_in, n_out), want)
  closed = np.minimum(np.floor((np.arange(15) + 0.5) * (4 / 15)), 3).astype(int)
  assert not np.array_equal(closed, T._pil_nearest_indices(4, 15))  # the case that needs it


def test_random_scale_crop_equals_scale_then_crop():
  """Same draws, same window: labels exactly those of random_scale + random_crop (padding with
  255 included), images within 2 intensity levels (PIL rounds a box's filter coefficients from
  the box's origin) and on average within 0.2, over random sizes, crops larger and smaller than
  the rescaled frame, and scale 1."""
  rng = np.random.default_rng(0)
  mean_diff = []
  for t in range(60):
    h, w = rng.integers(1, 80, 2)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    label = rng.integers(0, 19, (h, w)).astype(np.uint8)
    crop = tuple(int(v) for v in rng.integers(1, 90, 2))
    scales = T.FINETUNE_SCALES if t % 4 else (1.0,)
    a, b = np.random.default_rng(t), np.random.default_rng(t)
    i1, l1 = T.random_crop(*T.random_scale(image, label, a, scales), a, crop)
    i2, l2 = T.random_scale_crop(image, label, b, scales, crop)
    assert i2.shape == i1.shape == crop + (3,) and i2.dtype == np.uint8
    np.testing.assert_array_equal(l2, l1)
    assert np.abs(i1.astype(int) - i2).max() <= 2
    mean_diff.append(np.abs(i1.astype(int) - i2).mean())
    assert a.random() == b.random()           # the same number of draws
  assert np.mean(mean_diff) < 0.2


def test_normalize_uses_imagenet_statistics():
  image = np.array([[[0, 0, 0], [255, 255, 255], [124, 116, 104]]], np.uint8)
  out = T.normalize(image)
  assert out.dtype == np.float32
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out[0, 0], -mean / std, rtol=1e-6)
  np.testing.assert_allclose(out[0, 1], (1 - mean) / std, rtol=1e-6)
  np.testing.assert_allclose(out[0, 2], (np.array([124, 116, 104]) / 255 - mean) / std,
                             rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Pipelines


class IndexSource:
  """Example i has image value i (per channel) and label i % 7; 8x8 pixels."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'image': np.full((8, 8, 3), i, np.uint8), 'label': np.full((8, 8), i % 7, np.uint8)}


def _batch_ids(batch) -> list[int]:
  """Source indices of a batch from IndexSource: channel 0 of its images (training batches are
  uint8; evaluation batches normalised, undone)."""
  return [int(x) for x in T.unnormalize(batch['image'])[:, 0, 0, 0]]


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_seg_pipeline_batches_shapes_and_values():
  src = demo_data.DemoSegmentation('train', 12, image_size=40)
  ds = seg_pipeline.make_seg_pipeline(src, batch_size=2, crop_size=(24, 32), resize_to=48,
                                  scales=(0.75, 1.0), shard_by_process=False)
  for batch in _take(iter(ds), 3):
    chex.assert_shape(batch['image'], (2, 24, 32, 3))
    chex.assert_shape(batch['label'], (2, 24, 32))
    # Training images are uint8 (normalised in the jitted steps, fna_jax.runtime.inputs).
    assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
    assert set(np.unique(batch['label']).tolist()) <= VALID_LABELS


def test_seg_pipeline_is_deterministic_and_resumes_exactly():
  src = demo_data.DemoSegmentation('train', 16, image_size=32)
  kw = dict(batch_size=2, crop_size=24, scales=(0.75, 1.25), seed=5, shard_by_process=False)
  it = iter(seg_pipeline.make_seg_pipeline(src, **kw))
  first = _take(it, 3)
  state = it.get_state()
  rest = _take(it, 2)
  again = _take(iter(seg_pipeline.make_seg_pipeline(src, **kw)), 5)
  for a, b in zip(first + rest, again):
    assert _same(a, b)
  resumed = iter(seg_pipeline.make_seg_pipeline(src, **kw))
  resumed.set_state(state)
  for a, b in zip(rest, _take(resumed, 2)):
    assert _same(a, b)
  other = _take(iter(seg_pipeline.make_seg_pipeline(src, **{**kw, 'seed': 6})), 3)
  assert not all(_same(a, b) for a, b in zip(first, other))


def test_seg_pipeline_epochs_shuffle_and_indices():
  src = IndexSource(20)
  indices = np.arange(2, 20, 2)  # 9 examples
  ds = seg_pipeline.make_seg_pipeline(src, indices=indices, batch_size=3, crop_size=8, flip=False,
                                  num_epochs=2, seed=0, shard_by_process=False)
  batches = list(ds)
  assert len(batches) == 6
  ids = [i for b in batches for i in _batch_ids(b)]
  epoch1, epoch2 = ids[:9], ids[9:]
  assert sorted(epoch1) == sorted(epoch2) == indices.tolist()
  assert epoch1 != indices.tolist() and epoch1 != epoch2  # shuffled, differently per epoch
  # Labels travel with their images.
  for b in batches:
    np.testing.assert_array_equal(b['label'][:, 0, 0], np.array(_batch_ids(b)) % 7)
  # No shuffle: in order.
  plain = list(seg_pipeline.make_seg_pipeline(src, indices=indices, batch_size=3, crop_size=8,
                                          flip=False, shuffle=False, num_epochs=1,
                                          shard_by_process=False))
  assert [i for b in plain for i in _batch_ids(b)] == indices.tolist()
  with pytest.raises(IndexError, match='indices must lie in'):
    seg_pipeline.make_seg_pipeline(src, indices=[0, 20], batch_size=1, crop_size=8,
                               shard_by_process=False)


def test_seg_pipeline_shards_evenly_over_processes():
  src = IndexSource(23)
  shards = []
  for index in range(3):
    ds = seg_pipeline.make_seg_pipeline(src, batch_size=2, crop_size=8, num_epochs=1,
                                    shard_by_process=(index, 3))
    batches = list(ds)
    assert len(batches) == 3  # 23 -> 21 examples, 7 per process, 3 full batches each
    shards.append({i for b in batches for i in _batch_ids(b)})
  assert not (shards[0] & shards[1]) and not (shards[0] & shards[2]) and not (shards[1] & shards[2])
  # shard_by_process=True uses jax's process index and count (one process here).
  ds = seg_pipeline.make_seg_pipeline(src, batch_size=23, crop_size=8, num_epochs=1)
  assert sorted(_batch_ids(next(iter(ds)))) == list(range(23))


def test_eval_pipeline_in_order_remainder_and_padding():
  src = IndexSource(7)
  batches = list(seg_pipeline.make_eval_pipeline(src, batch_size=3, shard_by_process=False))
  assert [len(b['label']) for b in batches] == [3, 3, 1]
  assert [i for b in batches for i in _batch_ids(b)] == list(range(7))
  np.testing.assert_array_equal(batches[2]['label'], np.full((1, 8, 8), 6 % 7))
  # Padded: 7 -> 12 (batch 3 x 2 processes); process 1 gets indices 1, 3, 5 and three pads.
  padded = list(seg_pipeline.make_eval_pipeline(src, batch_size=3, pad_remainder=True,
                                            shard_by_process=(1, 2)))
  assert [len(b['label']) for b in padded] == [3, 3]
  labels = np.concatenate([b['label'] for b in padded])
  np.testing.assert_array_equal(labels[:3, 0, 0], [1, 3, 5])
  np.testing.assert_array_equal(labels[3:], 255)
  resized = next(iter(seg_pipeline.make_eval_pipeline(src, batch_size=2, resize_to=(4, 6),
                                                  shard_by_process=False)))
  chex.assert_shape(resized['image'], (2, 4, 6, 3))
  chex.assert_shape(resized['label'], (2, 4, 6))


def test_cls_pipeline():
  src = demo.DemoClassification('train', 10, image_size=24)
  batch = next(iter(pipeline.make_cls_pipeline(src, batch_size=4, shard_by_process=False)))
  chex.assert_shape(batch['image'], (4, 24, 24, 3))
  chex.assert_shape(batch['label'], (4,))
  # uint8: the train steps normalise on the device (fna_jax.runtime.inputs).
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
  kw = dict(batch_size=4, flip=False, shuffle=False, num_epochs=1, drop_remainder=False,
            shard_by_process=False)
  ordered = list(pipeline.make_cls_pipeline(src, **kw))
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in ordered]),
                                [src[i]['label'] for i in range(10)])
  np.testing.assert_array_equal(ordered[0]['image'][1], src[1]['image'])
  normalised = next(iter(pipeline.make_cls_pipeline(src, normalize=True, **kw)))
  assert normalised['image'].dtype == np.float32
  np.testing.assert_allclose(normalised['image'][1], T.normalize(src[1]['image']))


def test_seg_pipeline_workers_match_and_resume():
  """Spawned grain workers yield the same batches as in-process reading, and resume exactly."""
  src = demo_data.DemoSegmentation('train', 16, image_size=32)
  kw = dict(batch_size=2, crop_size=24, seed=2, shard_by_process=False)
  ref = _take(iter(seg_pipeline.make_seg_pipeline(src, **kw)), 5)
  it = iter(seg_pipeline.make_seg_pipeline(src, worker_count=2, **kw))
  got = _take(it, 3)
  state = it.get_state()
  got += _take(it, 2)
  it.close()
  it = iter(seg_pipeline.make_seg_pipeline(src, worker_count=2, **kw))
  it.set_state(state)
  resumed = _take(it, 2)
  it.close()
  same = all(_same(a, b) for a, b in zip(ref, got))
  same_resumed = all(_same(a, b) for a, b in zip(ref[3:], resumed))
  # Copy results out of grain's shared memory before releasing it.
  del got, resumed, it
  gc.collect()
  assert same and same_resumed

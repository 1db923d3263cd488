"""Tests of segmentation evaluation (fna_jax.tasks.seg: confusion matrix and IoU, sliding windows,
pictures) and of fna_jax.runtime.checks."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fna_jax.data import demo
from fna_jax.data import transforms as T
from fna_jax.runtime import checks
from fna_jax.tasks.seg import cityscapes, demo_data, inference, metrics, visualize
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.runtime import mesh as mesh_lib


def _loop_confusion(labels, preds, c):
  """Reference confusion matrix by counting every (g, p) pair with a mask."""
  out = np.zeros((c, c), np.int64)
  for g in range(c):
    for p in range(c):
      out[g, p] = np.sum((labels == g) & (preds == p))
  return out


# ----------------------------------------------------------------------------------------------
# Confusion matrix and IoU


def test_confusion_matrix_of_a_tiny_map():
  labels = np.array([[[0, 0, 1],
                      [1, 2, 255]]], np.uint8)
  preds = np.array([[[0, 1, 1],
                     [2, 2, 0]]], np.int32)
  # Pairs (gt, pred): (0,0) (0,1) (1,1) (1,2) (2,2); the 255 pixel is skipped.
  expected = np.array([[1, 1, 0],
                       [0, 1, 1],
                       [0, 0, 1]])
  cm = metrics.confusion_matrix(labels, preds, 3)
  assert cm.dtype == jnp.int32
  chex.assert_shape(cm, (3, 3))
  np.testing.assert_array_equal(np.asarray(cm), expected)


def test_confusion_matrix_skips_ignore_and_out_of_range_labels():
  labels = np.array([[0, 1, 7, -1, 5, 1]], np.int32)
  preds = np.array([[0, 0, 1, 1, 1, 1]], np.int32)
  # 7 (>= C), -1 (< 0) and 5 (ignore_label here) are skipped: pairs (0,0) (1,0) (1,1).
  cm = metrics.confusion_matrix(labels, preds, 3, ignore_label=5)
  np.testing.assert_array_equal(np.asarray(cm), [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
  # An ignore label inside [0, C) is skipped too: with 5 classes, label 2 ignored.
  cm = metrics.confusion_matrix(np.array([0, 2, 2, 1]), np.array([0, 1, 2, 1]), 5,
                                ignore_label=2)
  assert int(cm.sum()) == 2 and int(cm[0, 0]) == 1 and int(cm[1, 1]) == 1
  with pytest.raises(ValueError, match='same shape'):
    metrics.confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 3)


def test_confusion_matrix_jitted_matches_a_counting_loop():
  rng = np.random.default_rng(0)
  c = 5
  labels = rng.integers(0, c, size=(3, 17, 23)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = rng.integers(0, c, size=labels.shape).astype(np.int32)
  fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
  cm = np.asarray(fn(labels, preds, c))
  np.testing.assert_array_equal(cm, _loop_confusion(labels, preds, c))
  assert cm.sum() == np.sum(labels != 255)


def test_confusion_matrix_batch_sharded_over_8_devices_is_global(devices):
  assert len(devices) == 8
  rng = np.random.default_rng(1)
  c = 4
  labels = rng.integers(0, c, size=(8, 12, 10)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = 255
  preds = rng.integers(0, c, size=labels.shape).astype(np.int32)

  mesh = mesh_lib.make_mesh(devices)
  sharded = mesh_lib.batch_sharded(mesh)
  fn8 = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=c),
                in_shardings=(sharded, sharded), out_shardings=mesh_lib.replicated(mesh))
  lab8, pred8 = jax.device_put(labels, sharded), jax.device_put(preds, sharded)
  assert len(lab8.addressable_shards) == 8 and lab8.addressable_shards[0].data.shape[0] == 1
  cm8 = np.asarray(fn8(lab8, pred8))

  one = jax.sharding.SingleDeviceSharding(devices[0])
  fn1 = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=c))
  cm1 = np.asarray(fn1(jax.device_put(labels, one), jax.device_put(preds, one)))
  np.testing.assert_array_equal(cm8, cm1)
  np.testing.assert_array_equal(cm1, _loop_confusion(labels, preds, c))
  # Not just one shard's counts: the total is every non-ignored pixel of all 8 examples.
  assert cm8.sum() == np.sum(labels != 255)


def test_iou_miou_and_accuracy_of_a_hand_built_3_class_matrix():
  cm = np.array([[5, 1, 0],
                 [2, 3, 1],
                 [0, 0, 4]])
  # TP = (5, 3, 4); gt totals (rows) = (6, 6, 4); predicted totals (columns) = (7, 4, 5).
  # class 0: 5 / (6 + 7 - 5) = 5/8;  class 1: 3 / (6 + 4 - 3) = 3/7;  class 2: 4 / (4 + 5 - 4) = 4/5
  iou = metrics.iou_from_confusion(cm)
  assert iou.dtype == np.float64
  np.testing.assert_allclose(iou, [5 / 8, 3 / 7, 4 / 5], rtol=1e-12)
  # mIoU = (0.625 + 0.428571 + 0.8) / 3 = 0.617857
  assert metrics.mean_iou(cm) == pytest.approx(0.6178571428571429, rel=1e-12)
  # pixel accuracy = 12 correct / 16 pixels
  assert metrics.pixel_accuracy(cm) == pytest.approx(0.75, rel=1e-12)
  # jax input works the same
  np.testing.assert_allclose(metrics.iou_from_confusion(jnp.asarray(cm)), iou)


def test_absent_classes_are_nan_and_left_out_of_the_mean():
  cm = np.array([[4, 0, 0, 0],
                 [0, 2, 0, 2],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])
  # class 0: 4/4 = 1;  class 1: 2 / (4 + 2 - 2) = 1/2;  class 2: in neither gt nor pred -> NaN;
  # class 3: predicted (2 pixels) but never in gt -> 0 / (0 + 2 - 0) = 0, which does count.
  iou = metrics.iou_from_confusion(cm)
  np.testing.assert_allclose(iou[[0, 1, 3]], [1.0, 0.5, 0.0])
  assert np.isnan(iou[2])
  # mIoU over the 3 defined classes: (1 + 0.5 + 0) / 3 = 0.5
  assert metrics.mean_iou(cm) == pytest.approx(0.5)
  assert np.isnan(metrics.mean_iou(np.zeros((3, 3))))
  assert np.isnan(metrics.pixel_accuracy(np.zeros((3, 3))))
  with pytest.raises(ValueError, match='square'):
    metrics.iou_from_confusion(np.zeros((2, 3)))


def test_metrics_from_maps_end_to_end():
  # gt:   [0 0 0 1 | 1 1 255 2]   pred: [0 0 1 1 | 1 0 2 0]
  labels = np.array([[0, 0, 0, 1], [1, 1, 255, 2]])
  preds = np.array([[0, 0, 1, 1], [1, 0, 2, 0]])
  cm = metrics.confusion_matrix(labels, preds, 3)
  # class 0: TP 2, FN 1 (gt 0 -> 1), FP 2 (gt 1 -> 0, gt 2 -> 0): 2/5
  # class 1: TP 2, FN 1 (gt 1 -> 0), FP 1 (gt 0 -> 1): 2/4
  # class 2: TP 0, FN 1, FP 0 (the pred-2 pixel is ignored): 0/1
  np.testing.assert_allclose(metrics.iou_from_confusion(cm), [0.4, 0.5, 0.0])
  assert metrics.pixel_accuracy(cm) == pytest.approx(4 / 7)


def test_format_iou_table():
  iou = np.array([0.625, np.nan, 0.8])
  table = metrics.format_iou_table(iou, ['road', 'sidewalk', 'building'])
  lines = table.splitlines()
  assert lines[0].split() == ['class', 'IoU', '(%)']
  assert lines[2].split() == ['road', '62.50']
  assert lines[3].split() == ['sidewalk', 'n/a']
  assert lines[4].split() == ['building', '80.00']
  # mean of the defined classes: (62.5 + 80) / 2 = 71.25
  assert lines[-1].split()[:2] == ['mIoU', '71.25'] and '(2/3 classes)' in lines[-1]
  with pytest.raises(ValueError, match='class names'):
    metrics.format_iou_table(iou, ['a', 'b'])


def test_class_name_lists():
  assert len(metrics.CITYSCAPES_CLASSES) == cityscapes.NUM_CLASSES == 19
  assert metrics.CITYSCAPES_CLASSES[0] == 'road' and metrics.CITYSCAPES_CLASSES[-1] == 'bicycle'
  assert metrics.CITYSCAPES_CLASSES[13] == 'car'  # train id 13 (labelId 26)
  assert metrics.DEMO_CLASSES == demo.CLASS_NAMES and len(metrics.DEMO_CLASSES) == 6


# ----------------------------------------------------------------------------------------------
# Sliding-window inference


def test_stride_and_window_starts_of_the_cityscapes_setting():
  # stride = ceil(769 * 2/3) = ceil(512.67) = 513 (the release's eval_stride_rate)
  assert inference.sliding_stride(769, 2 / 3) == 513
  assert inference.sliding_stride(10, 0.5) == 5  # exact product: no spurious round-up
  assert inference.sliding_stride(4, 0.1) == 1
  assert inference.sliding_stride(769, 1.0) == 769
  # width 2048: 0, 513, 1026, then the border-aligned 2048 - 769 = 1279
  assert inference.window_starts(2048, 769, 513) == [0, 513, 1026, 1279]
  # height 1024: 0 and 1024 - 769 = 255
  assert inference.window_starts(1024, 769, 513) == [0, 255]
  assert inference.window_starts(769, 769, 513) == [0]
  assert inference.window_starts(500, 769, 513) == [0]
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match='stride_fraction'):
      inference.sliding_stride(769, bad)


def _pointwise_fn(num_classes):
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.standard_normal((3, num_classes)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((num_classes,)), jnp.float32)
  return jax.jit(lambda x: jnp.einsum('nhwc,ck->nhwk', x, w) + b)


def test_sliding_equals_whole_image_for_a_pointwise_fn():
  c = 5
  fn = _pointwise_fn(c)
  shapes = []

  def apply_fn(x):
    shapes.append(x.shape)
    return fn(x)

  images = np.random.default_rng(0).standard_normal((2, 37, 50, 3)).astype(np.float32)
  out = inference.sliding_window_logits(apply_fn, images, c, crop=16, stride_fraction=0.5)
  assert out.dtype == jnp.float32
  chex.assert_shape(out, (2, 37, 50, c))
  whole = inference.predict_whole(fn, images)
  np.testing.assert_allclose(np.asarray(out), np.asarray(whole), rtol=1e-5, atol=1e-5)
  # stride 8: rows 0, 8, 16, 21; columns 0, 8, 16, 24, 32, 34 -> 24 calls, all one shape.
  assert len(shapes) == 4 * 6 and set(shapes) == {(2, 16, 16, 3)}


def test_sliding_of_ones_is_ones_including_a_padded_image():
  ones = lambda x: jnp.ones(x.shape[:3] + (3,), jnp.float32)
  for shape in ((1, 29, 31, 3), (2, 7, 40, 3), (1, 5, 6, 3)):
    out = inference.sliding_window_logits(ones, np.zeros(shape, np.float32), 3, crop=12,
                                          stride_fraction=1 / 3)
    chex.assert_shape(out, shape[:3] + (3,))
    np.testing.assert_allclose(np.asarray(out), 1.0, rtol=1e-6)


def _local_coords(x):
  """Window-local (x, y) pixel coordinates as 2 logits per pixel, (n, crop, crop, 2)."""
  n, h, w, _ = x.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  return jnp.broadcast_to(jnp.stack([xx, yy], -1), (n, h, w, 2))


def _brute_force_local_coords(h, w, crop, stride):
  """Per pixel, the mean over covering windows of its window-local (x, y): python loops.

  As the release: an axis shorter than ``crop`` is padded to ``crop``, ``(crop - size) // 2``
  pixels before the image; window origins along an axis (in padded coordinates) step by
  ``stride`` while the window stays inside, then the border-aligned one is added if the last does
  not already end at the border.
  """
  def origins(length):
    if length <= crop:
      return [0]
    starts, s = [], 0
    while s + crop < length:
      starts.append(s)
      s += stride
    starts.append(length - crop)
    return starts

  top, left = max(crop - h, 0) // 2, max(crop - w, 0) // 2
  hp, wp = max(h, crop), max(w, crop)
  out = np.zeros((h, w, 2))
  for py in range(h):
    for px in range(w):
      qy, qx = py + top, px + left  # padded coordinates
      vals = [(qx - ox, qy - oy) for oy in origins(hp) for ox in origins(wp)
              if oy <= qy < oy + crop and ox <= qx < ox + crop]
      out[py, px] = np.mean(vals, axis=0)
  return out


@pytest.mark.parametrize('h,w,crop,stride_fraction', [(23, 41, 10, 1 / 3), (7, 30, 10, 0.5),
                                                      (16, 16, 16, 2 / 3), (20, 27, 9, 0.75),
                                                      (6, 5, 10, 2 / 3)])
def test_sliding_averages_a_translation_variant_fn_like_a_brute_force_loop(h, w, crop,
                                                                          stride_fraction):
  stride = inference.sliding_stride(crop, stride_fraction)
  images = np.zeros((2, h, w, 3), np.float32)
  out = np.asarray(inference.sliding_window_logits(_local_coords, images, 2, crop=crop,
                                                   stride_fraction=stride_fraction))
  expected = _brute_force_local_coords(h, w, crop, stride)
  np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(out[1], expected, rtol=1e-6, atol=1e-5)


def test_cityscapes_windows_are_the_releases_2_by_4_grid_of_513_px_strides():
  """The windows ``sliding_window_logits`` evaluates on a 1024x2048 image, crop 769, 2/3.

  Derived by hand from the release's rule (TorchSeg ``scale_process``: ``stride = ceil(crop *
  stride_rate)``; ``ceil((L - crop) / stride) + 1`` windows along an axis of ``L`` pixels, the
  i-th at ``s = i * stride`` moved back to ``min(s + crop, L) - crop``):
  stride = ceil(769 * 2 / 3) = ceil(512.67) = 513;
  height: ceil((1024 - 769) / 513) + 1 = ceil(255 / 513) + 1 = 2 windows, at 0 and
  min(513 + 769, 1024) - 769 = 255;
  width: ceil((2048 - 769) / 513) + 1 = ceil(1279 / 513) + 1 = 3 + 1 = 4 windows, at 0, 513,
  1026 (1026 + 769 = 1795 <= 2048) and min(1539 + 769, 2048) - 769 = 1279.
  Each window's origin is read from the image itself: channel 0 holds the row, channel 1 the
  column of every pixel (exact in float32 below 2**24).
  """
  h, w, crop = 1024, 2048, 769
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                           indexing='ij')
  image = np.stack([rows, cols, np.zeros_like(rows)], -1)[None]
  seen = []

  def apply_fn(x):
    assert x.shape == (1, crop, crop, 3)
    seen.append((int(x[0, 0, 0, 0]), int(x[0, 0, 0, 1])))
    return jnp.zeros((1, crop, crop, 1), jnp.float32)

  inference.sliding_window_logits(apply_fn, image, 1, crop=crop, stride_fraction=2 / 3)
  expected = [(y, x) for y in (0, 255) for x in (0, 513, 1026, 1279)]
  assert sorted(seen) == sorted(expected) and len(seen) == 8


def test_sliding_window_with_a_batch_sharded_over_8_devices(devices):
  mesh = mesh_lib.make_mesh(devices)
  sharded = mesh_lib.batch_sharded(mesh)
  c = 3
  fn = _pointwise_fn(c)
  # a translation-variant part too, so that the window placement matters
  apply_fn = jax.jit(lambda x: fn(x) + _local_coords(x)[..., :1])
  images = np.random.default_rng(4).standard_normal((8, 19, 26, 3)).astype(np.float32)
  out1 = inference.sliding_window_logits(apply_fn, images, c, crop=12)
  out8 = inference.sliding_window_logits(apply_fn, jax.device_put(images, sharded), c, crop=12)
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), rtol=1e-6, atol=1e-6)
  assert out8.sharding.is_equivalent_to(sharded, out8.ndim)


def test_sliding_rejects_logits_of_the_wrong_shape():
  with pytest.raises(ValueError, match='expected'):
    inference.sliding_window_logits(lambda x: x, np.zeros((1, 20, 20, 3), np.float32), 5,
                                    crop=10)


# ----------------------------------------------------------------------------------------------
# Pictures


def test_colorize():
  palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], np.uint8)
  label = np.array([[0, 1], [2, 255]], np.uint8)
  rgb = visualize.colorize(label, palette)
  assert rgb.dtype == np.uint8
  chex.assert_shape(rgb, (2, 2, 3))
  np.testing.assert_array_equal(rgb[0, 0], [10, 20, 30])
  np.testing.assert_array_equal(rgb[0, 1], [40, 50, 60])
  np.testing.assert_array_equal(rgb[1, 0], [70, 80, 90])
  np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])  # ignore -> black
  # values past the palette (and negative ones) are black too; batch dims are kept
  rgb = visualize.colorize(np.array([[[3, -1]]], np.int32), palette)
  chex.assert_shape(rgb, (1, 1, 2, 3))
  assert not rgb.any()
  city = visualize.colorize(np.arange(19)[None], visualize.CITYSCAPES_PALETTE)
  np.testing.assert_array_equal(city[0, 0], [128, 64, 128])  # road
  np.testing.assert_array_equal(city[0, 13], [0, 0, 142])  # car
  assert visualize.CITYSCAPES_PALETTE.shape == (19, 3)
  demo_pal = visualize.demo_palette()
  assert demo_pal.shape == (demo.NUM_CLASSES, 3) and demo_pal.dtype == np.uint8
  assert len({tuple(c) for c in demo_pal.tolist()} | {(0, 0, 0)}) == 7  # distinct, none black


def test_unnormalize_inverts_the_pipeline_normalisation():
  img = np.random.default_rng(5).integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
  np.testing.assert_array_equal(T.unnormalize(T.normalize(img)), img)
  np.testing.assert_array_equal(T.unnormalize(img), img)


def test_save_triptych_writes_the_three_panels(tmp_path):
  ex = demo_data.DemoSegmentation('val', 1, image_size=24)[0]
  image = T.normalize(ex['image'])
  pred = np.where(ex['label'] == 255, 0, ex['label']).astype(np.int32)
  pred[:3] = 1
  path = tmp_path / 'sub' / 'triptych.png'
  returned = visualize.save_triptych(path, image, ex['label'], jnp.asarray(pred),
                                     visualize.DEMO_PALETTE)
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size == (3 * 24, 24) and im.mode == 'RGB'
    pixels = np.asarray(im)
  np.testing.assert_array_equal(pixels, returned)
  np.testing.assert_array_equal(pixels[:, :24], ex['image'])
  np.testing.assert_array_equal(pixels[:, 24:48],
                                visualize.colorize(ex['label'], visualize.DEMO_PALETTE))
  np.testing.assert_array_equal(pixels[:, 48:], visualize.colorize(pred, visualize.DEMO_PALETTE))
  with pytest.raises(ValueError, match='share'):
    visualize.save_triptych(tmp_path / 'x.png', image, ex['label'][:5], pred,
                            visualize.DEMO_PALETTE)


# ----------------------------------------------------------------------------------------------
# Variable checks


class _Layer(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, name='expand_conv')(x)
    return nn.BatchNorm(use_running_average=True, name='bn')(x)


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = _Layer(8, name='layer0')(x)
    return _Layer(4, name='layer1')(x)


@pytest.fixture(scope='module')
def shapes():
  return variable_shapes(_Net(), (1, 6))


def test_check_variables_match_accepts_matching_trees(shapes):
  assert checks.check_variables_match(shapes, random_like(shapes, 0)) is None
  assert checks.check_variables_match(shapes, shapes) is None
  # another dtype is no mismatch (restoring casts)
  got = jax.tree.map(lambda s: np.zeros(s.shape, np.float16), shapes)
  assert checks.check_variables_match(shapes, got) is None


def test_check_variables_match_names_a_missing_parameter(shapes):
  got = random_like(shapes, 0)
  del got['params']['layer1']['expand_conv']['kernel']
  with pytest.raises(checks.VariableMismatchError) as e:
    checks.check_variables_match(shapes, got, what='seed checkpoint')
  msg = str(e.value)
  assert "'params/layer1/expand_conv/kernel' is missing from the seed checkpoint" in msg
  assert '(6, 4)' not in msg and '(8, 4)' in msg  # the expected shape
  assert e.value.kind == 'missing' and e.value.path == 'params/layer1/expand_conv/kernel'
  assert isinstance(e.value, ValueError)


def test_check_variables_match_names_an_unexpected_parameter(shapes):
  got = random_like(shapes, 0)
  got['params']['layer0']['extra'] = {'kernel': np.zeros((3, 3))}
  with pytest.raises(checks.VariableMismatchError,
                     match=r"'params/layer0/extra/kernel' in the checkpoint is unexpected") as e:
    checks.check_variables_match(shapes, got)
  assert e.value.kind == 'unexpected'


def test_check_variables_match_names_a_shape_mismatch_and_the_first_of_several(shapes):
  got = random_like(shapes, 0)
  got['params']['layer1']['bn']['scale'] = np.ones((5,), np.float32)
  with pytest.raises(checks.VariableMismatchError) as e:
    checks.check_variables_match(shapes, got)
  assert str(e.value) == ("checkpoint does not match the model: parameter "
                          "'params/layer1/bn/scale' has shape (5,) in the checkpoint, but the "
                          "model expects shape (4,)")
  # Several mismatches: the first in sorted path order is named, the others counted.
  del got['batch_stats']['layer1']['bn']['var']  # 'batch_stats/...' sorts before 'params/...'
  got['params']['layer0']['expand_conv']['bias'] = np.zeros((9,), np.float32)
  with pytest.raises(checks.VariableMismatchError) as e:
    checks.check_variables_match(shapes, got)
  assert e.value.path == 'batch_stats/layer1/bn/var' and e.value.kind == 'missing'
  assert '3 mismatches in all: 1 missing, 0 unexpected, 2 of another shape' in str(e.value)
  assert e.value.shape == ['params/layer0/expand_conv/bias', 'params/layer1/bn/scale']

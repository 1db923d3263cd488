"""RetinaNet box machinery (fna_jax.tasks.det: boxes, anchors, loss, postprocess, coco_eval).

Expected values come from hand calculations written out here or from plain numpy / Python
re-implementations of MMDetection v1's definitions, never from the library itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fna_jax.tasks.det import anchors as anchor_ops
from fna_jax.tasks.det import boxes as box_ops
from fna_jax.tasks.det import coco_eval
from fna_jax.tasks.det import loss as det_loss
from fna_jax.tasks.det import postprocess


# ----------------------------------------------------------------------------------------------
# boxes.box_iou / encode / decode


def test_box_iou_inclusive_pixels():
  a = np.array([[0, 0, 9, 9]], np.float32)          # 10x10 pixels, area 100
  b = np.array([[5, 5, 14, 14],                      # overlap 5x5 = 25 -> 25 / (200 - 25)
                [9, 0, 18, 9],                       # shares the column x=9: 1x10 = 10
                [10, 0, 19, 9],                      # touches, no shared pixel
                [0, 0, 9, 9]], np.float32)           # identical
  expected = np.array([[25 / 175, 10 / 190, 0.0, 1.0]])
  got_np = box_ops.box_iou(a, b)
  assert isinstance(got_np, np.ndarray)
  np.testing.assert_allclose(got_np, expected, rtol=1e-6)
  got_jnp = jax.jit(box_ops.box_iou)(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(np.asarray(got_jnp), expected, rtol=1e-6)


def test_encode_hand_case_with_means_stds():
  anchor = jnp.array([[0., 0., 15., 15.]])   # centre (7.5, 7.5), size 16x16
  gt = jnp.array([[4., 2., 35., 17.]])       # centre (19.5, 9.5), size 32x16
  # dx = (19.5 - 7.5) / 16, dy = (9.5 - 7.5) / 16, dw = log(32 / 16), dh = log(16 / 16)
  raw = np.array([12 / 16, 2 / 16, math.log(2.0), 0.0])
  np.testing.assert_allclose(np.asarray(box_ops.encode(anchor, gt))[0], raw, rtol=1e-6)
  means, stds = (0.1, -0.1, 0.0, 0.2), (0.1, 0.1, 0.2, 0.2)
  np.testing.assert_allclose(np.asarray(box_ops.encode(anchor, gt, means, stds))[0],
                             (raw - np.array(means)) / np.array(stds), rtol=1e-5, atol=1e-6)
  # decode inverts it exactly: x1 = gx - gw/2 + 0.5 = 19.5 - 16 + 0.5 = 4, x2 = 19.5 + 16 - 0.5
  np.testing.assert_allclose(
      np.asarray(box_ops.decode(anchor, box_ops.encode(anchor, gt, means, stds), means, stds)),
      np.asarray(gt), atol=1e-4)


def test_encode_decode_round_trip_random():
  rng = np.random.default_rng(0)
  def rand_boxes(n):
    xy = rng.uniform(0, 500, (n, 2))
    wh = rng.uniform(1, 300, (n, 2))
    return np.concatenate([xy, xy + wh - 1], axis=1).astype(np.float32)
  anchors, gt = rand_boxes(64), rand_boxes(64)
  means, stds = (0., 0., 0., 0.), (0.1, 0.1, 0.2, 0.2)
  deltas = jax.jit(lambda a, g: box_ops.encode(a, g, means, stds))(anchors, gt)
  # wh_ratio_clip large enough that no |dw| here (at most log(300)) is clamped
  back = box_ops.decode(anchors, deltas, means, stds, wh_ratio_clip=1e-4)
  # float32 coordinates up to ~800 px: a few ulps (6e-5 each) of error
  np.testing.assert_allclose(np.asarray(back), gt, atol=2e-3)


def test_decode_clamps_ratio_and_clips_to_shape():
  anchor = jnp.array([[10., 10., 19., 19.]])   # centre 14.5, size 10
  deltas = jnp.array([[0., 0., 10., -10.]])    # dw, dh far beyond the clip
  got = np.asarray(box_ops.decode(anchor, deltas))[0]
  m = abs(math.log(16 / 1000))                 # v1's wh_ratio_clip: |dw| <= log(62.5)
  gw, gh = 10 * math.exp(m), 10 * math.exp(-m)
  np.testing.assert_allclose(got, [14.5 - gw / 2 + 0.5, 14.5 - gh / 2 + 0.5,
                                   14.5 + gw / 2 - 0.5, 14.5 + gh / 2 - 0.5], rtol=1e-5)
  # max_shape (H, W) = (20, 30): x into [0, 29], y into [0, 19]
  clipped = np.asarray(box_ops.decode(anchor, deltas, max_shape=(20, 30)))[0]
  np.testing.assert_allclose(clipped, [0.0, 14.5 - gh / 2 + 0.5, 29.0, 14.5 + gh / 2 - 0.5],
                             rtol=1e-5)
  big = np.asarray(box_ops.decode(anchor, jnp.array([[0., 0., 0., 3.]]), max_shape=(20, 30)))[0]
  np.testing.assert_allclose(big[[1, 3]], [0.0, 19.0])


# ----------------------------------------------------------------------------------------------
# anchors


def test_base_anchors_hand_values():
  scales = anchor_ops.retina_scales(4, 3)
  np.testing.assert_allclose(scales, [4, 4 * 2 ** (1 / 3), 4 * 2 ** (2 / 3)])
  base = anchor_ops.base_anchors(8, (0.5, 1.0, 2.0), scales)
  assert base.shape == (9, 4)
  # ratio 1, scale 4 (index 3: ratio-major): w = h = 32, centre 3.5 -> 3.5 -+ 15.5
  np.testing.assert_array_equal(base[3], [-12, -12, 19, 19])
  # ratio 0.5, scale 4 (index 0): w = 8 * sqrt(2) * 4 = 45.25, h = 8 / sqrt(2) * 4 = 22.63;
  # x: 3.5 -+ 22.13 -> (-18.63, 25.63) -> (-19, 26); y: 3.5 -+ 10.81 -> (-7.31, 14.31)
  np.testing.assert_array_equal(base[0], [-19, -7, 26, 14])
  # ratio 2, scale 4 * 2^(2/3) (index 8): w = 8 / sqrt(2) * 6.35 = 35.92, h = 71.84;
  # x: 3.5 -+ 17.46 -> (-13.96, 20.96) -> (-14, 21); y: 3.5 -+ 35.42 -> (-31.92, 38.92)
  np.testing.assert_array_equal(base[8], [-14, -32, 21, 39])


def test_retinanet_anchors_order_and_count():
  sizes = [(3, 4), (2, 2)]
  strides = (8, 16)
  got = anchor_ops.retinanet_anchors(sizes, strides)
  assert got.dtype == np.float32 and got.shape == ((12 + 4) * 9, 4)
  assert anchor_ops.level_counts(sizes) == (108, 36)
  scales = anchor_ops.retina_scales()
  i = 0
  for (h, w), s in zip(sizes, strides):  # level, then y, then x, then anchor
    base = anchor_ops.base_anchors(s, (0.5, 1.0, 2.0), scales)
    for y in range(h):
      for x in range(w):
        for k in range(9):
          np.testing.assert_array_equal(got[i], base[k] + np.array([x * s, y * s, x * s, y * s]))
          i += 1


def test_feature_sizes_match_strided_convs():
  def conv_chain(hw, n, kernel):
    x = jax.ShapeDtypeStruct((1, hw[0], hw[1], 1), jnp.float32)
    k = jax.ShapeDtypeStruct((kernel, kernel, 1, 1), jnp.float32)
    p = (kernel - 1) // 2
    f = lambda x, k: lax.conv_general_dilated(x, k, (2, 2), ((p, p), (p, p)),
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    for _ in range(n):
      x = jax.eval_shape(f, x, k)
    return x.shape[1:3]
  for hw in [(64, 64), (33, 47), (800, 1088), (801, 1087)]:
    got = anchor_ops.feature_sizes(hw)
    for kernel in (3, 5):
      assert got == [conv_chain(hw, n, kernel) for n in (3, 4, 5, 6, 7)], (hw, kernel)


# ----------------------------------------------------------------------------------------------
# boxes.assign


def _v1_assign(anchors, gts, valid, pos_thr=0.5, neg_thr=0.4, min_pos_iou=0.0):
  """MMDetection v1 MaxIoUAssigner.assign_wrt_overlaps as a plain Python loop (valid gts only,
  plus our rule that a gt whose best IoU is 0 matches nothing)."""
  idx = [i for i in range(len(gts)) if valid[i]]
  n = len(anchors)
  if not idx:
    return np.full(n, -1), np.zeros(n, int)
  def iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0)
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)
  ov = np.array([[iou(gts[i], anchors[j]) for j in range(n)] for i in idx])
  gt_inds = np.full(n, -1)                      # v1: -1 ignore, 0 negative, k+1 gt k
  for j in range(n):
    best = ov[:, j].max()
    if 0 <= best < neg_thr:
      gt_inds[j] = 0
    if best >= pos_thr:
      gt_inds[j] = idx[int(np.argmax(ov[:, j]))] + 1
  for r, i in enumerate(idx):
    m = ov[r].max()
    if m >= min_pos_iou and m > 0:
      for j in range(n):
        if ov[r, j] == m:
          gt_inds[j] = i + 1
  assigned = np.where(gt_inds > 0, gt_inds - 1, -1)
  state = np.where(gt_inds > 0, 1, np.where(gt_inds == 0, 0, -1))
  return assigned, state


def test_assign_hand_cases():
  anchors = jnp.array([
      [0, 0, 15, 15],      # 0: == gt0 -> IoU 1, positive for gt0
      [4, 0, 19, 15],      # 1: with gt0 12x16=192 / (512-192) = 0.6 -> positive gt0
      [6, 0, 21, 15],      # 2: 10x16=160 / 352 = 0.4545 -> ignored
      [8, 0, 23, 15],      # 3: 8x16=128 / 384 = 0.333 -> negative
      [100, 100, 115, 115],  # 4: overlaps nothing -> negative (padding gt row == it)
      [40, 0, 55, 15],     # 5: gt1 [40,0,47,7] (64 px) inside: 64/256 = 0.25 -> low quality
      [48, 0, 63, 15],     # 6: no overlap with any gt -> negative
      [56, 40, 71, 55],    # 7 and 8 tie for gt2: each 8x16=128 / 384 = 0.333 < neg_thr
      [72, 40, 87, 55],    # 8
  ], jnp.float32)
  gts = jnp.array([
      [0, 0, 15, 15],      # gt0
      [40, 0, 47, 7],      # gt1: best anchor 5 with IoU 0.25 < neg_thr -> still positive
      [64, 40, 79, 55],    # gt2: anchors 7 and 8 both 128/384 = 1/3: both positive
      [100, 100, 115, 115],  # padding: never matches anchor 4
      [500, 500, 510, 510],  # a real gt overlapping nothing: max IoU 0 -> matches nothing
  ], jnp.float32)
  valid = jnp.array([True, True, True, False, True])
  assigned, state = jax.jit(box_ops.assign)(anchors, gts, valid)
  np.testing.assert_array_equal(np.asarray(state), [1, 1, -1, 0, 0, 1, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(assigned), [0, 0, -1, -1, -1, 1, -1, 2, 2])


def test_assign_later_gt_overwrites_and_no_gt():
  anchors = jnp.array([[0, 0, 15, 15], [0, 0, 31, 31], [200, 200, 215, 215]], jnp.float32)
  # Two identical gts share their max-IoU anchor 0: v1's loop gives it to the later one (1).
  gts = jnp.array([[0, 0, 15, 15], [0, 0, 15, 15]], jnp.float32)
  assigned, state = box_ops.assign(anchors, gts, jnp.array([True, True]))
  np.testing.assert_array_equal(np.asarray(assigned), [1, -1, -1])
  # anchor 1: 256 / 1024 = 0.25 -> negative
  np.testing.assert_array_equal(np.asarray(state), [1, 0, 0])
  # gt1's max anchor also wins over step 3's argmax: anchor 1 has IoU 1 with gt0 (positive
  # for gt0 in step 3) but it is also gt1's only best anchor (IoU 0.25) -> gt1.
  gts = jnp.array([[0, 0, 31, 31], [0, 0, 15, 15], ], jnp.float32)
  anchors2 = jnp.array([[0, 0, 31, 31], [300, 300, 315, 315]], jnp.float32)
  assigned, state = box_ops.assign(anchors2, gts, jnp.array([True, True]))
  np.testing.assert_array_equal(np.asarray(assigned), [1, -1])
  np.testing.assert_array_equal(np.asarray(state), [1, 0])
  # No valid gt: every anchor negative.
  assigned, state = box_ops.assign(anchors, gts, jnp.array([False, False]))
  np.testing.assert_array_equal(np.asarray(assigned), [-1, -1, -1])
  np.testing.assert_array_equal(np.asarray(state), [0, 0, 0])


def test_assign_matches_v1_loop_on_random_boxes():
  rng = np.random.default_rng(1)
  # Integer-pixel boxes on a small canvas: many overlaps and exact IoU ties.
  anchors = np.asarray(anchor_ops.retinanet_anchors([(4, 4), (2, 2)], (8, 16)))
  fn = jax.jit(box_ops.assign)
  for trial in range(6):
    xy = rng.integers(0, 40, (6, 2))
    wh = rng.integers(2, 30, (6, 2))
    gts = np.concatenate([xy, xy + wh - 1], 1).astype(np.float32)
    valid = rng.random(6) < 0.7
    assigned, state = fn(anchors, gts, valid)
    ref_assigned, ref_state = _v1_assign(anchors, gts, valid)
    np.testing.assert_array_equal(np.asarray(state), ref_state, err_msg=str(trial))
    np.testing.assert_array_equal(np.asarray(assigned), ref_assigned, err_msg=str(trial))


# ----------------------------------------------------------------------------------------------
# loss


def _np_focal(x, t, alpha=0.25, gamma=2.0):
  x = np.asarray(x, np.float64)
  p = 1 / (1 + np.exp(-x))
  return (-alpha * t * (1 - p) ** gamma * np.log(p)
          - (1 - alpha) * (1 - t) * p ** gamma * np.log(1 - p))


def test_sigmoid_focal_loss_matches_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(0, 3, (50, 3)).astype(np.float32)
  t = (rng.random((50, 3)) < 0.3).astype(np.float32)
  got = np.asarray(jax.jit(det_loss.sigmoid_focal_loss)(x, t))
  np.testing.assert_allclose(got, _np_focal(x, t), rtol=1e-5, atol=1e-7)
  got = np.asarray(det_loss.sigmoid_focal_loss(x, t, alpha=0.4, gamma=1.5))
  np.testing.assert_allclose(got, _np_focal(x, t, 0.4, 1.5), rtol=1e-5, atol=1e-7)
  # Saturated logits stay finite: x=100, t=0 -> BCE = 100, weight (1 - alpha) * 1 = 0.75.
  big = np.asarray(det_loss.sigmoid_focal_loss(jnp.array([100., -100.]), jnp.array([0., 1.])))
  np.testing.assert_allclose(big, [75.0, 25.0], rtol=1e-6)


def test_smooth_l1_matches_numpy():
  rng = np.random.default_rng(3)
  p, t = rng.normal(0, 0.2, (2, 100)).astype(np.float32)
  d = np.abs(p.astype(np.float64) - t)
  ref = np.where(d < 0.11, 0.5 * d * d / 0.11, d - 0.5 * 0.11)
  np.testing.assert_allclose(np.asarray(det_loss.smooth_l1(p, t, 0.11)), ref, rtol=1e-5,
                             atol=1e-7)
  assert (d < 0.11).any() and (d >= 0.11).any()  # both branches exercised


def test_retinanet_loss_hand_case():
  # Anchors relative to gt [0, 0, 15, 15] of image 0 (IoUs as in test_assign_hand_cases):
  anchors = np.array([[0, 0, 15, 15],    # IoU 1     -> positive, target deltas 0
                      [8, 0, 23, 15],    # IoU 0.333 -> negative
                      [4, 0, 19, 15],    # IoU 0.6   -> positive, dx = (7.5 - 11.5) / 16
                      [6, 0, 21, 15]],   # IoU 0.455 -> ignored
                     np.float32)
  gt_boxes = np.zeros((2, 2, 4), np.float32)
  gt_labels = np.full((2, 2), -1, np.int32)
  gt_boxes[0, 1] = [0, 0, 15, 15]
  gt_labels[0, 1] = 1
  gt_boxes[1, 0] = [6, 0, 21, 15]      # image 1: a padding row (label -1) on anchor 3
  gt_boxes[0, 0] = [9, 9, 2, 2]        # padding rows are arbitrary: a degenerate one (w < 0)
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 2, (2, 4, 2)).astype(np.float32)
  deltas = rng.normal(0, 0.2, (2, 4, 4)).astype(np.float32)

  fn = jax.jit(lambda c, d: det_loss.retinanet_loss(c, d, anchors, gt_boxes, gt_labels,
                                                    num_classes=2))
  total, aux = fn(logits, deltas)

  targets = np.zeros((2, 4, 2))
  targets[0, 0, 1] = targets[0, 2, 1] = 1
  weights = np.ones((2, 4, 1))
  weights[0, 3] = 0                    # image 0's ignored anchor; image 1 all negative
  cls = (_np_focal(logits, targets) * weights).sum() / 2
  d0 = np.abs(deltas[0, 0].astype(np.float64) - 0)
  d2 = np.abs(deltas[0, 2].astype(np.float64) - np.array([-0.25, 0, 0, 0]))
  sl1 = lambda d: np.where(d < 0.11, 0.5 * d * d / 0.11, d - 0.055).sum()
  box = (sl1(d0) + sl1(d2)) / 2
  assert float(aux['num_pos']) == 2
  np.testing.assert_allclose(float(aux['cls']), cls, rtol=1e-5)
  np.testing.assert_allclose(float(aux['box']), box, rtol=1e-5)
  np.testing.assert_allclose(float(total), cls + box, rtol=1e-5)

  grads = jax.grad(lambda c, d: fn(c, d)[0], argnums=(0, 1))(logits, deltas)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  # No positives anywhere: normaliser 1, box loss 0.
  _, aux = det_loss.retinanet_loss(logits, deltas, anchors, gt_boxes, np.full((2, 2), -1),
                                   num_classes=2)
  np.testing.assert_allclose(float(aux['cls']), _np_focal(logits, 0 * targets).sum(), rtol=1e-5)
  assert float(aux['box']) == 0 and float(aux['num_pos']) == 0


# ----------------------------------------------------------------------------------------------
# postprocess


def test_top_candidates_per_level():
  rng = np.random.default_rng(5)
  counts = (12, 3)                     # level 0 keeps its top 4, level 1 (3 <= 4) keeps all
  a = sum(counts)
  anchors = np.asarray(anchor_ops.retinanet_anchors([(2, 2), (1, 1)], (8, 16)))[:a]
  logits = rng.normal(0, 2, (2, a, 3)).astype(np.float32)
  deltas = rng.normal(0, 0.5, (2, a, 4)).astype(np.float32)
  fn = jax.jit(lambda c, d: postprocess.top_candidates(c, d, anchors, counts, 4,
                                                       image_hw=(20, 30)))
  got_boxes, got_scores = fn(logits, deltas)
  assert got_boxes.shape == (2, 7, 4) and got_scores.shape == (2, 7, 3)
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  for b in range(2):
    top = np.argsort(-probs[b, :12].max(-1), kind='stable')[:4]
    sel = np.concatenate([top, [12, 13, 14]])
    np.testing.assert_allclose(np.asarray(got_scores[b]), probs[b, sel], rtol=1e-5)
    expected = box_ops.decode(anchors[sel], deltas[b, sel], max_shape=(20, 30))
    np.testing.assert_allclose(np.asarray(got_boxes[b]), np.asarray(expected), atol=1e-4)
    assert got_boxes[b, :, 2].max() <= 29 and got_boxes[b, :, 3].max() <= 19


def _brute_nms(boxes, scores, thr):
  """Greedy NMS with scalar arithmetic: a box survives iff no kept, higher-scored box has
  (v1, +1 areas) IoU > thr with it."""
  kept = []
  for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
    ok = True
    for j in kept:
      a, b = boxes[i], boxes[j]
      iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
      ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
      inter = iw * ih
      union = ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
               - inter)
      if inter / union > thr:
        ok = False
        break
    if ok:
      kept.append(i)
  return kept


def test_nms_matches_brute_force():
  rng = np.random.default_rng(6)
  xy = rng.uniform(0, 60, (80, 2))
  wh = rng.uniform(5, 40, (80, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.random(80).astype(np.float32)
  for thr in (0.3, 0.5, 0.7):
    keep = postprocess.nms(boxes, scores, thr)
    ref = _brute_nms(boxes.astype(np.float64), scores, thr)
    assert 5 < len(ref) < 80          # suppression happened, not everything went
    np.testing.assert_array_equal(keep, ref)
  # IoU exactly at the threshold is kept (v1 suppresses only IoU > thr): 100 / 200 = 0.5
  keep = postprocess.nms(np.array([[0, 0, 9, 9], [0, 0, 9, 19]], np.float32),
                         np.array([0.9, 0.8]), 0.5)
  np.testing.assert_array_equal(keep, [0, 1])


def test_multiclass_nms_hand_case():
  boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [50, 50, 59, 59]], np.float32)
  # boxes 0, 1: overlap 9x10 = 90 / (200 - 90) = 0.82 > 0.5
  scores = np.array([[0.9, 0.04],
                     [0.8, 0.6],
                     [0.05, 0.7]], np.float32)   # 0.05 is not > score_thr 0.05
  dets, labels = postprocess.multiclass_nms(boxes, scores, 0.05, 0.5, 100)
  # class 0: box 0 kept, box 1 suppressed, box 2 below threshold; class 1: boxes 2 then 1
  np.testing.assert_allclose(dets, [[0, 0, 9, 9, 0.9], [50, 50, 59, 59, 0.7],
                                    [1, 0, 10, 9, 0.6]], rtol=1e-6)
  np.testing.assert_array_equal(labels, [0, 1, 1])
  # Over max_num: the highest scores across classes survive, sorted: class 0 keeps only 0.3
  # (its box 1, 0.2, is suppressed); class 1 keeps 0.7 and 0.6.
  low0 = np.array([[0.3, 0.04], [0.2, 0.6], [0.05, 0.7]], np.float32)
  dets, labels = postprocess.multiclass_nms(boxes, low0, 0.05, 0.5, max_num=2)
  np.testing.assert_allclose(dets, [[50, 50, 59, 59, 0.7], [1, 0, 10, 9, 0.6]], rtol=1e-6)
  np.testing.assert_array_equal(labels, [1, 1])
  dets, labels = postprocess.multiclass_nms(boxes, scores, 0.95)
  assert dets.shape == (0, 5) and labels.shape == (0,)


# ----------------------------------------------------------------------------------------------
# coco_eval


def _tiny_coco():
  """Two images; COCO xywh boxes of each size range (small < 32^2 <= medium < 96^2 <= large)."""
  boxes = {1: [(10, 10, 20, 15, 1), (60, 40, 50, 60, 2), (5, 100, 120, 100, 1)],
           2: [(30, 30, 8, 6, 2), (100, 20, 40, 40, 1)]}
  anns, k = [], 1
  for image_id, bs in boxes.items():
    for x, y, w, h, c in bs:
      anns.append({'id': k, 'image_id': image_id, 'category_id': c, 'bbox': [x, y, w, h],
                   'area': w * h, 'iscrowd': 0})
      k += 1
  return {'images': [{'id': 1, 'width': 240, 'height': 240},
                     {'id': 2, 'width': 240, 'height': 240}],
          'annotations': anns,
          'categories': [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}


def _dets_from_gt(gt, shift=0.0):
  """Detections (via to_coco_detections) at the gt boxes in v1 xyxy (x2 = x + w - 1)."""
  category_ids = (1, 2)
  out = []
  for img in gt['images']:
    anns = [a for a in gt['annotations'] if a['image_id'] == img['id']]
    dets = np.array([[a['bbox'][0] + shift, a['bbox'][1], a['bbox'][0] + a['bbox'][2] - 1 + shift,
                      a['bbox'][1] + a['bbox'][3] - 1, 0.9] for a in anns])
    labels = np.array([category_ids.index(a['category_id']) for a in anns])
    out += coco_eval.to_coco_detections(img['id'], dets, labels, category_ids)
  return out


def test_to_coco_detections_xywh():
  got = coco_eval.to_coco_detections(7, np.array([[2., 3., 11., 5., 0.5]]), np.array([1]),
                                     (4, 9))
  assert got == [{'image_id': 7, 'category_id': 9, 'bbox': [2.0, 3.0, 10.0, 3.0], 'score': 0.5}]


def test_coco_eval_perfect_degraded_empty():
  gt = _tiny_coco()
  perfect, text = coco_eval.evaluate(gt, _dets_from_gt(gt))
  assert set(perfect) == {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'}
  for name, v in perfect.items():
    assert v == pytest.approx(1.0), name   # pycocotools' 101-point AP of exact boxes: exactly 1
  assert 'Average Precision' in text
  # Shifted by 2 px: the 8x6 and 20x15 boxes lose IoU (8x6: 6*6 / (96 - 36) = 0.6) -> lower AP
  degraded, _ = coco_eval.evaluate(gt, _dets_from_gt(gt, shift=2.0))
  assert degraded['AP'] < 0.9 and degraded['APs'] < perfect['APs']
  assert degraded['AP50'] == pytest.approx(1.0)   # every IoU still >= 0.5
  # Every gt image counts, also one without any detection: image 2's gts are all missed.
  only1 = [d for d in _dets_from_gt(gt) if d['image_id'] == 1]
  assert coco_eval.evaluate(gt, only1)[0]['AP50'] < 0.9
  # A detection with the wrong class counts for nothing.
  wrong = [dict(d, category_id=3 - d['category_id']) for d in _dets_from_gt(gt)]
  assert coco_eval.evaluate(gt, wrong)[0]['AP'] == pytest.approx(0.0)
  empty, text = coco_eval.evaluate(gt, [])
  assert empty == {name: 0.0 for name in perfect}
  assert 'Average Precision' in text

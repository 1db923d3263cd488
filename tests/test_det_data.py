"""Tests of the detection data (fna_jax.tasks.det): the demo set and the grain pipelines."""

from __future__ import annotations

import contextlib
import io
import math
import pickle

import numpy as np
import pytest

from fna_jax.data import demo
from fna_jax.data import transforms as T
from fna_jax.runtime import inputs
from fna_jax.tasks.det import demo_data as D
from fna_jax.tasks.det import pipeline as P


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- demo set
def _supersampled_owners(objects, size: int, sub: int = 4) -> np.ndarray:
  """(n, S, S) share of each pixel's ``sub x sub`` sample points whose topmost shape is ``k``.

  An independent rasterisation: point-in-shape tests (signed distance < 0) at sub-pixel points
  and the painter's algorithm, no anti-aliasing ramp and no coverage products.
  """
  off = (np.arange(sub) + 0.5) / sub
  ys = (np.arange(size)[:, None] + off[None, :]).reshape(-1)  # sample coordinates, pixel units
  yy, xx = np.meshgrid(ys, ys, indexing='ij')
  top = np.full(yy.shape, -1)
  for k, o in enumerate(objects):
    c, s = math.cos(o['theta']), math.sin(o['theta'])
    dx, dy = xx - o['cx'], yy - o['cy']
    inside = demo._sdf(o['cls'], c * dx + s * dy, -s * dx + c * dy, o['r']) < 0  # pylint: disable=protected-access
    top[inside] = k
  owners = np.stack([(top == k) for k in range(len(objects))]).astype(np.float64)
  return owners.reshape(len(objects), size, sub, size, sub).mean(axis=(2, 4))


@pytest.mark.parametrize('size', [64, 128])
def test_demo_boxes_are_the_visible_extent_and_hidden_objects_are_dropped(size):
  ds = D.DemoDetection('train', 40, size, seed=3)
  checked = dropped = 0
  for i in range(len(ds)):
    objects = ds.layout(i)
    ann = ds.annotations(i)
    owners = _supersampled_owners(objects, size)
    kept = {int(k): b for k, b in zip(ann['object_index'], ann['boxes'])}
    assert list(ann['object_index']) == sorted(kept)  # drawing order
    for k, o in enumerate(objects):
      # Visible share of the whole (untruncated) shape: area of the shape from the closed form,
      # visible part counted on the supersampled grid (truncation by the border included).
      fraction = owners[k].sum() / (D.AREA_FACTOR[o['cls']] * o['r'] ** 2)
      if fraction < D.MIN_VISIBLE - 0.05:
        assert k not in kept, (i, k, fraction)
        dropped += 1
      elif fraction > D.MIN_VISIBLE + 0.05:
        assert k in kept, (i, k, fraction)
        mask = owners[k] >= 0.5
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        want = np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)
        # The library thresholds anti-aliased coverage at pixel centres, the reference counts
        # sample points: they may disagree on a pixel straddling the outline, never more.
        np.testing.assert_allclose(kept[k], want, atol=1.0, err_msg=f'example {i} object {k}')
        assert ann['labels'][list(kept).index(k)] == o['cls'] - 1
        checked += 1
  assert checked > 60 and dropped > 0  # both branches were exercised


def _chord_offset(fraction: float) -> float:
  """Signed offset d (in radii) of a vertical chord leaving ``fraction`` of a unit disc on its
  left: area left of x = d is acos(-d) + d sqrt(1 - d^2), over pi; solved by bisection."""
  lo, hi = -1.0, 1.0
  for _ in range(60):
    d = 0.5 * (lo + hi)
    if (math.acos(-d) + d * math.sqrt(1 - d * d)) / math.pi < fraction:
      lo = d
    else:
      hi = d
  return 0.5 * (lo + hi)


@pytest.mark.parametrize('how', ['occluded', 'border'])
@pytest.mark.parametrize('fraction', [0.36, 0.44])
def test_demo_drops_objects_less_than_40_percent_visible(how, fraction):
  """A disc (r = 20) cut by a vertical line, behind a square or at the image's left border; the
  visible share is the circular segment's area (closed form above)."""
  size, r, cy = 96, 20.0, 48.0
  d = _chord_offset(fraction) * r  # the disc is visible left of cx + d
  if how == 'occluded':
    cx = 40.0
    edge = cx + d
    # A square (half side 0.8 R = 40, unrotated) whose left edge is at ``edge``, drawn on top.
    objects = [{'cls': 1, 'cy': cy, 'cx': cx, 'r': r, 'theta': 0.0},
               {'cls': 2, 'cy': cy, 'cx': edge + 40.0, 'r': 50.0, 'theta': 0.0}]
    want = [cx - r, cy - r, edge - 1, cy + r - 1]
  else:
    # By symmetry the share right of the chord at -d is ``fraction`` too: with the centre at
    # x = d the image (x >= 0) shows that share.
    cx = d
    objects = [{'cls': 1, 'cy': cy, 'cx': cx, 'r': r, 'theta': 0.0}]
    want = [0, cy - r, cx + r - 1, cy + r - 1]
  ann = D.annotate(objects, size)
  kept = 0 in list(ann['object_index'])
  assert kept == (fraction >= D.MIN_VISIBLE)
  if kept:
    k = list(ann['object_index']).index(0)
    assert ann['visible'][k] == pytest.approx(fraction, abs=0.01)  # anti-aliasing: ~1 px ring
    # Box: rows of the whole disc, columns of the visible part (pixel j spans [j, j + 1): the
    # last column left of a cut at x is x - 1, +-1 px where an outline cuts a pixel).
    np.testing.assert_allclose(ann['boxes'][k], want, atol=1.0)


def test_demo_area_factors_are_the_shapes_areas():
  """The closed-form areas (visible fractions divide by them) match the rasterised shapes."""
  size = 96
  for cls in range(1, 6):
    o = {'cls': cls, 'cy': 48.3, 'cx': 47.6, 'r': 30.0, 'theta': 0.7}
    owners = _supersampled_owners([o], size, sub=8)
    area = D.AREA_FACTOR[cls] * o['r'] ** 2
    # 8x8 samples per pixel over a ~2000-6000 px^2 shape: the count is within 0.5% of the area.
    np.testing.assert_allclose(owners.sum(), area, rtol=5e-3, err_msg=D.CLASS_NAMES[cls - 1])
    # ... and so is the anti-aliased coverage the library integrates for visible fractions.
    yy, xx = demo.grid(size)
    _, _, cov = demo.shape_coverage(cls, o['cy'], o['cx'], o['r'], o['theta'], yy, xx)
    np.testing.assert_allclose(cov.sum(dtype=np.float64), area, rtol=5e-3)


def test_demo_image_shows_the_shapes_where_the_layout_puts_them():
  """Away from every shape (by the layout's coverage, one pixel of margin) the image is its
  background plus pixel noise only; inside, most pixels differ from the background."""
  size = 96
  ds = D.DemoDetection('val', 12, size, seed=1)
  yy, xx = demo.grid(size)
  for i in range(len(ds)):
    image = ds[i]['image'].astype(np.float64)
    objects = ds.layout(i)
    render_rng = ds._generators(i)[1]  # pylint: disable=protected-access
    bg = np.clip(demo.background(render_rng, size, yy, xx), 0, 255)  # drawn first
    union = D.visible_weights(objects, size).sum(0)
    shape = union > 0
    near = shape.copy()  # dilate by one pixel
    near[1:] |= shape[:-1]; near[:-1] |= shape[1:]; near[:, 1:] |= shape[:, :-1]
    near[:, :-1] |= shape[:, 1:]
    diff = np.abs(image - bg).max(-1)
    # demo.finish adds N(0, 8) noise and rounds: beyond 6 sigma (48) is not noise.
    assert diff[~near].max() < 48, i
    assert np.mean(diff[union > 0.99] > 10) > 0.5, i


def test_demo_is_deterministic_pickles_and_matches_its_annotations():
  ds = D.DemoDetection('train', 6, 64, seed=5)
  again = pickle.loads(pickle.dumps(D.DemoDetection('train', 6, 64, seed=5)))
  for i in range(len(ds)):
    ex = ds[i]
    assert _same(ex, again[i])
    assert ex['image'].shape == (64, 64, 3) and ex['image'].dtype == np.uint8
    assert ex['boxes'].dtype == np.float32 and ex['labels'].dtype == np.int32
    assert ex['image_id'] == i + 1
    ann = ds.annotations(i)
    assert np.array_equal(ex['boxes'], ann['boxes']) and np.array_equal(ex['labels'], ann['labels'])
  assert _same(ds[-1], ds[5])
  with pytest.raises(IndexError):
    ds[6]  # pylint: disable=pointless-statement
  other_split = D.DemoDetection('val', 6, 64, seed=5)
  other_seed = D.DemoDetection('train', 6, 64, seed=6)
  assert not np.array_equal(ds[0]['image'], other_split[0]['image'])
  assert not np.array_equal(ds[0]['image'], other_seed[0]['image'])
  # The detection stream differs from the segmentation demo's images of the same (seed, split).
  from fna_jax.tasks.seg.demo_data import DemoSegmentation  # pylint: disable=g-import-not-at-top
  assert not np.array_equal(ds[0]['image'], DemoSegmentation('train', 6, 64, seed=5)[0]['image'])


def test_demo_counts_sizes_and_classes():
  size = 128
  ds = D.DemoDetection('train', 300, size)
  n = ds.num_boxes()
  assert n.shape == (300,)
  assert n.min() >= 1 and n.max() <= D.MAX_OBJECTS
  drawn = np.array([len(ds.layout(i)) for i in range(len(ds))])
  assert np.all(n <= drawn) and np.any(n < drawn) and set(drawn) == set(range(1, 7))
  boxes = np.concatenate([ds.annotations(i)['boxes'] for i in range(len(ds))])
  labels = np.concatenate([ds.annotations(i)['labels'] for i in range(len(ds))])
  assert len(boxes) == n.sum()
  assert set(labels) == set(range(D.NUM_CLASSES))
  assert boxes.min() >= 0 and boxes.max() <= size - 1
  w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
  side = np.sqrt(w * h)
  # Nominal sizes are log-uniform in [12, 0.7 S]; visible boxes can be smaller (occlusion,
  # border, a triangle's height) or larger (a rotated square's diagonal, up to 1.41x).
  assert side.min() >= 4 and side.max() <= size
  assert np.mean(side < 20) > 0.1 and np.mean(side > 0.5 * size) > 0.05


def test_demo_coco_gt_is_coco_json_and_scores_perfect_detections_1():
  ds = D.DemoDetection('val', 8, 64, seed=2)
  gt = ds.coco_gt()
  assert [im['id'] for im in gt['images']] == list(range(1, 9))
  assert all(im['width'] == 64 and im['height'] == 64 for im in gt['images'])
  assert [c['id'] for c in gt['categories']] == list(D.CATEGORY_IDS)
  assert [c['name'] for c in gt['categories']] == list(D.CLASS_NAMES)
  anns = gt['annotations']
  assert [a['id'] for a in anns] == list(range(1, len(anns) + 1))
  assert len(anns) == ds.num_boxes().sum()
  k = 0
  for i in range(len(ds)):
    ex, ann = ds[i], ds.annotations(i)
    for box, label, area in zip(ex['boxes'], ex['labels'], ann['areas']):
      a = anns[k]
      k += 1
      x1, y1, x2, y2 = box
      assert a['image_id'] == ex['image_id'] and a['iscrowd'] == 0
      assert a['category_id'] == D.CATEGORY_IDS[label]
      assert a['bbox'] == [x1, y1, x2 - x1 + 1, y2 - y1 + 1]  # MMDetection v1's xyxy2xywh
      assert a['area'] == area and 0 < area <= (x2 - x1 + 1) * (y2 - y1 + 1)
  pycocotools = pytest.importorskip('pycocotools.coco')
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):
    coco = pycocotools.COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
             'score': 1.0} for a in anns]
    ev = COCOeval(coco, coco.loadRes(dets), 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  assert ev.stats[0] == pytest.approx(1.0)  # AP@[.5:.95] of the ground truth itself


# ------------------------------------------------------------------------------------ pipelines
_COLOURS = ((250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250))


class BoxSource:
  """Grey images of varied sizes with solid coloured rectangles exactly at their boxes."""

  def __init__(self, sizes, boxes_per_image):
    self.sizes = list(sizes)
    self.boxes_per_image = list(boxes_per_image)

  def __len__(self):
    return len(self.sizes)

  def __getitem__(self, i):
    h, w = self.sizes[i]
    image = np.full((h, w, 3), 128, np.uint8)
    boxes = np.asarray(self.boxes_per_image[i], np.float32).reshape(-1, 4)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
      image[y1:y2 + 1, x1:x2 + 1] = _COLOURS[k % len(_COLOURS)]
    return {'image': image, 'boxes': boxes, 'labels': np.arange(len(boxes), dtype=np.int32) % 3,
            'image_id': 100 + i}

  def num_boxes(self):
    return np.array([len(b) for b in self.boxes_per_image])


_BOXES = [[3, 4, 9, 12], [20, 0, 39, 5], [30, 20, 44, 29]]  # in a 30 x 45 (h x w) image


def _flip_seeds():
  """Seeds whose generator's first uniform draw is below / above 1/2 (flip / no flip)."""
  draws = {s: np.random.default_rng(s).random() for s in range(20)}
  return (next(s for s, d in draws.items() if d < 0.5), next(s for s, d in draws.items() if d >= 0.5))


def _box_pixels(image: np.ndarray, colour) -> tuple[int, int, int, int]:
  """Tight box of the pixels of ``image`` (unnormalised) closest to ``colour``."""
  mask = np.abs(image.astype(int) - np.asarray(colour)).max(-1) < 60
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return cols[0], rows[0], cols[-1], rows[-1]


@pytest.mark.parametrize('flip', [False, True])
def test_train_transform_boxes_follow_the_pixels_at_scale_one(flip):
  src = BoxSource([(30, 45)], [_BOXES])
  flip_seed, keep_seed = _flip_seeds()
  # short 30 / 30 = 1 < long 100 / 45: factor 1, image copied as is; canvas (40, 64) pads.
  t = P.DetTrainTransform(canvas=(40, 64), scale=(30, 100), flip=True, max_boxes=5)
  out = t.random_map(src[0], np.random.default_rng(flip_seed if flip else keep_seed))
  # uint8 with its extent; the steps normalise, then zero the padding (v1 pads the normalised
  # image): fna_jax.runtime.inputs.
  assert out['image'].shape == (40, 64, 3) and out['image'].dtype == np.uint8
  np.testing.assert_array_equal(out['input_hw'], [30, 45])
  x = np.asarray(inputs.model_images({'image': out['image'][None],
                                      'input_hw': out['input_hw'][None]}))[0]
  np.testing.assert_array_equal(x[30:], 0)
  np.testing.assert_array_equal(x[:, 45:], 0)
  pixels = out['image'][:30, :45]
  want = np.asarray(_BOXES, np.float32)
  if flip:
    want[:, [0, 2]] = 45 - want[:, [2, 0]] - 1  # v1 bbox_flip, written out
  for k in range(3):
    np.testing.assert_array_equal(out['boxes'][k], want[k])
    assert _box_pixels(pixels, _COLOURS[k]) == tuple(want[k].astype(int))  # exact pixel extent
  np.testing.assert_array_equal(out['labels'], [0, 1, 2, -1, -1])
  np.testing.assert_array_equal(out['boxes'][3:], 0)


def test_train_transform_rescales_boxes_as_mmdet_v1_and_caps_at_the_canvas():
  src = BoxSource([(30, 45)], [_BOXES])
  _, keep_seed = _flip_seeds()
  # sf = min(200 / 45, 60 / 30) = 2: 60 x 90 image.
  t = P.DetTrainTransform(canvas=(64, 96), scale=(60, 200), flip=False, max_boxes=3)
  out = t.random_map(src[0], np.random.default_rng(keep_seed))
  want = np.asarray(_BOXES, np.float32) * 2  # v1 multiplies the inclusive corners by sf
  np.testing.assert_array_equal(out['boxes'], want)
  pixels = T.unnormalize(out['image'])
  np.testing.assert_array_equal(out['image'][60:], 0)
  np.testing.assert_array_equal(out['image'][:, 90:], 0)
  for k in range(3):
    # The doubled rectangle covers pixels 2 x1 .. 2 x2 + 1; bilinear smearing moves the colour
    # threshold by at most a pixel.
    np.testing.assert_allclose(_box_pixels(pixels, _COLOURS[k]),
                               [want[k, 0], want[k, 1], want[k, 2] + 1, want[k, 3] + 1], atol=1)
  # The same scale on a canvas of 45 x 50 caps the factor at min(45 / 30, 50 / 45) = 10 / 9:
  # int(30 * 10/9 + 0.5) = 33 rows, int(45 * 10/9 + 0.5) = 50 columns, boxes clipped to 49 / 32.
  t = P.DetTrainTransform(canvas=(45, 50), scale=(60, 200), flip=False, max_boxes=3)
  out = t.random_map(src[0], np.random.default_rng(keep_seed))
  assert out['image'].shape == (45, 50, 3)
  np.testing.assert_array_equal(out['image'][33:], 0)
  assert np.abs(out['image'][32, :50]).max() > 0  # the 33rd row is image
  want = np.asarray(_BOXES, np.float32) * np.float32(50 / 45)
  want[:, 0::2] = np.clip(want[:, 0::2], 0, 49)
  want[:, 1::2] = np.clip(want[:, 1::2], 0, 32)
  np.testing.assert_allclose(out['boxes'], want, rtol=1e-6)
  assert out['boxes'][2, 3] == 32  # 29 * 10/9 = 32.2: the clip to the 33 rows took effect
  assert P.rescale_factor((30, 45), (60, 200), (45, 50)) == pytest.approx(10 / 9)


def test_train_transform_clips_boxes_to_the_rescaled_image():
  # Factor 2 (60 x 90 image): a box reaching past the image (x2 = 50, y2 = 35) is clipped to
  # the last column 89 and the last row 59.
  ex = dict(BoxSource([(30, 45)], [[[30, 20, 44, 29]]])[0])
  ex['boxes'] = np.array([[30, 20, 50, 35]], np.float32)
  t = P.DetTrainTransform(canvas=(64, 96), scale=(60, 200), flip=False, max_boxes=1)
  out = t.random_map(ex, np.random.default_rng(0))
  np.testing.assert_array_equal(out['boxes'], [[60, 40, 89, 59]])


def test_pad_and_truncate_to_max_boxes():
  boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
  labels = np.array([4, 3, 2, 1, 0], np.int32)
  b, l = P.pad_boxes(boxes, labels, 3)
  np.testing.assert_array_equal(b, boxes[:3])
  np.testing.assert_array_equal(l, labels[:3])
  b, l = P.pad_boxes(boxes, labels, 8)
  np.testing.assert_array_equal(b[:5], boxes)
  np.testing.assert_array_equal(b[5:], 0)
  np.testing.assert_array_equal(l, [4, 3, 2, 1, 0, -1, -1, -1])
  b, l = P.pad_boxes(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), 2)
  np.testing.assert_array_equal(l, [-1, -1])
  assert b.dtype == np.float32 and l.dtype == np.int32


def test_det_pipeline_batches_drop_empty_and_resume():
  sizes = [(30, 45), (40, 30), (25, 25), (30, 45), (36, 48), (30, 30), (20, 40), (44, 33)]
  per = [_BOXES, [], [[1, 1, 5, 5]], _BOXES[:2], [[0, 0, 47, 35]], [], [[3, 3, 9, 9]], _BOXES]
  src = BoxSource(sizes, per)
  kw = dict(batch_size=2, seed=4, canvas=(48, 64), scale=(40, 64), max_boxes=4,
            shard_by_process=False)
  it = iter(P.make_det_pipeline(src, num_epochs=1, **kw))
  batches = list(it)
  assert len(batches) == 3  # 6 non-empty examples
  for b in batches:
    assert b['image'].shape == (2, 48, 64, 3) and b['boxes'].shape == (2, 4, 4)
    assert b['labels'].shape == (2, 4) and b['labels'].dtype == np.int32
    assert np.all((b['labels'] >= 0).sum(1) >= 1)  # no empty example was kept
  assert sum(int((b['labels'] >= 0).sum()) for b in batches) == sum(min(len(p), 4) for p in per)
  # Without drop_empty the empty examples come too.
  assert len(list(iter(P.make_det_pipeline(src, num_epochs=1, drop_empty=False, **kw)))) == 4
  # Deterministic, and resumes exactly from a stored state.
  it1 = iter(P.make_det_pipeline(src, **kw))
  first = [next(it1) for _ in range(2)]
  state = it1.get_state()
  rest = [next(it1) for _ in range(3)]
  it2 = iter(P.make_det_pipeline(src, **kw))
  assert all(_same(a, next(it2)) for a in first)
  it3 = iter(P.make_det_pipeline(src, **kw))
  it3.set_state(state)
  assert all(_same(a, next(it3)) for a in rest)


def test_det_pipeline_on_the_demo_keeps_boxes_inside_the_image():
  ds = D.DemoDetection('train', 8, 64)
  it = iter(P.make_det_pipeline(ds, batch_size=4, canvas=(80, 80), scale=(80, 100), max_boxes=6,
                                shard_by_process=False))
  b = next(it)
  valid = b['labels'] >= 0
  assert valid.any() and np.all(b['labels'][valid] < D.NUM_CLASSES)
  boxes = b['boxes'][valid]
  assert boxes.min() >= 0 and boxes[:, [2, 3]].max() <= 79  # sf 1.25: 80 x 80, inclusive 79
  assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])


def test_det_eval_pipeline_fields_order_and_padding():
  sizes = [(30, 45), (40, 30), (25, 25), (33, 50), (36, 48)]  # 50 * 40/33 = 60.6 rounds up
  src = BoxSource(sizes, [_BOXES] * 5)
  kw = dict(batch_size=2, canvas=(64, 64), scale=(40, 64))
  batches = list(iter(P.make_det_eval_pipeline(src, shard_by_process=False, **kw)))
  assert len(batches) == 3
  cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  np.testing.assert_array_equal(cat['image_id'], [100, 101, 102, 103, 104, -1])
  np.testing.assert_array_equal(cat['valid'], [True] * 5 + [False])
  np.testing.assert_array_equal(cat['image_hw'][:5], sizes)
  for k, (h, w) in enumerate(sizes):
    sf = min(64 / max(h, w), 40 / min(h, w))  # mmcv imrescale, canvas (64, 64) never caps here
    assert cat['scale_factor'][k] == pytest.approx(sf)
    want_hw = (int(h * sf + 0.5), int(w * sf + 0.5))
    np.testing.assert_array_equal(cat['input_hw'][k], want_hw)
    np.testing.assert_array_equal(cat['image'][k, want_hw[0]:], 0)
    np.testing.assert_array_equal(cat['image'][k, :, want_hw[1]:], 0)
    assert np.abs(cat['image'][k, want_hw[0] - 1, :want_hw[1]]).min() > 0  # grey 128 != mean
  assert cat['image'].shape == (6, 64, 64, 3) and cat['image_id'].dtype == np.int32
  # Two processes: equal batch counts, every example exactly once among the valid ones.
  shards = [list(iter(P.make_det_eval_pipeline(src, shard_by_process=(p, 2), **kw)))
            for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == 2
  ids = np.concatenate([b['image_id'][b['valid']] for s in shards for b in s])
  assert sorted(ids) == [100, 101, 102, 103, 104]
  assert sum(int((~b['valid']).sum()) for s in shards for b in s) == 3

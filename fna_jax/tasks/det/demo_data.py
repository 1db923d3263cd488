"""The embedded demo detection set: generated shapes with boxes on cluttered backgrounds.

A download-free stand-in for COCO (paper Sec. 4.2) in the same source format
(:class:`DemoDetection`).  Images are drawn by :mod:`fna_jax.data.demo` (its cluttered background
and its five shape classes, each with its own outline and texture and a weakly informative hue;
see that module's docstring): here 1 to 6 shapes per image, 5 classes ``0..4`` =
``disc, square, triangle, ring, cross`` (COCO-style category ids ``1..5``).

Layout.  Each object's nominal size (the side of its box when unrotated and unoccluded) is
log-uniform between 12 px (or 0.35 S if that is smaller) and 0.7 S for an ``S x S`` image; its
centre is uniform in ``[r/2, S - r/2]`` (``r`` its radius), so up to about a third of a large
shape may leave the image.  Objects are drawn largest first, so small shapes lie on top of large
ones more often than the reverse (occlusions happen both ways).

Boxes.  A pixel shows object ``k`` with weight ``w_k = cov_k * prod_{j drawn later} (1 - cov_j)``
(``cov`` the anti-aliased coverage that paints the shape).  An object's box is the tight box of
its pixels with ``w_k >= 0.5`` (its VISIBLE extent, after occlusion and the image border), in
MMDetection v1's convention: ``(x1, y1, x2, y2)`` pixel indices with inclusive right/bottom
edges, width ``x2 - x1 + 1``.  Its visible fraction is ``sum(w_k)`` over the shape's exact area
(disc ``pi r^2``, square ``2.56 r^2``, triangle ``3 sqrt(3) / 4 r^2``, ring ``0.7975 pi r^2``,
cross ``2.04 r^2``; the anti-aliasing ramp integrates to the area); objects less than 40%
visible get no box (they stay in the image, like unannotated clutter).  The last-drawn object is
at least about 65% visible, so every image has a box.

Statistics of the default 128 x 128 images, measured over 2000 training images (seed 0) with
this module's layout code (a description of the data, not a test oracle): 3.54 objects drawn and
3.46 boxes per image on average (1 to 6 boxes: 15%, 17%, 18%, 19%, 17%, 13% of the images), 2.2%
of the drawn objects dropped as mostly hidden, classes 19.5-20.5% each; box side
``sqrt(w h)`` median 33 px, 10th / 90th percentiles 15 / 70 px, range 10-119 px (a rotated
square's box is up to 1.41x its side; 1.3% of the boxes are larger than 0.7 S); by COCO's
absolute area ranges (visible pixels) 63% small (< 32^2), 37% medium, none large (> 96^2), so
COCOeval's APl is -1 (no ground truth) on this set.  Generation takes about 2.5 ms per
128 x 128 image on one core (0.3 ms for the boxes alone).

Determinism.  Example ``i`` of a split is a pure function of ``(seed, split, i)``: its generator
``np.random.default_rng([seed, stream, i])`` is spawned into a layout generator (classes, sizes,
positions, rotations: all the boxes) and a rendering generator (background, colours, textures,
noise), so :meth:`DemoDetection.annotations`, :meth:`~DemoDetection.num_boxes` and
:meth:`~DemoDetection.coco_gt` never render an image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fna_jax.data import demo

NUM_CLASSES = demo.NUM_SHAPE_CLASSES  # 5; no background class (RetinaNet's sigmoid classes)
CLASS_NAMES = demo.SHAPE_CLASS_NAMES  # index k is demo shape class k + 1
CATEGORY_IDS = tuple(range(1, NUM_CLASSES + 1))  # index -> category id of coco_gt()

MIN_SIZE_PX = 12.0  # smallest nominal object size, pixels (at most 0.35 S)
MAX_SIZE_FRACTION = 0.7  # largest nominal object size, fraction of the image side
MAX_OBJECTS = 6  # objects drawn per image: uniform in 1..MAX_OBJECTS
MIN_VISIBLE = 0.4  # objects with a smaller visible fraction get no box
VISIBLE_WEIGHT = 0.5  # a pixel belongs to an object's visible extent from this weight on

_DET_STREAM = 3000  # offset of the detection streams (images unlike the other demo sets')
# Box side of an unrotated shape over its radius r (demo._sdf's outlines; the cross's and the
# square's grow a little when rotated, the triangle's height is 1.5 r and its width 1.73 r).
_EXTENT = {1: 2.0, 2: 1.6, 3: 1.6, 4: 2.0, 5: 2.0}
# Exact area over r^2 of each outline of demo._sdf.
AREA_FACTOR = {1: math.pi, 2: 1.6 ** 2, 3: 3 * math.sqrt(3) / 4,
               4: math.pi * (1 - 0.45 ** 2), 5: 2 * (2 * 0.6) - 0.6 ** 2}


def sample_layout(rng: np.random.Generator, image_size: int) -> list[dict[str, Any]]:
  """The objects of one image in drawing order: ``[{'cls', 'cy', 'cx', 'r', 'theta'}]``.

  ``cls`` is the demo shape class (1..5), ``cy, cx, r`` pixels, ``theta`` radians.
  """
  s = image_size
  hi = MAX_SIZE_FRACTION * s
  lo = min(MIN_SIZE_PX, 0.35 * s)
  objects = []
  for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
    cls = int(rng.integers(1, NUM_CLASSES + 1))
    side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    r = side / _EXTENT[cls]
    cy, cx = (float(t) for t in rng.uniform(0.5 * r, s - 0.5 * r, size=2))
    theta = float(rng.uniform(0, 2 * math.pi))
    objects.append({'cls': cls, 'cy': cy, 'cx': cx, 'r': r, 'theta': theta, 'side': side})
  objects.sort(key=lambda o: -o['side'])  # stable: largest first
  return objects


def visible_weights(objects: list[dict[str, Any]], image_size: int) -> np.ndarray:
  """float32 (n, S, S): how much of each pixel shows object ``k`` after everything drawn later."""
  yy, xx = demo.grid(image_size)
  weights = np.zeros((len(objects), image_size, image_size), np.float32)
  for k, o in enumerate(objects):
    patch = demo.shape_coverage(o['cls'], o['cy'], o['cx'], o['r'], o['theta'], yy, xx)
    if patch is None:
      continue
    y0, x0, cov = patch
    win = (slice(None), slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
    weights[:k][win] *= 1 - cov
    weights[k][win[1:]] = cov
  return weights


def annotate(objects: list[dict[str, Any]], image_size: int) -> dict[str, np.ndarray]:
  """Boxes of the objects that stay at least :data:`MIN_VISIBLE` visible (see module docstring).

  Returns:
    ``{'boxes': float32 (n, 4) v1 inclusive xyxy, 'labels': int32 (n,) 0..4, 'areas': float32
    (n,) visible pixels (weight >= 0.5), 'visible': float32 (n,) visible fractions,
    'object_index': int32 (n,) positions in ``objects``}`` in drawing order.
  """
  weights = visible_weights(objects, image_size)
  boxes, labels, areas, fractions, kept = [], [], [], [], []
  for k, (o, w) in enumerate(zip(objects, weights)):
    fraction = float(w.sum(dtype=np.float64)) / (AREA_FACTOR[o['cls']] * o['r'] ** 2)
    mask = w >= VISIBLE_WEIGHT
    if fraction < MIN_VISIBLE or not mask.any():
      continue
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    boxes.append((cols[0], rows[0], cols[-1], rows[-1]))
    labels.append(o['cls'] - 1)
    areas.append(mask.sum())
    fractions.append(fraction)
    kept.append(k)
  return {'boxes': np.asarray(boxes, np.float32).reshape(-1, 4),
          'labels': np.asarray(labels, np.int32), 'areas': np.asarray(areas, np.float32),
          'visible': np.asarray(fractions, np.float32), 'object_index': np.asarray(kept, np.int32)}


def render(objects: list[dict[str, Any]], rng: np.random.Generator, image_size: int) -> np.ndarray:
  """uint8 (S, S, 3): :mod:`fna_jax.data.demo`'s background with the objects drawn in order."""
  yy, xx = demo.grid(image_size)
  image = demo.background(rng, image_size, yy, xx)
  for o in objects:
    demo.draw_shape(image, None, rng, o['cls'], o['cy'], o['cx'], o['r'], yy, xx,
                    theta=o['theta'])
  return demo.finish(image, rng)


class DemoDetection(demo.DemoSource):
  """Generated detection images (see the module docstring) in the detection source format.

  ``ds[i]`` is ``{'image': uint8 (S, S, 3), 'boxes': float32 (n, 4) (x1, y1, x2, y2) with
  inclusive right/bottom edges (MMDetection v1), 'labels': int32 (n,) in 0..4, 'image_id': i + 1}``
  (``n >= 1``), a pure function of ``(seed, split, i)`` made on access.

  Args:
    split: ``'train'``, ``'val'`` (alias ``'validation'``) or ``'test'``; splits hold different
      images.
    num_examples: length of the split.
    image_size: side S of the square images, pixels (the demo uses 128).
    seed: base seed of the whole dataset.
  """

  NUM_CLASSES = NUM_CLASSES
  CLASS_NAMES = CLASS_NAMES
  CATEGORY_IDS = CATEGORY_IDS
  _stream_offset = _DET_STREAM

  def __init__(self, split: str, num_examples: int, image_size: int = 128, seed: int = 0):
    super().__init__(split, num_examples, image_size, seed)

  def _generators(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    layout_rng, render_rng = self._rng(index).spawn(2)
    return layout_rng, render_rng

  def layout(self, index: int) -> list[dict[str, Any]]:
    """The drawn objects of example ``index`` (:func:`sample_layout`), dropped ones included."""
    return sample_layout(self._generators(index)[0], self.image_size)

  def annotations(self, index: int) -> dict[str, np.ndarray]:
    """:func:`annotate` of example ``index`` without rendering its image."""
    return annotate(self.layout(index), self.image_size)

  def __getitem__(self, index: int) -> dict[str, Any]:
    layout_rng, render_rng = self._generators(index)
    objects = sample_layout(layout_rng, self.image_size)
    ann = annotate(objects, self.image_size)
    return {'image': render(objects, render_rng, self.image_size), 'boxes': ann['boxes'],
            'labels': ann['labels'], 'image_id': self._image_id(index)}

  def _image_id(self, index: int) -> int:
    index = int(index)
    return (index + self.num_examples if index < 0 else index) + 1

  def num_boxes(self) -> np.ndarray:
    """int64 (len,): boxes per example (no image is rendered)."""
    return np.array([len(self.annotations(i)['labels']) for i in range(len(self))], np.int64)

  def coco_gt(self) -> dict[str, Any]:
    """The split's ground truth in COCO's json format, for pycocotools' ``COCOeval``.

    Boxes become COCO ``[x, y, w, h]`` with MMDetection v1's ``w = x2 - x1 + 1`` (its
    ``xyxy2xywh``), ``area`` is the object's visible pixel count (COCO's area is the mask area,
    which sets the small / medium / large ranges), ``iscrowd`` 0, annotation ids from 1
    (pycocotools treats a matched id 0 as unmatched).
    """
    s = self.image_size
    images, annotations = [], []
    for i in range(len(self)):
      image_id = self._image_id(i)
      images.append({'id': image_id, 'width': s, 'height': s,
                     'file_name': f'demo_det_{self.split}_{i:06d}.png'})
      ann = self.annotations(i)
      for box, label, area in zip(ann['boxes'], ann['labels'], ann['areas']):
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                            'category_id': CATEGORY_IDS[int(label)],
                            'bbox': [x1, y1, x2 - x1 + 1, y2 - y1 + 1], 'area': float(area),
                            'iscrowd': 0})
    return {'info': {'description': repr(self)}, 'licenses': [], 'images': images,
            'annotations': annotations,
            'categories': [{'id': c, 'name': n, 'supercategory': 'shape'}
                           for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]}

"""An embedded, download-free demo task: synthetic shapes segmentation (and classification).

Every example is generated in numpy from a seed, so the demo needs no data download and is exactly
reproducible: example ``i`` of split ``s`` is a pure function of ``(seed, s, i)`` (its generator is
``np.random.default_rng([seed, split_id, i])``).

Images are RGB ``uint8`` of shape ``(S, S, 3)`` (``S = image_size``, default 64).  The background
is a smooth, low-saturation colour field with a faint grating, Gaussian noise and a few saturated
soft colour blobs (clutter without outlines).  On top, 3 to 7 shapes are drawn, possibly
overlapping (later shapes occlude earlier ones), with radii 0.12-0.24 S scaled per class so that
all classes cover about the same area (background is about 2/3 of the pixels).  Each of the
five shape classes has

* its own outline: disc, square, triangle, ring, cross (squares, triangles and crosses are rotated
  at random);
* its own surface texture (in shape-local coordinates, so with a random orientation): disc
  smooth, square stripes, triangle checkerboard, ring smooth, cross speckle;
* a preferred hue with a jitter that overlaps its neighbours' (hue centre ``(c - 1) / 5`` of the
  colour wheel, +-0.25), random saturation and value.

So colour is only weakly informative and no per-pixel colour rule segments the images well: a
colour-histogram Bayes classifier fitted on 300 training images reaches about 80% pixel accuracy
and 0.40 mIoU on validation images (predicting background everywhere: 68%), nearest class-mean
colour about 61% and 0.28 mIoU.  Outlines and textures, which need spatial context, are what a
conv net has to learn.

Labels are ``uint8`` ``(S, S)``: 0 background, 1..5 the shape classes, and 255 (ignore) on a thin
band (about half a pixel) along each visible shape outline, where the anti-aliased rendering mixes
the shape with what lies below.  This exercises the ignore label as Cityscapes does.

:class:`DemoClassification` draws one dominant shape (radius 0.25-0.33 S times the class's area
factor, near the centre, on top) over 0-3 small distractor shapes; its label is the dominant
shape's class, ``0..4`` for segmentation classes ``1..5`` (``CLASS_NAMES[k + 1]``).  It is meant
for briefly pretraining a seed network so that the demo search starts from a trained seed.

Generation takes well under 5 ms per 64x64 example on one CPU core.
"""

from __future__ import annotations

import colorsys
import math
from typing import Any

import numpy as np

from fna_jax.data.transforms import IGNORE_LABEL

NUM_CLASSES = 6  # background + 5 shape classes
CLASS_NAMES = ('background', 'disc', 'square', 'triangle', 'ring', 'cross')

NUM_SHAPE_CLASSES = NUM_CLASSES - 1
SHAPE_CLASS_NAMES = CLASS_NAMES[1:]

# Split name -> stream id used in the example's seed.  'validation' is an alias of 'val'.
_SPLIT_IDS = {'train': 0, 'val': 1, 'validation': 1, 'test': 2}
_CLASSIFICATION_STREAM = 1000  # offset of the classification streams (different images)

_TEXTURE = {1: 'plain', 2: 'stripes', 3: 'checker', 4: 'plain', 5: 'speckle'}
# Radius multipliers that give every class about the same area (2.5 r^2) at the same radius.
SIZE_FACTOR = {1: 0.9, 2: 1.0, 3: 1.4, 4: 1.0, 5: 1.1}


def _split_id(split: str) -> int:
  if split not in _SPLIT_IDS:
    raise ValueError(f'unknown demo split {split!r}; expected one of {sorted(_SPLIT_IDS)}')
  return _SPLIT_IDS[split]


def _sdf(cls: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Signed distance (pixels, negative inside) to the outline of a shape of class ``cls``.

  ``dx``, ``dy`` are shape-local (rotated) pixel coordinates relative to the centre; ``r`` the
  shape's radius in pixels.  Polygons use the max of their edge half-plane distances, exact near
  the edges, which is all the one-pixel anti-aliasing needs.
  """
  if cls == 1:  # disc
    return np.sqrt(dx * dx + dy * dy) - r
  if cls == 2:  # square, half side 0.8 r
    return np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r
  if cls == 3:  # equilateral triangle, circumradius r (inradius r / 2), apex up
    inr = 0.5 * r
    d1 = dy - inr  # bottom edge at dy = +inr (image y grows downwards)
    d2 = 0.8660254 * dx - 0.5 * dy - inr
    d3 = -0.8660254 * dx - 0.5 * dy - inr
    return np.maximum(np.maximum(d1, d2), d3)
  if cls == 4:  # ring, outer radius r, inner radius 0.45 r
    return np.abs(np.sqrt(dx * dx + dy * dy) - 0.725 * r) - 0.275 * r
  if cls == 5:  # cross (plus sign), arm half-width 0.3 r
    ax, ay = np.abs(dx), np.abs(dy)
    bar1 = np.maximum(ax - r, ay - 0.3 * r)
    bar2 = np.maximum(ax - 0.3 * r, ay - r)
    return np.minimum(bar1, bar2)
  raise ValueError(f'shape class must be in 1..{NUM_SHAPE_CLASSES}, got {cls}')


def _texture(cls: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator,
             scale: float) -> np.ndarray:
  """Texture pattern in [-1, 1] of class ``cls`` at shape-local coordinates ``u``, ``v``."""
  kind = _TEXTURE[cls]
  if kind == 'plain':
    return np.zeros_like(u)
  if kind == 'stripes':
    period = float(rng.uniform(4.0, 6.0)) * scale
    return np.sign(np.sin(u * (2 * math.pi / period) + float(rng.uniform(0, 2 * math.pi))))
  if kind == 'checker':
    period = float(rng.uniform(5.0, 7.0)) * scale
    p0, p1 = (float(t) for t in rng.uniform(0, 2 * math.pi, size=2))
    return np.sign(np.sin(u * (2 * math.pi / period) + p0) *
                   np.sin(v * (2 * math.pi / period) + p1))
  # speckle: independent +-1 per pixel
  return rng.integers(0, 2, size=u.shape).astype(np.float32) * 2 - 1


def background(rng: np.random.Generator, size: int, yy: np.ndarray,
                xx: np.ndarray) -> np.ndarray:
  """Textured, noisy background, float32 (S, S, 3) in [0, 255]."""
  # Smooth low-saturation colour field: bilinear upsampling of a 4x4 grid.
  grey = rng.uniform(50.0, 200.0, size=(4, 4, 1))
  tint = rng.uniform(-25.0, 25.0, size=(4, 4, 3))
  grid = (grey + tint).astype(np.float32)
  pos = (np.arange(size, dtype=np.float32) + 0.5) * (3.0 / size)
  i0 = np.minimum(np.floor(pos).astype(np.int64), 2)
  f = (pos - i0).astype(np.float32)[:, None]
  rows = grid[i0] * (1 - f)[:, :, None] + grid[i0 + 1] * f[:, :, None]  # (S, 4, 3)
  field = (rows[:, i0] * (1 - f.T)[:, :, None] + rows[:, i0 + 1] * f.T[:, :, None])
  # Faint grating with a random orientation and period.
  theta = float(rng.uniform(0, np.pi))
  period = float(rng.uniform(6.0, 16.0)) * size / 64
  grating = np.sin((2 * math.pi / period) * (math.cos(theta) * xx + math.sin(theta) * yy))
  field = field + float(rng.uniform(4.0, 12.0)) * grating[:, :, None]
  # Saturated soft colour blobs (clutter): colours like the shapes', but no outline.
  for _ in range(rng.integers(1, 5)):
    colour = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.4, 0.9),
                                          rng.uniform(0.4, 0.9)), np.float32) * 255
    cy, cx = (float(t) for t in rng.uniform(0, size, size=2))
    sigma = float(rng.uniform(0.08, 0.2)) * size
    w = np.exp(((yy - cy) ** 2 + (xx - cx) ** 2) * (-0.5 / (sigma * sigma)))
    w *= float(rng.uniform(0.5, 0.9))
    field = field * (1 - w[:, :, None]) + colour * w[:, :, None]
  return field


def _shape_patch(cls: int, cy: float, cx: float, r: float, theta: float, yy: np.ndarray,
                 xx: np.ndarray):
  """The window ``(y0, x0)`` around a shape and, in it, its coverage and local coordinates."""
  size = yy.shape[0]
  ext = 1.2 * r + 2
  y0, y1 = max(int(cy - ext), 0), min(int(np.ceil(cy + ext)), size)
  x0, x1 = max(int(cx - ext), 0), min(int(np.ceil(cx + ext)), size)
  if y0 >= y1 or x0 >= x1:
    return None
  c, s = math.cos(theta), math.sin(theta)
  dy0, dx0 = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
  u = c * dx0 + s * dy0
  v = -s * dx0 + c * dy0
  cov = np.clip(0.5 - _sdf(cls, u, v, r), 0.0, 1.0)
  return y0, x0, cov, u, v


def shape_coverage(cls: int, cy: float, cx: float, r: float, theta: float, yy: np.ndarray,
                   xx: np.ndarray) -> tuple[int, int, np.ndarray] | None:
  """Anti-aliased coverage of one shape, as :func:`draw_shape` paints it (no randomness).

  Args:
    cls: shape class 1..5.
    cy, cx, r: centre and radius, pixels.
    theta: rotation, radians.
    yy, xx: the pixel-centre grid of :func:`grid`.

  Returns:
    ``(y0, x0, cov)``: ``cov`` float32 in [0, 1] on the image window whose top-left pixel is
    ``(y0, x0)`` (every outline lies within 1.2 r of the centre); None when the window misses
    the image.
  """
  patch = _shape_patch(cls, float(cy), float(cx), float(r), float(theta), yy, xx)
  return None if patch is None else patch[:3]


def draw_shape(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, cls: int,
                cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray,
                theta: float | None = None) -> None:
  """Draws one shape in place on ``image`` (float32 (S,S,3)) and ``label`` (uint8 (S,S)).

  Only the shape's bounding box (every outline lies within 1.2 r of the centre) is touched.
  ``theta`` (radians) fixes the rotation; None draws it from ``rng`` (first draw).
  """
  size = image.shape[0]
  cy, cx, r = float(cy), float(cx), float(r)  # python floats keep the arrays float32
  if theta is None:
    theta = float(rng.uniform(0, 2 * np.pi))
  hue = ((cls - 1) / NUM_SHAPE_CLASSES + rng.uniform(-0.25, 0.25)) % 1.0
  colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.95), rng.uniform(0.45, 0.95)),
                    np.float32) * 255
  contrast = rng.uniform(0.25, 0.5)
  patch = _shape_patch(cls, cy, cx, r, float(theta), yy, xx)
  if patch is None:
    return
  y0, x0, cov, u, v = patch
  y1, x1 = y0 + cov.shape[0], x0 + cov.shape[1]
  cov = cov[:, :, None]
  tex = _texture(cls, u, v, rng, size / 64)
  noise = rng.standard_normal(size=(y1 - y0, x1 - x0, 1), dtype=np.float32) * 6.0
  fill = colour * (1 + contrast * tex[:, :, None]) + noise
  patch = image[y0:y1, x0:x1]
  patch *= 1 - cov
  patch += fill * cov
  if label is not None:
    cov = cov[:, :, 0]
    lab = label[y0:y1, x0:x1]
    lab[cov >= 0.75] = cls
    lab[(cov > 0.25) & (cov < 0.75)] = IGNORE_LABEL


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  return yy, xx


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  image += rng.standard_normal(size=image.shape, dtype=np.float32) * 8.0
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_classification_example(rng: np.random.Generator,
                                    image_size: int = 64) -> dict[str, Any]:
  """Draws one classification example: one dominant shape over small distractors.

  Args:
    rng: the example's generator (consumed).
    image_size: side S of the square image, pixels (at least 16).

  Returns:
    ``{'image': uint8 (S, S, 3), 'label': int}``, the label in ``0..4`` (segmentation class - 1).
  """
  if image_size < 16:
    raise ValueError(f'image_size must be at least 16, got {image_size}')
  yy, xx = grid(image_size)
  image = background(rng, image_size, yy, xx)
  for _ in range(rng.integers(0, 4)):
    cls = int(rng.integers(1, NUM_CLASSES))
    r = rng.uniform(0.06, 0.1) * image_size * SIZE_FACTOR[cls]
    cy, cx = rng.uniform(0.1, 0.9, size=2) * image_size
    draw_shape(image, None, rng, cls, cy, cx, r, yy, xx)
  cls = int(rng.integers(1, NUM_CLASSES))
  r = rng.uniform(0.25, 0.33) * image_size * SIZE_FACTOR[cls]
  cy, cx = rng.uniform(0.35, 0.65, size=2) * image_size
  draw_shape(image, None, rng, cls, cy, cx, r, yy, xx)
  return {'image': finish(image, rng), 'label': cls - 1}


class DemoSource:
  """Random-access source base: ``len`` and integer indexing, picklable (plain attributes)."""

  _stream_offset = 0

  def __init__(self, split: str, num_examples: int, image_size: int = 64, seed: int = 0):
    if num_examples < 0:
      raise ValueError(f'num_examples must be >= 0, got {num_examples}')
    if image_size < 16:
      raise ValueError(f'image_size must be at least 16, got {image_size}')
    self.split = split
    self.num_examples = int(num_examples)
    self.image_size = int(image_size)
    self.seed = int(seed)
    self._stream = self._stream_offset + _split_id(split)

  def __len__(self) -> int:
    return self.num_examples

  def _rng(self, index: int) -> np.random.Generator:
    index = int(index)
    if index < 0:
      index += self.num_examples
    if not 0 <= index < self.num_examples:
      raise IndexError(f'{type(self).__name__}({self.split!r}) index {index} out of range '
                       f'[0, {self.num_examples})')
    return np.random.default_rng([self.seed, self._stream, index])

  def __repr__(self) -> str:
    return (f'{type(self).__name__}(split={self.split!r}, num_examples={self.num_examples}, '
            f'image_size={self.image_size}, seed={self.seed})')


class DemoClassification(DemoSource):
  """Synthetic shapes classification (see the module docstring), for seed pretraining.

  ``ds[i]`` is ``{'image': uint8 (S, S, 3), 'label': int}`` with the label in ``0..4`` (the class
  of the dominant shape; segmentation class ``label + 1``, name ``CLASS_NAMES[label]``).

  Args:
    split: ``'train'``, ``'val'`` (alias ``'validation'``) or ``'test'``.
    num_examples: length of the split.
    image_size: side S of the square images, pixels.
    seed: base seed of the whole dataset.
  """

  NUM_CLASSES = NUM_SHAPE_CLASSES
  CLASS_NAMES = SHAPE_CLASS_NAMES
  _stream_offset = _CLASSIFICATION_STREAM

  def __getitem__(self, index: int) -> dict[str, Any]:
    return generate_classification_example(self._rng(index), self.image_size)

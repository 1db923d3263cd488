"""SimpleBaseline's crop transform (Xiao et al. 2018, ``lib/utils/transforms.py`` of
microsoft/human-pose-estimation.pytorch, the paper's reference [10]), without OpenCV.

A person is cropped from the full image by the affine map of :func:`get_affine_transform`: the
box of side ``scale * 200`` px centred on ``center``, rotated by ``rot`` degrees, onto an output
of ``output_size = (width, height)``.  The map is fixed by three point pairs: the centre ->
the output's centre, the point ``scale * 200 / 2`` above the centre (rotated by ``rot``) -> the
point ``width / 2`` above the output's centre, and the third point of each right angle.  Both
axes are scaled by ``width / (scale * 200)`` (the output's height does not stretch the box).

Used for crops (``inv=False``: full image -> crop or heatmap) and for decoding predictions
(``inv=True``: heatmap -> full image, :func:`transform_preds`).
"""

from __future__ import annotations

import numpy as np

PIXEL_STD = 200.0  # MPII's scale unit: a box side is scale * 200 px


def _rotate(point, rot_rad):
  sn, cs = np.sin(rot_rad), np.cos(rot_rad)
  return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a, b):
  d = a - b
  return b + np.array([-d[1], d[0]])


def _affine_from_points(src, dst) -> np.ndarray:
  """The ``(2, 3)`` affine ``M`` with ``M @ [src_i, 1] = dst_i`` for three point pairs
  (what ``cv2.getAffineTransform`` returns)."""
  a = np.concatenate([src, np.ones((3, 1))], axis=1)   # (3, 3)
  return np.linalg.solve(a, dst).T                      # (2, 3)


def get_affine_transform(center, scale, rot, output_size, shift=(0.0, 0.0),
                         inv: bool = False) -> np.ndarray:
  """The ``(2, 3)`` float64 affine from the full image to the crop (``inv``: crop -> image).

  Args:
    center: ``(2,)`` box centre ``(x, y)`` in full-image pixels.
    scale: the box side in units of 200 px (a scalar, or ``(2,)`` of which the first is used
      for both axes, as SimpleBaseline does).
    rot: rotation in degrees (SimpleBaseline's augmentation; 0 at evaluation).
    output_size: ``(width, height)`` of the crop (or heatmap).
    shift: the box centre moved by ``shift * scale * 200`` (SimpleBaseline's argument; 0).
    inv: the inverse map (crop or heatmap coordinates -> full image).
  """
  scale = np.asarray(scale, np.float64)
  scale = np.array([scale, scale]) if scale.ndim == 0 else scale
  center = np.asarray(center, np.float64)
  scale_px = scale * PIXEL_STD
  src_w = scale_px[0]
  dst_w, dst_h = float(output_size[0]), float(output_size[1])
  rot_rad = np.pi * rot / 180.0
  src_dir = _rotate([0.0, src_w * -0.5], rot_rad)
  dst_dir = np.array([0.0, dst_w * -0.5])
  shift = np.asarray(shift, np.float64)
  src = np.zeros((3, 2))
  dst = np.zeros((3, 2))
  src[0] = center + scale_px * shift
  src[1] = center + src_dir + scale_px * shift
  dst[0] = [dst_w * 0.5, dst_h * 0.5]
  dst[1] = dst[0] + dst_dir
  src[2] = _third_point(src[0], src[1])
  dst[2] = _third_point(dst[0], dst[1])
  return _affine_from_points(dst, src) if inv else _affine_from_points(src, dst)


def affine_transform(points, trans) -> np.ndarray:
  """``(..., 2)`` points mapped by the ``(2, 3)`` affine ``trans``."""
  points = np.asarray(points, np.float64)
  return points @ np.asarray(trans)[:, :2].T + np.asarray(trans)[:, 2]


def transform_preds(coords, center, scale, output_size) -> np.ndarray:
  """Heatmap (or crop) coordinates ``(..., 2)`` of one person -> full-image coordinates, through
  the inverse of :func:`get_affine_transform` ``(center, scale, 0, output_size)``
  (SimpleBaseline's ``transform_preds``)."""
  return affine_transform(coords, get_affine_transform(center, scale, 0, output_size, inv=True))

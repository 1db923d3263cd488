"""Person crops by an affine map from a centre, a scale and a rotation, as SimpleBaseline.

SimpleBaseline (Xiao et al. 2018, the paper's reference [10] for the pose task of Sec. 4.3) cuts
every person out of its image with ``get_affine_transform(center, scale, rot, output_size)``:
the square of side ``scale * 200`` pixels around ``center`` (the person box; MPII's scale unit is
200 px), rotated by ``rot`` degrees, maps onto the ``output_size`` network input.  Joints move by
the same 2x3 matrix (:func:`affine_transform`), predictions come back by its inverse
(``inv=True``).  Coordinates are OpenCV's: pixel ``(x, y)`` has its centre at integer ``(x, y)``.

The reference warps with ``cv2.warpAffine(..., INTER_LINEAR)`` (constant border 0); :func:`crop`
does the same with PIL's bilinear ``Image.transform`` (no OpenCV), converting between OpenCV's
integer pixel centres and PIL's half-integer ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

PIXEL_STD = 200.0  # MPII's scale unit: a person box of side ``scale * 200`` pixels


def _rotate(point: Sequence[float], rot_rad: float) -> np.ndarray:
  sn, cs = np.sin(rot_rad), np.cos(rot_rad)
  return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs], np.float64)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = a - b
  return b + np.array([-d[1], d[0]], np.float64)


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 2x3 matrix ``M`` with ``M @ [src_i, 1] = dst_i`` for three point pairs
  (``cv2.getAffineTransform``)."""
  a = np.concatenate([src, np.ones((3, 1))], axis=1)  # (3, 3)
  return np.linalg.solve(a, dst).T  # (2, 3)


def get_affine_transform(center: Sequence[float], scale: float | Sequence[float], rot: float,
                         output_size: Sequence[int], shift: Sequence[float] = (0.0, 0.0),
                         inv: bool = False) -> np.ndarray:
  """SimpleBaseline's crop transform (``lib/utils/transforms.py``).

  Three point pairs fix it: the centre maps to the output centre; the point ``scale * 100`` px
  above the centre, rotated by ``rot`` degrees about it, maps to the top middle of the output;
  a third point completes a right angle on both sides.  So it is a similarity: a person box of
  side ``scale * 200`` px (its width, ``scale[0]``) becomes ``output_size[0]`` px wide, rotated
  by ``-rot`` degrees (image coordinates, y down).

  Args:
    center: (x, y) of the person centre in image pixels.
    scale: person scale (box side / 200 px); a scalar or (sx, sy), of which sx is used.
    rot: rotation in degrees.
    output_size: (width, height) of the output, pixels (SimpleBaseline's ``IMAGE_SIZE`` order).
    shift: offset of the centre in units of the box side.
    inv: the inverse map (output -> image).

  Returns:
    float64 (2, 3) matrix ``M``: ``[x', y'] = M @ [x, y, 1]``.
  """
  scale = np.asarray(scale, np.float64)
  if scale.ndim == 0:
    scale = np.array([scale, scale])
  center = np.asarray(center, np.float64)
  shift = np.asarray(shift, np.float64)
  scale_tmp = scale * PIXEL_STD
  src_w = scale_tmp[0]
  dst_w, dst_h = float(output_size[0]), float(output_size[1])
  rot_rad = np.pi * float(rot) / 180.0
  src_dir = _rotate([0.0, src_w * -0.5], rot_rad)
  dst_dir = np.array([0.0, dst_w * -0.5])
  src = np.zeros((3, 2))
  dst = np.zeros((3, 2))
  src[0] = center + scale_tmp * shift
  src[1] = center + src_dir + scale_tmp * shift
  dst[0] = [dst_w * 0.5, dst_h * 0.5]
  dst[1] = dst[0] + dst_dir
  src[2] = _third_point(src[0], src[1])
  dst[2] = _third_point(dst[0], dst[1])
  return _affine_from_points(dst, src) if inv else _affine_from_points(src, dst)


def affine_transform(point: Sequence[float] | np.ndarray, t: np.ndarray) -> np.ndarray:
  """``t @ [x, y, 1]`` for one point (2,) or many (..., 2)."""
  p = np.asarray(point, np.float64)
  return p @ t[:, :2].T + t[:, 2]


def invert_affine(t: np.ndarray) -> np.ndarray:
  """The inverse of a 2x3 affine matrix."""
  full = np.concatenate([np.asarray(t, np.float64), [[0.0, 0.0, 1.0]]], axis=0)
  return np.linalg.inv(full)[:2]


def warp_affine(image: np.ndarray, t: np.ndarray, output_size: Sequence[int]) -> np.ndarray:
  """``cv2.warpAffine(image, t, output_size, flags=INTER_LINEAR)`` (border 0) with PIL.

  Output pixel ``(x, y)`` samples the image bilinearly at ``t^-1 @ [x, y, 1]`` (OpenCV's integer
  pixel centres).  PIL's affine transform samples output pixel ``(x, y)`` at
  ``A @ (x + 0.5, y + 0.5) + b`` in coordinates whose pixel centres lie at ``+0.5``, so with
  ``t^-1 = [L | c]`` it gets ``A = L`` and ``b = c + 0.5 - L @ (0.5, 0.5)``.

  Args:
    image: uint8 (H, W, 3) (or (H, W)).
    t: 2x3 image -> output matrix.
    output_size: (width, height) of the output.

  Returns:
    uint8 (height, width, 3) (or (height, width)).
  """
  inv = invert_affine(t)
  lin, off = inv[:, :2], inv[:, 2]
  b = off + 0.5 - lin @ np.array([0.5, 0.5])
  coeffs = (lin[0, 0], lin[0, 1], b[0], lin[1, 0], lin[1, 1], b[1])
  w, h = int(output_size[0]), int(output_size[1])
  pil = Image.fromarray(np.ascontiguousarray(image))
  out = pil.transform((w, h), Image.Transform.AFFINE, tuple(float(c) for c in coeffs),
                      resample=Image.Resampling.BILINEAR, fillcolor=0)
  return np.asarray(out)


def crop(image: np.ndarray, center: Sequence[float], scale: float, rot: float,
         output_size: Sequence[int]) -> np.ndarray:
  """The person crop: :func:`warp_affine` by ``get_affine_transform(center, scale, rot,
  output_size)``; ``output_size`` is (width, height)."""
  return warp_affine(image, get_affine_transform(center, scale, rot, output_size), output_size)


def transform_preds(coords, center, scale, output_size) -> np.ndarray:
  """Heatmap (or crop) coordinates ``(..., 2)`` of one person -> full-image coordinates, through
  the inverse of :func:`get_affine_transform` ``(center, scale, 0, output_size)``
  (SimpleBaseline's ``transform_preds``)."""
  return affine_transform(coords, get_affine_transform(center, scale, 0, output_size, inv=True))

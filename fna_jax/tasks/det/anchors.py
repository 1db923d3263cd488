"""RetinaNet anchors (paper Sec. 4.2.1, RetinaNet as in MMDetection v1).

MMDetection v1 ``AnchorGenerator`` (``mmdet/core/anchor/anchor_generator.py``) with the
settings of ``RetinaHead`` (``mmdet/models/anchor_heads/retina_head.py``): on each FPN level
P3-P7 (strides 8..128) the base size is the stride, the scales are
``octave_base_scale * 2 ** (i / scales_per_octave)`` for ``i < scales_per_octave`` (4, 5.04,
6.35) and the aspect ratios 0.5, 1, 2: 9 anchors per location.  Boxes use v1's inclusive pixel
convention (width ``x2 - x1 + 1``).  Anchors depend only on static shapes, so they are numpy
constants computed once per canvas size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fna_jax import ops

RETINA_STRIDES = (8, 16, 32, 64, 128)


def base_anchors(base_size: float, ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
  """The ``K = len(ratios) * len(scales)`` anchors centred on the first cell -> ``(K, 4)``.

  v1 ``AnchorGenerator.gen_base_anchors`` with ``scale_major=True`` and no ``ctr``: centre
  ``0.5 * (base_size - 1)`` in both axes; ``h_ratio = sqrt(ratio)``, ``w_ratio = 1 / h_ratio``;
  ``ws = base_size * w_ratio * scale`` with the ratio as the OUTER index (v1 flattens
  ``w_ratios[:, None] * scales[None, :]``), likewise ``hs``; corners
  ``ctr -+ 0.5 * (ws - 1)``, rounded to integers (half to even, like ``torch.round``).
  Computed in float32 as v1's torch tensors are.
  """
  ratios = np.asarray(ratios, np.float32)
  scales = np.asarray(scales, np.float32)
  w = h = np.float32(base_size)
  x_ctr = y_ctr = np.float32(0.5) * (w - np.float32(1))
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  ws = (w * w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h * h_ratios[:, None] * scales[None, :]).reshape(-1)
  half_w = np.float32(0.5) * (ws - np.float32(1))
  half_h = np.float32(0.5) * (hs - np.float32(1))
  out = np.stack([x_ctr - half_w, y_ctr - half_h, x_ctr + half_w, y_ctr + half_h], axis=-1)
  return np.round(out).astype(np.float32)


def grid_anchors(base: np.ndarray, feature_size: tuple[int, int], stride: int) -> np.ndarray:
  """``base`` ``(K, 4)`` shifted to every cell of an ``(h, w)`` map -> ``(h * w * K, 4)``.

  v1 ``AnchorGenerator.grid_anchors``: shifts ``arange(w) * stride`` and ``arange(h) * stride``
  (the cell's top-left pixel), ordered y, then x, then anchor.
  """
  h, w = feature_size
  shift_x = np.arange(w, dtype=np.float32) * np.float32(stride)
  shift_y = np.arange(h, dtype=np.float32) * np.float32(stride)
  yy, xx = np.meshgrid(shift_y, shift_x, indexing='ij')
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None, :, :].astype(np.float32)).reshape(-1, 4)


def retina_scales(octave_base_scale: float = 4, scales_per_octave: int = 3) -> np.ndarray:
  """RetinaHead's anchor scales: ``octave_base_scale * 2 ** (i / scales_per_octave)``."""
  return np.array([2 ** (i / scales_per_octave) for i in range(scales_per_octave)]) * (
      octave_base_scale)


def retinanet_anchors(feature_sizes: Sequence[tuple[int, int]],
                      strides: Sequence[int] = RETINA_STRIDES, octave_base_scale: float = 4,
                      scales_per_octave: int = 3,
                      ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> np.ndarray:
  """All RetinaNet anchors of an image -> float32 ``(sum_l h_l * w_l * K, 4)``.

  Ordered by level, then y, then x, then anchor (``K = len(ratios) * scales_per_octave``),
  the order of v1's ``AnchorHead.get_anchors`` and of the head's outputs flattened from
  ``(h, w, K)``.  The base size of a level is its stride (v1 ``anchor_base_sizes`` default).
  """
  if len(feature_sizes) != len(strides):
    raise ValueError(f'{len(feature_sizes)} feature sizes for {len(strides)} strides')
  scales = retina_scales(octave_base_scale, scales_per_octave)
  out = [grid_anchors(base_anchors(s, ratios, scales), tuple(fs), s)
         for fs, s in zip(feature_sizes, strides)]
  return np.concatenate(out, axis=0).astype(np.float32)


def level_counts(feature_sizes: Sequence[tuple[int, int]], num_anchors: int = 9) -> tuple[int, ...]:
  """The number of anchors on each level: ``h_l * w_l * num_anchors``."""
  return tuple(int(h) * int(w) * num_anchors for h, w in feature_sizes)


def feature_sizes(input_hw: tuple[int, int],
                  strides: Sequence[int] = RETINA_STRIDES) -> list[tuple[int, int]]:
  """``(h, w)`` of the feature map at each stride, as the network produces them.

  Every stride-2 step in the network (the MobileNetV2 body's stem conv and stride-2 depthwise
  convs, odd kernel ``k`` with symmetric padding ``(k - 1) // 2``, and RetinaNet's extra
  P6/P7 3x3 stride-2 convs with padding 1) maps a size ``n`` to
  ``(n + 2 * ((k - 1) // 2) - k) // 2 + 1 = ceil(n / 2)``; a map at stride ``2**j`` has gone
  through ``j`` of them.  (A flax ``padding='SAME'`` stride-2 conv also gives ``ceil(n / 2)``.)
  ``strides`` must be powers of two.
  """
  out = []
  for s in strides:
    j = int(s).bit_length() - 1
    if s < 1 or 2 ** j != s:
      raise ValueError(f'stride {s} is not a power of two')
    h, w = input_hw
    for _ in range(j):
      h = ops.out_size(h, 3, 2, 1, 1)
      w = ops.out_size(w, 3, 2, 1, 1)
    out.append((int(h), int(w)))
  return out

"""Heatmaps -> joint coordinates, as SimpleBaseline decodes them (Xiao et al. 2018,
``lib/core/inference.py`` and ``lib/utils/transforms.py``; paper Sec. 4.3).

All functions take NHWC heatmaps ``(N, H, W, J)`` and are pure ``jax.numpy`` (jit-able, also on
batch-sharded arrays); coordinates are ``(x, y)``, 0-based.

* :func:`get_max_preds`: the argmax pixel of each heatmap and its value; a heatmap whose maximum
  is not positive gives ``(0, 0)`` (SimpleBaseline's ``pred_mask``).
* :func:`refine_quarter_pixel`: the quarter-pixel shift toward the higher neighbour in x and in y
  (``TEST.POST_PROCESS``), for argmaxes with ``1 < x < W - 1`` and ``1 < y < H - 1`` as
  SimpleBaseline writes the condition (so also not at x = 1 or y = 1).
* :func:`transform_preds`: heatmap coordinates -> full-image coordinates through the inverse of
  the crop transform ``get_affine_transform(center, scale, 0, (W, H))``
  (:mod:`fna_jax.tasks.pose.affine`), which without rotation is
  ``center + (p - (W/2, H/2)) * scale * 200 / W``.
* :func:`flip_back` and :func:`flip_test_average`: the flip test (``TEST.FLIP_TEST`` with
  ``TEST.SHIFT_HEATMAP``): the heatmaps of the mirrored image are mirrored back, left/right joints
  swapped, shifted one pixel to the right (column 0 kept) and averaged with the original ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fna_jax.tasks.pose import affine


def get_max_preds(heatmaps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(coords (N, J, 2) float32, maxvals (N, J, 1))`` of NHWC ``heatmaps``."""
  n, h, w, j = heatmaps.shape
  flat = jnp.moveaxis(heatmaps, -1, 1).reshape(n, j, h * w)
  idx = jnp.argmax(flat, axis=-1)
  maxvals = jnp.max(flat, axis=-1)[..., None]
  coords = jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
  return coords * (maxvals > 0).astype(jnp.float32), maxvals


def refine_quarter_pixel(heatmaps: jax.Array, coords: jax.Array) -> jax.Array:
  """``coords`` (argmax pixels, ``(N, J, 2)``) moved by ``0.25 * sign`` of the neighbour
  differences ``hm[y, x+1] - hm[y, x-1]`` and ``hm[y+1, x] - hm[y-1, x]``."""
  n, h, w, j = heatmaps.shape
  hm = jnp.moveaxis(heatmaps, -1, 1)                          # (N, J, H, W)
  px = jnp.floor(coords[..., 0] + 0.5).astype(jnp.int32)
  py = jnp.floor(coords[..., 1] + 0.5).astype(jnp.int32)
  inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)

  def at(y, x):
    y, x = jnp.clip(y, 0, h - 1), jnp.clip(x, 0, w - 1)
    return jnp.take_along_axis(hm.reshape(n, j, h * w), (y * w + x)[..., None], axis=-1)[..., 0]

  diff = jnp.stack([at(py, px + 1) - at(py, px - 1), at(py + 1, px) - at(py - 1, px)], -1)
  return coords + jnp.where(inside[..., None], jnp.sign(diff) * 0.25, 0.0)


def transform_preds(coords: jax.Array, center: jax.Array, scale: jax.Array,
                    heatmap_size: Sequence[int]) -> jax.Array:
  """Heatmap coordinates ``(N, J, 2)`` -> full image, for boxes ``center (N, 2)``, ``scale (N,)``
  (the inverse crop transform without rotation; ``heatmap_size = (H, W)``)."""
  h, w = heatmap_size
  factor = (scale.astype(jnp.float32) * affine.PIXEL_STD / w)[:, None, None]
  half = jnp.asarray([w * 0.5, h * 0.5], jnp.float32)
  return center.astype(jnp.float32)[:, None, :] + (coords - half) * factor


def get_final_preds(heatmaps, center, scale, post_process: bool = True):
  """``(full-image coords (N, J, 2), maxvals (N, J, 1))``: SimpleBaseline's ``get_final_preds``."""
  coords, maxvals = get_max_preds(heatmaps)
  if post_process:
    coords = refine_quarter_pixel(heatmaps, coords)
  return transform_preds(coords, center, scale, heatmaps.shape[1:3]), maxvals


def flip_back(heatmaps: jax.Array, flip_perm: Sequence[int]) -> jax.Array:
  """Heatmaps of a mirrored image mirrored back (width reversed) with left/right joints swapped
  (``flip_perm`` from :func:`fna_jax.tasks.pose.joints.flip_permutation`)."""
  return heatmaps[:, :, ::-1, :][..., jnp.asarray(flip_perm)]


def shift_heatmap(heatmaps: jax.Array) -> jax.Array:
  """One pixel to the right along the width, column 0 kept (SimpleBaseline's
  ``output_flipped[:, :, :, 1:] = output_flipped[:, :, :, 0:-1]``)."""
  return jnp.concatenate([heatmaps[:, :, :1], heatmaps[:, :, :-1]], axis=2)


def flip_test_average(heatmaps: jax.Array, flipped_heatmaps: jax.Array,
                      flip_perm: Sequence[int], shift: bool = True) -> jax.Array:
  """``(heatmaps + flip_back(flipped_heatmaps) [shifted]) / 2``; ``flipped_heatmaps`` are the
  network's heatmaps of the horizontally mirrored input."""
  back = flip_back(flipped_heatmaps, flip_perm)
  if shift:
    back = shift_heatmap(back)
  return (heatmaps + back) * 0.5

"""Bilinear resize of NHWC feature maps with aligned corners, as the authors' release upsamples.

The authors' segmentation code (TorchSeg) upsamples the logits to the input size with
``F.interpolate(..., mode='bilinear', align_corners=True)`` in training and evaluation; its crop
sizes of 16k + 1 pixels (769) are chosen for that rule, under which the output-stride-16 grid's
first and last samples land exactly on the first and last input pixels.  ``jax.image.resize``
samples half-pixel centres instead and has no align-corners mode: :func:`resize_bilinear` offers
both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per output index ``i``: the two input indices and the weight of the second one.

  Position ``p_i = i * (in - 1) / (out - 1)`` (``out == 1``: ``p = 0``); ``i0 = floor(p)``,
  ``i1 = min(i0 + 1, in - 1)``, weight of ``i1``: ``p - i0``.
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  pos = np.arange(out_size, dtype=np.float64) * scale
  i0 = np.minimum(np.floor(pos).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (pos - i0).astype(np.float32)


def _lerp_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  i0, i1, frac = _taps(in_size, out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac).reshape(shape)
  a, b = jnp.take(x, i0, axis=axis), jnp.take(x, i1, axis=axis)
  return a + (b - a) * frac


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize with aligned corners: ``(N, H, W, C) -> (N, h, w, C)``, ``size = (h, w)``.

  Output pixel ``i`` along an axis of ``in`` input and ``out`` output pixels samples the input at
  position ``i * (in - 1) / (out - 1)`` (``out == 1``: position 0), interpolating linearly between
  the two neighbouring input pixels; first and last pixels map onto each other.  This is
  ``torch.nn.functional.interpolate(x, size, mode='bilinear', align_corners=True)``, computed as a
  gather of the two neighbours and a lerp per axis (height, then width).  The indices and weights
  are fixed by the static shapes, so the function is jit-able and differentiable in ``x``.  The
  result has ``x``'s floating dtype (the interpolation weights are float32; lower-precision
  inputs are computed in float32 and cast back).
  """
  if x.ndim != 4:
    raise ValueError(f'x must be (N, H, W, C), got shape {x.shape}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'x must be a floating array, got {x.dtype}')
  h, w = (int(s) for s in size)
  if h <= 0 or w <= 0:
    raise ValueError(f'size must be positive, got {size}')
  dtype = x.dtype
  y = x.astype(jnp.promote_types(dtype, jnp.float32))
  y = _lerp_axis(_lerp_axis(y, 1, h), 2, w)
  return y.astype(dtype)


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """``(N, H, W, C) -> (N, h, w, C)`` bilinearly: aligned corners
  (:func:`resize_bilinear_align_corners`, the authors' release) or half-pixel centres
  (``jax.image.resize``, which antialiases when downsampling)."""
  if align_corners:
    return resize_bilinear_align_corners(x, size)
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, int(size[0]), int(size[1]), c), 'bilinear')

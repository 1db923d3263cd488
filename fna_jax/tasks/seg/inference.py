"""Inference for evaluation: the whole image at once, or sliding windows (paper Sec. 4.1.1).

The authors' release (TorchSeg's ``Evaluator.sliding_eval``, Cityscapes config ``eval_crop_size
769``, ``eval_stride_rate 2/3``, ``eval_scale_array [1]``, ``eval_flip False``) evaluates with
sliding 769x769 windows whose stride is 2/3 of the window, ``ceil(769 * 2/3) = 513`` pixels (the
rate is the stride as a fraction of the crop, not the overlap), adding up the class scores where
windows overlap.  Both functions take ``apply_fn``, a function of a batch of normalised images
``(n, h, w, 3)`` float32 to per-pixel class scores ``(n, h, w, C)`` at the input size, typically
a jitted ``lambda x: model.apply(variables, x, train=False)`` (logits) or its softmax.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[[jax.Array], jax.Array]


def predict_whole(apply_fn: ApplyFn, images: jax.Array) -> jax.Array:
  """Whole-image inference: ``apply_fn(images)``.

  Args:
    apply_fn: normalised images ``(N, H, W, 3)`` -> logits ``(N, H, W, C)``.
    images: ``(N, H, W, 3)`` float32 (ImageNet-normalised), numpy or jax (possibly sharded).

  Returns:
    The logits ``(N, H, W, C)`` as ``apply_fn`` returns them.
  """
  return apply_fn(images)


def sliding_stride(crop: int, stride_fraction: float) -> int:
  """Window stride in pixels: ``ceil(crop * stride_fraction)``, at least 1.

  ``stride_fraction`` is the stride as a fraction of the window side (the release's
  ``eval_stride_rate``): 769, 2/3 -> ``ceil(512.67) = 513``; windows then overlap by
  ``crop - stride`` pixels (256).
  """
  if not 0.0 < stride_fraction <= 1.0:
    raise ValueError(f'stride_fraction must be in (0, 1], got {stride_fraction}')
  if crop <= 0:
    raise ValueError(f'crop must be positive, got {crop}')
  # The small tolerance keeps an exact product (e.g. 10 * 0.5) from rounding up by float error.
  return max(1, math.ceil(crop * stride_fraction - 1e-9))


def window_starts(length: int, crop: int, stride: int) -> list[int]:
  """Start offsets of the windows along one axis of ``length`` pixels.

  Windows start every ``stride`` pixels; the last one ends at the border (``length - crop``),
  ``ceil((length - crop) / stride) + 1`` windows in all, as in the release (``s = i * stride``,
  ``e = min(s + crop, length)``, ``s = e - crop``).  An axis no longer than ``crop`` gets one
  window at 0 (the image is padded up to ``crop``).
  """
  if length <= crop:
    return [0]
  n = -(-(length - crop) // stride) + 1
  return [min(i * stride, length - crop) for i in range(n)]


@functools.partial(jax.jit, static_argnums=(3,))
def _window(images, y, x, crop):
  n, _, _, ch = images.shape
  return jax.lax.dynamic_slice(images, (0, y, x, 0), (n, crop, crop, ch))


@jax.jit
def _add_window(acc, logits, y, x):
  start = (0, y, x, 0)
  cur = jax.lax.dynamic_slice(acc, start, logits.shape)
  return jax.lax.dynamic_update_slice(acc, cur + logits.astype(acc.dtype), start)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _normalise(acc, inv_count, top, left, h, w):
  return acc[:, top:top + h, left:left + w, :] * inv_count[None, :, :, None]


def _zeros_like_sharded(shape, like: jax.Array) -> jax.Array:
  """float32 zeros of ``shape`` placed with ``like``'s sharding (same rank), else the default."""
  sharding = getattr(like, 'sharding', None)
  if sharding is not None:
    try:
      return jnp.zeros(shape, jnp.float32, device=sharding)
    except (ValueError, TypeError):  # e.g. a sharding of H or W that does not divide
      pass
  return jnp.zeros(shape, jnp.float32)


def sliding_window_logits(apply_fn: ApplyFn, image_batch: jax.Array, num_classes: int,
                          crop: int = 769, stride_fraction: float = 2 / 3) -> jax.Array:
  """Sliding-window inference: ``apply_fn``'s scores averaged over the windows covering a pixel.

  Windows are ``crop x crop`` with stride ``ceil(crop * stride_fraction)`` (513 for 769 and 2/3),
  the last one of each row and column aligned to the image border (:func:`window_starts`), so
  every pixel is covered; a 1024x2048 Cityscapes image gets 2 x 4 windows (rows at 0 and 255,
  columns at 0, 513, 1026 and 1279).  An image smaller than ``crop`` along an axis is zero-padded
  to ``crop`` on both sides of that axis, ``(crop - size) // 2`` before and the rest after (as
  the release's ``pad_image_to_shape``), and the padding is cut from the result.  The padding is
  0 in normalised units (the mean colour), as the release pads an image that fits in one window;
  where it slides several windows over an image smaller than the crop along one axis, it pads
  before normalising (black).  ``apply_fn`` is called once per window position on the whole
  batch, always with the shape ``(N, crop, crop, 3)`` (one compilation); the accumulation stays
  on the device and follows the sharding of ``image_batch`` (e.g. batch-sharded over a mesh).
  The release adds the windows' scores without dividing by the count; per pixel that is the
  average times a positive count, so both give the same argmax.

  Args:
    apply_fn: ``(n, crop, crop, 3)`` -> scores ``(n, crop, crop, num_classes)`` (logits, or
      probabilities as the release adds).
    image_batch: ``(N, H, W, 3)`` float32 normalised images.
    num_classes: C, the scores' last dimension.
    crop: window side in pixels.
    stride_fraction: window stride as a fraction of ``crop``, in (0, 1].

  Returns:
    float32 ``(N, H, W, C)`` averaged scores.
  """
  images = jnp.asarray(image_batch)
  if images.ndim != 4:
    raise ValueError(f'image_batch must be (N, H, W, C), got shape {images.shape}')
  n, h, w, _ = images.shape
  stride = sliding_stride(crop, stride_fraction)
  hp, wp = max(h, crop), max(w, crop)
  top, left = (hp - h) // 2, (wp - w) // 2
  if (hp, wp) != (h, w):
    images = jnp.pad(images, ((0, 0), (top, hp - h - top), (left, wp - w - left), (0, 0)))
  ys, xs = window_starts(hp, crop, stride), window_starts(wp, crop, stride)
  count = np.zeros((hp, wp), np.float32)
  acc = None
  for y in ys:
    for x in xs:
      logits = apply_fn(_window(images, y, x, crop))
      if tuple(logits.shape) != (n, crop, crop, num_classes):
        raise ValueError(f'apply_fn returned logits of shape {tuple(logits.shape)} for windows '
                         f'of shape {(n, crop, crop)}; expected {(n, crop, crop, num_classes)}')
      if acc is None:
        acc = _zeros_like_sharded((n, hp, wp, num_classes), logits)
      acc = _add_window(acc, logits, y, x)
      count[y:y + crop, x:x + crop] += 1
  inv = jnp.asarray(1.0 / count[top:top + h, left:left + w])
  return _normalise(acc, inv, top, left, h, w)

"""Per-example numpy transforms for segmentation (image + label pairs).

Conventions: ``image`` is ``uint8`` ``(H, W, 3)`` (RGB), ``label`` is ``uint8`` ``(H, W)`` with 255
as the ignore label.  Every random transform takes ``rng``, an ``np.random.Generator`` (consumed) or
an int seed, and is a deterministic function of its inputs and that generator's state or seed.
Sizes are ``(height, width)`` in pixels.

Used by :mod:`fna_jax.data.pipeline`:

* search (paper Sec. 4.1.1): :func:`resize` to 512x1024, :func:`random_crop`
  321x321, :func:`random_flip`, :func:`normalize`;
* fine-tuning (paper Sec. 4.1.1): :func:`random_scale` with :data:`FINETUNE_SCALES`, crop 769x769,
  flip, normalize.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

IGNORE_LABEL = 255
# torchvision's ImageNet statistics, on the [0, 1] scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Random scales of the parameter-adaptation (fine-tuning) stage, paper Sec. 4.1.1.
FINETUNE_SCALES = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _hw(size: int | Sequence[int], what: str) -> tuple[int, int]:
  """``size`` as a (height, width) pair of positive ints."""
  if isinstance(size, (int, np.integer)):
    h = w = int(size)
  else:
    size = tuple(size)
    if len(size) != 2:
      raise ValueError(f'{what} must be an int or a (height, width) pair, got {size!r}')
    h, w = int(size[0]), int(size[1])
  if h <= 0 or w <= 0:
    raise ValueError(f'{what} must be positive, got {(h, w)}')
  return h, w


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if isinstance(rng, (int, np.integer)):
    return np.random.default_rng(int(rng))
  raise TypeError(f'rng must be a np.random.Generator or an int seed, got {type(rng).__name__}')


def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
  if image.ndim != 3:
    raise ValueError(f'image must be (H, W, C), got shape {image.shape}')
  if label is not None and label.shape != image.shape[:2]:
    raise ValueError(f'label shape {label.shape} does not match image shape {image.shape[:2]}')


def resize(image: np.ndarray, label: np.ndarray | None,
           size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
  """Resizes an image (bilinear) and its label (nearest neighbour).

  The image goes through PIL's bilinear filter, which is antialiased when shrinking (its support
  widens with the scale factor); the label uses nearest neighbour, so it only ever holds values of
  the input label (255 included).

  Args:
    image: uint8 (H, W, 3).
    label: uint8 (H, W), or None.
    size: target (height, width) in pixels, or one int for both.

  Returns:
    (image uint8 (h, w, 3), label uint8 (h, w) or None).
  """
  _check_pair(image, label)
  h, w = _hw(size, 'resize size')
  if image.shape[:2] == (h, w):
    return image, label
  out = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h),
                                                                       Image.Resampling.BILINEAR))
  if label is not None:
    label = np.asarray(Image.fromarray(np.ascontiguousarray(label)).resize(
        (w, h), Image.Resampling.NEAREST))
  return out, label


def random_scale(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator | int,
                 scales: Sequence[float] = FINETUNE_SCALES
                 ) -> tuple[np.ndarray, np.ndarray | None]:
  """Rescales by a factor drawn uniformly from ``scales`` (image bilinear, label nearest).

  Args:
    image: uint8 (H, W, 3).
    label: uint8 (H, W), or None.
    rng: the generator (one draw) or a seed.
    scales: candidate factors; the output is ``(round(H * s), round(W * s))``.

  Returns:
    (image, label) rescaled.
  """
  scales = tuple(float(s) for s in scales)
  if not scales or min(scales) <= 0:
    raise ValueError(f'scales must be a non-empty sequence of positive factors, got {scales}')
  s = scales[int(_as_rng(rng).integers(len(scales)))]
  h, w = image.shape[:2]
  return resize(image, label, (max(1, round(h * s)), max(1, round(w * s))))


def pad_to(image: np.ndarray, label: np.ndarray | None, size: int | Sequence[int],
           pad_label: int = IGNORE_LABEL) -> tuple[np.ndarray, np.ndarray | None]:
  """Pads at the bottom and right to at least ``size``: image with 0, label with ``pad_label``.

  Args:
    image: (H, W, C).
    label: (H, W), or None.
    size: minimum (height, width).
    pad_label: label value of padded pixels.

  Returns:
    (image, label) of shape (max(H, h), max(W, w)).
  """
  _check_pair(image, label)
  h, w = _hw(size, 'pad size')
  ph, pw = max(h - image.shape[0], 0), max(w - image.shape[1], 0)
  if ph == 0 and pw == 0:
    return image, label
  image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
  if label is not None:
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=pad_label)
  return image, label


def random_crop(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator | int,
                crop_size: int | Sequence[int], pad_label: int = IGNORE_LABEL
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """Crops a random window of ``crop_size``, padding first when the image is smaller.

  Padding (bottom and right) fills the image with 0 and the label with ``pad_label`` (ignored by
  the loss).  The window's top-left corner is uniform over all positions.

  Args:
    image: (H, W, C).
    label: (H, W), or None.
    rng: the generator (two draws) or a seed.
    crop_size: (height, width) of the window, or one int for both.
    pad_label: label value of padded pixels.

  Returns:
    (image (h, w, C), label (h, w) or None).
  """
  h, w = _hw(crop_size, 'crop_size')
  rng = _as_rng(rng)
  image, label = pad_to(image, label, (h, w), pad_label)
  y = int(rng.integers(image.shape[0] - h + 1))
  x = int(rng.integers(image.shape[1] - w + 1))
  image = image[y:y + h, x:x + w]
  if label is not None:
    label = label[y:y + h, x:x + w]
  return image, label


def _pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source indices PIL's NEAREST resize reads for ``n_in -> n_out`` pixels along one axis.

  PIL (``Geometry.c``, affine transform with the nearest filter) starts at ``scale / 2`` and adds
  ``scale = n_in / n_out`` in double precision for every output pixel, truncating; summing the
  same way (``np.cumsum`` is sequential) gives exactly its indices, which the closed form
  ``floor((i + 0.5) * scale)`` does not where the sum rounds below an integer.
  """
  scale = n_in / n_out
  pos = np.cumsum(np.concatenate([[scale * 0.5], np.full(n_out - 1, scale)]))
  return np.minimum(pos.astype(np.int64), n_in - 1)


def random_scale_crop(image: np.ndarray, label: np.ndarray | None,
                      rng: np.random.Generator | int, scales: Sequence[float],
                      crop_size: int | Sequence[int], pad_label: int = IGNORE_LABEL
                      ) -> tuple[np.ndarray, np.ndarray | None]:
  """:func:`random_scale` then :func:`random_crop`, computing only the crop.

  The same random draws give the same window: the scale factor ``s``, then the window's corner in
  the rescaled (and padded) frame.  Only the source region under the window is resized (PIL's
  ``resize(box=...)`` with the full frame's scale, so every output pixel samples the same
  source positions with the same filter as the full resize), instead of the whole frame: at the
  fine-tuning scales up to 2.0 a 1024x2048 Cityscapes frame would first become 2048x4096.
  Labels are gathered with PIL's own nearest-neighbour indices (:func:`_pil_nearest_indices`):
  exactly equal to the full resize's.  Images: equal up to 2 intensity levels (PIL rounds its
  filter coefficients for a box from the box's origin).

  Args:
    image: uint8 (H, W, 3).
    label: uint8 (H, W), or None.
    rng: the generator (three draws) or a seed.
    scales: candidate factors; the rescaled frame is ``(round(H * s), round(W * s))``.
    crop_size: (height, width) of the window, or one int for both.
    pad_label: label value of padded pixels (the image is padded with 0).

  Returns:
    (image (h, w, 3), label (h, w) or None).
  """
  _check_pair(image, label)
  scales = tuple(float(s) for s in scales)
  if not scales or min(scales) <= 0:
    raise ValueError(f'scales must be a non-empty sequence of positive factors, got {scales}')
  rng = _as_rng(rng)
  s = scales[int(rng.integers(len(scales)))]
  h_in, w_in = image.shape[:2]
  hs, ws = max(1, round(h_in * s)), max(1, round(w_in * s))
  h, w = _hw(crop_size, 'crop_size')
  y = int(rng.integers(max(hs, h) - h + 1))
  x = int(rng.integers(max(ws, w) - w + 1))
  y1, x1 = min(y + h, hs), min(x + w, ws)
  if (hs, ws) == (h_in, w_in):
    image = image[y:y1, x:x1]
    if label is not None:
      label = label[y:y1, x:x1]
  else:
    box = (x * w_in / ws, y * h_in / hs, x1 * w_in / ws, y1 * h_in / hs)
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
        (x1 - x, y1 - y), Image.Resampling.BILINEAR, box=box))
    if label is not None:
      rows = _pil_nearest_indices(h_in, hs)[y:y1]
      cols = _pil_nearest_indices(w_in, ws)[x:x1]
      label = label[rows[:, None], cols[None, :]]
  return pad_to(image, label, (h, w), pad_label)


def random_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator | int,
                prob: float = 0.5) -> tuple[np.ndarray, np.ndarray | None]:
  """Flips image and label left-right together with probability ``prob`` (one draw)."""
  _check_pair(image, label)
  if _as_rng(rng).random() < prob:
    image = image[:, ::-1]
    if label is not None:
      label = label[:, ::-1]
  return image, label


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 ``(image / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per channel.

  Args:
    image: uint8 (..., 3).

  Returns:
    float32, same shape.
  """
  if image.shape[-1] != 3:
    raise ValueError(f'normalize expects RGB images (..., 3), got shape {image.shape}')
  mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
  inv_std = 1.0 / (np.asarray(IMAGENET_STD, np.float32) * 255)
  return (image.astype(np.float32) - mean) * inv_std


def unnormalize(image) -> np.ndarray:
  """Undoes :func:`normalize`: float32 -> uint8 RGB (rounded, clipped).

  Args:
    image: ``(..., 3)`` float ImageNet-normalised, or already uint8 (returned as is).

  Returns:
    uint8 ``(..., 3)``.
  """
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  mean = np.asarray(IMAGENET_MEAN, np.float64) * 255
  std = np.asarray(IMAGENET_STD, np.float64) * 255
  return np.clip(np.rint(image.astype(np.float64) * std + mean), 0, 255).astype(np.uint8)

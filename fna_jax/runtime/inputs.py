"""The images a network is fed from a training batch: uint8 normalised on the device.

Training pipelines send images as ``uint8`` RGB (a quarter of the bytes of float32) and every
jitted function that feeds a network from a training batch (the train step of
:mod:`fna_jax.runtime.steps`, the search's weight and arch steps, BatchNorm recalibration, the
random search's scoring) calls :func:`model_images`, which normalises them inside the step
exactly as the host's :func:`fna_jax.data.transforms.normalize` does (torchvision's ImageNet
statistics, the normalisation of the seed networks' ImageNet training, paper Sec. 4.1.1; same
float32 constants, same order of operations).  Float images (evaluation pipelines, callers that
normalise on the host) are used as they are.

Padding in normalised units.  MMDetection v1 pads the *normalised* image with 0 (paper
Sec. 4.2.1 trains RetinaNet with MMDetection); a uint8 batch cannot carry that value, so a batch
with a :data:`VALID_HW` entry (``int32 (B, 2)``: the rows and columns of each image before
padding at the bottom and right) gets 0 outside that extent after normalising.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.data import transforms as T
from fna_jax.runtime import precision

VALID_HW = 'input_hw'  # batch key: int32 (B, 2) image extent before bottom/right padding

# The constants of transforms.normalize, computed the same way (float32).
_MEAN = np.asarray(T.IMAGENET_MEAN, np.float32) * 255
_INV_STD = 1.0 / (np.asarray(T.IMAGENET_STD, np.float32) * 255)


def normalize_images(images: jax.Array, valid_hw: jax.Array | None = None) -> jax.Array:
  """uint8 ``(B, H, W, 3)`` -> float32 ``(x - 255 mean) * (1 / (255 std))`` per channel.

  ``valid_hw``: optional int32 ``(B, 2)``; pixels at row ``>= valid_hw[b, 0]`` or column
  ``>= valid_hw[b, 1]`` of image ``b`` are set to 0 after normalising (two iota compares).
  """
  x = (images.astype(jnp.float32) - _MEAN) * _INV_STD
  if valid_hw is not None:
    _, h, w, _ = images.shape
    hw = jnp.asarray(valid_hw, jnp.int32)
    rows = jax.lax.broadcasted_iota(jnp.int32, (1, h, 1, 1), 1) < hw[:, 0, None, None, None]
    cols = jax.lax.broadcasted_iota(jnp.int32, (1, 1, w, 1), 2) < hw[:, 1, None, None, None]
    x = jnp.where(rows & cols, x, 0.0)
  return x


def model_images(batch: Mapping[str, Any], compute_dtype=None) -> jax.Array:
  """The network input of a training ``batch`` (``{'image': (B, H, W, 3), ...}``).

  uint8 images are normalised (:func:`normalize_images`, masked by ``batch[VALID_HW]`` when the
  batch has one); floating-point images are taken as they are (already normalised on the host).
  Then cast to ``compute_dtype`` (:func:`fna_jax.runtime.precision.cast_floats`; None keeps
  float32).  Any other dtype is an error.
  """
  images = batch['image']
  dtype = jnp.asarray(images).dtype if not hasattr(images, 'dtype') else images.dtype
  if dtype == jnp.uint8:
    images = normalize_images(images, batch.get(VALID_HW))
  elif not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"batch['image'] must be uint8 (normalised here) or floating point "
                    f'(already normalised), got {dtype}')
  return precision.cast_floats(images, compute_dtype)

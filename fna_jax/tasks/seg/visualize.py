"""Colour label maps and write input / ground truth / prediction images side by side."""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image

from fna_jax.data import transforms as _transforms
from fna_jax.data.transforms import IGNORE_LABEL

IGNORE_COLOUR = (0, 0, 0)

# Official Cityscapes colours of the 19 train ids (cityscapesscripts/helpers/labels.py), uint8 RGB.
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),  # traffic light
    (220, 220, 0),  # traffic sign
    (107, 142, 35),  # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),  # sky
    (220, 20, 60),  # person
    (255, 0, 0),  # rider
    (0, 0, 142),  # car
    (0, 0, 70),  # truck
    (0, 60, 100),  # bus
    (0, 80, 100),  # train
    (0, 0, 230),  # motorcycle
    (119, 11, 32),  # bicycle
], np.uint8)
CITYSCAPES_PALETTE.setflags(write=False)


def demo_palette() -> np.ndarray:
  """uint8 ``(6, 3)`` RGB colours of the demo classes (:data:`fna_jax.data.demo.CLASS_NAMES`).

  Background is mid grey; shape class ``c`` (1..5) is the fully saturated colour of its preferred
  hue ``(c - 1) / 5`` in the demo's renderer (disc red, square yellow-green, triangle green,
  ring blue, cross magenta).
  """
  colours = [(110, 110, 110)]
  for c in range(1, 6):
    r, g, b = colorsys.hsv_to_rgb((c - 1) / 5, 1.0, 0.9)
    colours.append((round(255 * r), round(255 * g), round(255 * b)))
  return np.array(colours, np.uint8)


DEMO_PALETTE = demo_palette()
DEMO_PALETTE.setflags(write=False)


def colorize(label_map, palette) -> np.ndarray:
  """Colours a label map: class ``k`` -> ``palette[k]``; 255 and other unknown values -> black.

  Args:
    label_map: integer ``(..., H, W)`` (numpy or jax).
    palette: ``(K, 3)`` RGB colours in 0..255.

  Returns:
    uint8 ``(..., H, W, 3)``.
  """
  label_map = np.asarray(label_map)
  if not np.issubdtype(label_map.dtype, np.integer):
    raise TypeError(f'label_map must hold integers, got dtype {label_map.dtype}')
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] > IGNORE_LABEL:
    raise ValueError(f'palette must be (K, 3) with K < 255, got shape {palette.shape}')
  lut = np.zeros((IGNORE_LABEL + 1, 3), np.uint8)
  lut[:] = IGNORE_COLOUR
  lut[:palette.shape[0]] = np.clip(palette, 0, 255).astype(np.uint8)
  inside = (label_map >= 0) & (label_map < palette.shape[0])
  return lut[np.where(inside, label_map, IGNORE_LABEL).astype(np.intp)]


def save_triptych(path, image, label, pred, palette) -> np.ndarray:
  """Writes one PNG: input image, coloured ground truth, coloured prediction, left to right.

  Args:
    path: output file (``.png``); missing parent folders are created.
    image: ``(H, W, 3)`` ImageNet-normalised float (as the pipelines yield) or uint8 RGB.
    label: ``(H, W)`` integer ground truth (255 shown black).
    pred: ``(H, W)`` integer predicted classes.
    palette: ``(K, 3)`` RGB, e.g. :data:`CITYSCAPES_PALETTE` or :data:`DEMO_PALETTE`.

  Returns:
    The written image, uint8 ``(H, 3 W, 3)``.
  """
  rgb = _transforms.unnormalize(image)
  label, pred = np.asarray(label), np.asarray(pred)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f'image must be (H, W, 3), got shape {rgb.shape}')
  if label.shape != rgb.shape[:2] or pred.shape != rgb.shape[:2]:
    raise ValueError(f'image {rgb.shape[:2]}, label {label.shape} and pred {pred.shape} must '
                     'share (H, W)')
  out = np.concatenate([rgb, colorize(label, palette), colorize(pred, palette)], axis=1)
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(out).save(path, format='PNG')
  return out

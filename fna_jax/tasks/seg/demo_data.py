"""The embedded demo segmentation set: generated shapes on cluttered backgrounds.

Images and labels are drawn by :mod:`fna_jax.data.demo` (see its docstring for what the images look
like and why colour alone does not segment them): 3 to 7 shapes of 5 classes over background
(class 0), labels 255 (ignore) on a thin band along each visible outline.  Example ``i`` of a split
is a pure function of ``(seed, split, i)``; no download.
"""

from __future__ import annotations

import numpy as np

from fna_jax.data import demo
from fna_jax.data.transforms import IGNORE_LABEL
from fna_jax.tasks.seg.visualize import DEMO_PALETTE


def generate_segmentation_example(rng: np.random.Generator,
                                  image_size: int = 64) -> dict[str, np.ndarray]:
  """Draws one segmentation example from ``rng``.

  Args:
    rng: the example's generator (consumed).
    image_size: side S of the square image, pixels (at least 16).

  Returns:
    ``{'image': uint8 (S, S, 3), 'label': uint8 (S, S)}``, labels in {0..5, 255}.
  """
  if image_size < 16:
    raise ValueError(f'image_size must be at least 16, got {image_size}')
  yy, xx = demo.grid(image_size)
  image = demo.background(rng, image_size, yy, xx)
  label = np.zeros((image_size, image_size), np.uint8)
  for _ in range(rng.integers(3, 8)):
    cls = int(rng.integers(1, demo.NUM_CLASSES))
    r = rng.uniform(0.12, 0.24) * image_size * demo.SIZE_FACTOR[cls]
    cy, cx = rng.uniform(0.1, 0.9, size=2) * image_size
    demo.draw_shape(image, label, rng, cls, cy, cx, r, yy, xx)
  return {'image': demo.finish(image, rng), 'label': label}



class DemoSegmentation(demo.DemoSource):
  """Synthetic shapes segmentation (see the module docstring).

  ``ds[i]`` is ``{'image': uint8 (S, S, 3), 'label': uint8 (S, S)}`` with labels in
  ``{0, ..., NUM_CLASSES - 1, 255}``; a pure function of ``(seed, split, i)``.

  Args:
    split: ``'train'``, ``'val'`` (alias ``'validation'``) or ``'test'``; splits hold different
      images.
    num_examples: length of the split.
    image_size: side S of the square images, pixels.
    seed: base seed of the whole dataset.
  """

  NUM_CLASSES = demo.NUM_CLASSES
  CLASS_NAMES = demo.CLASS_NAMES
  IGNORE_LABEL = IGNORE_LABEL
  PALETTE = DEMO_PALETTE

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return generate_segmentation_example(self._rng(index), self.image_size)

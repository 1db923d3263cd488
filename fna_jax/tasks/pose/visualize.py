"""Pictures of predicted skeletons next to the ground truth (paper Sec. 4.3's pose results)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from fna_jax.data import transforms as _transforms
from fna_jax.tasks.pose.joints import SKELETON

GT_COLOUR = (40, 220, 40)
PRED_COLOUR = (240, 40, 40)


def draw_skeleton(image, joints, visible=None, colour=PRED_COLOUR, skeleton=SKELETON,
                  radius: int = 2) -> np.ndarray:
  """uint8 ``(H, W, 3)`` ``image`` with the limbs of ``skeleton`` and the joints ``(J, 2)`` drawn;
  joints with ``visible == 0`` (and limbs touching them) are left out."""
  img = Image.fromarray(_transforms.unnormalize(image).copy())
  draw = ImageDraw.Draw(img)
  joints = np.asarray(joints, np.float64)
  vis = np.ones(len(joints), bool) if visible is None else np.asarray(visible) > 0
  for a, b in skeleton:
    if vis[a] and vis[b]:
      draw.line([tuple(joints[a]), tuple(joints[b])], fill=colour, width=2)
  for (x, y), v in zip(joints, vis):
    if v:
      draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
  return np.asarray(img)


def save_pose_pair(path, image, gt_joints, gt_visible, pred_joints) -> np.ndarray:
  """Writes one PNG: the crop with the ground-truth skeleton | with the predicted one.

  Args:
    image: ``(H, W, 3)`` ImageNet-normalised float (the evaluation crop) or uint8.
    gt_joints, pred_joints: ``(J, 2)`` in the crop's pixel coordinates.
    gt_visible: ``(J,)`` 1 for annotated joints (predictions are all drawn).
  """
  out = np.concatenate([draw_skeleton(image, gt_joints, gt_visible, GT_COLOUR),
                        draw_skeleton(image, pred_joints, None, PRED_COLOUR)], axis=1)
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(out).save(path, format='PNG')
  return out

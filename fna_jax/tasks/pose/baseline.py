"""The trivial baseline a pose network must beat: the mean pose.

Every person of the validation set is predicted as the training set's mean pose, placed by the
person's centre and scale (the same box the network sees: SimpleBaseline's crop of side
``scale * 200`` px): the mean is taken over the training people's visible joints in crop
coordinates, and mapped back to each validation person's image as a network's heatmap argmax is
(:func:`fna_jax.tasks.pose.affine.transform_preds`).  Its PCKh is what "knowing where people
usually are" scores without looking at the image.
"""

from __future__ import annotations

import numpy as np

from fna_jax.tasks.pose import affine, metrics

_CROP = (256, 256)  # any fixed crop: the mean pose is scale-free in crop coordinates


def mean_pose(train_source, indices=None) -> np.ndarray:
  """``(J, 2)`` the mean over the people in ``train_source`` of each visible joint's position in
  their crop (``x, y`` in a 256x256 crop)."""
  indices = range(len(train_source)) if indices is None else indices
  total, count = None, None
  for i in indices:
    e = train_source[i]
    t = affine.get_affine_transform(e['center'], e['scale'], 0, _CROP)
    xy = affine.affine_transform(np.asarray(e['joints'], np.float64), t)
    vis = np.asarray(e['visible'], np.float64)[:, None]
    total = xy * vis if total is None else total + xy * vis
    count = vis if count is None else count + vis
  return total / np.maximum(count, 1)


def mean_pose_pckh(train_source, val_source) -> dict:
  """SimpleBaseline's PCKh table (:func:`fna_jax.tasks.pose.metrics.evaluate_pckh`) of the mean
  pose on ``val_source``."""
  mean = mean_pose(train_source)
  preds, joints, visible, boxes = [], [], [], []
  for i in range(len(val_source)):
    e = val_source[i]
    preds.append(affine.transform_preds(mean, e['center'], e['scale'], _CROP))
    joints.append(e['joints'])
    visible.append(e['visible'])
    boxes.append(e['headbox'])
  return metrics.evaluate_pckh(np.stack(preds), np.stack(joints), np.stack(visible),
                               np.stack(boxes))

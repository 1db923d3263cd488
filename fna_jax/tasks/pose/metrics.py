"""PCKh on MPII as SimpleBaseline computes it (Xiao et al. 2018, ``MPIIDataset.evaluate`` in
``lib/dataset/mpii.py``; paper Sec. 4.3 and Tab. 6 report PCKh@0.5).

A joint is correct when its distance to the ground truth, divided by the person's head size, is
at most the threshold; the head size is ``0.6`` (``SC_BIAS``) times the length of the head box's
diagonal.  Only annotated joints count (``visible``: MPII's ``1 - jnt_missing``).

* per joint: ``100 * correct / annotated``;
* ``'Mean'``: the per-joint values weighted by each joint's number of annotated examples, pelvis
  and thorax (joints 6 and 7) left out, as SimpleBaseline's masked ``jnt_ratio``;
* ``'Mean@0.1'``: the same mean of the PCKh curve at ``np.arange(0, 0.51, 0.01)[11]``: that is
  threshold **0.11**, exactly what SimpleBaseline reports under this name (its ``pckAll[11, :]``);
* groups: Head (head top), Shoulder, Elbow, Wrist, Hip, Knee, Ankle (mean of left and right).

One difference, for tiny validation sets: a joint with no annotated example has PCKh ``nan`` (as
SimpleBaseline) but adds nothing to the means (SimpleBaseline's would be ``nan``).

Coordinates are 0-based here on both sides (SimpleBaseline adds 1 to its predictions to compare
them with the 1-based ``gt_valid.mat``: the distances are the same).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fna_jax.tasks.pose.joints import JOINT_NAMES

SC_BIAS = 0.6
THRESHOLD = 0.5
EXCLUDED = (6, 7)  # pelvis, thorax: left out of the means, as SimpleBaseline
# SimpleBaseline's "Mean@0.1": pckAll[11] of rng = np.arange(0, 0.5 + 0.01, 0.01), i.e. 0.11.
LOW_THRESHOLD = float(np.arange(0, 0.5 + 0.01, 0.01)[11])
# (name, right joint, left joint) of SimpleBaseline's table; Head is the head top alone.
GROUPS = (('Shoulder', 12, 13), ('Elbow', 11, 14), ('Wrist', 10, 15), ('Hip', 2, 3),
          ('Knee', 1, 4), ('Ankle', 0, 5))
HEAD = 9


def head_sizes(headboxes) -> np.ndarray:
  """``SC_BIAS * |x2y2 - x1y1|`` of head boxes ``(N, 2, 2)`` ``[[x1, y1], [x2, y2]]`` -> ``(N,)``."""
  hb = np.asarray(headboxes, np.float64)
  return SC_BIAS * np.linalg.norm(hb[:, 1] - hb[:, 0], axis=-1)


def scaled_errors(preds, joints, headboxes) -> np.ndarray:
  """Distances ``(N, J)`` between predicted and true joints ``(N, J, 2)`` over the head size."""
  err = np.linalg.norm(np.asarray(preds, np.float64) - np.asarray(joints, np.float64), axis=-1)
  return err / head_sizes(headboxes)[:, None]


def pckh_per_joint(preds, joints, visible, headboxes, threshold: float = THRESHOLD):
  """``(pckh (J,) in percent, counts (J,))``: SimpleBaseline's per-joint PCKh and joint counts."""
  vis = np.asarray(visible, np.float64)
  scaled = scaled_errors(preds, joints, headboxes) * vis
  counts = vis.sum(axis=0)
  correct = ((scaled <= threshold) * vis).sum(axis=0)
  with np.errstate(divide='ignore', invalid='ignore'):
    return 100.0 * correct / counts, counts


def weighted_mean(pckh, counts, excluded=EXCLUDED) -> float:
  """SimpleBaseline's ``'Mean'``: ``sum_j pckh_j * count_j / sum_j count_j`` over the joints
  not in ``excluded`` (joints without examples add nothing)."""
  keep = np.ones(len(pckh), bool)
  keep[list(excluded)] = False
  keep &= counts > 0
  total = counts[keep].sum()
  return float(np.sum(pckh[keep] * counts[keep]) / total) if total > 0 else float('nan')


def evaluate_pckh(preds, joints, visible, headboxes,
                  joint_names=JOINT_NAMES) -> 'OrderedDict[str, float]':
  """SimpleBaseline's MPII table: Head ... Ankle, ``'Mean'`` (PCKh@0.5), ``'Mean@0.1'`` (at
  0.11, see the module docstring), then every joint by name; all in percent.

  Args:
    preds, joints: ``(N, J, 2)`` predicted and true ``(x, y)`` in full-image pixels.
    visible: ``(N, J)`` 1 for annotated joints.
    headboxes: ``(N, 2, 2)`` head boxes.
  """
  pckh, counts = pckh_per_joint(preds, joints, visible, headboxes, THRESHOLD)
  low, _ = pckh_per_joint(preds, joints, visible, headboxes, LOW_THRESHOLD)
  out = OrderedDict([('Head', float(pckh[HEAD]))])
  for name, r, l in GROUPS:
    out[name] = float(0.5 * (pckh[r] + pckh[l]))
  out['Mean'] = weighted_mean(pckh, counts)
  out['Mean@0.1'] = weighted_mean(low, counts)
  for name, v in zip(joint_names, pckh):
    out[name] = float(v)
  return out


def format_pckh_table(result, joint_counts=None) -> str:
  """SimpleBaseline's table (groups, Mean, Mean@0.1), then per joint; percent, 2 decimals."""
  keys = ['Head'] + [g[0] for g in GROUPS] + ['Mean', 'Mean@0.1']
  lines = [' | '.join(f'{k:>8}' for k in keys),
           ' | '.join(f'{result[k]:8.2f}' for k in keys), '']
  width = max(len(n) for n in JOINT_NAMES)
  lines.append(f'{"joint":<{width}}  {"PCKh@0.5":>8}' + ('  count' if joint_counts is not None
                                                          else ''))
  for j, name in enumerate(JOINT_NAMES):
    v = result.get(name, float('nan'))
    line = f'{name:<{width}}  {"n/a" if np.isnan(v) else f"{v:.2f}":>8}'
    if joint_counts is not None:
      line += f'  {int(joint_counts[j])}'
    lines.append(line)
  return '\n'.join(lines)

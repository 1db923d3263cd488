"""MPII's 16 joints (paper Sec. 4.3; the order of SimpleBaseline's MPII loader, Xiao et al. 2018).

* :data:`JOINT_NAMES`: the joint order of every ``(..., 16, 2)`` array and heatmap channel;
* :data:`FLIP_PAIRS`: left/right joints swapped by a horizontal flip (SimpleBaseline's
  ``MPIIDataset.flip_pairs``);
* :data:`SKELETON`: limbs (pairs of joints) for drawing.
"""

from __future__ import annotations

JOINT_NAMES: tuple[str, ...] = (
    'r_ankle', 'r_knee', 'r_hip', 'l_hip', 'l_knee', 'l_ankle', 'pelvis', 'thorax', 'upper_neck',
    'head_top', 'r_wrist', 'r_elbow', 'r_shoulder', 'l_shoulder', 'l_elbow', 'l_wrist')
NUM_JOINTS = len(JOINT_NAMES)

FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))

SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5),          # right leg, pelvis, left leg
    (6, 7), (7, 8), (8, 9),                                   # spine, neck, head
    (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15))  # right arm, left arm


def flip_permutation(num_joints: int = NUM_JOINTS,
                     pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS) -> tuple[int, ...]:
  """``perm`` with ``flipped[..., j] = original[..., perm[j]]``: each pair swapped, the rest kept."""
  perm = list(range(num_joints))
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return tuple(perm)

"""The 16 MPII joints: names in MPII's order, left/right flip pairs and the limbs of a skeleton.

The order, the flip pairs and the limbs (each joint to its parent, SimpleBaseline's
``MPIIDataset.parent_ids``) are those of the SimpleBaseline code (Xiao et al. 2018, the paper's
reference [10]) that the paper's pose experiments (Sec. 4.3, Tab. 6) follow.
"""

from __future__ import annotations

NUM_JOINTS = 16

JOINT_NAMES = ('r_ankle', 'r_knee', 'r_hip', 'l_hip', 'l_knee', 'l_ankle', 'pelvis', 'thorax',
               'upper_neck', 'head_top', 'r_wrist', 'r_elbow', 'r_shoulder', 'l_shoulder',
               'l_elbow', 'l_wrist')

# (right, left) pairs swapped by a horizontal flip.
FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))

# SimpleBaseline's parent of every joint (the pelvis is its own parent).
PARENT_IDS = (1, 2, 6, 6, 3, 4, 6, 6, 7, 8, 11, 12, 7, 7, 13, 14)

# Limbs for drawing: (joint, parent) for every joint but the root.
SKELETON = tuple((j, p) for j, p in enumerate(PARENT_IDS) if j != p)


def flip_permutation(num_joints: int = NUM_JOINTS,
                     pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS) -> tuple[int, ...]:
  """``perm`` with ``perm[j]`` the joint that ``j`` becomes under a horizontal flip (so also
  ``flipped[..., j] = original[..., perm[j]]``: each pair swapped, the rest kept)."""
  perm = list(range(num_joints))
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return tuple(perm)

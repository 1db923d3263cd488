"""The embedded demo pose set: generated articulated figures with the 16 MPII joints.

Each image holds one stick-and-ellipse person over the cluttered background of
:mod:`fna_jax.data.demo` (colour field, grating, soft blobs) plus a few distractor limbs.  The
person is drawn from a skeleton in MPII's joint order (:mod:`~fna_jax.tasks.pose.joints`): a
torso (pelvis -> thorax) at a random lean, hips and shoulders at fixed lateral offsets, legs,
arms, neck and head with limb lengths in body proportions (each foreshortened by a random
factor) and joint angles sampled in plausible ranges (hips -40..40 degrees off the torso axis
with the knee bending 0..80, arms anywhere in -150..150 with the elbow bending -130..130).

Left and right.  As in MPII, they are the person's sides: facing the camera (70% of the images)
the person's right limbs lie on the image's left.  A facing person shows a face (skin-coloured
head with two eyes) and a light chest stripe; a person seen from the back shows a hair-coloured
head and no stripe.  This cue is consistent under a horizontal flip with the flip pairs swapped
(a mirrored front view is a front view), so flipping is a valid augmentation, which a fixed
colour per side would not be.  Limbs are drawn back to front: the far arm and leg first (darker),
then the torso, the near limbs, head and hands.

Truncation.  In 15% of the images the person is placed off-centre (up to 0.3 S), so that limbs
may leave the image.

Occlusions.  With probability 0.5 one or two occluders (discs or boxes in clutter colours) are
drawn over the person; a joint under an occluder (coverage > 0.5) and a joint outside the image
get ``visible = 0`` (as an unannotated MPII joint).  Self-occlusion keeps joints visible, as
MPII's annotations do.

``center`` is the centre of the joints' bounding box (with a little jitter), ``scale`` is 1.25 x
its larger side / 200 px (box side = ``scale * 200`` px, the 1.25 margin as SimpleBaseline's MPII
adjustment; e.g. a 48 px tall person has scale 0.3), ``headbox`` the axis-aligned square around
the head segment (upper neck -> head top) with the head's radius, like MPII's head rectangles.

Example ``i`` of a split is a pure function of ``(seed, split, i)``; about 1-2 ms per 64x64
example on one core.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from fna_jax.data import demo
from fna_jax.tasks.pose.joints import JOINT_NAMES, NUM_JOINTS

J = {name: i for i, name in enumerate(JOINT_NAMES)}
_POSE_STREAM = 2000  # offset of the pose streams (images unlike the shapes sets')

# Body proportions in units of the torso length (pelvis -> thorax).
_THIGH, _SHIN = 0.95, 0.9
_UPPER_ARM, _FOREARM = 0.62, 0.58
_NECK, _HEAD = 0.22, 0.5
_HIP_HALF, _SHOULDER_HALF = 0.22, 0.38
_HEIGHT = _HEAD + _NECK + 1.0 + _THIGH + _SHIN  # head top to ankle, straight


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
  a = math.radians(deg)
  c, s = math.cos(a), math.sin(a)
  return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def sample_skeleton(rng: np.random.Generator, torso: float, facing_front: bool) -> np.ndarray:
  """Joint positions (16, 2) of a figure with its pelvis at the origin (pixels, y down)."""
  p = np.zeros((NUM_JOINTS, 2))
  up = _rot(np.array([0.0, -1.0]), float(np.clip(rng.normal(0, 12), -30, 30)))
  image_left = np.array([up[1], -up[0]])  # 90 degrees from up towards the image's left
  right = image_left if facing_front else -image_left
  width = float(rng.uniform(0.55, 1.0))  # body turned away from the camera: narrower
  p[J['pelvis']] = 0.0
  p[J['thorax']] = up * torso
  p[J['upper_neck']] = p[J['thorax']] + _rot(up, rng.normal(0, 10)) * _NECK * torso
  p[J['head_top']] = p[J['upper_neck']] + _rot(up, rng.normal(0, 15)) * _HEAD * torso
  for side, sgn in (('r', 1.0), ('l', -1.0)):
    # sgn * outward rotation: positive angles swing a limb towards its own side.
    out = 1.0 if np.dot(_rot(-up, 10), right * sgn) > np.dot(_rot(-up, -10), right * sgn) else -1.0
    hip = p[J['pelvis']] + sgn * right * _HIP_HALF * torso * width
    sho = p[J['thorax']] + sgn * right * _SHOULDER_HALF * torso * width
    p[J[f'{side}_hip']], p[J[f'{side}_shoulder']] = hip, sho
    thigh = _rot(-up, out * rng.uniform(-15, 40))
    shin = _rot(thigh, rng.choice([-1.0, 1.0]) * rng.uniform(0, 80))
    knee = hip + thigh * _THIGH * torso * rng.uniform(0.75, 1.0)
    p[J[f'{side}_knee']] = knee
    p[J[f'{side}_ankle']] = knee + shin * _SHIN * torso * rng.uniform(0.75, 1.0)
    upper = _rot(-up, out * rng.uniform(-30, 150))
    fore = _rot(upper, rng.uniform(-130, 130))
    elbow = sho + upper * _UPPER_ARM * torso * rng.uniform(0.7, 1.0)
    p[J[f'{side}_elbow']] = elbow
    p[J[f'{side}_wrist']] = elbow + fore * _FOREARM * torso * rng.uniform(0.7, 1.0)
  return p


def _capsule(image: np.ndarray, cover: np.ndarray | None, a: np.ndarray, b: np.ndarray,
             radius: float, colour: np.ndarray, yy: np.ndarray, xx: np.ndarray,
             shade: np.ndarray | None = None) -> None:
  """Draws an anti-aliased capsule (segment a-b, ``radius`` px) in place; ``cover`` (S, S)
  accumulates its coverage when given."""
  size = image.shape[0]
  ext = radius + 1.5
  x0 = max(int(min(a[0], b[0]) - ext), 0)
  x1 = min(int(math.ceil(max(a[0], b[0]) + ext)) + 1, size)
  y0 = max(int(min(a[1], b[1]) - ext), 0)
  y1 = min(int(math.ceil(max(a[1], b[1]) + ext)) + 1, size)
  if x0 >= x1 or y0 >= y1:
    return
  px, py = xx[y0:y1, x0:x1] - a[0], yy[y0:y1, x0:x1] - a[1]
  d = np.asarray(b, np.float64) - a
  ll = float(d @ d)
  t = np.clip((px * d[0] + py * d[1]) / ll, 0.0, 1.0) if ll > 0 else np.zeros_like(px)
  dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2)
  cov = np.clip(radius + 0.5 - dist, 0.0, 1.0)[:, :, None].astype(np.float32)
  fill = colour if shade is None else colour + shade[y0:y1, x0:x1]
  patch = image[y0:y1, x0:x1]
  patch *= 1 - cov
  patch += fill * cov
  if cover is not None:
    c = cover[y0:y1, x0:x1]
    np.maximum(c, cov[:, :, 0], out=c)


def generate_pose_example(rng: np.random.Generator, image_size: int = 64) -> dict[str, np.ndarray]:
  """Draws one demo pose example from ``rng`` (see the module docstring).

  Returns:
    ``{'image': uint8 (S, S, 3), 'joints': float32 (16, 2), 'visible': float32 (16,),
    'center': float32 (2,), 'scale': float32 (), 'headbox': float32 (2, 2)}``, pixel
    coordinates with pixel centres at integers (as MPII's 0-based joints).
  """
  s = image_size
  yy, xx = demo.grid(s)
  yy, xx = yy - 0.5, xx - 0.5  # integer pixel centres, the joints' convention
  image = demo.background(rng, s, yy + 0.5, xx + 0.5)
  # Distractor limbs (clutter shaped like body parts).
  for _ in range(rng.integers(1, 4)):
    a = rng.uniform(0, s, 2)
    b = a + _rot(np.array([1.0, 0.0]), rng.uniform(0, 360)) * rng.uniform(0.1, 0.25) * s
    _capsule(image, None, a, b, rng.uniform(0.02, 0.04) * s,
             _hsv(rng.uniform(), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9)), yy, xx)

  facing_front = bool(rng.random() < 0.7)
  height = rng.uniform(0.5, 0.75) * s
  torso = height / _HEIGHT
  joints = sample_skeleton(rng, torso, facing_front)
  lo, hi = joints.min(0), joints.max(0)
  target = s / 2 + rng.uniform(-0.06, 0.06, 2) * s
  if rng.random() < 0.15:  # a person cut by the image border (truncated, as often in MPII)
    target = s / 2 + rng.uniform(-0.3, 0.3, 2) * s
  joints += target - (lo + hi) / 2

  shirt = _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.9))
  pants = _hsv(rng.uniform(), rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.8))
  skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.5, 0.95))
  hair = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.3))
  limb_r = max(0.1 * torso, 1.0)
  far = 'l' if rng.random() < 0.5 else 'r'
  near = 'r' if far == 'l' else 'l'
  dim = np.float32(0.75)

  def limbs(side, factor):
    pts = [(f'{side}_hip', f'{side}_knee', pants), (f'{side}_knee', f'{side}_ankle', pants),
           (f'{side}_shoulder', f'{side}_elbow', shirt), (f'{side}_elbow', f'{side}_wrist', skin)]
    for a, b, colour in pts:
      _capsule(image, None, joints[J[a]], joints[J[b]], limb_r, colour * factor, yy, xx)
    _capsule(image, None, joints[J[f'{side}_wrist']], joints[J[f'{side}_wrist']], 1.3 * limb_r,
             skin * factor, yy, xx)
    _capsule(image, None, joints[J[f'{side}_ankle']], joints[J[f'{side}_ankle']], 1.3 * limb_r,
             pants * 0.5 * factor, yy, xx)

  limbs(far, dim)
  # Torso: a fat capsule between the hip and shoulder midpoints, hips and shoulders as bars.
  _capsule(image, None, joints[J['pelvis']], joints[J['thorax']],
           _SHOULDER_HALF * torso * 0.8, shirt, yy, xx)
  _capsule(image, None, joints[J['r_hip']], joints[J['l_hip']], 1.2 * limb_r, pants, yy, xx)
  _capsule(image, None, joints[J['r_shoulder']], joints[J['l_shoulder']], 1.2 * limb_r, shirt,
           yy, xx)
  if facing_front:  # a light stripe down the chest
    _capsule(image, None, joints[J['thorax']] * 0.85 + joints[J['pelvis']] * 0.15,
             joints[J['thorax']] * 0.35 + joints[J['pelvis']] * 0.65, 0.5 * limb_r,
             np.minimum(shirt + 90, 255), yy, xx)
  limbs(near, np.float32(1.0))
  _capsule(image, None, joints[J['thorax']], joints[J['upper_neck']], limb_r, skin, yy, xx)
  head_c = (joints[J['upper_neck']] + joints[J['head_top']]) / 2
  head_r = float(np.linalg.norm(joints[J['head_top']] - joints[J['upper_neck']])) / 2
  _capsule(image, None, head_c, head_c, head_r, skin if facing_front else hair, yy, xx)
  if facing_front:  # eyes across the head axis, a little above its centre
    axis = (joints[J['head_top']] - joints[J['upper_neck']]) / max(2 * head_r, 1e-6)
    across = np.array([axis[1], -axis[0]])
    for e in (-1, 1):
      _capsule(image, None, head_c + 0.2 * head_r * axis + e * 0.4 * head_r * across,
               head_c + 0.2 * head_r * axis + e * 0.4 * head_r * across, 0.18 * head_r + 0.3,
               np.zeros(3, np.float32) + 20, yy, xx)

  # Occluders over the person: joints beneath them become invisible.
  cover = np.zeros((s, s), np.float32)
  if rng.random() < 0.5:
    for _ in range(rng.integers(1, 3)):
      j = int(rng.integers(0, NUM_JOINTS))
      a = joints[j] + rng.normal(0, 0.05 * s, 2)
      colour = _hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9))
      if rng.random() < 0.5:
        _capsule(image, cover, a, a, rng.uniform(0.06, 0.12) * s, colour, yy, xx)
      else:
        b = a + _rot(np.array([1.0, 0.0]), rng.uniform(0, 180)) * rng.uniform(0.1, 0.25) * s
        _capsule(image, cover, a, b, rng.uniform(0.05, 0.09) * s, colour, yy, xx)

  visible = np.ones(NUM_JOINTS, np.float32)
  inside = np.all((joints >= 0) & (joints <= s - 1), axis=1)
  visible[~inside] = 0
  ij = np.clip(np.rint(joints).astype(np.int64), 0, s - 1)
  visible[cover[ij[:, 1], ij[:, 0]] > 0.5] = 0

  lo, hi = joints.min(0), joints.max(0)
  center = (lo + hi) / 2 + rng.normal(0, 0.02 * s, 2)
  scale = 1.25 * float(np.max(hi - lo)) / 200.0
  headbox = np.stack([head_c - head_r, head_c + head_r])
  return {'image': demo.finish(image, rng), 'joints': joints.astype(np.float32),
          'visible': visible, 'center': center.astype(np.float32), 'scale': np.float32(scale),
          'headbox': headbox.astype(np.float32)}


class DemoPose(demo.DemoSource):
  """Generated single-person pose images (see the module docstring), the MPII example format.

  ``ds[i]`` is a pure function of ``(seed, split, i)``, made on access.

  Args:
    split: ``'train'``, ``'val'`` (alias ``'validation'``) or ``'test'``.
    num_examples: length of the split.
    image_size: side S of the square images, pixels (e.g. 64 or 96).
    seed: base seed of the whole dataset.
  """

  _stream_offset = _POSE_STREAM
  num_joints = NUM_JOINTS
  joint_names = JOINT_NAMES

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return generate_pose_example(self._rng(index), self.image_size)

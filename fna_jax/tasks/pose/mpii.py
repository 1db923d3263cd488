"""MPII Human Pose from the files the user downloads, in SimpleBaseline's layout, read without
TensorFlow.

The paper's pose experiments (Sec. 4.3, Tab. 6) follow SimpleBaseline (Xiao et al. 2018, code
microsoft/human-pose-estimation.pytorch, the paper's reference [10]), which reads MPII as::

  D/images/*.jpg          the images of mpii_human_pose_v1.tar.gz
                          (http://human-pose.mpi-inf.mpg.de/, "Download": images, 12.9 GB)
  D/annot/train.json      SimpleBaseline's annotations in JSON (22246 person examples)
  D/annot/valid.json      (2958 person examples)
  D/annot/gt_valid.mat    the validation ground truth its PCKh evaluation reads

The JSON files and ``gt_valid.mat`` are the converted annotations linked from the "Data
preparation" section of the SimpleBaseline README (the same ``annot/`` folder is shipped with
HRNet's code, leoxiaobin/deep-high-resolution-net.pytorch).  Extract the images archive into
``D`` (it unpacks to ``images/``) and put the annotation files into ``D/annot/``; then
``python -m fna_jax.tasks.pose.mpii --check --data_dir D`` lists what it finds.

Preparation is just that: :class:`MPIISource` reads the JSON index once when it is built (a few
MB, well under a second) and decodes each JPEG with PIL when an example is indexed, so no
ArrayRecord step is needed (the images are already individually addressable files).

Each JSON entry holds ``image`` (file name), ``center`` (x, y) and ``scale`` (person height /
200 px) of the person, ``joints`` (16 x 2, MATLAB 1-based pixels) and ``joints_vis`` (16, 1 =
annotated).  As SimpleBaseline's ``MPIIDataset._get_db``: the centre moves down by 15 * scale
and the scale grows by 1.25 (so the crop keeps the limbs) when the centre is given
(``center[0] != -1``), then centre and joints become 0-based (minus 1).

Validation examples take their ground truth from ``gt_valid.mat`` (what SimpleBaseline's
``MPIIDataset.evaluate`` compares against): ``joints = pos_gt_src - 1``,
``visible = 1 - jnt_missing`` and ``headbox = headboxes_src - 1`` (the head box, for PCKh's
head size; only its diagonal matters).  Training examples have no head box (NaN).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np
from PIL import Image

from fna_jax.tasks.pose.joints import JOINT_NAMES, NUM_JOINTS

IMAGES_URL = 'http://human-pose.mpi-inf.mpg.de/'
ANNOT_SOURCE = ("the 'Data preparation' section of the SimpleBaseline README "
                '(github.com/microsoft/human-pose-estimation.pytorch; the same annot/ folder '
                'ships with HRNet, github.com/leoxiaobin/deep-high-resolution-net.pytorch)')
SPLIT_FILES = {'train': 'train.json', 'valid': 'valid.json'}
SPLIT_ALIASES = {'val': 'valid', 'validation': 'valid'}
GT_FILE = 'gt_valid.mat'


def canonical_split(split: str) -> str:
  """``'train'`` or ``'valid'`` (``'val'``, ``'validation'`` accepted)."""
  s = SPLIT_ALIASES.get(split, split)
  if s not in SPLIT_FILES:
    raise ValueError(f"unknown MPII split {split!r}; expected 'train' or 'valid' (alias 'val')")
  return s


def required_files(data_dir: str, split: str) -> list[str]:
  """The paths a split needs (the images folder, its JSON, and for 'valid' gt_valid.mat)."""
  split = canonical_split(split)
  files = [os.path.join(data_dir, 'images'), os.path.join(data_dir, 'annot', SPLIT_FILES[split])]
  if split == 'valid':
    files.append(os.path.join(data_dir, 'annot', GT_FILE))
  return files


def instructions(data_dir: str) -> str:
  """Where to put which MPII file, and where to get it."""
  return (f'MPII in SimpleBaseline\'s layout is expected under {data_dir}:\n'
          f'  {os.path.join(data_dir, "images")}/*.jpg    <- extract mpii_human_pose_v1.tar.gz '
          f'(images) from {IMAGES_URL} into {data_dir}\n'
          f'  {os.path.join(data_dir, "annot", "train.json")}, '
          f'{os.path.join(data_dir, "annot", "valid.json")}, '
          f'{os.path.join(data_dir, "annot", GT_FILE)}    <- SimpleBaseline\'s JSON annotations '
          f'and validation ground truth, from {ANNOT_SOURCE}')


def _missing(data_dir: str, split: str) -> list[str]:
  out = []
  for path in required_files(data_dir, split):
    ok = os.path.isdir(path) if path.endswith('images') else os.path.isfile(path)
    if not ok:
      out.append(path)
  return out


def load_gt(path: str) -> dict[str, np.ndarray]:
  """``gt_valid.mat``: ``pos_gt_src`` (16, 2, N), ``jnt_missing`` (16, N),
  ``headboxes_src`` (2, 2, N) as float64 arrays (MATLAB 1-based pixels)."""
  from scipy.io import loadmat  # pylint: disable=g-import-not-at-top
  gt = loadmat(path)
  for key in ('pos_gt_src', 'jnt_missing', 'headboxes_src'):
    if key not in gt:
      raise ValueError(f'{path} holds no {key!r} (keys: {sorted(k for k in gt if k[0] != "_")}); '
                       f'is it SimpleBaseline\'s {GT_FILE}?')
  return {k: np.asarray(gt[k], np.float64) for k in ('pos_gt_src', 'jnt_missing', 'headboxes_src')}


def adjust_center_scale(center, scale) -> tuple[np.ndarray, np.float32]:
  """SimpleBaseline's MPII centre/scale adjustment, then 0-based: ``c[1] += 15 s; s *= 1.25``
  (when ``c[0] != -1``), ``c -= 1``."""
  c = np.asarray(center, np.float64).copy()
  s = float(scale)
  if c[0] != -1:
    c[1] = c[1] + 15 * s
    s = s * 1.25
  return (c - 1).astype(np.float32), np.float32(s)


class MPIISource:
  """Random-access MPII person examples (see the module docstring).

  ``source[i]`` is ``{'image': uint8 (H, W, 3), 'joints': float32 (16, 2), 'visible': float32
  (16,), 'center': float32 (2,), 'scale': float32 (), 'headbox': float32 (2, 2)}`` with 0-based
  pixel coordinates of the full image; one MPII image can hold several person examples.

  Args:
    split: ``'train'`` or ``'valid'`` (alias ``'val'``).
    data_dir: the folder holding ``images/`` and ``annot/``.

  Raises:
    FileNotFoundError: a required file or folder is missing (the message names each, and where
      to get it).
  """

  num_joints = NUM_JOINTS
  joint_names = JOINT_NAMES

  def __init__(self, split: str, data_dir: str):
    if not data_dir:
      raise FileNotFoundError('MPII needs data.data_dir (the folder with images/ and annot/).\n' +
                              instructions('<data_dir>'))
    self.split = canonical_split(split)
    self.data_dir = os.path.expanduser(os.fspath(data_dir))
    missing = _missing(self.data_dir, self.split)
    if missing:
      raise FileNotFoundError(f'MPII {self.split} split: missing ' + ', '.join(missing) + '\n' +
                              instructions(self.data_dir))
    with open(os.path.join(self.data_dir, 'annot', SPLIT_FILES[self.split])) as f:
      anno = json.load(f)
    n = len(anno)
    self.image_names = [str(a['image']) for a in anno]
    self.centers = np.zeros((n, 2), np.float32)
    self.scales = np.zeros((n,), np.float32)
    self.joints = np.zeros((n, NUM_JOINTS, 2), np.float32)
    self.visible = np.zeros((n, NUM_JOINTS), np.float32)
    self.headboxes = np.full((n, 2, 2), np.nan, np.float32)
    for i, a in enumerate(anno):
      self.centers[i], self.scales[i] = adjust_center_scale(a['center'], a['scale'])
      joints = np.asarray(a['joints'], np.float64)
      if joints.shape != (NUM_JOINTS, 2):
        raise ValueError(f'{SPLIT_FILES[self.split]} entry {i} has joints of shape '
                         f'{joints.shape}, expected ({NUM_JOINTS}, 2)')
      self.joints[i] = joints - 1
      self.visible[i] = np.asarray(a['joints_vis'], np.float32).reshape(NUM_JOINTS)
    if self.split == 'valid':
      gt = load_gt(os.path.join(self.data_dir, 'annot', GT_FILE))
      pos, missing_j, boxes = gt['pos_gt_src'], gt['jnt_missing'], gt['headboxes_src']
      if pos.shape[-1] != n or missing_j.shape[-1] != n or boxes.shape[-1] != n:
        raise ValueError(f'{GT_FILE} describes {pos.shape[-1]} people, valid.json {n}: they '
                         'must be the matching SimpleBaseline files')
      vis = 1.0 - np.transpose(missing_j, (1, 0))  # (N, 16)
      gt_joints = np.transpose(pos, (2, 0, 1)) - 1  # (N, 16, 2)
      keep = (vis > 0)[..., None] & np.isfinite(gt_joints)
      self.json_joints, self.json_visible = self.joints.copy(), self.visible.copy()
      self.joints = np.where(keep, gt_joints, self.joints).astype(np.float32)
      self.visible = vis.astype(np.float32)
      self.headboxes = (np.transpose(boxes, (2, 0, 1)) - 1).astype(np.float32)  # (N, 2, 2)

  def __len__(self) -> int:
    return len(self.image_names)

  def image_path(self, index: int) -> str:
    return os.path.join(self.data_dir, 'images', self.image_names[index])

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'MPII {self.split} index {index} out of range [0, {len(self)})')
    path = self.image_path(index)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'MPII image {path} is missing (listed in annot/'
                              f'{SPLIT_FILES[self.split]}); extract mpii_human_pose_v1.tar.gz '
                              f'from {IMAGES_URL} into {self.data_dir}')
    with Image.open(path) as im:
      image = np.asarray(im.convert('RGB'))
    return {'image': image, 'joints': self.joints[index].copy(),
            'visible': self.visible[index].copy(), 'center': self.centers[index].copy(),
            'scale': np.float32(self.scales[index]), 'headbox': self.headboxes[index].copy()}

  def __repr__(self) -> str:
    return f'MPIISource({self.split!r}, {self.data_dir!r}, {len(self)} people)'


def check(data_dir: str, out=None) -> bool:
  """Prints what of MPII is found under ``data_dir``; True when both splits are complete."""
  out = out or sys.stdout
  ok = True
  for split in SPLIT_FILES:
    try:
      src = MPIISource(split, data_dir)
    except (FileNotFoundError, ValueError) as e:
      print(f'{split}: NOT READY: {e}', file=out)
      ok = False
      continue
    names = sorted(set(src.image_names))
    absent = [n for n in names if not os.path.isfile(os.path.join(src.data_dir, 'images', n))]
    line = (f'{split}: {len(src)} people in {len(names)} images, '
            f'{int(src.visible.sum())} annotated joints')
    if split == 'valid':
      dj = np.abs(src.joints - src.json_joints).max(-1) > 1e-3
      both = (src.visible > 0) & (src.json_visible > 0)
      line += (f'; {GT_FILE}: {int((src.visible != src.json_visible).sum())} visibility flags and '
               f'{int((dj & both).sum())} joints differ from valid.json')
    if absent:
      ok = False
      line += f'; {len(absent)} images MISSING (e.g. {absent[0]})'
    print(line, file=out)
  return ok


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true', help='list what is found under --data_dir')
  parser.add_argument('--data_dir', required=True)
  args = parser.parse_args(argv)
  if not args.check:
    print(instructions(args.data_dir))
    return 0
  return 0 if check(args.data_dir) else 1


if __name__ == '__main__':
  sys.exit(main())

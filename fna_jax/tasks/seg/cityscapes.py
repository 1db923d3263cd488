"""Cityscapes semantic segmentation through TensorFlow Datasets, read without TensorFlow.

Reading uses ``tfds.data_source('cityscapes/semantic_segmentation', split, data_dir)`` on data
prepared in the ArrayRecord format: random access, picklable (grain workers), no TensorFlow.  Its
examples hold ``image_left`` uint8 (1024, 2048, 3) and ``segmentation_label`` uint8 (1024, 2048, 1)
with the raw Cityscapes labelIds 0-33; :class:`CityscapesSource` maps them to the 19 train ids
(everything else 255, ignored) and returns ``{'image', 'label'}``.

Preparing the data (once) does need TensorFlow.  Download ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` from https://www.cityscapes-dataset.com/downloads/ (registration
required) into a folder ``M`` (the manual_dir, zips not extracted), then::

  pip install tensorflow-cpu importlib_resources   # for the preparation step only
  python -m fna_jax.tasks.seg.cityscapes --prepare --manual_dir M --data_dir D

which runs ``tfds.builder('cityscapes/semantic_segmentation', data_dir=D).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=M), file_format='array_record')`` and
writes ``D/cityscapes/semantic_segmentation/1.0.0/``.  ``python -m fna_jax.tasks.seg.cityscapes --check
--data_dir D`` then lists the prepared splits.  TFDS split names are ``train`` (2975 images),
``validation`` (500; ``val`` is accepted here as an alias) and ``test`` (1525, labels withheld).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import sys
from typing import Any, Sequence

import numpy as np

from fna_jax.data.transforms import IGNORE_LABEL
from fna_jax.tasks.seg.visualize import CITYSCAPES_PALETTE

TFDS_NAME = 'cityscapes/semantic_segmentation'
VERSION = '1.0.0'
NUM_CLASSES = 19
ZIP_FILES = ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip')
DOWNLOAD_URL = 'https://www.cityscapes-dataset.com/downloads/'
SPLIT_ALIASES = {'val': 'validation'}
SPLITS = ('train', 'validation', 'test')

# cityscapesscripts/helpers/labels.py: labelId -> trainId (255 = ignored).  The license plate
# (labelId -1) is never stored in the labelIds PNGs; it maps to 255 like every unlisted value.
LABEL_ID_TO_TRAIN_ID = {
    -1: 255,  # license plate
    0: 255,  # unlabeled
    1: 255,  # ego vehicle
    2: 255,  # rectification border
    3: 255,  # out of roi
    4: 255,  # static
    5: 255,  # dynamic
    6: 255,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: 255,  # parking
    10: 255,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,  # pole
    18: 255,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASS_NAMES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
               'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
               'bus', 'train', 'motorcycle', 'bicycle')


def _make_lut() -> np.ndarray:
  lut = np.full(256, IGNORE_LABEL, np.uint8)
  for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
    if label_id >= 0:
      lut[label_id] = train_id
  return lut


TRAIN_ID_LUT = _make_lut()  # uint8 (256,): labelId -> trainId
TRAIN_ID_LUT.setflags(write=False)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
  """Maps raw Cityscapes labelIds to train ids (0..18, 255 = ignore) with a lookup table.

  Args:
    label_ids: integer array of any shape; values outside 0..255 (e.g. -1) map to 255.

  Returns:
    uint8 array of the same shape.
  """
  label_ids = np.asarray(label_ids)
  if label_ids.dtype == np.uint8:
    return TRAIN_ID_LUT[label_ids]
  if not np.issubdtype(label_ids.dtype, np.integer):
    raise TypeError(f'label ids must be integers, got dtype {label_ids.dtype}')
  out = np.full(label_ids.shape, IGNORE_LABEL, np.uint8)
  valid = (label_ids >= 0) & (label_ids < 256)
  out[valid] = TRAIN_ID_LUT[label_ids[valid]]
  return out


class DatasetNotPreparedError(FileNotFoundError):
  """Cityscapes is not prepared as ArrayRecord where it was looked for."""


def default_data_dir() -> str:
  """TFDS's default data dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def version_dir(data_dir: str | os.PathLike[str]) -> str:
  """``data_dir/cityscapes/semantic_segmentation/<VERSION>``: where tfds keeps the prepared data."""
  return os.path.join(os.fspath(data_dir), *TFDS_NAME.split('/'), VERSION)


def canonical_split(split: str) -> str:
  """Maps ``'val'`` to TFDS's ``'validation'``; keeps slicing suffixes (``'train[:10%]'``)."""
  m = re.match(r'^([A-Za-z_]+)(.*)$', split)
  if not m:
    raise ValueError(f'cannot parse Cityscapes split {split!r}')
  base, rest = m.groups()
  base = SPLIT_ALIASES.get(base, base)
  if base not in SPLITS:
    raise ValueError(f'unknown Cityscapes split {split!r}; expected one of {SPLITS} '
                     f"(or 'val'), optionally with a TFDS slice such as 'train[:100]'")
  return base + rest


def preparation_instructions(data_dir: str, manual_dir: str = 'M') -> str:
  """How to download and prepare Cityscapes as ArrayRecord into ``data_dir``."""
  return (
      'To prepare Cityscapes:\n'
      f'  1. Register at {DOWNLOAD_URL} and download {ZIP_FILES[0]} (11 GB) and {ZIP_FILES[1]} '
      '(241 MB).\n'
      f'  2. Put both zips, not extracted, in one folder, the manual_dir {manual_dir}: '
      f'{os.path.join(manual_dir, ZIP_FILES[0])} and {os.path.join(manual_dir, ZIP_FILES[1])}.\n'
      '  3. Install the preparation-only dependencies (reading needs neither):\n'
      '       pip install tensorflow-cpu importlib_resources\n'
      '  4. Prepare as ArrayRecord:\n'
      f'       python -m fna_jax.tasks.seg.cityscapes --prepare --manual_dir {manual_dir} '
      f'--data_dir {data_dir}\n'
      f"     (it calls tfds.builder('{TFDS_NAME}', data_dir=D).download_and_prepare("
      'download_config=tfds.download.DownloadConfig(manual_dir=M), '
      "file_format='array_record')).")


def check_prepared(data_dir: str | os.PathLike[str], split: str) -> str:
  """Checks that ``split`` is prepared as ArrayRecord under ``data_dir``.

  ``tfds.data_source`` gives misleading errors on a missing or TFRecord-prepared dataset, so this
  looks for the files itself.

  Args:
    data_dir: the TFDS data dir.
    split: a TFDS split name, optionally sliced (``'train'``, ``'validation[:50]'``, ``'val'``).

  Returns:
    The dataset's version directory.

  Raises:
    DatasetNotPreparedError: with what is missing and how to prepare the data.
  """
  data_dir = os.fspath(data_dir)
  split = canonical_split(split).split('[')[0]
  vdir = version_dir(data_dir)
  instructions = preparation_instructions(data_dir)
  if not os.path.isdir(vdir):
    parent = os.path.dirname(vdir)
    found = ''
    if os.path.isdir(parent):
      entries = sorted(os.listdir(parent))
      found = f' ({parent} holds {entries}'
      if any('incomplete' in e for e in entries):
        found += '; an *.incomplete* folder means a preparation did not finish'
      found += f', but TFDS reads version {VERSION})'
    raise DatasetNotPreparedError(
        f'Cityscapes is not prepared under data_dir {data_dir!r}: {vdir} does not exist{found}.\n'
        + instructions)
  array_record = sorted(glob.glob(os.path.join(vdir, f'cityscapes-{split}.array_record*')))
  if not array_record:
    tfrecord = sorted(glob.glob(os.path.join(vdir, f'cityscapes-{split}.tfrecord*')))
    if tfrecord:
      raise DatasetNotPreparedError(
          f"Cityscapes split '{split}' in {vdir} is prepared as TFRecord "
          f'({len(tfrecord)} file(s), e.g. {os.path.basename(tfrecord[0])}), which '
          "tfds.data_source cannot read (random access needs file_format='array_record'). "
          'Prepare it again as ArrayRecord, into another data_dir or after removing '
          f'{vdir}.\n' + instructions)
    present = sorted(os.listdir(vdir))
    raise DatasetNotPreparedError(
        f"Cityscapes split '{split}' has no ArrayRecord files "
        f'(cityscapes-{split}.array_record-*) in {vdir}; it holds {present[:10]}'
        f'{" ..." if len(present) > 10 else ""}.\n' + instructions)
  if not os.path.isfile(os.path.join(vdir, 'dataset_info.json')):
    raise DatasetNotPreparedError(
        f'{vdir} has ArrayRecord files but no dataset_info.json: the preparation is incomplete.\n'
        + instructions)
  return vdir


class CityscapesSource:
  """Random-access Cityscapes split with train-id labels.

  ``src[i]`` is ``{'image': uint8 (H, W, 3), 'label': uint8 (H, W)}`` (H, W = 1024, 2048 for the
  real data), labels in 0..18 and 255 (ignore).  Decoding a PNG pair takes about 50 ms per image,
  so decode in grain workers (``worker_count`` of :func:`fna_jax.tasks.seg.pipeline.make_seg_pipeline`).
  Picklable.

  Args:
    split: ``'train'``, ``'validation'`` (or ``'val'``) or ``'test'``, optionally with a TFDS
      slice (``'train[:100]'``).
    data_dir: the TFDS data dir holding the ArrayRecord-prepared dataset; default
      :func:`default_data_dir`.

  Raises:
    DatasetNotPreparedError: when the data is missing or prepared as TFRecord.
  """

  NUM_CLASSES = NUM_CLASSES
  CLASS_NAMES = CLASS_NAMES
  IGNORE_LABEL = IGNORE_LABEL
  PALETTE = CITYSCAPES_PALETTE

  def __init__(self, split: str, data_dir: str | os.PathLike[str] | None = None):
    self.split = canonical_split(split)
    self.data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    check_prepared(self.data_dir, self.split)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._source = tfds.data_source(TFDS_NAME, split=self.split, data_dir=self.data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    ex = self._source[index]
    label = np.asarray(ex['segmentation_label'])
    if label.ndim == 3:
      label = label[..., 0]
    return {'image': np.asarray(ex['image_left']), 'label': to_train_ids(label)}

  def __repr__(self) -> str:
    return f'CityscapesSource(split={self.split!r}, data_dir={self.data_dir!r}, len={len(self)})'


def prepare(manual_dir: str, data_dir: str) -> None:
  """Prepares Cityscapes as ArrayRecord (needs TensorFlow; see the module docstring).

  Args:
    manual_dir: folder holding the two downloaded zips.
    data_dir: TFDS data dir to write into.

  Raises:
    FileNotFoundError: a zip is missing from ``manual_dir``.
    ImportError: TensorFlow or importlib_resources is not installed.
  """
  missing = [z for z in ZIP_FILES if not os.path.isfile(os.path.join(manual_dir, z))]
  if missing:
    raise FileNotFoundError(
        f'manual_dir {manual_dir!r} lacks {missing}.\n'
        + preparation_instructions(data_dir, manual_dir))
  lacking = [m for m in ('tensorflow', 'importlib_resources')
             if importlib.util.find_spec(m) is None]
  if lacking:
    raise ImportError(
        f'preparing Cityscapes needs {lacking}: pip install tensorflow-cpu importlib_resources '
        '(only for this step; reading needs no TensorFlow).')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format='array_record')


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point: ``--prepare --manual_dir M --data_dir D``, or ``--check --data_dir D``."""
  parser = argparse.ArgumentParser(
      prog='python -m fna_jax.tasks.seg.cityscapes',
      description='Prepare Cityscapes as ArrayRecord for tfds.data_source, or check it.')
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument('--prepare', action='store_true',
                    help='prepare from the zips in --manual_dir (needs tensorflow-cpu)')
  mode.add_argument('--check', action='store_true', help='check the prepared splits')
  parser.add_argument('--manual_dir', help=f'folder holding {" and ".join(ZIP_FILES)}')
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  args = parser.parse_args(argv)
  data_dir = args.data_dir or default_data_dir()
  if args.prepare:
    if not args.manual_dir:
      parser.error('--prepare needs --manual_dir')
    prepare(args.manual_dir, data_dir)
  status = 0
  for split in ('train', 'validation'):
    try:
      src = CityscapesSource(split, data_dir)
    except DatasetNotPreparedError as e:
      print(f'{split}: NOT READY\n{e}', file=sys.stderr)
      status = 1
      continue
    ex: dict[str, Any] = src[0]
    print(f"{split}: {len(src)} examples, image {ex['image'].shape} {ex['image'].dtype}, "
          f"train ids present in example 0: {sorted(np.unique(ex['label']).tolist())}")
  return status


if __name__ == '__main__':
  sys.exit(main())

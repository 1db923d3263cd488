"""MS-COCO 2017 detection from the official zips, prepared once into ArrayRecord, read without
TensorFlow.

The paper's detection experiments (Sec. 4.2, Tab. 4/5) train RetinaNet on COCO train2017 and
report mAP on val2017 with MMDetection v1.  Preparing the data (once):

  1. Download, and keep as zips (not extracted), into one folder ``Z``::

       http://images.cocodataset.org/zips/train2017.zip                    (18 GB, 118287 images)
       http://images.cocodataset.org/zips/val2017.zip                      (0.8 GB, 5000 images)
       http://images.cocodataset.org/annotations/annotations_trainval2017.zip   (241 MB)

  2. Run::

       python -m fna_jax.tasks.det.coco --prepare --zip_dir Z --data_dir D

     It reads the zips with :mod:`zipfile` (no extraction, no TensorFlow), writes one ArrayRecord
     record per image into ``D`` (shards of :data:`IMAGES_PER_SHARD` images), a small index per
     split and a copy of ``annotations/instances_val2017.json`` (for COCOeval), printing progress
     every ``--progress_every`` images.  ``--splits val`` prepares only the validation split (it
     needs only ``val2017.zip`` and the annotations zip).  It takes roughly as long as reading the
     19 GB of zips once.  An interrupted run can simply be started again: finished shards are
     kept (each is written under a ``.tmp`` name and renamed when complete), and a split is
     marked done only at the very end (``coco2017-<split>.done.json``); a run on a finished
     ``D`` says so and does nothing.
  3. ``python -m fna_jax.tasks.det.coco --check --data_dir D`` lists what is prepared.

Without ``--data_dir`` the folder is :func:`default_data_dir` (``$FNA_COCO_DIR`` or
``~/fna_jax_data/coco2017``).

What a record holds (:func:`encode_record`, msgpack, no pickle): ``jpeg`` (the image file's
bytes exactly as in the zip; decoded with PIL to RGB on access), ``image_id``, ``file_name``,
``height``/``width`` (from the annotation file), ``boxes`` float32 (n, 4), ``labels`` int32 (n,),
``ann_ids`` int64 (n,) and ``crowd_boxes`` float32 (m, 4).  The annotations are parsed as
MMDetection v1's ``CocoDataset._parse_ann_info`` (``mmdet/datasets/coco.py``) does
(:func:`parse_annotations`): annotations flagged ``ignore``, with ``area <= 0``, or with
``w < 1`` or ``h < 1`` are dropped; the rest become ``(x1, y1, x2, y2) = (x, y, x + w - 1,
y + h - 1)``: MMDetection v1's pixel convention with INCLUSIVE right/bottom edges (width =
``x2 - x1 + 1``); crowd annotations (``iscrowd``) go to ``crowd_boxes`` (never trained on; v1's
``gt_bboxes_ignore``), the others to ``boxes`` with their category id mapped to the contiguous
label ``CATEGORY_IDS.index(category_id)`` (0..79; v1 uses 1..80 with 0 as background, RetinaNet's
sigmoid classifier has no background class).  Images keep the annotation file's order, and
images without annotations are kept: :meth:`COCOSource.num_boxes` says which have boxes (v1
trains only on images with at least one box: ``_filter_imgs`` drops images without annotations
and ``mmdet/datasets/custom.py``'s ``prepare_train_img`` skips those whose boxes were all dropped
or crowd; ``_filter_imgs(min_size=32)`` also drops training images under 32 pixels on a side,
which :attr:`COCOSource.image_hw` allows to repeat).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from typing import Any, Iterable, Sequence, TextIO

import msgpack
import numpy as np
from PIL import Image

DOWNLOAD_URLS = {
    'train2017.zip': 'http://images.cocodataset.org/zips/train2017.zip',
    'val2017.zip': 'http://images.cocodataset.org/zips/val2017.zip',
    'annotations_trainval2017.zip':
        'http://images.cocodataset.org/annotations/annotations_trainval2017.zip',
}
ANNOTATIONS_ZIP = 'annotations_trainval2017.zip'
SPLITS = ('train', 'val')
SPLIT_ALIASES = {'validation': 'val', 'valid': 'val'}
IMAGES_ZIP = {'train': 'train2017.zip', 'val': 'val2017.zip'}
ANNOTATION_JSON = {'train': 'annotations/instances_train2017.json',
                   'val': 'annotations/instances_val2017.json'}
VAL_JSON = 'instances_val2017.json'  # the copy kept in data_dir for COCOeval
IMAGES_PER_SHARD = 4096
FORMAT_VERSION = 1
PREFIX = 'coco2017'
_EXIF_ORIENTATION = 0x0112

# The 80 COCO 2017 detection categories in category-id order (the `name`s of the `categories`
# of instances_*2017.json); the contiguous label of CATEGORY_IDS[k] is k.
CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')
CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90)
NUM_CLASSES = len(CATEGORY_IDS)
CATEGORY_TO_LABEL = {c: k for k, c in enumerate(CATEGORY_IDS)}


class DatasetNotPreparedError(FileNotFoundError):
  """COCO is not (completely) prepared in the data dir."""


# ---------------------------------------------------------------------------------------------
# Names and paths


def default_data_dir() -> str:
  """``$FNA_COCO_DIR`` or ``~/fna_jax_data/coco2017``."""
  return os.path.expanduser(os.environ.get('FNA_COCO_DIR', '~/fna_jax_data/coco2017'))


def canonical_split(split: str) -> str:
  """``'train'`` or ``'val'`` (``'validation'`` and ``'valid'`` accepted)."""
  s = SPLIT_ALIASES.get(split, split)
  if s not in SPLITS:
    raise ValueError(f"unknown COCO split {split!r}; expected 'train' or 'val' "
                     "(alias 'validation')")
  return s


def shard_names(split: str, num_images: int,
                images_per_shard: int = IMAGES_PER_SHARD) -> list[str]:
  """File names of a split's shards: ``coco2017-<split>.array_record-<k>-of-<n>``."""
  n = max(1, -(-num_images // images_per_shard))
  return [f'{PREFIX}-{split}.array_record-{k:05d}-of-{n:05d}' for k in range(n)]


def index_name(split: str) -> str:
  return f'{PREFIX}-{split}.index.npz'


def done_name(split: str) -> str:
  return f'{PREFIX}-{split}.done.json'


def preparation_instructions(data_dir: str, zip_dir: str = 'Z',
                             splits: Sequence[str] = SPLITS) -> str:
  """Which zips to download where, and the command that prepares ``data_dir``."""
  zips = [IMAGES_ZIP[s] for s in splits] + [ANNOTATIONS_ZIP]
  lines = ['To prepare COCO 2017:',
           f'  1. Download into {zip_dir} (keep them zipped):']
  lines += [f'       {os.path.join(zip_dir, z)}  <- {DOWNLOAD_URLS[z]}' for z in zips]
  split_arg = '' if tuple(splits) == SPLITS else f' --splits {",".join(splits)}'
  lines += ['  2. Prepare (once; reads the zips directly, writes ArrayRecord shards):',
            f'       python -m fna_jax.tasks.det.coco --prepare --zip_dir {zip_dir} '
            f'--data_dir {data_dir}{split_arg}']
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Annotations (MMDetection v1 `CocoDataset._parse_ann_info`)


def check_categories(categories: Iterable[dict[str, Any]], where: str) -> None:
  """Raises ValueError unless ``categories`` are COCO 2017's 80 (id, name) pairs (any order)."""
  got = {(int(c['id']), str(c['name'])) for c in categories}
  want = set(zip(CATEGORY_IDS, CLASS_NAMES))
  if got != want:
    raise ValueError(f'{where}: the categories are not the 80 of COCO 2017; missing '
                     f'{sorted(want - got)[:5]}, unexpected {sorted(got - want)[:5]}')


def parse_annotations(anns: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """One image's annotations as MMDetection v1's ``CocoDataset._parse_ann_info`` parses them.

  Drops annotations with ``ignore`` set, ``area <= 0``, ``w < 1`` or ``h < 1``; the others become
  ``[x, y, x + w - 1, y + h - 1]`` (v1's inclusive right/bottom edges), crowd ones in
  ``crowd_boxes`` (v1's ``gt_bboxes_ignore``), the rest in ``boxes`` with contiguous labels.

  Args:
    anns: the image's entries of the annotation file's ``annotations``, in file order.

  Returns:
    ``boxes`` float32 (n, 4), ``labels`` int32 (n,), ``ann_ids`` int64 (n,), ``crowd_boxes``
    float32 (m, 4), ``crowd_ann_ids`` int64 (m,), and ``kept`` bool (len(anns),) (which of
    ``anns`` were kept, crowd or not).
  """
  boxes, labels, ids, crowd, crowd_ids, kept = [], [], [], [], [], []
  for ann in anns:
    x, y, w, h = (float(v) for v in ann['bbox'])
    if ann.get('ignore', False) or ann['area'] <= 0 or w < 1 or h < 1:
      kept.append(False)
      continue
    kept.append(True)
    box = [x, y, x + w - 1, y + h - 1]
    if ann.get('iscrowd', 0):
      crowd.append(box)
      crowd_ids.append(int(ann['id']))
    else:
      boxes.append(box)
      labels.append(CATEGORY_TO_LABEL[int(ann['category_id'])])
      ids.append(int(ann['id']))
  return {'boxes': np.asarray(boxes, np.float32).reshape(-1, 4),
          'labels': np.asarray(labels, np.int32),
          'ann_ids': np.asarray(ids, np.int64),
          'crowd_boxes': np.asarray(crowd, np.float32).reshape(-1, 4),
          'crowd_ann_ids': np.asarray(crowd_ids, np.int64),
          'kept': np.asarray(kept, bool)}


# ---------------------------------------------------------------------------------------------
# Records: msgpack with numpy arrays as {dtype, shape, bytes} (no pickle)


def _pack_array(a: np.ndarray) -> dict[str, Any]:
  a = np.ascontiguousarray(a)
  return {'__nd__': True, 'dtype': a.dtype.str, 'shape': list(a.shape), 'data': a.tobytes()}


def _unpack(obj: Any) -> Any:
  if isinstance(obj, dict) and obj.get('__nd__'):
    dtype = np.dtype(obj['dtype'])
    if dtype.hasobject:
      raise ValueError('object arrays are not allowed in COCO records')
    return np.frombuffer(obj['data'], dtype).reshape(obj['shape']).copy()
  return obj


def encode_record(record: dict[str, Any]) -> bytes:
  """msgpack bytes of a dict of ints, strings, bytes and numpy arrays."""
  out = {k: _pack_array(v) if isinstance(v, np.ndarray) else v for k, v in record.items()}
  return msgpack.packb(out, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of :func:`encode_record`."""
  raw = msgpack.unpackb(data, raw=False)
  return {k: _unpack(v) for k, v in raw.items()}


def decode_jpeg(data: bytes) -> np.ndarray:
  """JPEG bytes -> uint8 (H, W, 3) RGB (grayscale and CMYK files converted by PIL).

  The pixels are taken as stored: an EXIF orientation tag is not applied (the annotation file's
  width and height describe the stored pixels; preparation lists such images in
  ``done.json``'s ``exif_rotated``).
  """
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


# ---------------------------------------------------------------------------------------------
# Reading


def _missing_files(data_dir: str, split: str) -> list[str]:
  """Paths a prepared split needs that are absent (all shards when the marker is absent)."""
  done = os.path.join(data_dir, done_name(split))
  if not os.path.isfile(done):
    return [done]
  with open(done) as f:
    meta = json.load(f)
  need = [os.path.join(data_dir, n) for n in meta['shards'] + [index_name(split)]]
  if split == 'val':
    need.append(os.path.join(data_dir, VAL_JSON))
  return [p for p in need if not os.path.isfile(p)]


def check_prepared(data_dir: str | os.PathLike[str], split: str) -> dict[str, Any]:
  """The split's ``done.json`` contents when ``split`` is completely prepared in ``data_dir``.

  Raises:
    DatasetNotPreparedError: naming the missing files, with how to prepare them.
  """
  data_dir = os.fspath(data_dir)
  split = canonical_split(split)
  missing = _missing_files(data_dir, split)
  if missing:
    partial = ''
    if os.path.isdir(data_dir):
      shards = [n for n in os.listdir(data_dir) if n.startswith(f'{PREFIX}-{split}.array_record')]
      if shards and missing == [os.path.join(data_dir, done_name(split))]:
        partial = (f' ({len(shards)} shard file(s) are there, but the preparation did not '
                   'finish; run it again, it continues)')
    raise DatasetNotPreparedError(
        f'COCO 2017 {split} is not prepared in {data_dir}: missing {", ".join(missing)}'
        f'{partial}.\n' + preparation_instructions(data_dir, splits=(split,)))
  with open(os.path.join(data_dir, done_name(split))) as f:
    meta = json.load(f)
  if meta.get('format_version') != FORMAT_VERSION:
    raise DatasetNotPreparedError(
        f'{os.path.join(data_dir, done_name(split))} is of format version '
        f'{meta.get("format_version")}, this code reads {FORMAT_VERSION}: prepare again into '
        'an empty folder.\n' + preparation_instructions(data_dir, splits=(split,)))
  return meta


class COCOSource:
  """Random-access COCO 2017 detection split (see the module docstring). Picklable.

  ``src[i]`` is ``{'image': uint8 (H, W, 3), 'boxes': float32 (n, 4), 'labels': int32 (n,),
  'image_id': int}``: boxes ``(x1, y1, x2, y2)`` in pixels with inclusive right/bottom edges
  (MMDetection v1's convention), labels 0..79 (``CATEGORY_IDS[label]`` is the COCO category
  id), crowd boxes excluded (see :meth:`record`).  The JPEG is decoded with PIL on access
  (about 5-10 ms for a 640x480 image), so decode in grain workers.

  Args:
    split: ``'train'`` or ``'val'`` (``'validation'`` accepted).
    data_dir: the folder ``--prepare`` wrote; default :func:`default_data_dir`.

  Raises:
    DatasetNotPreparedError: the split is not (completely) prepared; the message names the
      missing files and the preparation command.
  """

  CLASS_NAMES = CLASS_NAMES
  CATEGORY_IDS = CATEGORY_IDS
  NUM_CLASSES = NUM_CLASSES

  def __init__(self, split: str, data_dir: str | os.PathLike[str] | None = None):
    # array_record comes with grain; imported here so that the constants need no extras.
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self.split = canonical_split(split)
    self.data_dir = (os.path.expanduser(os.fspath(data_dir)) if data_dir
                     else default_data_dir())
    self.meta = check_prepared(self.data_dir, self.split)
    with np.load(os.path.join(self.data_dir, index_name(self.split)), allow_pickle=False) as z:
      self._index = {k: z[k] for k in z.files}
    paths = [os.path.join(self.data_dir, n) for n in self.meta['shards']]
    self._records = array_record_data_source.ArrayRecordDataSource(paths)
    if len(self._records) != len(self._index['image_ids']):
      raise DatasetNotPreparedError(
          f'{self.data_dir}: the {self.split} shards hold {len(self._records)} records, the '
          f'index {len(self._index["image_ids"])} images; prepare again into an empty folder.')

  def __len__(self) -> int:
    return len(self._records)

  @property
  def image_ids(self) -> np.ndarray:
    """int64 (len,): the COCO image id of each example."""
    return self._index['image_ids']

  @property
  def image_hw(self) -> np.ndarray:
    """int32 (len, 2): (height, width) of each image from the annotation file."""
    return np.stack([self._index['heights'], self._index['widths']], axis=1)

  def num_boxes(self) -> np.ndarray:
    """int32 (len,): number of (non-crowd, kept) boxes of each example, read from the index."""
    return self._index['num_boxes'].copy()

  def _index_of(self, index: int) -> int:
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'COCO {self.split} index {index} out of range [0, {len(self)})')
    return index

  def record(self, index: int) -> dict[str, Any]:
    """The stored record, image not decoded: ``jpeg`` (bytes), ``image_id``, ``file_name``,
    ``height``, ``width``, ``boxes``, ``labels``, ``ann_ids``, ``crowd_boxes``."""
    return decode_record(self._records[self._index_of(index)])

  def __getitem__(self, index: int) -> dict[str, Any]:
    rec = self.record(index)
    return {'image': decode_jpeg(rec['jpeg']), 'boxes': rec['boxes'], 'labels': rec['labels'],
            'image_id': int(rec['image_id'])}

  def coco_gt(self) -> dict[str, Any]:
    """The split's ground truth in COCO json format (a new dict each call).

    ``val``: the official ``instances_val2017.json`` as saved at preparation (what MMDetection
    v1's ``coco_eval`` scores against: every annotation, also the ones dropped for training).
    ``train`` (there is no copy of the 448 MB json): rebuilt from the index: the ``images``
    (id, file_name, height, width), the ``categories``, and the annotations KEPT by
    :func:`parse_annotations` (crowd ones too) with their original ``id``, ``bbox`` (x, y, w, h,
    equal to ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` of the stored boxes), ``area`` and
    ``iscrowd``; no segmentations.
    """
    if self.split == 'val':
      with open(os.path.join(self.data_dir, VAL_JSON)) as f:
        return json.load(f)
    ix = self._index
    images = [{'id': int(i), 'file_name': str(n), 'height': int(h), 'width': int(w)}
              for i, n, h, w in zip(ix['image_ids'], ix['file_names'], ix['heights'],
                                    ix['widths'])]
    image_of_ann = np.repeat(ix['image_ids'], np.diff(ix['ann_offsets']))
    anns = [{'id': int(a), 'image_id': int(im), 'category_id': int(c),
             'bbox': [float(v) for v in b], 'area': float(ar), 'iscrowd': int(cr)}
            for a, im, c, b, ar, cr in zip(ix['ann_ids'], image_of_ann, ix['ann_category_ids'],
                                           ix['ann_bbox'], ix['ann_area'], ix['ann_iscrowd'])]
    cats = [{'id': c, 'name': n, 'supercategory': ''} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    return {'images': images, 'annotations': anns, 'categories': cats}

  def __repr__(self) -> str:
    return f'COCOSource({self.split!r}, {self.data_dir!r}, {len(self)} images)'


# ---------------------------------------------------------------------------------------------
# Preparation


def _fmt_seconds(s: float) -> str:
  s = int(s)
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


def _load_annotations(ann_zip: zipfile.ZipFile, split: str, ann_zip_path: str) -> dict[str, Any]:
  name = ANNOTATION_JSON[split]
  try:
    data = ann_zip.read(name)
  except KeyError:
    raise FileNotFoundError(f'{ann_zip_path} holds no {name}; is it the official '
                            f'{ANNOTATIONS_ZIP} ({DOWNLOAD_URLS[ANNOTATIONS_ZIP]})?') from None
  gt = json.loads(data)
  check_categories(gt['categories'], f'{ann_zip_path}:{name}')
  return gt


def _write_atomic(path: str, write) -> None:
  tmp = path + '.tmp'
  write(tmp)
  os.replace(tmp, path)


def _prepare_split(split: str, zip_dir: str, data_dir: str, ann_zip: zipfile.ZipFile,
                   images_per_shard: int, progress_every: int, out: TextIO) -> dict[str, Any]:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  ann_zip_path = os.path.join(zip_dir, ANNOTATIONS_ZIP)
  images_zip_path = os.path.join(zip_dir, IMAGES_ZIP[split])
  print(f'[coco {split}] reading {ANNOTATION_JSON[split]} from {ann_zip_path}', file=out,
        flush=True)
  gt = _load_annotations(ann_zip, split, ann_zip_path)
  images = gt['images']
  anns_of: dict[int, list[dict[str, Any]]] = {int(im['id']): [] for im in images}
  for ann in gt['annotations']:
    anns_of.setdefault(int(ann['image_id']), []).append(ann)  # (none without an image in COCO)
  n = len(images)
  parsed = [parse_annotations(anns_of[int(im['id'])]) for im in images]
  names = shard_names(split, n, images_per_shard)
  folder = os.path.splitext(IMAGES_ZIP[split])[0]  # 'train2017' / 'val2017'
  t0, done_images, written, mismatches, exif_rotated = time.time(), 0, 0, [], []
  with zipfile.ZipFile(images_zip_path) as zimg:
    for k, name in enumerate(names):
      lo, hi = k * images_per_shard, min(n, (k + 1) * images_per_shard)
      path = os.path.join(data_dir, name)
      if os.path.isfile(path):  # a shard an interrupted run finished: keep it if it fits
        reader = array_record_module.ArrayRecordReader(path)
        count = reader.num_records()
        ends = ([decode_record(r)['image_id'] for r in reader.read([0, count - 1])]
                if count == hi - lo else None)
        reader.close()
        if ends == [int(images[lo]['id']), int(images[hi - 1]['id'])]:
          done_images += hi - lo
          print(f'[coco {split}] shard {k + 1}/{len(names)} already written, kept', file=out,
                flush=True)
          continue
      # group_size:1 for fast random access (what grain wants); JPEGs do not compress.
      writer = array_record_module.ArrayRecordWriter(path + '.tmp', 'group_size:1,uncompressed')
      try:
        for i in range(lo, hi):
          im, p = images[i], parsed[i]
          entry = f'{folder}/{im["file_name"]}'
          try:
            jpeg = zimg.read(entry)
          except KeyError:
            raise FileNotFoundError(
                f'{images_zip_path} holds no {entry} (image id {im["id"]} of '
                f'{ANNOTATION_JSON[split]}); is it the official {IMAGES_ZIP[split]} '
                f'({DOWNLOAD_URLS[IMAGES_ZIP[split]]})?') from None
          with Image.open(io.BytesIO(jpeg)) as pim:  # reads the header only
            if pim.size != (int(im['width']), int(im['height'])):
              mismatches.append(int(im['id']))
              print(f'[coco {split}] WARNING: {entry} is {pim.size[0]}x{pim.size[1]} but the '
                    f'annotation file says {im["width"]}x{im["height"]}', file=out, flush=True)
            if pim.getexif().get(_EXIF_ORIENTATION, 1) != 1:
              exif_rotated.append(int(im['id']))
          writer.write(encode_record({
              'image_id': int(im['id']), 'file_name': str(im['file_name']),
              'height': int(im['height']), 'width': int(im['width']), 'jpeg': jpeg,
              'boxes': p['boxes'], 'labels': p['labels'], 'ann_ids': p['ann_ids'],
              'crowd_boxes': p['crowd_boxes']}))
          done_images += 1
          written += 1
          if done_images % progress_every == 0 or done_images == n:
            el = time.time() - t0
            rate = written / max(el, 1e-9)
            print(f'[coco {split}] {done_images}/{n} images, {_fmt_seconds(el)} elapsed, '
                  f'ETA {_fmt_seconds((n - done_images) / max(rate, 1e-9))}', file=out,
                  flush=True)
      finally:
        writer.close()
      os.replace(path + '.tmp', path)

  # The index: per-image counts and the kept annotations (coco_gt() of 'train', num_boxes()).
  kept_anns = [[a for a, keep in zip(anns_of[int(im['id'])], p['kept']) if keep]
               for im, p in zip(images, parsed)]
  flat = [a for anns in kept_anns for a in anns]
  index = {
      'image_ids': np.asarray([im['id'] for im in images], np.int64),
      'heights': np.asarray([im['height'] for im in images], np.int32),
      'widths': np.asarray([im['width'] for im in images], np.int32),
      'file_names': np.asarray([str(im['file_name']) for im in images], dtype=str),
      'num_boxes': np.asarray([len(p['labels']) for p in parsed], np.int32),
      'num_crowd': np.asarray([len(p['crowd_boxes']) for p in parsed], np.int32),
      'ann_offsets': np.concatenate([[0], np.cumsum([len(a) for a in kept_anns])]).astype(
          np.int64),
      'ann_ids': np.asarray([a['id'] for a in flat], np.int64),
      'ann_category_ids': np.asarray([a['category_id'] for a in flat], np.int64),
      'ann_bbox': np.asarray([a['bbox'] for a in flat], np.float64).reshape(-1, 4),
      'ann_area': np.asarray([a['area'] for a in flat], np.float64),
      'ann_iscrowd': np.asarray([int(a.get('iscrowd', 0)) for a in flat], np.int8),
  }

  def save_index(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, **index)

  _write_atomic(os.path.join(data_dir, index_name(split)), save_index)
  if split == 'val':
    def copy_json(tmp):
      with ann_zip.open(ANNOTATION_JSON['val']) as src, open(tmp, 'wb') as dst:
        while chunk := src.read(1 << 20):
          dst.write(chunk)
    _write_atomic(os.path.join(data_dir, VAL_JSON), copy_json)
  # size_mismatches / exif_rotated: image ids, from the shards this run wrote (not kept ones).
  meta = {'format_version': FORMAT_VERSION, 'split': split, 'num_images': n,
          'shards': names, 'images_per_shard': images_per_shard,
          'num_boxes': int(index['num_boxes'].sum()),
          'num_crowd_boxes': int(index['num_crowd'].sum()),
          'num_dropped_annotations': int(sum(int((~p['kept']).sum()) for p in parsed)),
          'num_images_with_boxes': int((index['num_boxes'] > 0).sum()),
          'size_mismatches': mismatches, 'exif_rotated': exif_rotated,
          'zips': [images_zip_path, ann_zip_path]}

  def save_meta(tmp):
    with open(tmp, 'w') as f:
      json.dump(meta, f, indent=1)

  _write_atomic(os.path.join(data_dir, done_name(split)), save_meta)
  print(f'[coco {split}] done: {n} images in {len(names)} shard(s), {meta["num_boxes"]} boxes, '
        f'{meta["num_crowd_boxes"]} crowd boxes, {meta["num_dropped_annotations"]} annotations '
        f'dropped (w < 1, h < 1 or area <= 0), {_fmt_seconds(time.time() - t0)}', file=out,
        flush=True)
  return meta


def prepare(zip_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None, *,
            splits: Sequence[str] = SPLITS, images_per_shard: int = IMAGES_PER_SHARD,
            progress_every: int = 1000, out: TextIO | None = None) -> dict[str, dict[str, Any]]:
  """Prepares COCO 2017 ``splits`` from the official zips in ``zip_dir`` into ``data_dir``.

  Resumable: finished shards are kept, a split already marked done is skipped (and said so).

  Args:
    zip_dir: folder holding ``annotations_trainval2017.zip`` and ``train2017.zip`` /
      ``val2017.zip`` (the ones ``splits`` need).
    data_dir: output folder (created); default :func:`default_data_dir`.
    splits: which of ``'train'``, ``'val'`` to prepare.
    images_per_shard: images per ArrayRecord shard.
    progress_every: print a progress line every this many images.
    out: where progress goes (default stdout).

  Returns:
    Each split's ``done.json`` contents.

  Raises:
    FileNotFoundError: a zip (named with its path and download address) or an entry in it is
      missing.
    ValueError: the annotation file's categories are not COCO 2017's.
  """
  out = out or sys.stdout
  zip_dir = os.path.expanduser(os.fspath(zip_dir))
  data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()
  splits = tuple(dict.fromkeys(canonical_split(s) for s in splits))
  if images_per_shard < 1 or progress_every < 1:
    raise ValueError('images_per_shard and progress_every must be >= 1')
  todo = [s for s in splits if not os.path.isfile(os.path.join(data_dir, done_name(s)))]
  for s in splits:
    if s not in todo:
      print(f'[coco {s}] already prepared in {data_dir} '
            f'({os.path.join(data_dir, done_name(s))} exists); nothing to do '
            '(delete that file to prepare the split again)', file=out, flush=True)
  result = {}
  if todo:
    need = [ANNOTATIONS_ZIP] + [IMAGES_ZIP[s] for s in todo]
    missing = [os.path.join(zip_dir, z) for z in need
               if not os.path.isfile(os.path.join(zip_dir, z))]
    if missing:
      raise FileNotFoundError(
          f'zip_dir {zip_dir} lacks ' + ', '.join(missing) + '\n'
          + '\n'.join(f'  {os.path.join(zip_dir, os.path.basename(m))}  <- '
                      f'{DOWNLOAD_URLS[os.path.basename(m)]}' for m in missing) + '\n'
          + preparation_instructions(data_dir, zip_dir, splits))
    os.makedirs(data_dir, exist_ok=True)
    with zipfile.ZipFile(os.path.join(zip_dir, ANNOTATIONS_ZIP)) as ann_zip:
      for s in todo:
        result[s] = _prepare_split(s, zip_dir, data_dir, ann_zip, images_per_shard,
                                   progress_every, out)
  for s in splits:
    if s not in result:
      result[s] = check_prepared(data_dir, s)
  return result


def check(data_dir: str | os.PathLike[str] | None = None, splits: Sequence[str] = SPLITS,
          out: TextIO | None = None) -> bool:
  """Prints what is prepared in ``data_dir``; True when every split of ``splits`` is ready."""
  out = out or sys.stdout
  data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()
  ok = True
  for split in splits:
    try:
      src = COCOSource(split, data_dir)
    except (DatasetNotPreparedError, ValueError) as e:
      print(f'{canonical_split(split)}: NOT READY: {e}', file=out)
      ok = False
      continue
    nb = src.num_boxes()
    line = (f'{src.split}: {len(src)} images in {len(src.meta["shards"])} shard(s), '
            f'{int((nb > 0).sum())} with boxes, {int(nb.sum())} boxes, '
            f'{src.meta["num_crowd_boxes"]} crowd boxes')
    if len(src):
      ex = src[0]
      line += (f'; example 0: image id {ex["image_id"]}, image {ex["image"].shape}, '
               f'{len(ex["boxes"])} boxes')
    if src.meta['size_mismatches']:
      line += (f'; {len(src.meta["size_mismatches"])} images differ in size from the '
               f'annotations (ids {src.meta["size_mismatches"][:5]})')
    if src.meta['exif_rotated']:
      line += (f'; {len(src.meta["exif_rotated"])} JPEGs carry an EXIF rotation, not applied '
               f'(ids {src.meta["exif_rotated"][:5]})')
    print(line, file=out)
  return ok


def main(argv: Sequence[str] | None = None) -> int:
  """``--prepare --zip_dir Z --data_dir D [--splits train,val]``, or ``--check --data_dir D``."""
  parser = argparse.ArgumentParser(
      prog='python -m fna_jax.tasks.det.coco',
      description='Prepare COCO 2017 detection from the official zips as ArrayRecord, or check '
                  'it.')
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument('--prepare', action='store_true',
                    help='prepare from the zips in --zip_dir (then check)')
  mode.add_argument('--check', action='store_true', help='check the prepared splits')
  parser.add_argument('--zip_dir',
                      help=f'folder holding {", ".join(DOWNLOAD_URLS)} (not extracted)')
  parser.add_argument('--data_dir', default=None,
                      help='output / prepared folder (default $FNA_COCO_DIR or '
                           '~/fna_jax_data/coco2017)')
  parser.add_argument('--splits', default=','.join(SPLITS),
                      help="comma-separated: 'train', 'val' (default both)")
  parser.add_argument('--images_per_shard', type=int, default=IMAGES_PER_SHARD)
  parser.add_argument('--progress_every', type=int, default=1000)
  args = parser.parse_args(argv)
  data_dir = args.data_dir or default_data_dir()
  try:
    splits = [canonical_split(s.strip()) for s in args.splits.split(',') if s.strip()]
  except ValueError as e:
    parser.error(str(e))
  if args.prepare:
    if not args.zip_dir:
      parser.error('--prepare needs --zip_dir')
    try:
      prepare(args.zip_dir, data_dir, splits=splits, images_per_shard=args.images_per_shard,
              progress_every=args.progress_every)
    except (FileNotFoundError, ValueError) as e:
      print(f'ERROR: {e}', file=sys.stderr)
      return 1
  return 0 if check(data_dir, splits) else 1


if __name__ == '__main__':
  sys.exit(main())

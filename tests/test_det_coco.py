"""Tests of fna_jax.tasks.det.coco on a FAKE tiny COCO 2017 (three zips made here)."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from fna_jax.tasks.det import coco

PREPARE_CMD = 'python -m fna_jax.tasks.det.coco --prepare --zip_dir'


def _pixels(h, w, gray=False):
  """A smooth image with different channels (a channel swap or flip shows)."""
  y, x = np.mgrid[0:h, 0:w]
  if gray:
    return (40 + 150 * y / h).astype(np.uint8)
  return np.stack([20 + 200 * x / w, 30 + 180 * y / h, np.full((h, w), 90.0)], -1).astype(np.uint8)


# Each annotation carries what MMDetection v1's _parse_ann_info must make of it, worked out by
# hand: ('box', label, [x, y, x + w - 1, y + h - 1]), ('crowd', [...]) or ('drop', why).
# Labels: category id -> position among COCO's 80 ids (1..11 -> 0..10, 13..25 -> 11..23,
# 27, 28 -> 24, 25, 31..44 -> 26..39, ..., 90 -> 79).
TRAIN_IMAGES = [  # (id, width, height, gray), in file order (not sorted by id)
    (391, 40, 32, False), (9, 24, 36, False), (77, 30, 20, False)]
TRAIN_ANNS = [  # file order interleaves the images
    ({'id': 23, 'image_id': 77, 'category_id': 44, 'bbox': [10, 2, 15.5, 12], 'area': 100.0,
      'iscrowd': 0}, ('box', 39, [10, 2, 24.5, 13])),
    ({'id': 14, 'image_id': 391, 'category_id': 90, 'bbox': [20.25, 1, 1.0, 30.5], 'area': 10.0,
      'iscrowd': 0}, ('box', 79, [20.25, 1, 20.25, 30.5])),
    ({'id': 11, 'image_id': 391, 'category_id': 1, 'bbox': [2.5, 3.25, 10.0, 7.5], 'area': 60.0,
      'iscrowd': 0}, ('box', 0, [2.5, 3.25, 11.5, 9.75])),
    ({'id': 12, 'image_id': 391, 'category_id': 18, 'bbox': [0, 0, 0.5, 5], 'area': 2.5,
      'iscrowd': 0}, ('drop', 'w < 1')),
    ({'id': 13, 'image_id': 391, 'category_id': 90, 'bbox': [5, 6, 20, 12], 'area': 200.0,
      'iscrowd': 1}, ('crowd', [5, 6, 24, 17])),
    ({'id': 21, 'image_id': 77, 'category_id': 18, 'bbox': [1, 1, 5, 5], 'area': 0.0,
      'iscrowd': 0}, ('drop', 'area <= 0')),
    ({'id': 22, 'image_id': 77, 'category_id': 62, 'bbox': [3, 4, 2, 0.99], 'area': 1.5,
      'iscrowd': 0}, ('drop', 'h < 1')),
    ({'id': 24, 'image_id': 77, 'category_id': 1, 'bbox': [1, 1, 4, 4], 'area': 16.0,
      'iscrowd': 0, 'ignore': 1}, ('drop', 'ignore')),
    ({'id': 25, 'image_id': 77, 'category_id': 18, 'bbox': [0, 0, 1, 1], 'area': 1.0,
      'iscrowd': 0}, ('box', 16, [0, 0, 0, 0])),  # a 1x1 box is kept: x2 = x1
]
VAL_IMAGES = [(5001, 32, 24, True), (4999, 28, 28, False)]
VAL_ANNS = [
    ({'id': 31, 'image_id': 5001, 'category_id': 3, 'bbox': [1.5, 2.5, 8, 6], 'area': 48.0,
      'iscrowd': 0}, ('box', 2, [1.5, 2.5, 8.5, 7.5])),
    ({'id': 32, 'image_id': 5001, 'category_id': 1, 'bbox': [0, 0, 10, 10], 'area': 100.0,
      'iscrowd': 1}, ('crowd', [0, 0, 9, 9])),
    ({'id': 33, 'image_id': 4999, 'category_id': 90, 'bbox': [0, 0, 28, 28], 'area': 784.0,
      'iscrowd': 0}, ('box', 79, [0, 0, 27, 27])),
]
SPLIT_DATA = {'train': (TRAIN_IMAGES, TRAIN_ANNS), 'val': (VAL_IMAGES, VAL_ANNS)}


def _categories():
  cats = [{'supercategory': 'x', 'id': i, 'name': n}
          for i, n in zip(coco.CATEGORY_IDS, coco.CLASS_NAMES)]
  return cats[::-1]  # file order must not matter


def _gt_json(split):
  images, anns = SPLIT_DATA[split]
  return {'info': {'description': 'fake'}, 'licenses': [],
          'images': [{'id': i, 'width': w, 'height': h, 'file_name': f'{i:012d}.jpg'}
                     for i, w, h, _ in images],
          'annotations': [a for a, _ in anns], 'categories': _categories()}


def _make_zips(zip_dir, skip_entry=None, categories=None, wrong_width=None, exif_rotate=None):
  """The three official zips in miniature; returns {file name in zip: JPEG bytes}.

  ``wrong_width``: an image id whose width the annotation file overstates by one;
  ``exif_rotate``: an image id saved with EXIF orientation 6 (rotate 90 degrees on display).
  """
  os.makedirs(zip_dir, exist_ok=True)
  jpegs = {}
  for split, folder in (('train', 'train2017'), ('val', 'val2017')):
    with zipfile.ZipFile(os.path.join(zip_dir, f'{folder}.zip'), 'w') as z:
      for i, w, h, gray in SPLIT_DATA[split][0]:
        buf = io.BytesIO()
        exif = Image.Exif()
        if i == exif_rotate:
          exif[0x0112] = 6
        Image.fromarray(_pixels(h, w, gray)).save(buf, format='JPEG', quality=95, exif=exif)
        name = f'{folder}/{i:012d}.jpg'
        jpegs[name] = buf.getvalue()
        if name != skip_entry:
          z.writestr(name, buf.getvalue())
  with zipfile.ZipFile(os.path.join(zip_dir, coco.ANNOTATIONS_ZIP), 'w',
                       zipfile.ZIP_DEFLATED) as z:
    for split in ('train', 'val'):
      gt = _gt_json(split)
      if categories is not None:
        gt['categories'] = categories
      for im in gt['images']:
        if im['id'] == wrong_width:
          im['width'] += 1
      z.writestr(f'annotations/instances_{split}2017.json', json.dumps(gt))
    z.writestr('annotations/captions_val2017.json', '{}')
  return jpegs


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('coco')
  zip_dir, data_dir = str(root / 'zips'), str(root / 'data')
  jpegs = _make_zips(zip_dir)
  log = io.StringIO()
  meta = coco.prepare(zip_dir, data_dir, images_per_shard=2, progress_every=1, out=log)
  return {'zip_dir': zip_dir, 'data_dir': data_dir, 'jpegs': jpegs, 'meta': meta,
          'log': log.getvalue()}


def _expected(split):
  """Per image, in file order: (image id, boxes, labels, crowd boxes, kept ann ids) from the
  hand-worked outcomes above."""
  images, anns = SPLIT_DATA[split]
  out = []
  for i, _, _, _ in images:
    boxes, labels, crowd, ids = [], [], [], []
    for a, want in anns:
      if a['image_id'] != i:
        continue
      if want[0] == 'box':
        labels.append(want[1])
        boxes.append(want[2])
        ids.append(a['id'])
      elif want[0] == 'crowd':
        crowd.append(want[1])
    out.append((i, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32),
                np.asarray(crowd, np.float32).reshape(-1, 4), ids))
  return out


def test_category_constants_by_hand():
  assert len(coco.CATEGORY_IDS) == len(coco.CLASS_NAMES) == coco.NUM_CLASSES == 80
  assert list(coco.CATEGORY_IDS) == sorted(set(coco.CATEGORY_IDS))  # category-id order
  assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(coco.CATEGORY_IDS)
  assert coco.CATEGORY_IDS[0] == 1 and coco.CLASS_NAMES[0] == 'person'
  assert coco.CATEGORY_IDS[16] == 18 and coco.CLASS_NAMES[16] == 'dog'
  assert coco.CATEGORY_IDS[39] == 44 and coco.CLASS_NAMES[39] == 'bottle'
  assert coco.CATEGORY_IDS[79] == 90 and coco.CLASS_NAMES[79] == 'toothbrush'
  assert coco.COCOSource.CATEGORY_IDS == coco.CATEGORY_IDS
  assert coco.COCOSource.CLASS_NAMES == coco.CLASS_NAMES


@pytest.mark.parametrize('split', ['train', 'val'])
def test_records_hold_v1_boxes_labels_and_ids(prepared, split):
  src = coco.COCOSource(split, prepared['data_dir'])
  want = _expected(split)
  assert len(src) == len(want)
  np.testing.assert_array_equal(src.image_ids, [w[0] for w in want])
  for k, (image_id, boxes, labels, crowd, ids) in enumerate(want):
    ex = src[k]
    assert set(ex) == {'image', 'boxes', 'labels', 'image_id'}
    assert ex['image_id'] == image_id and isinstance(ex['image_id'], int)
    assert ex['boxes'].dtype == np.float32 and ex['labels'].dtype == np.int32
    np.testing.assert_array_equal(ex['boxes'], boxes)  # exact: x + w - 1 is exact in float32
    np.testing.assert_array_equal(ex['labels'], labels)
    rec = src.record(k)
    np.testing.assert_array_equal(rec['crowd_boxes'], crowd)
    np.testing.assert_array_equal(rec['ann_ids'], ids)
    _, w, h, _ = SPLIT_DATA[split][0][k]
    assert (rec['height'], rec['width']) == (h, w) and rec['file_name'] == f'{image_id:012d}.jpg'
  np.testing.assert_array_equal(src.image_hw, [[h, w] for _, w, h, _ in SPLIT_DATA[split][0]])


def test_images_decode_to_the_same_pixels(prepared):
  for split, folder in (('train', 'train2017'), ('val', 'val2017')):
    src = coco.COCOSource(split, prepared['data_dir'])
    for k, (i, w, h, gray) in enumerate(SPLIT_DATA[split][0]):
      jpeg = prepared['jpegs'][f'{folder}/{i:012d}.jpg']
      assert src.record(k)['jpeg'] == jpeg  # the zip's bytes, not re-encoded
      image = src[k]['image']
      assert image.dtype == np.uint8 and image.shape == (h, w, 3)
      with Image.open(io.BytesIO(jpeg)) as im:
        np.testing.assert_array_equal(image, np.asarray(im.convert('RGB')))
      # And close to what was encoded (quality 95 on a smooth picture: a few grey levels).
      ref = _pixels(h, w, gray)
      ref = np.repeat(ref[..., None], 3, -1) if gray else ref
      assert np.abs(image.astype(int) - ref).mean() < 3


def test_num_boxes_from_the_index(prepared):
  for split, want in (('train', [2, 0, 2]), ('val', [1, 1])):  # counted by hand above
    src = coco.COCOSource(split, prepared['data_dir'])
    nb = src.num_boxes()
    assert nb.dtype == np.int32
    np.testing.assert_array_equal(nb, want)
    np.testing.assert_array_equal(nb, [len(src[k]['boxes']) for k in range(len(src))])
  # It is read from the index, not from the records: a record-free source still answers.
  src = coco.COCOSource('train', prepared['data_dir'])
  src._records = None  # pylint: disable=protected-access
  np.testing.assert_array_equal(src.num_boxes(), [2, 0, 2])


def test_coco_gt(prepared):
  va = coco.COCOSource('val', prepared['data_dir'])
  assert va.coco_gt() == _gt_json('val')  # the official file, unchanged
  tr = coco.COCOSource('train', prepared['data_dir'])
  gt = tr.coco_gt()
  assert gt['images'] == [{'id': i, 'file_name': f'{i:012d}.jpg', 'height': h, 'width': w}
                          for i, w, h, _ in TRAIN_IMAGES]
  assert [c['id'] for c in gt['categories']] == list(coco.CATEGORY_IDS)
  assert [c['name'] for c in gt['categories']] == list(coco.CLASS_NAMES)
  # Kept annotations (crowd too), grouped by image in image order, each image's in file order.
  kept = [a for i, *_ in TRAIN_IMAGES for a, want in TRAIN_ANNS
          if a['image_id'] == i and want[0] != 'drop']
  assert [a['id'] for a in gt['annotations']] == [14, 11, 13, 23, 25]
  for got, a in zip(gt['annotations'], kept):
    assert got == {k: a[k] for k in ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd')}
  # bbox is xywh with w = x2 - x1 + 1 of the stored v1 boxes.
  by_id = {a['id']: a['bbox'] for a in gt['annotations']}
  for k in range(len(tr)):
    rec = tr.record(k)
    for box, ann_id in zip(rec['boxes'], rec['ann_ids']):
      x1, y1, x2, y2 = box.astype(np.float64)
      np.testing.assert_allclose(by_id[int(ann_id)], [x1, y1, x2 - x1 + 1, y2 - y1 + 1])


def test_shards_pickle_and_aliases(prepared):
  meta = prepared['meta']
  assert meta['train']['shards'] == ['coco2017-train.array_record-00000-of-00002',
                                     'coco2017-train.array_record-00001-of-00002']
  assert meta['train']['num_boxes'] == 4 and meta['train']['num_crowd_boxes'] == 1
  assert meta['train']['num_dropped_annotations'] == 4
  for name in meta['train']['shards'] + meta['val']['shards']:
    assert os.path.isfile(os.path.join(prepared['data_dir'], name))
  assert not [n for n in os.listdir(prepared['data_dir']) if n.endswith('.tmp')]
  src = coco.COCOSource('validation', prepared['data_dir'])
  assert src.split == 'val' and coco.canonical_split('valid') == 'val'
  with pytest.raises(ValueError, match='unknown COCO split'):
    coco.COCOSource('test', prepared['data_dir'])
  back = pickle.loads(pickle.dumps(src))
  for k in range(len(src)):
    a, b = src[k], back[k]
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['boxes'], b['boxes'])
  assert src[-1]['image_id'] == src[len(src) - 1]['image_id']
  with pytest.raises(IndexError):
    src[len(src)]


def test_progress_lines(prepared):
  log = prepared['log']
  for n in (1, 2, 3):
    assert f'[coco train] {n}/3 images' in log
  assert '[coco val] 2/2 images' in log and '[coco train] done: 3 images in 2 shard(s)' in log


def test_record_codec_round_trip_without_pickle():
  rec = {'image_id': 7, 'name': 'x.jpg', 'jpeg': b'\xff\xd8abc', 'boxes': np.zeros((0, 4),
         np.float32), 'ids': np.array([3, 2**40], np.int64)}
  back = coco.decode_record(coco.encode_record(rec))
  assert back['image_id'] == 7 and back['name'] == 'x.jpg' and back['jpeg'] == b'\xff\xd8abc'
  assert back['boxes'].shape == (0, 4) and back['boxes'].dtype == np.float32
  np.testing.assert_array_equal(back['ids'], rec['ids'])
  assert back['ids'].dtype == np.int64
  with pytest.raises(ValueError, match='object arrays'):
    coco.decode_record(coco.encode_record({'a': np.array([None], object)}))


def test_missing_zips_are_named(tmp_path):
  zip_dir, data_dir = str(tmp_path / 'zips'), str(tmp_path / 'data')
  os.makedirs(zip_dir)
  with pytest.raises(FileNotFoundError) as err:
    coco.prepare(zip_dir, data_dir, out=io.StringIO())
  msg = str(err.value)
  for z, url in coco.DOWNLOAD_URLS.items():
    assert os.path.join(zip_dir, z) in msg and url in msg
  assert f'{PREPARE_CMD} {zip_dir} --data_dir {data_dir}' in msg
  _make_zips(zip_dir)
  os.remove(os.path.join(zip_dir, 'train2017.zip'))
  with pytest.raises(FileNotFoundError) as err:
    coco.prepare(zip_dir, data_dir, out=io.StringIO())
  lacks = str(err.value).split('\n')[0]
  assert lacks == f'zip_dir {zip_dir} lacks {os.path.join(zip_dir, "train2017.zip")}'
  coco.prepare(zip_dir, data_dir, splits=['val'], out=io.StringIO())  # val needs no train zip
  assert len(coco.COCOSource('val', data_dir)) == 2
  with pytest.raises(coco.DatasetNotPreparedError,
                     match=f'missing {data_dir}/coco2017-train.done.json'):
    coco.COCOSource('train', data_dir)


def test_missing_zip_entry_and_wrong_categories(tmp_path):
  _make_zips(tmp_path / 'a', skip_entry='val2017/000000004999.jpg')
  with pytest.raises(FileNotFoundError, match='holds no val2017/000000004999.jpg'):
    coco.prepare(tmp_path / 'a', tmp_path / 'da', splits=['val'], out=io.StringIO())
  assert not os.path.exists(tmp_path / 'da' / coco.done_name('val'))  # not marked done
  cats = _categories()[1:] + [{'id': 91, 'name': 'banner'}]
  _make_zips(tmp_path / 'b', categories=cats)
  with pytest.raises(ValueError, match=r"not the 80 of COCO 2017.*\(91, 'banner'\)"):
    coco.prepare(tmp_path / 'b', tmp_path / 'db', splits=['val'], out=io.StringIO())


def test_source_names_what_is_missing(prepared, tmp_path):
  empty = str(tmp_path / 'empty')
  with pytest.raises(coco.DatasetNotPreparedError) as err:
    coco.COCOSource('train', empty)
  msg = str(err.value)
  assert isinstance(err.value, FileNotFoundError)
  assert os.path.join(empty, 'coco2017-train.done.json') in msg
  assert f'{PREPARE_CMD} Z --data_dir {empty} --splits train' in msg
  assert 'http://images.cocodataset.org/zips/train2017.zip' in msg
  data_dir = str(tmp_path / 'copy')
  shutil.copytree(prepared['data_dir'], data_dir)
  os.remove(os.path.join(data_dir, 'coco2017-train.array_record-00001-of-00002'))
  os.remove(os.path.join(data_dir, coco.VAL_JSON))
  with pytest.raises(coco.DatasetNotPreparedError) as err:
    coco.COCOSource('train', data_dir)
  assert str(err.value).startswith(
      f'COCO 2017 train is not prepared in {data_dir}: missing '
      f'{data_dir}/coco2017-train.array_record-00001-of-00002.')
  with pytest.raises(coco.DatasetNotPreparedError, match=f'missing {data_dir}/{coco.VAL_JSON}'):
    coco.COCOSource('val', data_dir)


def test_rerun_resumes_and_a_finished_dir_says_so(prepared, tmp_path):
  data_dir = str(tmp_path / 'd')
  shutil.copytree(prepared['data_dir'], data_dir)
  # Simulate an interrupted run: the split is not marked done, its last shard was being written.
  last = os.path.join(data_dir, 'coco2017-train.array_record-00001-of-00002')
  os.remove(os.path.join(data_dir, coco.done_name('train')))
  os.rename(last, last + '.tmp')
  first = os.path.join(data_dir, 'coco2017-train.array_record-00000-of-00002')
  first_stat = os.stat(first)
  with pytest.raises(coco.DatasetNotPreparedError, match='did not finish; run it again'):
    coco.COCOSource('train', data_dir)
  log = io.StringIO()
  coco.prepare(prepared['zip_dir'], data_dir, images_per_shard=2, out=log)
  text = log.getvalue()
  assert '[coco train] shard 1/2 already written, kept' in text
  assert '[coco val] already prepared' in text and 'nothing to do' in text
  assert os.stat(first).st_mtime_ns == first_stat.st_mtime_ns  # not rewritten
  assert not os.path.exists(last + '.tmp')
  # A shard that does not hold the expected images (same count, other images) is rewritten.
  os.remove(os.path.join(data_dir, coco.done_name('train')))
  shutil.copy(os.path.join(prepared['data_dir'], 'coco2017-val.array_record-00000-of-00001'),
              first)
  log = io.StringIO()
  coco.prepare(prepared['zip_dir'], data_dir, images_per_shard=2, out=log)
  assert 'shard 1/2 already written' not in log.getvalue()
  assert 'shard 2/2 already written, kept' in log.getvalue()
  first_stat = os.stat(first)
  src, ref = coco.COCOSource('train', data_dir), coco.COCOSource('train', prepared['data_dir'])
  for k in range(len(ref)):
    assert _same(src.record(k), ref.record(k))
  # Finished: a rerun does nothing (no zips needed any more) and says so.
  log = io.StringIO()
  coco.prepare(str(tmp_path / 'no_zips_here'), data_dir, out=log)
  assert log.getvalue().count('already prepared') == 2
  assert os.stat(first).st_mtime_ns == first_stat.st_mtime_ns


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], np.ndarray):
      np.testing.assert_array_equal(a[k], b[k])
    else:
      assert a[k] == b[k], k
  return True


def test_cli(prepared, tmp_path, capsys):
  data_dir = str(tmp_path / 'd')
  assert coco.main(['--check', '--data_dir', data_dir]) == 1
  out = capsys.readouterr().out
  assert 'train: NOT READY' in out and 'val: NOT READY' in out
  assert coco.main(['--prepare', '--zip_dir', str(tmp_path / 'nothing'), '--data_dir',
                    data_dir]) == 1
  assert 'lacks' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    coco.main(['--prepare', '--data_dir', data_dir])  # --zip_dir missing
  with pytest.raises(SystemExit):
    coco.main(['--check', '--data_dir', data_dir, '--splits', 'test'])
  assert coco.main(['--prepare', '--zip_dir', prepared['zip_dir'], '--data_dir', data_dir,
                    '--images_per_shard', '1', '--progress_every', '2']) == 0
  out = capsys.readouterr().out
  assert '[coco train] 2/3 images' in out and '[coco train] 1/3 images' not in out
  assert 'train: 3 images in 3 shard(s), 2 with boxes, 4 boxes, 1 crowd boxes' in out
  assert 'val: 2 images in 2 shard(s), 2 with boxes, 2 boxes, 1 crowd boxes' in out
  assert 'example 0: image id 391, image (32, 40, 3), 2 boxes' in out
  # The module runs as a script.
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.run([sys.executable, '-m', 'fna_jax.tasks.det.coco', '--check', '--data_dir',
                         data_dir, '--splits', 'val'], capture_output=True, text=True, env=env,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith('val: 2 images')


def test_size_mismatch_and_exif_rotation_are_reported(tmp_path, capsys):
  _make_zips(tmp_path / 'z', wrong_width=4999, exif_rotate=5001)
  log = io.StringIO()
  meta = coco.prepare(tmp_path / 'z', tmp_path / 'd', splits=['val'], out=log)
  assert ('[coco val] WARNING: val2017/000000004999.jpg is 28x28 but the annotation file says '
          '29x28') in log.getvalue()
  assert meta['val']['size_mismatches'] == [4999] and meta['val']['exif_rotated'] == [5001]
  assert coco.check(tmp_path / 'd', ['val'])
  out = capsys.readouterr().out
  assert '1 images differ in size from the annotations (ids [4999])' in out
  assert '1 JPEGs carry an EXIF rotation, not applied (ids [5001])' in out
  src = coco.COCOSource('val', tmp_path / 'd')
  assert src[0]['image'].shape == (24, 32, 3)  # stored pixels, not rotated

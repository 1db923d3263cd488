"""Tests of fna_jax.tasks.seg.cityscapes (no real data: error paths and a mocked TFDS source)."""

from __future__ import annotations

import glob
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile

import chex
import numpy as np
import pytest

from fna_jax.data import pipeline
from fna_jax.tasks.seg import cityscapes
from fna_jax.tasks.seg import pipeline as seg_pipeline

PREPARE_CMD = 'python -m fna_jax.tasks.seg.cityscapes --prepare --manual_dir'


# ----------------------------------------------------------------------------------------------
# Label mapping


@pytest.mark.parametrize('label_id, train_id', [
    (7, 0), (8, 1), (11, 2), (24, 11), (26, 13), (33, 18), (0, 255), (1, 255), (6, 255), (9, 255),
    (29, 255), (30, 255), (34, 255), (200, 255), (255, 255)])
def test_to_train_ids_hand_picked(label_id, train_id):
  out = cityscapes.to_train_ids(np.array([[label_id]], np.uint8))
  assert out.dtype == np.uint8
  assert int(out[0, 0]) == train_id


def test_to_train_ids_wider_dtypes_and_negative_ids():
  ids = np.array([[-1, 7, 26], [33, 256, 1000]], np.int32)
  np.testing.assert_array_equal(cityscapes.to_train_ids(ids), [[255, 0, 13], [18, 255, 255]])
  with pytest.raises(TypeError, match='integers'):
    cityscapes.to_train_ids(np.zeros(2, np.float32))


def test_mapping_covers_19_classes_once():
  lut = cityscapes.to_train_ids(np.arange(256, dtype=np.uint8))
  train_ids = lut[lut != 255]
  assert sorted(train_ids.tolist()) == list(range(19))  # each train id from exactly one labelId
  assert np.flatnonzero(lut != 255).tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25,
                                                 26, 27, 28, 31, 32, 33]
  assert len(cityscapes.CLASS_NAMES) == 19
  assert cityscapes.CLASS_NAMES[0] == 'road' and cityscapes.CLASS_NAMES[13] == 'car'
  assert cityscapes.CLASS_NAMES[18] == 'bicycle'


# ----------------------------------------------------------------------------------------------
# Missing or unreadable data


def _assert_instructions(message: str, data_dir: str):
  for needle in ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip', 'manual_dir',
                 'cityscapes-dataset.com', PREPARE_CMD, f'--data_dir {data_dir}',
                 'pip install tensorflow-cpu importlib_resources', "file_format='array_record'"):
    assert needle in message, f'{needle!r} missing from:\n{message}'


def test_empty_data_dir_explains_how_to_prepare(tmp_path):
  with pytest.raises(cityscapes.DatasetNotPreparedError) as err:
    cityscapes.CityscapesSource('train', tmp_path)
  assert isinstance(err.value, FileNotFoundError)
  message = str(err.value)
  assert cityscapes.version_dir(tmp_path) in message
  _assert_instructions(message, str(tmp_path))


def test_tfrecord_data_is_reported(tmp_path):
  vdir = cityscapes.version_dir(tmp_path)
  os.makedirs(vdir)
  for i in range(2):
    open(os.path.join(vdir, f'cityscapes-train.tfrecord-0000{i}-of-00002'), 'w').close()
  open(os.path.join(vdir, 'dataset_info.json'), 'w').close()
  with pytest.raises(cityscapes.DatasetNotPreparedError, match='TFRecord') as err:
    cityscapes.CityscapesSource('train', tmp_path)
  _assert_instructions(str(err.value), str(tmp_path))
  # The validation split has no files at all.
  with pytest.raises(cityscapes.DatasetNotPreparedError, match='validation.*no ArrayRecord'):
    cityscapes.CityscapesSource('val', tmp_path)


def test_other_version_and_incomplete_preparation_are_reported(tmp_path):
  parent = os.path.dirname(cityscapes.version_dir(tmp_path))
  os.makedirs(os.path.join(parent, '0.9.0'))
  with pytest.raises(cityscapes.DatasetNotPreparedError, match=r"\['0.9.0'\].*reads version 1.0.0"):
    cityscapes.CityscapesSource('train', tmp_path)
  os.makedirs(os.path.join(parent, 'incomplete.4S815V_1.0.0'))  # tfds 4.9.10's naming
  with pytest.raises(cityscapes.DatasetNotPreparedError, match='did not finish'):
    cityscapes.CityscapesSource('train', tmp_path)


def test_split_names():
  assert cityscapes.canonical_split('val') == 'validation'
  assert cityscapes.canonical_split('train[:10%]') == 'train[:10%]'
  assert cityscapes.canonical_split('val[5:]') == 'validation[5:]'
  with pytest.raises(ValueError, match='unknown Cityscapes split'):
    cityscapes.canonical_split('training')


def test_check_cli_reports_missing_data(tmp_path, capsys):
  assert cityscapes.main(['--check', '--data_dir', str(tmp_path)]) == 1
  _assert_instructions(capsys.readouterr().err, str(tmp_path))


def test_prepare_checks_the_zips_first(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'gtFine_trainvaltest.zip').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match=r"lacks \['leftImg8bit_trainvaltest.zip'\]"):
    cityscapes.prepare(str(manual), str(tmp_path / 'data'))


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None,
                    reason='tensorflow is installed: preparation would run')
def test_prepare_without_tensorflow_says_what_to_install(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in cityscapes.ZIP_FILES:
    (manual / name).write_bytes(b'')
  with pytest.raises(ImportError, match='pip install tensorflow-cpu importlib_resources'):
    cityscapes.prepare(str(manual), str(tmp_path / 'data'))


# ----------------------------------------------------------------------------------------------
# Mocked TFDS data source -> CityscapesSource -> grain pipeline


def _write_metadata(data_dir: str, num_examples: dict[str, int]) -> None:
  """Writes the metadata of a prepared ArrayRecord dataset, with empty placeholder shards."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  vdir = cityscapes.version_dir(data_dir)
  os.makedirs(vdir)
  tfds.features.FeaturesDict({
      'image_id': tfds.features.Text(),
      'image_left': tfds.features.Image(shape=(1024, 2048, 3), encoding_format='png'),
      'segmentation_label': tfds.features.Image(shape=(1024, 2048, 1), encoding_format='png',
                                                use_colormap=True),
  }).save_config(vdir)
  splits = []
  for split, n in num_examples.items():
    splits.append({'name': split, 'shardLengths': [str(n)], 'numBytes': '0',
                   'filepathTemplate': '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'})
    # check_prepared only looks for the files; the mock never reads them.
    open(os.path.join(vdir, f'cityscapes-{split}.array_record-00000-of-00001'), 'w').close()
  info = {'name': 'cityscapes', 'configName': 'semantic_segmentation', 'version': '1.0.0',
          'fileFormat': 'array_record', 'splits': splits}
  with open(os.path.join(vdir, 'dataset_info.json'), 'w') as f:
    json.dump(info, f)


def test_mocked_source_feeds_the_pipelines(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path)
  _write_metadata(data_dir, {'train': 4, 'validation': 3})
  # The mock generates random examples with the builder's features: 1024x2048 images and random
  # label values 0-254 (not just 0-33), which to_train_ids maps like any other value.
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=data_dir):
    src = cityscapes.CityscapesSource('train', data_dir)
    assert len(src) == 4
    ex = src[1]
    chex.assert_shape(ex['image'], (1024, 2048, 3))
    chex.assert_shape(ex['label'], (1024, 2048))
    assert ex['image'].dtype == np.uint8 and ex['label'].dtype == np.uint8
    raw = src._source[1]['segmentation_label'][..., 0]  # pylint: disable=protected-access
    np.testing.assert_array_equal(ex['label'], cityscapes.to_train_ids(raw))
    assert set(np.unique(ex['label']).tolist()) <= set(range(19)) | {255}

    weight, arch = pipeline.split_train_arch(len(src), 0.25)
    ds = seg_pipeline.make_seg_pipeline(src, indices=weight, batch_size=2, crop_size=(24, 40),
                                    resize_to=(32, 64), shard_by_process=False)
    batch = next(iter(ds))
    chex.assert_shape(batch['image'], (2, 24, 40, 3))
    chex.assert_shape(batch['label'], (2, 24, 40))
    # uint8 training images (normalised in the jitted steps, fna_jax.runtime.inputs)
    assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
    assert set(np.unique(batch['label']).tolist()) <= set(range(19)) | {255}

    val = cityscapes.CityscapesSource('val', data_dir)
    assert val.split == 'validation'
    batches = list(seg_pipeline.make_eval_pipeline(val, indices=arch, batch_size=2, resize_to=(16, 32),
                                               shard_by_process=False))
    assert len(batches) == 1
    chex.assert_shape(batches[0]['image'], (1, 16, 32, 3))


# ----------------------------------------------------------------------------------------------
# End to end: tiny fake zips -> preparation with TensorFlow -> reading without it


def _tf_python() -> str | None:
  """A python with TensorFlow: $FNA_TF_PYTHON, or this one when it has TensorFlow."""
  if os.environ.get('FNA_TF_PYTHON'):
    return os.environ['FNA_TF_PYTHON']
  if importlib.util.find_spec('tensorflow') is not None:
    return sys.executable
  return None


def _png(array: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _write_fake_zips(manual_dir: str, num_images: dict[str, int], h: int = 8,
                     w: int = 16) -> dict[str, list[np.ndarray]]:
  """Writes the two Cityscapes zips with the official layout; returns the labelId maps."""
  rng = np.random.default_rng(0)
  label_maps = {}
  with zipfile.ZipFile(os.path.join(manual_dir, 'leftImg8bit_trainvaltest.zip'), 'w') as zi, \
       zipfile.ZipFile(os.path.join(manual_dir, 'gtFine_trainvaltest.zip'), 'w') as zl:
    for split, n in num_images.items():
      label_maps[split] = []
      for i in range(n):
        stem = f'aachen_{i:06d}_000019'
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 34, (h, w), dtype=np.uint8)
        zi.writestr(f'leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png', _png(image))
        zl.writestr(f'gtFine/{split}/aachen/{stem}_gtFine_labelIds.png', _png(label))
        label_maps[split].append(label)
  return label_maps


@pytest.mark.skipif(_tf_python() is None,
                    reason='needs TensorFlow for the preparation step (set FNA_TF_PYTHON to a '
                           'python that has tensorflow-cpu and importlib_resources)')
def test_prepare_then_read_without_tensorflow(tmp_path):
  manual, data_dir = tmp_path / 'manual', tmp_path / 'data'
  manual.mkdir()
  label_maps = _write_fake_zips(str(manual), {'train': 3, 'val': 2, 'test': 1})
  package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cityscapes.__file__))))
  env = {**os.environ, 'PYTHONPATH': os.path.dirname(package)}
  proc = subprocess.run(
      [_tf_python(), '-m', 'fna_jax.tasks.seg.cityscapes', '--prepare', '--manual_dir', str(manual),
       '--data_dir', str(data_dir)], env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'train: 3 examples' in proc.stdout
  vdir = cityscapes.version_dir(data_dir)
  assert glob.glob(os.path.join(vdir, 'cityscapes-train.array_record-*'))
  # Reading here needs no TensorFlow.
  train = cityscapes.CityscapesSource('train', data_dir)
  val = cityscapes.CityscapesSource('val', data_dir)
  assert len(train) == 3 and len(val) == 2
  expected = sorted(cityscapes.to_train_ids(m).tobytes() for m in label_maps['train'])
  got = sorted(train[i]['label'].tobytes() for i in range(3))
  assert got == expected  # the builder keeps no fixed order; compare as sets of label maps
  chex.assert_shape(train[0]['image'], (8, 16, 3))
  batch = next(iter(seg_pipeline.make_seg_pipeline(train, batch_size=2, crop_size=8,
                                               shard_by_process=False)))
  chex.assert_shape(batch['label'], (2, 8, 8))


# ----------------------------------------------------------------------------------------------
# Weight / arch split of the training set


def test_split_train_arch():
  weight, arch = pipeline.split_train_arch(2975)
  assert len(arch) == 595 and len(weight) == 2380
  assert not set(weight.tolist()) & set(arch.tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate([weight, arch])), np.arange(2975))
  assert np.all(np.diff(weight) > 0) and np.all(np.diff(arch) > 0)
  w2, a2 = pipeline.split_train_arch(2975)
  np.testing.assert_array_equal(w2, weight)
  np.testing.assert_array_equal(a2, arch)
  _, a3 = pipeline.split_train_arch(2975, seed=1)
  assert not np.array_equal(a3, arch)
  # Random, not a block: the arch split spreads over the whole range.
  assert arch.min() < 100 and arch.max() > 2875
  _, a10 = pipeline.split_train_arch(10, 0.3)
  assert len(a10) == 3
  with pytest.raises(ValueError, match='arch_fraction'):
    pipeline.split_train_arch(10, 1.0)
  with pytest.raises(ValueError, match='too small'):
    pipeline.split_train_arch(2, 0.2)

"""Tests of the pose data (fna_jax.tasks.pose): joints, crops, MPII files, the demo set, pipelines."""

from __future__ import annotations

import json
import math
import pickle

import chex
import ml_collections
import numpy as np
import pytest
from PIL import Image

from fna_jax import build
from fna_jax.data import transforms as T
from fna_jax.tasks.pose import affine
from fna_jax.tasks.pose import demo_data
from fna_jax.tasks.pose import joints as J
from fna_jax.tasks.pose import mpii
from fna_jax.tasks.pose import pipeline as P


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _take(it, n):
  return [next(it) for _ in range(n)]


# ---------------------------------------------------------------------------------------- joints
def test_joint_names_flip_pairs_and_skeleton():
  assert len(J.JOINT_NAMES) == J.NUM_JOINTS == 16
  for a, b in J.FLIP_PAIRS:  # each pair is the same joint on the right and on the left
    assert J.JOINT_NAMES[a].startswith('r_') and J.JOINT_NAMES[b] == 'l_' + J.JOINT_NAMES[a][2:]
  paired = {j for p in J.FLIP_PAIRS for j in p}
  assert all(n[:2] not in ('r_', 'l_') for j, n in enumerate(J.JOINT_NAMES) if j not in paired)
  perm = J.flip_permutation()
  assert [perm[p] for p in perm] == list(range(16))
  # The skeleton is a tree over all 16 joints (15 limbs, connected).
  assert len(J.SKELETON) == 15
  reach, changed = {6}, True
  while changed:
    new = {a for a, b in J.SKELETON if b in reach} | {b for a, b in J.SKELETON if a in reach}
    changed = not new <= reach
    reach |= new
  assert reach == set(range(16))
  assert (9, 8) in J.SKELETON and (0, 1) in J.SKELETON  # head_top-upper_neck, r_ankle-r_knee


# ---------------------------------------------------------------------------------------- affine
@pytest.mark.parametrize('rot', [0.0, 30.0, -47.0])
def test_get_affine_transform_is_the_rotated_scaled_box(rot):
  """Closed form: x' = (w_out / (200 s)) R(-rot) (x - c) + (w_out / 2, h_out / 2), y down."""
  c, s, out = np.array([120.0, 80.0]), 0.6, (64, 48)
  t = affine.get_affine_transform(c, s, rot, out)
  k = out[0] / (200 * s)
  a = math.radians(-rot)
  r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  pts = np.array([[120.0, 80.0], [10.0, 5.0], [200.0, 150.0]])
  want = (pts - c) @ (k * r).T + np.array([out[0] / 2, out[1] / 2])
  np.testing.assert_allclose(affine.affine_transform(pts, t), want, atol=1e-9)
  inv = affine.get_affine_transform(c, s, rot, out, inv=True)
  np.testing.assert_allclose(affine.affine_transform(want, inv), pts, atol=1e-9)
  np.testing.assert_allclose(affine.affine_transform(pts[1], t), want[1], atol=1e-9)


def _bilinear_reference(image: np.ndarray, t: np.ndarray, w: int, h: int) -> np.ndarray:
  """cv2.warpAffine(INTER_LINEAR, border 0) written out in numpy: output pixel (x, y) samples
  the image at t^-1 (x, y) with pixel centres at integers."""
  inv = affine.invert_affine(t)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
  sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
  x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  pad = np.pad(image.astype(np.float64), ((1, 2), (1, 2), (0, 0)))  # zeros outside
  def at(yi, xi):
    return pad[np.clip(yi + 1, 0, pad.shape[0] - 1), np.clip(xi + 1, 0, pad.shape[1] - 1)]
  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
          fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def test_warp_affine_is_bilinear_with_opencv_pixel_centres():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
  t = affine.get_affine_transform((24.0, 21.0), 0.15, 23.0, (32, 32))
  got = affine.warp_affine(image, t, (32, 32)).astype(np.float64)
  want = _bilinear_reference(image, t, 32, 32)
  inside = np.ones((32, 32), bool)
  inside[[0, -1]] = inside[:, [0, -1]] = False  # the border row/column: PIL's edge handling
  # 1.01: the uint8 rounding of the output (and PIL's fixed-point weights) is at most 1 level.
  assert np.abs(got - want)[inside].max() <= 1.01


def _dot_image(h: int, w: int, xy: np.ndarray) -> np.ndarray:
  """A Gaussian dot (sigma 1.5 px) at sub-pixel (x, y), integer pixel centres."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  g = np.exp(-((xx - xy[0]) ** 2 + (yy - xy[1]) ** 2) / (2 * 1.5 ** 2))
  return np.repeat((g * 250)[..., None], 3, axis=2).astype(np.uint8)


def _centroid(img: np.ndarray) -> np.ndarray:
  v = img[..., 0].astype(np.float64)
  v = np.where(v > 20, v, 0)
  yy, xx = np.mgrid[0:v.shape[0], 0:v.shape[1]]
  return np.array([(xx * v).sum() / v.sum(), (yy * v).sum() / v.sum()])


@pytest.mark.parametrize('mult,rot,flip', [(1.0, 0.0, False), (0.8, 35.0, False),
                                           (1.2, -50.0, True), (1.0, 0.0, True)])
def test_a_dot_at_a_joint_lands_where_the_crop_moves_the_joint(mult, rot, flip):
  """Render a dot at a joint, crop (scale / rotation / flip), find the dot: it is where the
  transformed joint says, within half a pixel (bilinear blur is symmetric)."""
  h, w = 90, 110
  joints = np.zeros((16, 2), np.float32)
  joints[:] = [55.0, 45.0]
  joints[3] = [37.3, 28.6]  # l_hip: its dot; after a flip it is the r_hip (2)
  visible = np.ones(16, np.float32)
  element = {'image': _dot_image(h, w, joints[3]), 'joints': joints, 'visible': visible,
             'center': np.array([52.0, 47.0], np.float32), 'scale': np.float32(0.4)}
  out = P.person_crop(element, (64, 64), mult, rot, flip)
  j = 2 if flip else 3
  np.testing.assert_allclose(_centroid(out['image']), out['joints'][j], atol=0.5)
  # The dot's image position computed independently: mirror (if flipped), then the crop matrix.
  x = np.array(joints[3], np.float64)
  cx = 52.0
  if flip:
    x[0], cx = w - 1 - x[0], w - 1 - cx
  t = affine.get_affine_transform((cx, 47.0), 0.4 * mult, rot, (64, 64))
  np.testing.assert_allclose(out['joints'][j], affine.affine_transform(x, t), atol=1e-4)


def test_fliplr_swaps_pairs_mirrors_x_and_zeroes_invisible_joints():
  rng = np.random.default_rng(1)
  joints = rng.uniform(0, 50, (16, 2)).astype(np.float32)
  visible = np.ones(16, np.float32)
  visible[4] = 0  # l_knee invisible -> after the flip the r_knee (1) is invisible, at 0
  got, vis = P.fliplr_joints(joints, visible, width=60)
  for j in range(16):
    src = {a: b for p in J.FLIP_PAIRS for a, b in (p, p[::-1])}.get(j, j)
    if j == 1:
      np.testing.assert_array_equal(got[j], [0, 0])
      assert vis[j] == 0
    else:
      np.testing.assert_allclose(got[j], [60 - 1 - joints[src, 0], joints[src, 1]])
      assert vis[j] == 1


# ---------------------------------------------------------------------------------------- targets
def test_generate_target_peak_values_and_weights():
  joints = np.zeros((5, 2), np.float32)
  joints[0] = [101.0, 57.0]  # stride 4: mu = (int(25.75), int(14.75)) = (25, 14)
  joints[1] = [101.0, 57.0]  # invisible
  joints[2] = [-40.0, 10.0]  # mu_x = int(-9.5) = -9: window [-15, -2] wholly left -> weight 0
  joints[3] = [-20.0, 10.0]  # mu_x = int(-4.5) = -4: window [-10, 3) reaches column 0..2
  joints[4] = [255.0, 255.0]  # mu = (64, 64): window [58, 71) still overlaps the 64x64 map
  visible = np.array([1, 0, 1, 1, 1], np.float32)
  target, weight = P.generate_target(joints, visible, (256, 256), (64, 64), 2.0)
  chex.assert_shape(target, (64, 64, 5))
  np.testing.assert_array_equal(weight, [1, 0, 0, 1, 1])
  assert np.unravel_index(np.argmax(target[..., 0]), (64, 64)) == (14, 25)
  assert target[14, 25, 0] == 1.0
  np.testing.assert_allclose(target[14, 26, 0], math.exp(-1 / 8), rtol=1e-6)
  np.testing.assert_allclose(target[16, 27, 0], math.exp(-8 / 8), rtol=1e-6)
  assert target[14, 25 + 7, 0] == 0 and target[14, 25 + 6, 0] > 0  # the window is +-3 sigma
  assert not target[..., 1].any() and not target[..., 2].any()
  # mu_y = int(10 / 4 + 0.5) = 3; column 0 lies 4 columns from mu_x = -4.
  np.testing.assert_allclose(target[3, 0, 3], math.exp(-16 / 8), rtol=1e-6)
  assert not target[:, 3:, 3].any()
  np.testing.assert_allclose(target[63, 63, 4], math.exp(-2 / 8), rtol=1e-6)
  # Non-square: strides 4 (x) and 2 (y).
  t2, _ = P.generate_target(joints[:1], visible[:1], (64, 128), (32, 32), 1.0)
  assert np.unravel_index(np.argmax(t2[..., 0]), (32, 32)) == (int(57 / 2 + 0.5), 25)


def test_train_transform_heatmap_peaks_follow_the_crop():
  src = demo_data.DemoPose('train', 4, image_size=64, seed=2)
  ex = src[1]
  tr = P.PoseTrainTransform(input_size=(64, 64), heatmap_size=(16, 16), augment=False)
  out = tr.random_map(ex, np.random.default_rng(0))
  crop = P.person_crop(ex, (64, 64))
  ex['joints'][5] = ex['center'] + [0.0, 300 * ex['scale']]  # visible, far below the crop
  ex['visible'][5] = 1
  out = tr.random_map(ex, np.random.default_rng(0))
  assert out['target_weight'][5] == 0 and not out['target'][..., 5].any()
  crop = P.person_crop(ex, (64, 64))
  for j in range(16):
    mu = (int(crop['joints'][j, 0] / 4 + 0.5), int(crop['joints'][j, 1] / 4 + 0.5))
    if out['target_weight'][j] > 0 and 0 <= mu[0] < 16 and 0 <= mu[1] < 16:
      assert np.unravel_index(np.argmax(out['target'][..., j]), (16, 16)) == (mu[1], mu[0])
    assert out['target_weight'][j] <= ex['visible'][j]
  # The crop itself, uint8 (normalised in the jitted steps, fna_jax.runtime.inputs).
  assert out['image'].dtype == np.uint8
  np.testing.assert_array_equal(out['image'], crop['image'])


# ---------------------------------------------------------------------------------------- demo
def test_demo_pose_examples_are_deterministic_and_well_formed():
  a = demo_data.DemoPose('train', 30, image_size=64, seed=3)
  assert _same(a[4], demo_data.DemoPose('train', 1000, image_size=64, seed=3)[4])
  assert not np.array_equal(a[4]['image'], demo_data.DemoPose('val', 30, 64, seed=3)[4]['image'])
  assert not np.array_equal(a[4]['image'], a[5]['image'])
  assert _same(pickle.loads(pickle.dumps(a))[7], a[7])
  exs = [a[i] for i in range(30)]
  truncated = 0
  for ex in exs:
    chex.assert_shape([ex['image'], ex['joints'], ex['visible'], ex['center'], ex['headbox']],
                      [(64, 64, 3), (16, 2), (16,), (2,), (2, 2)])
    assert ex['image'].dtype == np.uint8 and ex['scale'].shape == ()
    j = ex['joints']
    # The person box (side scale * 200) around the centre holds every joint.
    half = ex['scale'] * 100
    assert np.all(np.abs(j - ex['center']) <= half + 1e-3)
    # The head box holds the head segment's midpoint; its diagonal is head-sized.
    mid = (j[8] + j[9]) / 2
    hb = ex['headbox']
    assert np.all(hb[0] <= mid) and np.all(mid <= hb[1])
    np.testing.assert_allclose(np.linalg.norm(hb[1] - hb[0]),
                               math.sqrt(2) * np.linalg.norm(j[9] - j[8]), rtol=1e-4)
    # Joints outside the image are invisible.
    out = np.any((j < 0) | (j > 63), axis=1)
    assert not np.any(ex['visible'][out])
    truncated += int(out.any())
  assert truncated >= 1  # some people are cut by the image border
  vis = np.stack([e['visible'] for e in exs])
  assert 0.6 < vis.mean() < 0.98  # occlusions hide some joints
  js = np.stack([e['joints'] for e in exs])
  # Anatomy: head top above the neck above the thorax above the pelvis above the ankles (mostly).
  assert (js[:, 9, 1] < js[:, 8, 1]).mean() > 0.9 and (js[:, 7, 1] < js[:, 6, 1]).mean() > 0.9
  assert (js[:, 6, 1] < js[:, [0, 5], 1].min(1)).mean() > 0.8


def test_demo_pose_right_is_on_the_image_left_when_the_face_shows():
  """Hips lie on their own side of the torso axis: right hip on the image's left for a
  front view, so left/right follow the person and mirror consistently."""
  ds = demo_data.DemoPose('train', 40, image_size=64, seed=0)
  sides = []
  for i in range(40):
    j = ds[i]['joints']
    up = j[7] - j[6]
    left = np.array([up[1], -up[0]])  # image-left normal of the torso axis
    sides.append(np.sign((j[2] - j[6]) @ left))
    assert np.sign((j[2] - j[6]) @ left) == np.sign((j[12] - j[7]) @ left)  # r_hip with r_shoulder
  frac = np.mean(np.array(sides) > 0)
  assert 0.5 < frac < 0.9  # 70% front views; both kinds occur


# ---------------------------------------------------------------------------------------- mpii
def _fake_mpii(root, n_train=2, n_valid=2, gt=True):
  from scipy.io import savemat
  (root / 'images').mkdir()
  (root / 'annot').mkdir()
  rng = np.random.default_rng(0)
  entries = {}
  for split, n in (('train', n_train), ('valid', n_valid)):
    rows = []
    for i in range(n):
      name = f'{split}{i:03d}.jpg'
      Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3)).astype(np.uint8)).save(
          root / 'images' / name)
      joints = rng.uniform(1, 30, (16, 2)).round(1)
      vis = (rng.random(16) < 0.8).astype(int)
      rows.append({'image': name, 'center': [20.0 + i, 15.0], 'scale': 0.1 + 0.01 * i,
                   'joints': joints.tolist(), 'joints_vis': vis.tolist()})
    (root / 'annot' / f'{split}.json').write_text(json.dumps(rows))
    entries[split] = rows
  if gt:
    valid = entries['valid']
    pos = np.stack([np.asarray(r['joints']) for r in valid], axis=-1)  # (16, 2, N)
    missing = np.stack([1 - np.asarray(r['joints_vis']) for r in valid], axis=-1)  # (16, N)
    boxes = np.stack([[[5.0 + i, 6.0], [15.0 + i, 18.0]] for i in range(n_valid)], axis=-1)
    savemat(root / 'annot' / 'gt_valid.mat',
            {'pos_gt_src': pos, 'jnt_missing': missing, 'headboxes_src': boxes,
             'dataset_joints': np.array([['rank']], dtype=object)})
  return entries


def test_mpii_source_reads_the_simplebaseline_layout(tmp_path):
  entries = _fake_mpii(tmp_path)
  tr = mpii.MPIISource('train', str(tmp_path))
  assert len(tr) == 2 and tr.num_joints == 16
  for i, row in enumerate(entries['train']):
    ex = tr[i]
    chex.assert_shape(ex['image'], (30 + i, 40, 3))
    assert ex['image'].dtype == np.uint8
    s = row['scale']
    # SimpleBaseline: c[1] += 15 s, s *= 1.25, then 1-based -> 0-based.
    np.testing.assert_allclose(ex['center'], [row['center'][0] - 1, row['center'][1] + 15 * s - 1],
                               rtol=1e-6)
    np.testing.assert_allclose(ex['scale'], 1.25 * s, rtol=1e-6)
    np.testing.assert_allclose(ex['joints'], np.asarray(row['joints']) - 1, atol=1e-5)
    np.testing.assert_array_equal(ex['visible'], row['joints_vis'])
    assert np.isnan(ex['headbox']).all()
  va = mpii.MPIISource('val', str(tmp_path))
  ex = va[1]
  np.testing.assert_allclose(ex['headbox'], [[5.0, 5.0], [15.0, 17.0]])  # (6,6)-(16,18) 0-based
  np.testing.assert_array_equal(ex['visible'], entries['valid'][1]['joints_vis'])
  vis = ex['visible'] > 0
  np.testing.assert_allclose(ex['joints'][vis], (np.asarray(entries['valid'][1]['joints']) - 1)[vis],
                             atol=1e-5)
  assert _same(pickle.loads(pickle.dumps(va))[0], va[0])
  with pytest.raises(IndexError):
    va[2]


def test_mpii_center_minus_one_is_not_adjusted():
  c, s = mpii.adjust_center_scale([-1.0, -1.0], 2.0)
  np.testing.assert_allclose(c, [-2.0, -2.0])
  assert s == 2.0


def test_mpii_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    mpii.MPIISource('train', str(tmp_path))
  msg = str(e.value)
  assert str(tmp_path / 'images') in msg and str(tmp_path / 'annot' / 'train.json') in msg
  assert 'mpii_human_pose_v1.tar.gz' in msg and 'human-pose-estimation.pytorch' in msg
  _fake_mpii(tmp_path, gt=False)
  mpii.MPIISource('train', str(tmp_path))  # complete without the .mat
  with pytest.raises(FileNotFoundError, match='missing .*gt_valid.mat'):
    mpii.MPIISource('valid', str(tmp_path))
  (tmp_path / 'images' / 'train001.jpg').unlink()
  src = mpii.MPIISource('train', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='train001.jpg'):
    src[1]


def test_mpii_check_cli(tmp_path, capsys):
  assert mpii.main(['--check', '--data_dir', str(tmp_path)]) == 1
  assert 'NOT READY' in capsys.readouterr().out
  _fake_mpii(tmp_path, n_train=3)
  assert mpii.main(['--check', '--data_dir', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert 'train: 3 people in 3 images' in out and 'valid: 2 people' in out


def test_build_registers_pose_datasets(tmp_path):
  _fake_mpii(tmp_path)
  c = ml_collections.ConfigDict({'data': {'name': 'pose_demo', 'num_train': 7, 'num_val': 3,
                                          'image_size': 48, 'data_seed': 5, 'data_dir': ''}})
  tr, va = build.dataset(c, 'train'), build.dataset(c, 'val')
  assert len(tr) == 7 and len(va) == 3 and tr.image_size == 48 and tr.seed == 5
  assert va.split == 'val'
  c.data.name, c.data.data_dir = 'mpii', str(tmp_path)
  assert build.dataset(c, 'train').split == 'train' and build.dataset(c, 'val').split == 'valid'
  c.data.data_dir = ''
  with pytest.raises(FileNotFoundError, match='data_dir'):
    build.dataset(c, 'train')


# ---------------------------------------------------------------------------------------- pipelines
_KW = dict(batch_size=2, input_size=(64, 64), heatmap_size=(16, 16), shard_by_process=False)


def test_pose_pipeline_shapes_determinism_and_resume():
  src = demo_data.DemoPose('train', 8, image_size=48)
  it = iter(P.make_pose_pipeline(src, seed=5, **_KW))
  first = _take(it, 3)
  for b in first:
    chex.assert_shape([b['image'], b['target'], b['target_weight']],
                      [(2, 64, 64, 3), (2, 16, 16, 16), (2, 16)])
    assert b['target'].dtype == b['target_weight'].dtype == np.float32
    assert b['image'].dtype == np.uint8  # normalised in the jitted steps
  state = it.get_state()
  rest = _take(it, 3)
  again = _take(iter(P.make_pose_pipeline(src, seed=5, **_KW)), 6)
  assert all(_same(a, b) for a, b in zip(first + rest, again))
  resumed = iter(P.make_pose_pipeline(src, seed=5, **_KW))
  resumed.set_state(state)
  assert all(_same(a, b) for a, b in zip(rest, _take(resumed, 3)))
  other = _take(iter(P.make_pose_pipeline(src, seed=6, **_KW)), 3)
  assert not all(_same(a, b) for a, b in zip(first, other))


def test_augmentation_ranges_and_rates():
  rng = np.random.default_rng(0)
  draws = [P.sample_augmentation(rng, 0.25, 30.0, True) for _ in range(4000)]
  mult, rot, flip = (np.array(v) for v in zip(*draws))
  assert mult.min() >= 0.75 and mult.max() <= 1.25 and np.isclose(mult.mean(), 1, atol=0.01)
  assert np.abs(rot).max() <= 60
  assert abs((rot != 0).mean() - 0.6) < 0.03  # rotation with probability 0.6
  assert abs(flip.mean() - 0.5) < 0.03
  assert not any(P.sample_augmentation(rng, 0.25, 30.0, False)[2] for _ in range(50))


def test_pose_eval_pipeline_order_padding_and_fields():
  src = demo_data.DemoPose('val', 5, image_size=48)
  batches = list(P.make_pose_eval_pipeline(src, batch_size=2, input_size=(32, 32),
                                           shard_by_process=False))
  assert len(batches) == 3
  idx = np.concatenate([b['index'] for b in batches])
  valid = np.concatenate([b['valid'] for b in batches])
  np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, -1])
  np.testing.assert_array_equal(valid, [True] * 5 + [False])
  b = batches[1]
  chex.assert_shape([b['image'], b['center'], b['scale'], b['joints'], b['visible'],
                     b['headbox']], [(2, 32, 32, 3), (2, 2), (2,), (2, 16, 2), (2, 16), (2, 2, 2)])
  ex = src[3]
  for k in ('center', 'scale', 'joints', 'visible', 'headbox'):
    np.testing.assert_allclose(b[k][1], ex[k])
  np.testing.assert_allclose(b['image'][1], T.normalize(affine.crop(
      ex['image'], ex['center'], ex['scale'], 0.0, (32, 32))))
  # Two processes: padded to a multiple of 2 x 2; process 1 gets 1, 3 and two pads.
  p1 = list(P.make_pose_eval_pipeline(src, batch_size=2, input_size=(32, 32),
                                      shard_by_process=(1, 2)))
  np.testing.assert_array_equal(np.concatenate([b['index'] for b in p1]), [1, 3, -1, -1])
  np.testing.assert_array_equal(np.concatenate([b['valid'] for b in p1]), [1, 1, 0, 0])

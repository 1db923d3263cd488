"""The pose task (paper Sec. 4.3) through the normal entry points: search, parameter adaptation
from the supernet, evaluation (PCKh in ``eval.json``, skeleton pictures), on tiny generated
figures; and the MPII config's recipe and network (paper Tab. 6)."""

from __future__ import annotations


import jax
import numpy as np
import optax
import pytest

import _tiny_task_run as tiny_run
from configs import pose_demo, pose_mpii
from fna_jax import arch as arch_lib
from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.models.init import init_variables
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps as steps_lib
from fna_jax.tasks.pose import affine, baseline, decode, joints, pipeline


def tiny_pose_config(tmp_path_factory):
  c = pose_demo.get_config()
  c.data.update(num_train=48, num_val=10, image_size=64, input_size=(64, 64))
  c.head.channels = 16
  c.search.update(epochs=2, warmup_epochs=1, batch_size=8, w_lr_steps=(1,))
  c.adapt.update(steps=3, batch_size=8, lr_steps=(2,))
  c.eval.update(batch_size=8, num_visualize=2)
  # Heatmaps at a quarter of the input: the network's cost is counted at the input size.
  return tiny_run.shrink(c, tmp_path_factory, 64)


@pytest.mark.slow
def test_pose_pipeline_end_to_end(tmp_path_factory):
  c = tiny_pose_config(tmp_path_factory)
  run = tiny_run.run_pipeline(c, tmp_path_factory.mktemp('pose'), 'pose', {'num_joints': 16})
  saved = run.saved
  assert 0.0 <= saved['pckh'] <= 1.0 and saved['pckh'] == pytest.approx(run.result['pckh'])


def test_mpii_config_is_the_papers_recipe():
  """Paper Sec. 4.3: batch 32, 140 epochs with arch steps from 70, alphas Adam lr 3e-3 without
  weight decay, lambda 3e-5; weights and fine-tuning as SimpleBaseline (Adam lr 1e-3, x0.1 at
  epochs 90 and 120); 256x256 crops; the MobileNetV2 pose space at output stride 32."""
  c = pose_mpii.get_config()
  s, a = c.search, c.adapt
  assert (s.batch_size, s.epochs, s.warmup_epochs, s.a_lr, s.a_weight_decay, s.lam) == (
      32, 140, 70, 3e-3, 0.0, 3e-5)
  assert (s.w_optimizer, s.w_lr, s.w_lr_schedule, tuple(s.w_lr_steps)) == (
      'adam', 1e-3, 'multistep', (90, 120))
  per_epoch = 22_246 // 32
  assert (a.optimizer, a.lr, a.lr_schedule, a.steps, tuple(a.lr_steps)) == (
      'adam', 1e-3, 'multistep', 140 * per_epoch, (90 * per_epoch, 120 * per_epoch))
  assert tuple(c.data.input_size) == (256, 256) and c.data.num_joints == 16
  space = build.space(c)
  assert space.skeleton().output_stride == 32 and space.last_channels is None
  assert [len(st.candidates) for st in space.stages] == [1, 4, 4, 4, 4, 4, 1]
  assert len(joints.JOINT_NAMES) == c.data.num_joints


def test_mobilenet_v2_pose_network_is_tab6s_size():
  """MobileNetV2 + SimpleBaseline at 256x256 as the MPII config builds it: Tab. 6's 5.23M Params
  and 6.09B MAdds within 0.5%."""
  c = pose_mpii.get_config()
  net = build.task_network(c, build.space(c).task_arch(arch_lib.mobilenet_v2()))
  got = cost_lib.count(net, None, (1, 256, 256, 3))
  assert abs(got.params / 5.23e6 - 1) < 5e-3 and abs(got.madds / 6.09e9 - 1) < 5e-3, got
  assert np.isclose(got.madds, 6_086_057_984, rtol=0)  # the figure the README states


def _person(joints, center, scale, visible=None):
  j = np.asarray(joints, np.float32)
  return {'joints': j, 'visible': np.ones(len(j), np.float32) if visible is None else
          np.asarray(visible, np.float32), 'center': np.asarray(center, np.float32),
          'scale': np.float32(scale), 'headbox': np.asarray([[0, 0], [30, 40]], np.float32)}


def test_mean_pose_baseline_by_hand():
  """Two training people in 100-px boxes (scale 0.5) around different centres: in a 256x256 crop a
  joint at the centre lands at (128, 128) and one 25 px right of it at 128 + 25 * 2.56 = 192; the
  mean of (128, 128) and (192, 128) is (160, 128).  An invisible joint does not count.  Mapped to
  a validation person of scale 1 (200-px box) at (300, 300), (160, 128) is 32 / 1.28 = 25 px
  right of the centre: (325, 300)."""
  n = 16
  a = np.tile([[10.0, 10.0]], (n, 1))
  a[0] = (50.0, 50.0)                       # at the centre of its box
  b = np.tile([[10.0, 10.0]], (n, 1))
  b[0] = (225.0, 100.0)                     # 25 px right of its centre (200, 100)
  vis_b = np.ones(n)
  vis_b[1] = 0.0
  train = [_person(a, (50, 50), 0.5), _person(b, (200, 100), 0.5, vis_b)]
  mean = baseline.mean_pose(train)
  np.testing.assert_allclose(mean[0], (160.0, 128.0), atol=1e-4)
  # Joint 1 is visible in the first person only: its crop position there.
  first = affine.affine_transform(a[1:2], affine.get_affine_transform((50, 50), 0.5, 0, (256, 256)))
  np.testing.assert_allclose(mean[1], first[0], atol=1e-4)
  # Head size: |(30, 40)| * 0.6 = 30 px, so PCKh@0.5 accepts 15 px.  Joint 0 predicted at
  # (325, 300): a validation joint at (335, 300) (10 px away) counts, one at (345, 300) does not.
  near, far = np.zeros((n, 2)), np.zeros((n, 2))
  near[0], far[0] = (335.0, 300.0), (345.0, 300.0)
  vis = np.zeros(n)
  vis[0] = 1.0
  for val_joints, expected in ((near, 100.0), (far, 0.0)):
    table = baseline.mean_pose_pckh(train, [_person(val_joints, (300, 300), 1.0, vis)])
    assert table[joints.JOINT_NAMES[0]] == expected


def test_heatmap_targets_decode_back_to_the_joints():
  """SimpleBaseline's round trip: joints in a person's image -> 256x256 crop -> 64x64 Gaussian
  targets (peak at the rounded heatmap cell) -> argmax + quarter-pixel decoding -> the image.  A
  target's Gaussian is symmetric about its cell, so the quarter-pixel rule does not move it and
  the error is the rounding to the cell: at most half a heatmap pixel, i.e. 0.5 * (scale * 200
  / 64) image pixels per axis."""
  rng = np.random.default_rng(0)
  center, scale = np.array([210.0, 170.0]), 1.3
  box = scale * 200
  pts = center + rng.uniform(-0.4, 0.4, (16, 2)) * box
  to_crop = affine.get_affine_transform(center, scale, 0, (256, 256))
  target, weight = pipeline.generate_target(affine.affine_transform(pts, to_crop), np.ones(16),
                                            (256, 256), (64, 64), 2.0)
  assert weight.min() == 1.0
  preds, _ = decode.get_final_preds(target[None], np.asarray([center], np.float32),
                                    np.asarray([scale], np.float32))
  err = np.abs(np.asarray(preds[0]) - pts)
  half_cell = 0.5 * box / 64
  assert err.max() <= half_cell + 1e-3, (err.max(), half_cell)
  assert err.max() > 0.1 * half_cell   # a real rounding, not an identity


def test_pose_train_step_1_vs_8_devices():
  """One pose train step (SimpleBaseline head, BatchNorm on batch statistics) on one device and
  sharded over eight: the same loss and parameters (BatchNorm statistics are global under the
  sharded jit), up to float32 reduction order."""
  c = pose_demo.get_config()
  c.data.update(input_size=(64, 64))
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.head.channels = 16
  net = build.task_network(c, build.space(c).derive(
      [0] * build.space(c).num_searched))
  variables = init_variables(net, 0, (1, 64, 64, 3))
  rng = np.random.default_rng(1)
  batch = {'image': rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
           'target': rng.uniform(size=(8, 16, 16, 16)).astype(np.float32),
           'target_weight': (rng.uniform(size=(8, 16)) > 0.3).astype(np.float32)}
  task = build.task(c)
  tx = optax.adam(1e-3)
  out = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = build.mesh(devices)
    step = steps_lib.jit_train_step(net, tx, task.loss, mesh)
    state = mesh_lib.put_replicated(steps_lib.init_state(tx, variables, jax.random.key(0)), mesh)
    state, metrics = step(state, mesh_lib.put_batch(batch, mesh))
    out.append((float(metrics['loss']), jax.device_get(state.params),
                jax.device_get(state.batch_stats)))
  assert len(jax.devices()) >= 8
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
  # Adam's first update is lr * sign-like (g / |g|), so parameters agree to ~lr * 1e-3 unless a
  # gradient entry is ~0; compare with a tolerance well below lr (1e-3).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), out[0][1], out[1][1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               out[0][2], out[1][2])

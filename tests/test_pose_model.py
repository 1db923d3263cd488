"""Pose task (paper Sec. 4.3, Tab. 6): SimpleBaseline's head, loss, decoding, PCKh, counting.

References are independent computations: torch (the head's transposed convs, JointsMSELoss,
the flip-back of SimpleBaseline's validate), numpy ports of SimpleBaseline's
``get_final_preds`` and ``MPIIDataset.evaluate`` written here, and hand calculations.
"""

from __future__ import annotations

import math
import os
import sys
import types

# The pipelines (fna_jax/tasks/pose/pipeline.py) are another piece of issue 11; until they are
# merged, a stand-in module lets task.py import (nothing here calls the pipelines).
if not os.path.exists(os.path.join(os.path.dirname(__file__), os.pardir, 'fna_jax', 'tasks',
                                   'pose', 'pipeline.py')):
  sys.modules['fna_jax.tasks.pose.pipeline'] = types.ModuleType('fna_jax.tasks.pose.pipeline')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fna_jax import arch as arch_lib  # noqa: E402
from fna_jax import build, cost, spaces  # noqa: E402
from fna_jax.models import Backbone  # noqa: E402
from fna_jax.models.init import random_like, variable_shapes  # noqa: E402
from fna_jax.runtime import mesh as mesh_lib  # noqa: E402
from fna_jax.tasks.pose import affine, decode, joints, metrics  # noqa: E402
from fna_jax.tasks.pose.heads import SimpleBaselineHead, torch_deconv_padding  # noqa: E402
from fna_jax.tasks.pose.loss import joints_mse_loss  # noqa: E402
from fna_jax.tasks.pose.task import PoseEvaluator, PoseTask  # noqa: E402


def pose_config(**eval_kw):
  c = ml_collections.ConfigDict()
  c.task = 'pose'
  c.conv_impl = ''
  c.data = dict(num_joints=16, input_size=(64, 64))
  c.head = dict(name='simple_baseline', channels=256, num_deconv=3, kernel=4)
  c.eval = dict(flip_test=True, batch_size=8, num_visualize=2)
  c.eval.update(eval_kw)
  c.cost_input_size = (256, 256)
  return c


def pose_arch():
  """MobileNetV2 as the pose task runs it (output stride 32, no 1280 conv)."""
  return spaces.mobilenet_v2_space('pose').task_arch(arch_lib.mobilenet_v2())


# --------------------------------------------------------------------------- head
def _torch_head(c_in, channels, num_deconv, num_joints):
  layers, c = [], c_in
  for _ in range(num_deconv):
    layers += [torch.nn.ConvTranspose2d(c, channels, 4, stride=2, padding=1, output_padding=0,
                                        bias=False),
               torch.nn.BatchNorm2d(channels), torch.nn.ReLU()]
    c = channels
  layers.append(torch.nn.Conv2d(c, num_joints, 1))
  return torch.nn.Sequential(*layers)


def test_head_matches_torch_deconv_head():
  """The head equals torch's ConvTranspose2d(4, 2, 1) + BN + ReLU stack + 1x1 conv (eval)."""
  torch.manual_seed(0)
  th = _torch_head(8, 6, 2, 5).eval()
  for m in th:
    if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics and affine
      for t in (m.running_mean, m.weight, m.bias):
        t.data.uniform_(-0.5, 0.5)
      m.running_var.data.uniform_(0.5, 1.5)
  head = SimpleBaselineHead(num_joints=5, channels=6, num_deconv=2)
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 8)).astype(np.float32)
  params, stats = {}, {}
  for i in range(2):
    w = th[3 * i].weight.detach().numpy()                      # (C_in, C_out, k, k)
    params[f'deconv{i}'] = {'kernel': w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)}
    bn = th[3 * i + 1]
    params[f'deconv{i}_bn'] = {'scale': bn.weight.detach().numpy(),
                               'bias': bn.bias.detach().numpy()}
    stats[f'deconv{i}_bn'] = {'mean': bn.running_mean.numpy(), 'var': bn.running_var.numpy()}
  fc = th[-1]
  params['final_layer'] = {'kernel': fc.weight.detach().numpy().transpose(2, 3, 1, 0),
                           'bias': fc.bias.detach().numpy()}
  ours = head.apply({'params': params, 'batch_stats': stats}, {'out': jnp.asarray(x)}, False)
  with torch.no_grad():
    ref = th(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  assert ours.shape == (2, 12, 20, 5)  # exactly 2x per transposed conv
  # float32 sums of a few hundred products of O(1) values: 1e-4 is far below any layout error.
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)


def test_torch_deconv_padding():
  # torch's ConvTranspose2d(k, p, op) is lax padding k-1-p before, k-1-p+op after.
  assert torch_deconv_padding(4, 1) == ((2, 2), (2, 2))
  assert torch_deconv_padding(3, 1, 1) == ((1, 2), (1, 2))


def test_pose_network_shapes_paths_and_simple_baseline_init():
  """PoseNet at 64x64: (N, 16, 16, 16) heatmaps; random_like draws the head's deconv and final
  kernels from normal(0, 0.001^2) (SimpleBaseline), the backbone's kaiming, biases 0, BN 1/0."""
  c = pose_config()
  net = build.task_network(c, pose_arch())
  shapes = variable_shapes(net, (1, 64, 64, 3), train=False)
  v = random_like(shapes, seed=0)
  out = net.apply(v, jnp.zeros((2, 64, 64, 3)), False)
  assert out.shape == (2, 16, 16, 16)
  head = v['params']['head']
  assert set(head) == {'deconv0', 'deconv0_bn', 'deconv1', 'deconv1_bn', 'deconv2',
                       'deconv2_bn', 'final_layer'}
  assert head['deconv0']['kernel'].shape == (4, 4, 320, 256)
  for name in ('deconv0', 'deconv1', 'deconv2', 'final_layer'):
    k = head[name]['kernel']
    # >= 4096 draws: the sample std is within ~2% of 0.001; kaiming would be >= 0.005.
    assert abs(k.std() - 1e-3) < 1e-4, (name, k.std())
  assert np.all(head['final_layer']['bias'] == 0)
  assert np.all(head['deconv1_bn']['scale'] == 1) and np.all(head['deconv1_bn']['bias'] == 0)
  stem = v['params']['backbone']['stem_conv']['kernel'] if 'stem_conv' in v['params'][
      'backbone'] else jax.tree.leaves(v['params']['backbone'])[0]
  assert stem.std() > 0.01  # the backbone keeps its kaiming draws


# --------------------------------------------------------------------------- loss
def _torch_joints_mse(output, target, target_weight):
  """SimpleBaseline's JointsMSELoss(use_target_weight=True).forward, NCHW, written out."""
  criterion = torch.nn.MSELoss(reduction='mean')
  b, j = output.size(0), output.size(1)
  pred = output.reshape((b, j, -1)).split(1, 1)
  gt = target.reshape((b, j, -1)).split(1, 1)
  loss = 0
  for idx in range(j):
    loss += 0.5 * criterion(pred[idx].squeeze().mul(target_weight[:, idx]),
                            gt[idx].squeeze().mul(target_weight[:, idx]))
  return loss / j


def test_joints_mse_loss_matches_simple_baseline():
  rng = np.random.default_rng(1)
  pred = rng.standard_normal((3, 8, 6, 5)).astype(np.float32)
  target = rng.random((3, 8, 6, 5)).astype(np.float32)
  weight = (rng.random((3, 5)) > 0.4).astype(np.float32)
  ours = float(joints_mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weight)))
  t = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())  # noqa: E731
  ref = float(_torch_joints_mse(t(pred), t(target), torch.from_numpy(weight)[..., None]))
  assert ours == pytest.approx(ref, rel=1e-5)


# --------------------------------------------------------------------------- decoding
def _np_get_final_preds(hm_nchw, center, scale):
  """SimpleBaseline's get_max_preds + POST_PROCESS + transform_preds, ported to numpy here."""
  n, j, h, w = hm_nchw.shape
  flat = hm_nchw.reshape(n, j, -1)
  idx, maxvals = np.argmax(flat, 2), np.amax(flat, 2)[..., None]
  coords = np.stack([idx % w, np.floor(idx / w)], -1).astype(np.float64)
  coords *= np.greater(maxvals, 0.0)
  for a in range(n):
    for p in range(j):
      m = hm_nchw[a, p]
      px, py = int(math.floor(coords[a, p, 0] + 0.5)), int(math.floor(coords[a, p, 1] + 0.5))
      if 1 < px < w - 1 and 1 < py < h - 1:
        diff = np.array([m[py][px + 1] - m[py][px - 1], m[py + 1][px] - m[py - 1][px]])
        coords[a, p] += np.sign(diff) * .25
  out = np.zeros_like(coords)
  for a in range(n):
    out[a] = affine.transform_preds(coords[a], center[a], scale[a], [w, h])
  return out, maxvals


def _gaussian(h, w, x0, y0, sigma=2.0):
  y, x = np.mgrid[0:h, 0:w]
  return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))


def test_quarter_pixel_decoding_of_a_subpixel_gaussian():
  # A Gaussian at (20.3, 13.8) on a 48-high, 64-wide heatmap: the argmax is (20, 14); x: column
  # 21 is nearer than 19 -> +0.25; y: row 13 (0.8 away) is nearer than row 15 (1.2) -> -0.25.
  # Expected (20.25, 13.75), 0.05 from the true centre in each axis.
  hm = _gaussian(48, 64, 20.3, 13.8)[None, :, :, None].astype(np.float32)
  coords, maxvals = decode.get_max_preds(jnp.asarray(hm))
  np.testing.assert_array_equal(np.asarray(coords)[0, 0], [20.0, 14.0])
  refined = np.asarray(decode.refine_quarter_pixel(jnp.asarray(hm), coords))[0, 0]
  np.testing.assert_allclose(refined, [20.25, 13.75], atol=1e-6)
  assert np.all(np.abs(refined - [20.3, 13.8]) <= 0.05 + 1e-6)
  # At x == 1 SimpleBaseline's condition (1 < px) leaves the argmax unrefined.
  edge = _gaussian(48, 64, 1.3, 20.0)[None, :, :, None].astype(np.float32)
  e_coords, _ = decode.get_max_preds(jnp.asarray(edge))
  np.testing.assert_array_equal(np.asarray(decode.refine_quarter_pixel(jnp.asarray(edge),
                                                                       e_coords))[0, 0], [1, 20])
  # A heatmap whose maximum is not positive decodes to (0, 0).
  # (Its argmax, (30, 30), is not (0, 0): only the mask zeroes it.)
  neg = -1.0 + 0.5 * _gaussian(48, 64, 30.0, 30.0)[None, :, :, None].astype(np.float32)
  np.testing.assert_array_equal(np.asarray(decode.get_max_preds(jnp.asarray(neg))[0])[0, 0],
                                [0, 0])


def test_get_final_preds_matches_simple_baseline_port():
  rng = np.random.default_rng(2)
  n, j, h, w = 3, 5, 12, 10
  hm = rng.standard_normal((n, h, w, j)).astype(np.float32)
  hm[0, :, :, 0] = -1.0  # all negative: (0, 0) then transformed
  center = rng.uniform(100, 300, (n, 2)).astype(np.float32)
  scale = rng.uniform(0.8, 3.0, (n,)).astype(np.float32)
  ours, maxvals = decode.get_final_preds(jnp.asarray(hm), jnp.asarray(center),
                                         jnp.asarray(scale))
  ref, ref_max = _np_get_final_preds(hm.transpose(0, 3, 1, 2), center, scale)
  # Full-image pixels up to ~600: float32 rounding is ~1e-4 px.
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-3)
  np.testing.assert_allclose(np.asarray(maxvals), ref_max, atol=1e-6)


def test_affine_transform_by_hand_and_round_trip():
  center, scale = np.array([150.0, 90.0]), 1.5  # a 300 px box
  # No rotation: x_crop = (x - cx) * W / 300 + W / 2, y_crop = (y - cy) * W / 300 + H / 2.
  t = affine.get_affine_transform(center, scale, 0, (64, 48))
  np.testing.assert_allclose(affine.affine_transform([[180.0, 60.0]], t),
                             [[30 * 64 / 300 + 32, -30 * 64 / 300 + 24]], atol=1e-9)
  # Rotation by 90 degrees: the box point 150 px right of the centre (src_dir = (150, 0) after
  # rotating (0, -150)) goes to the crop point W/2 above the crop centre.
  r = affine.get_affine_transform(center, scale, 90, (64, 64))
  np.testing.assert_allclose(affine.affine_transform([[300.0, 90.0]], r), [[32.0, 0.0]],
                             atol=1e-9)
  # Round trip: full image -> heatmap (forward) -> full image (decode.transform_preds).
  rng = np.random.default_rng(3)
  pts = rng.uniform(0, 400, (2, 4, 2))
  centers, scales = np.array([[150.0, 90.0], [210.0, 300.0]]), np.array([1.5, 2.7])
  hm = np.stack([affine.affine_transform(pts[i], affine.get_affine_transform(
      centers[i], scales[i], 0, (64, 48))) for i in range(2)])
  back = decode.transform_preds(jnp.asarray(hm, jnp.float32), jnp.asarray(centers, jnp.float32),
                                jnp.asarray(scales, jnp.float32), (48, 64))
  np.testing.assert_allclose(np.asarray(back), pts, atol=1e-3)  # float32 at ~400 px
  # ... and the numpy inverse agrees with it.
  np.testing.assert_allclose(affine.transform_preds(hm[1], centers[1], scales[1], (64, 48)),
                             pts[1], atol=1e-9)


def test_flip_back_and_shift_as_simple_baseline():
  # By hand: a spike at column c of l_ankle (5) in the mirrored image's heatmaps comes back at
  # column W - 1 - c of r_ankle (0), then shifted one to the right: column W - c.
  w = 10
  flipped = np.zeros((1, 4, w, 16), np.float32)
  flipped[0, 2, 3, 5] = 1.0
  perm = joints.flip_permutation()
  back = np.asarray(decode.shift_heatmap(decode.flip_back(jnp.asarray(flipped), perm)))
  assert back[0, 2, w - 3, 0] == 1.0 and back.sum() == 1.0
  # Against torch, as SimpleBaseline's validate: flip_back (reverse W, swap pairs) then
  # output_flipped[:, :, :, 1:] = output_flipped.clone()[:, :, :, 0:-1]; averaged.
  rng = np.random.default_rng(4)
  a = rng.standard_normal((2, 6, 7, 16)).astype(np.float32)
  f = rng.standard_normal((2, 6, 7, 16)).astype(np.float32)
  tf = torch.from_numpy(f.transpose(0, 3, 1, 2).copy()).flip(3)
  for p, q in joints.FLIP_PAIRS:
    tmp = tf[:, p].clone()
    tf[:, p] = tf[:, q]
    tf[:, q] = tmp
  tf[:, :, :, 1:] = tf.clone()[:, :, :, 0:-1]
  ref = ((torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) + tf) * 0.5).numpy()
  ours = np.asarray(decode.flip_test_average(jnp.asarray(a), jnp.asarray(f), perm))
  np.testing.assert_allclose(ours.transpose(0, 3, 1, 2), ref, atol=1e-6)


def test_joints_tables():
  assert len(joints.JOINT_NAMES) == 16 and joints.JOINT_NAMES[9] == 'head_top'
  perm = joints.flip_permutation()
  assert perm[0] == 5 and perm[5] == 0 and perm[6] == 6 and perm[12] == 13
  assert sorted(perm) == list(range(16))


# --------------------------------------------------------------------------- PCKh
def _simple_baseline_evaluate(preds, gt, visible, headboxes):
  """MPIIDataset.evaluate's arithmetic, ported here with its (J, 2, N) layout."""
  pos_pred_src = np.transpose(preds, [1, 2, 0])
  pos_gt_src = np.transpose(gt, [1, 2, 0])
  headboxes_src = np.transpose(headboxes, [1, 2, 0])     # (2, 2, N)
  jnt_visible = np.transpose(visible, [1, 0])           # (J, N)
  uv_err = np.linalg.norm(pos_pred_src - pos_gt_src, axis=1)
  headsizes = np.linalg.norm(headboxes_src[1, :, :] - headboxes_src[0, :, :], axis=0) * 0.6
  scaled = np.multiply(np.divide(uv_err, headsizes * np.ones((len(uv_err), 1))), jnt_visible)
  jnt_count = np.sum(jnt_visible, axis=1)
  pckh = 100. * np.sum((scaled <= 0.5) * jnt_visible, axis=1) / jnt_count
  rng = np.arange(0, 0.5 + 0.01, 0.01)
  low = 100. * np.sum((scaled <= rng[11]) * jnt_visible, axis=1) / jnt_count
  pckh, low = np.ma.array(pckh, mask=False), np.ma.array(low, mask=False)
  pckh.mask[6:8] = True
  jc = np.ma.array(jnt_count, mask=False)
  jc.mask[6:8] = True
  ratio = jc / np.sum(jc).astype(np.float64)
  return {'Head': pckh[9], 'Shoulder': 0.5 * (pckh[13] + pckh[12]),
          'Ankle': 0.5 * (pckh[5] + pckh[0]), 'Mean': np.sum(pckh * ratio),
          'Mean@0.1': np.sum(low * ratio)}


def test_pckh_hand_computed():
  # Two people, head boxes 30x40 (diag 50 -> head size 30) and 60x80 (-> 60).
  # Threshold 0.5: 15 px and 30 px.  Errors (px) per joint: person 0 puts joint j at error e0[j],
  # person 1 at e1[j], along x.
  j = 16
  gt = np.full((2, j, 2), 100.0)
  headboxes = np.array([[[0, 0], [30, 40]], [[10, 10], [70, 90]]], np.float64)
  e0 = np.full(j, 100.0)
  e1 = np.full(j, 100.0)
  e0[9], e1[9] = 15.0, 29.0          # head top: both correct (<=): 100
  e0[0], e1[0] = 16.0, 5.0           # r_ankle: 1 of 2: 50
  e0[6], e1[6] = 0.0, 0.0            # pelvis correct but excluded from the mean
  e0[12], e1[12] = 3.0, 3.0          # r_shoulder: person 1 not annotated -> 1/1 = 100
  visible = np.ones((2, j))
  visible[1, 12] = 0
  visible[:, 15] = 0                 # l_wrist never annotated: nan, no weight
  preds = gt.copy()
  preds[0, :, 0] += e0
  preds[1, :, 0] += e1
  out = metrics.evaluate_pckh(preds, gt, visible, headboxes)
  assert out['head_top'] == 100.0 and out['r_ankle'] == 50.0 and out['r_shoulder'] == 100.0
  assert out['pelvis'] == 100.0 and out['r_knee'] == 0.0 and np.isnan(out['l_wrist'])
  # Mean: counts 2 for 12 joints (0-5, 8-11, 13, 14), 1 for r_shoulder; pelvis/thorax and
  # l_wrist out: correct = 2 (head) + 1 (r_ankle) + 1 (r_shoulder) = 4 of 2*12 + 1 = 25.
  assert out['Mean'] == pytest.approx(100 * 4 / 25)
  # At 0.11 (SimpleBaseline's 'Mean@0.1'): 3.3 px and 6.6 px: only r_ankle of person 1 (5 <=
  # 6.6) and r_shoulder of person 0 (3 <= 3.3): 2 of 25.
  assert out['Mean@0.1'] == pytest.approx(100 * 2 / 25)
  assert out['Head'] == 100.0 and out['Shoulder'] == pytest.approx(50.0)


def test_pckh_matches_simple_baseline_evaluate():
  rng = np.random.default_rng(5)
  n, j = 40, 16
  gt = rng.uniform(0, 500, (n, j, 2))
  preds = gt + rng.normal(0, 12, (n, j, 2))
  tl = rng.uniform(0, 400, (n, 2))
  headboxes = np.stack([tl, tl + rng.uniform(20, 60, (n, 2))], 1)
  visible = (rng.random((n, j)) > 0.2).astype(np.float64)
  ours = metrics.evaluate_pckh(preds, gt, visible, headboxes)
  ref = _simple_baseline_evaluate(preds, gt, visible, headboxes)
  for k, v in ref.items():
    assert ours[k] == pytest.approx(float(v), rel=1e-12), k


# --------------------------------------------------------------------------- counting (Tab. 6)
def test_mobilenet_v2_simple_baseline_count_matches_tab6():
  """MobileNetV2 (pose space's seed, output stride 32, no 1280 conv) + SimpleBaseline at 256x256:
  paper Tab. 6 has 5.23M Params and 6.09B MAdds."""
  c = pose_config()
  arch = build.space(ml_collections.ConfigDict(
      {'space': {'name': 'mobilenet_v2', 'task': 'pose', 'ops': (), 'max_layers': ()}})
  ).task_arch(arch_lib.mobilenet_v2())
  assert arch == pose_arch() and arch.output_stride == 32 and arch.last_channels is None
  net = build.task_network(c, arch)
  layers = cost.count_layers(net, None, (1, 256, 256, 3))
  params, madds = cost.count(net, None, (1, 256, 256, 3))
  assert abs(params / 5.23e6 - 1) < 0.005, params
  assert abs(madds / 6.09e9 - 1) < 0.005, madds
  deconv0 = [l for l in layers if l.path == 'head/deconv0'][0]
  # k*k*C_in*C_out over the 16x16 *output* positions (8x8 input).
  assert deconv0.kind == cost.CONV_TRANSPOSE and deconv0.madds == 4 * 4 * 320 * 256 * 16 * 16
  # The same network in torch: torchvision's MobileNetV2 features without the 1280 conv + head.
  import torchvision
  body = torchvision.models.mobilenet_v2().features[:-1]
  head = _torch_head(320, 256, 3, 16)
  assert sum(p.numel() for p in list(body.parameters()) + list(head.parameters())) == params


# --------------------------------------------------------------------------- task + evaluator
class _Oracle(nn.Module):
  """Returns the heatmaps packed into the image's first channel (no parameters but a dummy)."""
  num_joints: int = 16

  @nn.compact
  def __call__(self, x, train=False):
    n, h, w, _ = x.shape
    s = self.param('s', nn.initializers.ones, ())
    return s * x[..., 0].reshape(n, h // 4, w // 4, self.num_joints)


def test_pose_task_interface():
  c = pose_config()
  task = build.task(c)
  assert isinstance(task, PoseTask) and task.metric == 'pckh' and task.higher_is_better
  assert task.input_size('search') == task.input_size('adapt') == (64, 64)
  assert task.heatmap_size() == (16, 16)
  shapes = task.batch_shapes(4, 'adapt')
  assert shapes['target'].shape == (4, 16, 16, 16) and shapes['target_weight'].shape == (4, 16)
  assert task.format_metric(0.8612) == '86.12% PCKh@0.5'
  del c.data['input_size']
  assert build.task(c).input_size('search') == (256, 256)


def test_pose_evaluator_on_8_devices_with_padding(tmp_path):
  """Heatmaps with Gaussians at the true joints decode back to them (within the quarter-pixel
  rule times the box scale); joints moved far count as wrong; padding counts nothing."""
  c = pose_config(flip_test=False)
  rng = np.random.default_rng(6)
  n, b, size = 11, 8, 64           # 11 people: a full batch and a padded one (3 valid)
  centers = rng.uniform(80, 120, (n, 2))
  scales = rng.uniform(0.3, 0.4, n)  # 60-80 px boxes
  gt = centers[:, None, :] + rng.uniform(-25, 25, (n, 16, 2))
  visible = np.ones((n, 16))
  headboxes = np.stack([centers - 20, centers + 20], 1)   # diag 56.6 -> head size 33.9
  images = np.zeros((n, size, size, 3), np.float32)
  for i in range(n):
    hm = affine.affine_transform(gt[i], affine.get_affine_transform(centers[i], scales[i], 0,
                                                                    (16, 16)))
    maps = np.stack([_gaussian(16, 16, x, y, 1.0) for x, y in hm], -1)
    images[i, ..., 0] = maps.reshape(size, size)
  wrong = [(0, 3), (4, 10), (9, 9)]  # (person, joint) predicted 40 px off (> 0.5 * 33.9)
  for i, jt in wrong:
    gt[i, jt, 0] += 40.0
  mesh = mesh_lib.make_mesh()
  model = _Oracle()
  ev = PoseEvaluator(model, model.init(jax.random.key(0), images[:1]), mesh, c.eval, 16,
                     joints.JOINT_NAMES, str(tmp_path))
  for start in (0, 8):
    sl = slice(start, min(start + b, n))
    k = sl.stop - sl.start
    pad = lambda a: np.concatenate([a, np.zeros((b - k,) + a.shape[1:], a.dtype)])  # noqa
    ev.add({'image': pad(images[sl]), 'center': pad(centers[sl].astype(np.float32)),
            'scale': pad(scales[sl].astype(np.float32)), 'joints': pad(gt[sl]),
            'visible': pad(visible[sl]), 'headbox': pad(headboxes[sl]),
            'valid': pad(np.ones(k, bool)), 'index': pad(np.arange(sl.start, sl.stop))})
  res = ev.result()
  assert res['num_images'] == n
  # Mean over 14 joints x 11 people = 154, 3 wrong (none is pelvis or thorax).
  assert res['pckh'] == pytest.approx(151 / 154)
  assert res['per_joint']['r_wrist'] == pytest.approx(10 / 11)
  assert res['per_joint']['l_hip'] == pytest.approx(10 / 11)
  assert res['per_joint']['head_top'] == pytest.approx(10 / 11)
  assert res['per_joint']['r_ankle'] == 1.0
  # Decoded joints: argmax (<= 0.5 heatmap px off) then the quarter shift (<= 0.25 off inside,
  # unrefined near the border): within half a heatmap pixel (scale * 200 / 16 full-image px).
  preds = np.concatenate(ev.preds)
  err = np.abs(preds - gt)
  ok = np.ones((n, 16), bool)
  for i, jt in wrong:
    ok[i, jt] = False
  px = (scales * 200 / 16)[:, None]  # full-image pixels per heatmap pixel
  assert np.all(err[ok] <= np.broadcast_to(px, (n, 16))[ok][:, None] * 0.5 + 1e-3)
  assert 'Mean' in ev.table() and (tmp_path / 'predictions' / '001.png').exists()

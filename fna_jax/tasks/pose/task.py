"""Human pose estimation as an FNA++ task (paper Sec. 4.3, Tab. 6): SimpleBaseline on MPII, PCKh.

:class:`PoseTask` implements :class:`fna_jax.tasks.base.Task` for person crops with joint
heatmaps: batches ``{'image' (B, H, W, 3), 'target' (B, H/4, W/4, J), 'target_weight' (B, J)}``
from :mod:`fna_jax.tasks.pose.pipeline` (random scale, rotation and flip as SimpleBaseline), the
loss :func:`fna_jax.tasks.pose.loss.joints_mse_loss`, and :class:`PoseEvaluator`: heatmaps (with
SimpleBaseline's flip test when ``eval.flip_test``) decoded to full-image coordinates
(:mod:`fna_jax.tasks.pose.decode`) and PCKh@0.5 (:mod:`fna_jax.tasks.pose.metrics`).

Input 256x256 at every stage (SimpleBaseline's MPII setting; ``data.input_size`` overrides it),
heatmaps a quarter of it (three stride-2 transposed convs on a stride-32 body).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.runtime import mesh as mesh_lib
from fna_jax.tasks import base
from fna_jax.tasks.pose import affine, decode, joints, metrics, pipeline, visualize
from fna_jax.tasks.pose.loss import pose_loss
from fna_jax.tasks.pose.network import PoseNet

DEFAULT_INPUT_SIZE = (256, 256)   # SimpleBaseline's MPII crops (paper Sec. 4.3.1)
HEATMAP_STRIDE = 4                # 256 -> 64: output stride 32, three 2x transposed convs
EVAL_KEYS = ('center', 'scale', 'joints', 'visible', 'headbox', 'valid')


class PoseTask(base.Task):
  """Human pose estimation (paper Sec. 4.3); headline metric ``'pckh'`` (PCKh@0.5 as a fraction,
  higher is better)."""

  name = 'pose'
  metric = 'pckh'

  def network(self, body, head, *, frozen_bn: bool = False) -> PoseNet:
    return PoseNet(body, head, frozen_bn=frozen_bn)

  def loss(self, outputs, batch):
    return pose_loss(outputs, batch)

  def input_size(self, stage: str) -> tuple[int, int]:
    base.check_stage(stage)
    return base.as_pair(self.config.data.get('input_size', DEFAULT_INPUT_SIZE))

  def heatmap_size(self, stage: str = 'adapt') -> tuple[int, int]:
    h, w = self.input_size(stage)
    if h % HEATMAP_STRIDE or w % HEATMAP_STRIDE:
      raise ValueError(f'data.input_size {(h, w)} must divide by {HEATMAP_STRIDE}')
    return h // HEATMAP_STRIDE, w // HEATMAP_STRIDE

  def train_data(self, source, indices, *, batch_size: int, seed: int, stage: str):
    d = self.config.data
    return iter(pipeline.make_pose_pipeline(
        source, indices, batch_size=batch_size, seed=seed, input_size=self.input_size(stage),
        heatmap_size=self.heatmap_size(stage), sigma=d.get('sigma', 2.0), augment=True,
        scale_factor=d.get('scale_factor', 0.25), rotation=d.get('rotation', 30.0),
        flip=d.get('flip', True), worker_count=d.get('worker_count', 0)))

  def batch_shapes(self, batch_size: int, stage: str):
    h, w = self.input_size(stage)
    hh, hw = self.heatmap_size(stage)
    j = self.config.data.num_joints
    # Training images are uint8, normalised inside the steps (fna_jax.runtime.inputs).
    return {'image': jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.uint8),
            'target': jax.ShapeDtypeStruct((batch_size, hh, hw, j), jnp.float32),
            'target_weight': jax.ShapeDtypeStruct((batch_size, j), jnp.float32)}

  def eval_data(self, source, *, batch_size: int):
    return iter(pipeline.make_pose_eval_pipeline(source, batch_size=batch_size,
                                                 input_size=self.input_size('adapt')))

  def evaluator(self, model, variables, mesh, *, source=None, out_dir=None) -> 'PoseEvaluator':
    names = getattr(source, 'JOINT_NAMES', None) or joints.JOINT_NAMES
    return PoseEvaluator(model, variables, mesh, self.config.eval, self.config.data.num_joints,
                         tuple(names), out_dir)

  def format_metric(self, value: float) -> str:
    return f'{100 * value:.2f}% PCKh@0.5'


class PoseEvaluator(base.Evaluator):
  """PCKh of a pose network over batches of :meth:`PoseTask.eval_data`.

  Per batch, one jitted step: heatmaps (``eval.flip_test``: averaged with the mirrored image's,
  flipped back, joints swapped, shifted one pixel when ``eval.shift_heatmap``, default True, as
  SimpleBaseline's MPII test), argmax + quarter-pixel shift (``eval.post_process``, default True),
  back to full-image coordinates; predictions and ground truth come back replicated, so every
  process accumulates the whole validation set (padding examples, ``valid == False``, dropped).
  ``eval.num_visualize``: the first crops saved with the ground-truth | predicted skeleton under
  ``out_dir/predictions`` (single-process runs).
  """

  table_file = 'pckh.txt'

  def __init__(self, model, variables, mesh, eval_cfg, num_joints: int, joint_names,
               out_dir: str | None = None):
    self.cfg, self.mesh, self.out_dir = eval_cfg, mesh, out_dir
    self.num_joints, self.joint_names = num_joints, tuple(joint_names)
    flip_test = bool(eval_cfg.get('flip_test', True))
    shift = bool(eval_cfg.get('shift_heatmap', True))
    post = bool(eval_cfg.get('post_process', True))
    perm = joints.flip_permutation(num_joints)
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    self.variables = jax.device_put(variables, rep)

    def predict(v, images, center, scale):
      heatmaps = model.apply(v, images, False)
      if flip_test:
        flipped = model.apply(v, images[:, :, ::-1, :], False)
        heatmaps = decode.flip_test_average(heatmaps, flipped, perm, shift)
      return decode.get_final_preds(heatmaps, center, scale, post)

    self.predict = jax.jit(predict, in_shardings=(rep, data, data, data), out_shardings=rep)
    self.gather = jax.jit(lambda t: t, out_shardings=rep)
    self.preds, self.gt = [], {k: [] for k in ('joints', 'visible', 'headbox')}
    self.shown = self.num_images = 0

  def add(self, host_batch):
    b = mesh_lib.put_batch({k: host_batch[k] for k in ('image',) + EVAL_KEYS}, self.mesh)
    preds, _ = self.predict(self.variables, b['image'], b['center'], b['scale'])
    gt = jax.tree.map(np.asarray, self.gather({k: b[k] for k in EVAL_KEYS}))
    valid = gt['valid'].astype(bool)
    preds = np.asarray(preds, np.float64)
    self.preds.append(preds[valid])
    for k in self.gt:
      self.gt[k].append(gt[k][valid])
    self.num_images += int(valid.sum())
    if self.out_dir and self.shown < self.cfg.get('num_visualize', 0) and (
        jax.process_count() == 1):
      h, w = host_batch['image'].shape[1:3]
      for k in np.flatnonzero(valid)[:self.cfg.num_visualize - self.shown]:
        to_crop = affine.get_affine_transform(gt['center'][k], gt['scale'][k], 0, (w, h))
        visualize.save_pose_pair(
            os.path.join(self.out_dir, 'predictions', f'{self.shown:03d}.png'),
            host_batch['image'][k], affine.affine_transform(gt['joints'][k], to_crop),
            gt['visible'][k], affine.affine_transform(preds[k], to_crop))
        self.shown += 1

  def _arrays(self):
    j = self.num_joints
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros((0,) + shape)  # noqa: E731
    return (cat(self.preds, (j, 2)), cat(self.gt['joints'], (j, 2)),
            cat(self.gt['visible'], (j,)), cat(self.gt['headbox'], (2, 2)))

  def _table(self):
    preds, gt, vis, hb = self._arrays()
    return metrics.evaluate_pckh(preds, gt, vis, hb, self.joint_names), vis.sum(axis=0)

  def result(self) -> dict[str, Any]:
    table, counts = self._table()
    frac = lambda v: None if np.isnan(v) else float(v) / 100.0  # noqa: E731
    groups = ['Head'] + [g[0] for g in metrics.GROUPS]
    return {'pckh': frac(table['Mean']),
            'pckh@0.1': frac(table['Mean@0.1']),  # at 0.11, as SimpleBaseline's 'Mean@0.1'
            'groups': {g: frac(table[g]) for g in groups},
            'per_joint': {n: frac(table[n]) for n in self.joint_names},
            'joint_counts': {n: int(c) for n, c in zip(self.joint_names, counts)},
            'flip_test': bool(self.cfg.get('flip_test', True)), 'num_images': self.num_images}

  def table(self) -> str:
    table, counts = self._table()
    return metrics.format_pckh_table(table, counts)

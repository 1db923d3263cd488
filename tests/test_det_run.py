"""The detection task (paper Sec. 4.2) through the normal entry points: search, parameter
adaptation from the supernet, evaluation (COCO AP in ``eval.json``, pictures), on tiny generated
images; 1 vs 8 devices; the class-prior baseline."""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest

import _tiny_task_run as tiny_run
from configs import det_demo
from fna_jax import build
from fna_jax.models.init import init_variables
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps as steps_lib
from fna_jax.tasks.det import baseline, pipeline
from fna_jax.tasks.det.demo_data import DemoDetection


def tiny_det_config(tmp_path_factory):
  c = det_demo.get_config()
  c.data.update(num_train=32, num_val=6, image_size=64, canvas=(64, 64), scale=(64, 64))
  c.head.update(channels=16, num_convs=1)
  c.search.update(epochs=2, warmup_epochs=1, batch_size=8, w_lr_steps=(1,), w_lr_warmup_steps=1)
  c.adapt.update(steps=3, batch_size=8, lr_steps=(2,), warmup_steps=1)
  c.eval.update(batch_size=4, num_visualize=2)
  return tiny_run.shrink(c, tmp_path_factory, 64)


@pytest.mark.slow
def test_det_pipeline_end_to_end(tmp_path_factory):
  c = tiny_det_config(tmp_path_factory)
  run = tiny_run.run_pipeline(c, tmp_path_factory.mktemp('det'), 'det', {'num_classes': 5})
  saved = run.saved
  assert saved['num_images'] == 6
  assert -1.0 <= saved['AP'] <= 1.0 and saved['AP'] == pytest.approx(run.result['AP'])
  for k in ('AP50', 'AP75', 'APs', 'APm', 'APl'):
    assert k in saved
  with open(os.path.join(run.adapt_dir, 'eval', 'coco_eval.txt')) as f:
    assert 'Average Precision' in f.read()


def _tiny_det_network():
  c = det_demo.get_config()
  c.data.update(canvas=(64, 64), scale=(64, 64), max_boxes=4)
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.head.update(channels=16, num_convs=1)
  space = build.space(c)
  return c, build.task_network(c, space.derive([0] * space.num_searched))


def test_det_train_step_1_vs_8_devices():
  """One RetinaNet train step (BatchNorm on batch statistics, the focal loss normalised by the
  positives of the whole batch) on one device and sharded over eight: the same loss and
  parameters, up to float32 reduction order.  The batch is real: demo images through the training
  pipeline, with padding boxes."""
  c, net = _tiny_det_network()
  src = DemoDetection('train', 16, 64, seed=0)
  batch = next(iter(pipeline.make_det_pipeline(src, batch_size=8, canvas=(64, 64),
                                               scale=(64, 64), max_boxes=4, seed=0)))
  assert (batch['labels'] == -1).any() and (batch['labels'] >= 0).any()
  variables = init_variables(net, 0, (1, 64, 64, 3))
  task = build.task(c)
  tx = optax.sgd(0.01, momentum=0.9)
  out = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = build.mesh(devices)
    step = steps_lib.jit_train_step(net, tx, task.loss, mesh)
    state = mesh_lib.put_replicated(steps_lib.init_state(tx, variables, jax.random.key(0)), mesh)
    losses = []
    for _ in range(2):
      state, metrics = step(state, mesh_lib.put_batch(batch, mesh))
      losses.append(float(metrics['loss']))
    out.append((losses, jax.device_get(state.params), jax.device_get(state.batch_stats)))
  assert len(jax.devices()) >= 8
  assert out[0][0][0] > 0 and out[0][0][0] != out[0][0][1]   # the first step changed something
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
  # The two steps' parameter updates (from the same start) agree to 5% of the largest update of
  # each tensor: float32 sums reduced in another order, through BatchNorm and the focal loss,
  # differ by ~1% on the smallest tensors; BatchNorm or a loss normalised per device instead of
  # over the global batch would change the updates by their own size.
  def same_update(p0, a, b):
    da, db = np.asarray(a) - p0, np.asarray(b) - p0
    np.testing.assert_allclose(da, db, atol=5e-2 * np.abs(da).max() + 1e-8)
  jax.tree.map(same_update, variables['params'], out[0][1], out[1][1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               out[0][2], out[1][2])


class _Boxes:
  """A source of given boxes on 100x100 images (class 0 and 1) for the prior baseline."""
  CLASS_NAMES = ('a', 'b')
  CATEGORY_IDS = (1, 2)

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    boxes, labels = self.examples[i]
    return {'image': np.zeros((100, 100, 3), np.uint8), 'boxes': np.asarray(boxes, np.float32),
            'labels': np.asarray(labels, np.int32), 'image_id': i + 1}

  def coco_gt(self):
    anns = []
    for i, (boxes, labels) in enumerate(self.examples):
      for b, l in zip(boxes, labels):
        anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(l) + 1,
                     'bbox': [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
                     'area': (b[2] - b[0] + 1) * (b[3] - b[1] + 1), 'iscrowd': 0})
    return {'images': [{'id': i + 1, 'width': 100, 'height': 100}
                       for i in range(len(self.examples))],
            'annotations': anns, 'categories': [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}


def test_class_prior_baseline_by_hand():
  """Class 0 always at (10, 10, 29, 29), class 1 always at (50, 50, 89, 89) in training: the
  prior predicts exactly those boxes everywhere.  A validation set with the objects at those
  places scores AP 1; with them moved away, 0."""
  same = [([[10, 10, 29, 29], [50, 50, 89, 89]], [0, 1])] * 3
  priors = baseline.prior_boxes(_Boxes(same), 2)
  assert sorted((c, tuple(np.round(b * 100, 6))) for c, b, _ in priors) == [
      (0, (10.0, 10.0, 29.0, 29.0)), (1, (50.0, 50.0, 89.0, 89.0))]
  assert baseline.prior_boxes_ap(_Boxes(same), _Boxes(same[:2]), 2)['AP'] == pytest.approx(1.0)
  moved = [([[60, 5, 79, 24], [0, 50, 39, 89]], [0, 1])] * 2
  assert baseline.prior_boxes_ap(_Boxes(same), _Boxes(moved), 2)['AP'] == pytest.approx(0.0)

"""A task defined outside the library runs through the normal entry points (no library edit).

The toy task classifies whole demo images (one dominant shape per image,
:class:`fna_jax.data.demo.DemoClassification`): a global-average-pool + dense head on the body,
cross-entropy, accuracy.  It is registered with :mod:`fna_jax.build`'s public functions, then a
2-step search, a 2-step parameter adaptation and an evaluation run through ``run_search``,
``run_adapt`` and ``run_evaluation`` exactly as ``scripts/*.py`` call them.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import demo as demo_config
from fna_jax import build
from fna_jax.data import demo, pipeline
from fna_jax.data import transforms as T
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime.checkpoint import RunCheckpoints
from fna_jax.tasks import base
from fna_jax.train.adapt_loop import run_adapt
from fna_jax.train.evaluate import run_evaluation
from fna_jax.train.search_loop import run_search

IGNORE = 255  # label of the evaluation padding examples (fna_jax.data.pipeline.IndexedSource)


class GapDenseHead(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, feats, train: bool = False):
    return nn.Dense(self.num_classes, name='classifier')(jnp.mean(feats['out'], axis=(1, 2)))


class ClassifierNet(nn.Module):
  backbone: nn.Module
  head: nn.Module
  frozen_bn: bool = False

  def __call__(self, x, train: bool = False, **body_kwargs):
    return self.head(self.backbone(x, train and not self.frozen_bn, **body_kwargs), train)


class AccuracyEvaluator(base.Evaluator):
  table_file = 'accuracy.txt'

  def __init__(self, model, variables, mesh):
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    self.mesh, self.variables = mesh, jax.device_put(variables, rep)
    self.predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, False), -1),
                           in_shardings=(rep, data), out_shardings=rep)
    self.correct = self.total = 0

  def add(self, host_batch):
    b = mesh_lib.put_batch(host_batch, self.mesh)
    pred = np.asarray(self.predict(self.variables, b['image']))
    valid = host_batch['label'] != IGNORE
    self.correct += int(np.sum((pred == host_batch['label']) & valid))
    self.total += int(valid.sum())

  def result(self):
    return {'accuracy': self.correct / max(self.total, 1), 'num_images': self.total}

  def table(self):
    return f'accuracy {self.correct}/{self.total}'


class ClsEvalTransform(grain.transforms.Map):
  def map(self, element):
    return {'image': T.normalize(np.asarray(element['image'])),
            'label': np.int32(element['label'])}


class ToyClassification(base.Task):
  name = 'toy_cls'
  metric = 'accuracy'

  def network(self, body, head, *, frozen_bn=False):
    return ClassifierNet(body, head, frozen_bn)

  def loss(self, outputs, batch):
    return optax.softmax_cross_entropy_with_integer_labels(outputs, batch['label']).mean()

  def input_size(self, stage):
    return base.as_pair(self.config.data.image_size)

  def train_data(self, source, indices, *, batch_size, seed, stage):
    return iter(pipeline.make_cls_pipeline(source, indices=indices, batch_size=batch_size,
                                           seed=seed))

  def batch_shapes(self, batch_size, stage):
    s = self.config.data.image_size  # make_cls_pipeline: uint8 images, normalised in the steps
    return {'image': jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.uint8),
            'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def eval_data(self, source, *, batch_size):
    ds = pipeline.eval_dataset(source, None, batch_size, ClsEvalTransform(),
                               pad_remainder=True, shard_by_process=True)
    return iter(pipeline.iter_dataset(ds, 0, 1, 2))

  def evaluator(self, model, variables, mesh, *, source=None, out_dir=None):
    return AccuracyEvaluator(model, variables, mesh)


def _demo_classification(config, split):
  d = config.data
  return demo.DemoClassification(split, d.num_train if split == 'train' else d.num_val,
                                 d.image_size, seed=d.data_seed)


build.register_task('toy_cls', ToyClassification)
build.register_dataset('demo_cls', _demo_classification)
build.register_head('gap_dense', lambda config, conv, output_stride: GapDenseHead(
    config.data.num_classes))


def toy_config(tmp_path):
  c = demo_config.get_config()
  c.task = 'toy_cls'
  c.data.update(name='demo_cls', num_train=32, num_val=13, image_size=32, crop_size=32,
                arch_fraction=0.5, num_classes=demo.NUM_SHAPE_CLASSES)
  c.head.name = 'gap_dense'
  c.space.max_layers = (1, 1, 2, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e3')
  c.search.update(init='random', epochs=1, warmup_epochs=0, batch_size=8)
  c.adapt.update(head='gap_dense', steps=2, batch_size=8, bn_recalib_steps=1, warmup_steps=1)
  c.eval.batch_size = 8
  c.cost_input_size = (32, 32)
  c.log_every = 1
  c.xla_cache_dir = str(tmp_path / 'xla')
  return c


def test_toy_task_runs_search_adaptation_and_evaluation(tmp_path):
  c = toy_config(tmp_path)
  log = []
  search_dir, adapt_dir = str(tmp_path / 'search'), str(tmp_path / 'adapt')
  result = run_search(c, search_dir, log=log.append)
  # 32 training examples -> 16 weight + 16 arch examples: one epoch of 2 steps of batch 8.
  assert RunCheckpoints(search_dir).latest_step() == 2
  summary = json.load(open(os.path.join(search_dir, 'summary.json')))
  assert summary['madds'] == result.cost.madds > 0
  adapted = run_adapt(c, adapt_dir, search_dir, log=log.append)
  assert adapted.arch == result.arch
  ev = run_evaluation(c, os.path.join(adapt_dir, 'model'), str(tmp_path / 'eval'),
                      log=log.append)
  # 13 validation images, batch 8 on 8 devices: the padded second batch adds nothing.
  assert ev['num_images'] == 13 and 0.0 <= ev['accuracy'] <= 1.0
  assert set(ev) >= {'accuracy', 'num_images', 'params', 'madds'}
  assert open(tmp_path / 'eval' / 'accuracy.txt').read().startswith('accuracy ')
  # The classifier head has 5 outputs on the 320-channel body.
  head = adapted.variables['params']['head']['classifier']['kernel']
  assert head.shape == (320, demo.NUM_SHAPE_CLASSES)

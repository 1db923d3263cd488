"""The segmentation loss (pixel-wise cross-entropy, label 255 ignored) and frozen backbone BN.

The DeepLabv3 networks of paper Sec. 4.1 are trained with the pixel-wise softmax cross-entropy
over the labelled pixels (Cityscapes' unlabelled pixels, 255, excluded).  Frozen BN (paper
Sec. 4.4, footnote 1: "using the running statistics of BN during training", PyTorch's
``.eval()``): ``SegmentationNet(frozen_bn=True)`` keeps the backbone's BatchNorm running
statistics fixed while fine-tuning, while its BN scale and bias still train (as under ``.eval()``)
and the head's BN layers train normally.
"""

import functools

import jax
import numpy as np
import pytest

from fna_jax.data import transforms as T
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.runtime import steps
from fna_jax.tasks import seg
from fna_jax.tasks.seg import demo_data
from fna_jax.train import adapt
from fna_jax.train.adapt_loop import build_network, read_search

from test_nan_guard import fake_search_dir, tiny_adapt_config

IGNORE = 255


def numpy_cross_entropy(logits, labels):
  """Mean over the pixels not labelled 255 of -log softmax(logits)[label], in float64.

  Also returns the gradient with respect to the logits: (softmax - onehot) / n_valid on valid
  pixels, 0 on ignored ones.
  """
  x = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  shifted = x - x.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  valid = labels != IGNORE
  n = valid.sum()
  picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  loss = -picked[valid].sum() / n
  grad = np.exp(logp)
  grad[valid, labels[valid]] -= 1.0
  grad[~valid] = 0.0
  return loss, grad / n


@pytest.mark.parametrize('scale', [1.0, 30.0])  # 30: logits far apart (a stable log-softmax)
def test_cross_entropy_matches_numpy_and_ignores_255(scale):
  rng = np.random.default_rng(0)
  c = 6
  logits = (scale * rng.standard_normal((3, 5, 7, c))).astype(np.float32)
  labels = rng.integers(0, c, (3, 5, 7)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.3] = IGNORE
  assert 0 < np.sum(labels == IGNORE) < labels.size
  want, want_grad = numpy_cross_entropy(logits, labels)
  loss, grad = jax.jit(jax.value_and_grad(seg.cross_entropy))(logits, labels)
  # float32 log-softmax of O(scale) logits: a relative error of a few float32 ulps.
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-7)
  assert np.all(np.asarray(grad)[labels == IGNORE] == 0.0)
  # uint8 labels (as the datasets store them) give the same loss.
  np.testing.assert_allclose(float(seg.cross_entropy(logits, labels.astype(np.uint8))), want,
                             rtol=1e-5)


def test_cross_entropy_of_an_all_ignored_batch_is_zero_with_zero_gradients():
  logits = np.random.default_rng(1).standard_normal((2, 4, 4, 5)).astype(np.float32)
  labels = np.full((2, 4, 4), IGNORE, np.int32)
  loss, grad = jax.jit(jax.value_and_grad(seg.cross_entropy))(logits, labels)
  assert float(loss) == 0.0  # exactly 0, not NaN (0 / 0)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)) and np.all(grad == 0.0)


# --------------------------------------------------------------------------- frozen BN
def _bn_leaves(tree, part, names):
  """``{path: leaf}`` of the BN leaves called ``names`` under ``part`` ('backbone' or 'head')."""
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree[part]):
    if path[-1].key in names and ('bn' in path[-2].key):
      out[jax.tree_util.keystr(path)] = np.asarray(x)
  return out


def test_frozen_bn_step_keeps_backbone_statistics_and_trains_the_rest(tmp_path_factory):
  c = tiny_adapt_config(tmp_path_factory)
  arch, _ = read_search(fake_search_dir(c, tmp_path_factory.mktemp('search_bn')))
  model = build_network(arch, c, frozen_bn=True)
  assert model.frozen_bn
  shapes = variable_shapes(model, (1, 32, 32, 3), train=False)
  variables = random_like(shapes, 0)
  images = demo_data.DemoSegmentation('train', 4, 32, seed=0)
  batch = {'image': np.stack([T.normalize(images[i]['image']) for i in range(4)]),
           'label': np.stack([images[i]['label'] for i in range(4)]).astype(np.int32)}
  # No weight decay: whatever moves a parameter in this step is its gradient.
  tx = adapt.finetune_optimizer(lambda step: 0.1, momentum=0.9, weight_decay=0.0)
  state = steps.init_state(tx, variables, jax.random.key(0))
  step = jax.jit(functools.partial(steps.train_step, model, tx, seg.segmentation_loss))
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics['loss']))
  new = jax.device_get(new)

  old_stats = _bn_leaves(variables['batch_stats'], 'backbone', ('mean', 'var'))
  new_stats = _bn_leaves(new.batch_stats, 'backbone', ('mean', 'var'))
  assert len(old_stats) >= 2 * 10 and old_stats.keys() == new_stats.keys()
  for k in old_stats:
    assert np.array_equal(old_stats[k], new_stats[k]), f'backbone {k} moved'

  old_head = _bn_leaves(variables['batch_stats'], 'head', ('mean', 'var'))
  new_head = _bn_leaves(new.batch_stats, 'head', ('mean', 'var'))
  assert len(old_head) >= 2 * 5
  for k in old_head:
    assert not np.array_equal(old_head[k], new_head[k]), f'head {k} did not move'

  old_affine = _bn_leaves(variables['params'], 'backbone', ('scale', 'bias'))
  new_affine = _bn_leaves(new.params, 'backbone', ('scale', 'bias'))
  assert len(old_affine) == len(old_stats)
  for k in old_affine:
    assert not np.array_equal(old_affine[k], new_affine[k]), f'backbone {k} did not train'

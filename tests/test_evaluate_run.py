"""End-to-end evaluation on 8 devices, and the weights a parameter-adaptation run saves.

The protocol is that of the paper's Cityscapes results (Sec. 4.1, Tab. 2): mIoU over the classes,
with Cityscapes' unlabelled pixels (255) ignored; whole-image or sliding-window inference.  Here ``evaluate_network`` (a batch sharded over the 8
simulated devices, the last batch padded) is compared with a plain numpy loop that forwards each
image alone, and sliding windows as large as the image with whole-image inference.
"""

import os

import jax
import numpy as np
import pytest

from fna_jax import build
from fna_jax.data import transforms as T
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.runtime.checkpoint import load_variables, save_variables
from fna_jax.tasks.seg import demo_data, inference
from fna_jax.train import adapt, evaluate
from fna_jax.train.adapt_loop import build_network, read_search, run_adapt

from test_nan_guard import fake_search_dir, restore_state, tiny_adapt_config

quiet = lambda s: None  # noqa: E731
IGNORE = 255
NUM_VAL = 11  # not a multiple of the batch (8): the last batch is padded with 5 examples


@pytest.fixture(scope='module')
def network(tmp_path_factory):
  """A derived network with DeepLabv3+ (stride-4 logits: varied predictions at 32x32)."""
  c = tiny_adapt_config(tmp_path_factory, head='deeplabv3+')
  c.data.num_val = NUM_VAL
  arch, _ = read_search(fake_search_dir(c, tmp_path_factory.mktemp('search_eval')))
  model = build_network(arch, c)
  shapes = variable_shapes(model, (1, 32, 32, 3), train=False)
  source = demo_data.DemoSegmentation('val', NUM_VAL, c.data.image_size, seed=c.data.data_seed)
  # Random weights with BN statistics recomputed on the images (as parameter adaptation does
  # before fine-tuning): normalised features, so the predictions vary over the image (with the
  # initial statistics every pixel gets the same class).
  images = np.stack([T.normalize(source[i]['image']) for i in range(NUM_VAL)])
  train_fwd = jax.jit(lambda v, b: model.apply(v, b['image'], True, mutable=['batch_stats'],
                                               rngs={'dropout': jax.random.key(0)}))
  variables = adapt.recalibrate_bn(train_fwd, random_like(shapes, 3), [{'image': images}])
  variables = jax.device_get(variables)
  return c, model, variables, source


def forward_each_image(model, variables, source, return_logits=False):
  """Predicted classes of every image of ``source``, each image forwarded alone (batch of 1);
  with ``return_logits`` also the logits."""
  forward = jax.jit(lambda x: model.apply(variables, x, False))
  logits = np.stack([np.asarray(forward(T.normalize(source[i]['image'])[None]))[0]
                     for i in range(len(source))])
  preds = np.argmax(logits, -1)
  return (preds, logits) if return_logits else preds


def numpy_metrics(labels, preds, num_classes):
  """(mIoU, pixel accuracy, confusion matrix) in numpy over the pixels not labelled 255.

  IoU = TP / (TP + FP + FN) for each class that occurs in the ground truth or the predictions;
  mIoU their mean.
  """
  labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
  valid = labels != IGNORE
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels[valid], preds[valid]), 1)
  tp = np.diag(cm).astype(np.float64)
  union = cm.sum(0) + cm.sum(1) - tp
  present = union > 0
  return float(np.mean(tp[present] / union[present])), float(tp.sum() / cm.sum()), cm


def _spy(monkeypatch, name, store):
  """Records the logits ``inference.<name>`` returns inside ``evaluate_network`` (unchanged)."""
  real = getattr(inference, name)

  def wrapper(*args, **kwargs):
    out = real(*args, **kwargs)
    store.append(np.asarray(out))
    return out
  monkeypatch.setattr(inference, name, wrapper)


def test_padded_last_batch_on_8_devices_matches_a_per_image_numpy_loop(network, devices,
                                                                       monkeypatch):
  c, model, variables, source = network
  c = c.copy_and_resolve_references()
  assert len(devices) == 8 and NUM_VAL % 8
  labels = np.stack([source[i]['label'] for i in range(NUM_VAL)])
  assert np.any(labels == IGNORE)  # the ignore label is exercised
  ref_preds, ref_logits = forward_each_image(model, variables, source, return_logits=True)
  _, _, ref_cm = numpy_metrics(labels, ref_preds, c.data.num_classes)
  # Not a degenerate network: several classes predicted, several of them correctly somewhere.
  assert len(np.unique(ref_preds)) >= 3 and np.count_nonzero(np.diag(ref_cm)) >= 2

  logits = []
  _spy(monkeypatch, 'predict_whole', logits)
  c.eval.update(mode='whole', batch_size=8)
  result = evaluate.evaluate_network(build.task(c), model, variables, source, log=quiet)
  # 16 = 11 images + 5 padding examples, in 2 batches of 8 (one example per device).
  assert len(logits) == 2 and all(l.shape == (8, 32, 32, c.data.num_classes) for l in logits)
  preds = np.concatenate([np.argmax(l, -1) for l in logits])[:NUM_VAL]
  # The sharded batch forward gives each image's single-image logits up to float32 summation
  # order, so its predictions differ only where the two best logits of the single-image forward
  # are within that rounding (a near-tie): at most a handful of pixels.
  np.testing.assert_allclose(np.concatenate(logits)[:NUM_VAL], ref_logits, atol=1e-4, rtol=1e-4)
  top2 = np.sort(ref_logits, -1)[..., -2:]
  differ = preds != ref_preds
  assert differ.sum() <= 5 and np.all((top2[..., 1] - top2[..., 0])[differ] < 1e-4)
  # The metrics must be those of the 11 real images alone: padding and 255 pixels count
  # nowhere.  (Both sides are float64 arithmetic on the same integer counts.)
  ref_miou, ref_acc, _ = numpy_metrics(labels, preds, c.data.num_classes)
  assert result['miou'] == pytest.approx(ref_miou, rel=1e-12)
  assert result['pixel_accuracy'] == pytest.approx(ref_acc, rel=1e-12)
  assert result['num_images'] == NUM_VAL


def test_sliding_windows_as_large_as_the_image_equal_whole_image(network, monkeypatch):
  c, model, variables, source = network
  c = c.copy_and_resolve_references()
  whole, sliding = [], []
  _spy(monkeypatch, 'predict_whole', whole)
  _spy(monkeypatch, 'sliding_window_logits', sliding)
  c.eval.update(mode='whole', batch_size=8)
  r_whole = evaluate.evaluate_network(build.task(c), model, variables, source, log=quiet)
  c.eval.update(mode='sliding', crop_size=c.data.image_size, stride_fraction=2 / 3)
  r_slide = evaluate.evaluate_network(build.task(c), model, variables, source, log=quiet)
  assert len(whole) == len(sliding) == 2
  for w, s in zip(whole, sliding):
    np.testing.assert_array_equal(np.argmax(s, -1), np.argmax(w, -1))
    # One window covering the image: the same forward, its softmax probabilities (what sliding
    # windows add, as the release) averaged over a count of 1.
    probs = np.exp(w - w.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(s, probs, rtol=1e-5, atol=1e-6)
  assert r_slide['mode'] == 'sliding' and r_whole['mode'] == 'whole'
  for k in ('miou', 'pixel_accuracy', 'iou', 'num_images'):
    assert r_slide[k] == r_whole[k], k


# --------------------------------------------------------------------------- saved weights
ADAPT_STEPS = 3


@pytest.fixture(scope='module')
def adapted(tmp_path_factory):
  """A 3-step fine-tuning run, checkpointed at steps 2 and 3 (the end)."""
  c = tiny_adapt_config(tmp_path_factory, steps=ADAPT_STEPS)
  c.checkpoint_every = 2
  search_dir = fake_search_dir(c, tmp_path_factory.mktemp('search_adapt'))
  workdir = str(tmp_path_factory.mktemp('adapt_saved'))
  result = run_adapt(c, workdir, search_dir, log=quiet)
  return c, search_dir, workdir, result


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
      tree)}


def _assert_trees_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


def test_saved_model_is_the_state_after_the_last_step(adapted):
  c, search_dir, workdir, result = adapted
  model, saved, meta = build.load_network(os.path.join(workdir, 'model'), c)
  loaded, meta2 = load_variables(os.path.join(workdir, 'model'))
  assert meta == meta2 and meta['outputs'] == {'num_classes': c.data.num_classes}
  _assert_trees_equal(saved, loaded)
  _assert_trees_equal(saved, result.variables)

  # Independently, the run's own checkpoint of its final training state (step 3) ...
  template = jax.tree.map(np.zeros_like, saved)
  step, final = restore_state(workdir, c, template)
  assert step == ADAPT_STEPS and int(final.step) == ADAPT_STEPS
  _assert_trees_equal(saved, {'params': final.params, 'batch_stats': final.batch_stats})
  # ... and it is not the state one step earlier (the step-2 checkpoint).
  step2, before = restore_state(workdir, c, template, step=ADAPT_STEPS - 1)
  assert step2 == ADAPT_STEPS - 1 and int(before.step) == ADAPT_STEPS - 1
  changed = [k for k, v in _flat(before.params).items() if not np.array_equal(v, _flat(
      saved['params'])[k])]
  assert len(changed) == len(_flat(before.params))  # the last SGD step moved every parameter
  assert model.frozen_bn is False and meta['head'] == c.adapt.head


def test_a_network_saved_before_head_align_corners_is_rebuilt_with_half_pixel_upsampling(
    adapted, tmp_path_factory):
  """The saved head settings now hold ``align_corners`` (True: the release's upsampling); a
  network saved without it was trained with half-pixel upsampling and is rebuilt that way."""
  c, _, workdir, _ = adapted
  model, variables, meta = build.load_network(os.path.join(workdir, 'model'), c)
  assert meta['head_config']['align_corners'] is True and model.align_corners is True
  del meta['head_config']['align_corners']
  old = str(tmp_path_factory.mktemp('old') / 'model')
  save_variables(old, variables, meta)
  old_model, _, _ = build.load_network(old, c)
  assert old_model.align_corners is False

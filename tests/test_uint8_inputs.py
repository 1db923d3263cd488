"""uint8 training images normalised inside the jitted steps, and batches prefetched to the devices.

Training pipelines send ``uint8`` images (a quarter of float32's bytes);
:func:`fna_jax.runtime.inputs.model_images` normalises them on the device exactly as the host's
:func:`fna_jax.data.transforms.normalize` did (torchvision's ImageNet statistics, paper
Sec. 4.1.1), and for detection sets the padding to 0 after normalising, as MMDetection v1 pads the
normalised image (paper Sec. 4.2.1).  :class:`fna_jax.runtime.mesh.DevicePrefetch` puts batches on
the mesh ahead of their step and checkpoints the state after the last consumed batch.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo as seg_demo_config
from configs import det_demo as det_demo_config
from configs import pose_demo as pose_demo_config
from fna_jax import build
from fna_jax.data import transforms as T
from fna_jax.models.blocks import batch_norm
from fna_jax.runtime import inputs
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps
from fna_jax.tasks.det import pipeline as det_pipeline
from fna_jax.tasks.seg import demo_data as seg_demo_data
from fna_jax.tasks.seg import pipeline as seg_pipeline

# Normalised values lie in [-2.2, 2.7]; the device computes the same float32 operations with the
# same float32 constants as the host, so any difference is float32 rounding (a few 1e-7 at most,
# should XLA fuse the subtraction and the product differently).  1e-6 absolute says "the same
# normalisation"; a wrong constant or a missing step is off by 1e-2 or more.
NORM_ATOL = 1e-6


def _uint8(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _host_normalised_masked(images, valid_hw):
  """numpy: normalise, then 0 outside each image's (rows, cols) extent (v1: pad after norm)."""
  out = T.normalize(images)
  for b, (h, w) in enumerate(valid_hw):
    out[b, h:] = 0
    out[b, :, w:] = 0
  return out


# ---------------------------------------------------------------------------- model_images
def test_model_images_normalises_uint8_as_the_host_and_passes_floats_through():
  u8 = _uint8((2, 5, 7, 3), 0)
  got = np.asarray(jax.jit(inputs.model_images)({'image': u8}))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, T.normalize(u8), rtol=0, atol=NORM_ATOL)
  # float images (evaluation pipelines, host-normalised callers) are used as they are
  floats = np.random.default_rng(1).standard_normal((2, 5, 7, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(inputs.model_images({'image': floats})), floats)
  # bfloat16 compute: normalised first (in float32), then cast; bfloat16 keeps 8 significant
  # bits, so relative 2**-8 of values up to 2.7.
  bf = inputs.model_images({'image': u8}, jnp.bfloat16)
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf, np.float32), T.normalize(u8), rtol=2 ** -8,
                             atol=2.7 * 2 ** -8)
  with pytest.raises(TypeError, match='uint8'):
    inputs.model_images({'image': u8.astype(np.int32)})


def test_valid_extent_zeroes_each_images_padding_after_normalising():
  u8 = _uint8((3, 6, 7, 3), 2)
  hw = np.asarray([[6, 7], [3, 4], [5, 2]], np.int32)  # one extent per image
  got = np.asarray(jax.jit(inputs.model_images)({'image': u8, inputs.VALID_HW: hw}))
  want = _host_normalised_masked(u8, hw)
  np.testing.assert_allclose(got, want, rtol=0, atol=NORM_ATOL)
  for b, (h, w) in enumerate(hw):  # exactly 0, as v1's zero padding
    assert not got[b, h:].any() and not got[b, :, w:].any()


def test_det_training_batch_matches_v1_normalise_then_pad():
  """The det training transform's uint8 image, normalised on the device, equals the evaluation
  transform's host normalise-then-pad (v1's order) inside the image and is exactly 0 in the
  padding."""
  c = det_demo_config.get_config()
  c.data.update(num_train=2, image_size=48)
  src = build.dataset(c, 'train')
  canvas, scale = (64, 96), (56, 96)   # 48 -> 56 x 56 inside 64 x 96: padded on both sides
  train = det_pipeline.DetTrainTransform(canvas=canvas, scale=scale, flip=False, max_boxes=8)
  host = det_pipeline.DetEvalTransform(canvas=canvas, scale=scale)
  exs = [train.random_map(src[i], np.random.default_rng(0)) for i in range(2)]
  batch = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
  assert batch['image'].dtype == np.uint8
  np.testing.assert_array_equal(batch['input_hw'], [[56, 56], [56, 56]])
  got = np.asarray(jax.jit(inputs.model_images)(batch))
  assert not got[:, 56:].any() and not got[:, :, 56:].any()   # exactly 0
  want = np.stack([host.map(src[i])['image'] for i in range(2)])
  np.testing.assert_allclose(got, want, rtol=0, atol=NORM_ATOL)


# ---------------------------------------------------------------------------- the train step
class _ConvBNNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    x = nn.relu(batch_norm(train, 'bn')(x))
    return nn.Dense(3, name='classifier')(jnp.mean(x, axis=(1, 2)))


def test_train_step_on_uint8_equals_the_step_on_the_host_normalised_batch():
  mesh = mesh_lib.make_mesh()
  model = _ConvBNNet()
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  tx = optax.sgd(0.5, momentum=0.9)
  loss_fn = lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(
      logits, b['label']).mean()
  step = steps.jit_train_step(model, tx, loss_fn, mesh)
  u8 = _uint8((8, 16, 16, 3), 3)
  label = np.random.default_rng(4).integers(0, 3, (8,)).astype(np.int32)
  results = []
  for image in (u8, T.normalize(u8)):
    state = mesh_lib.put_replicated(steps.init_state(tx, variables, jax.random.key(1)), mesh)
    for _ in range(2):  # the second step also sees the first one's momentum and BN statistics
      state, metrics = step(state, mesh_lib.put_batch({'image': image, 'label': label}, mesh))
    results.append((float(metrics['loss']), jax.device_get(state)))
  (loss_u8, s_u8), (loss_f, s_f) = results
  # The inputs agree to float32 rounding (NORM_ATOL); through a conv, BatchNorm and two SGD steps
  # that stays at the 1e-6 relative level.  1e-5 allows that and nothing else: feeding the raw
  # uint8 values or a wrongly normalised image changes the loss and the weights at order 1e-1.
  np.testing.assert_allclose(loss_u8, loss_f, rtol=1e-5)
  assert loss_u8 > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               (s_u8.params, s_u8.batch_stats), (s_f.params, s_f.batch_stats))
  # ... and the step did move the weights (a no-op step would also compare equal)
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), s_u8.params,
                       variables['params'])
  assert max(jax.tree.leaves(moved)) > 1e-3


# ---------------------------------------------------------------------------- prefetching
def _seg_iter():
  src = seg_demo_data.DemoSegmentation('train', 24, image_size=32)
  return iter(seg_pipeline.make_seg_pipeline(src, batch_size=8, crop_size=24, seed=3,
                                             shard_by_process=False))


def _assert_same(device_batch, host_batch):
  assert set(device_batch) == set(host_batch)
  for k, v in host_batch.items():
    np.testing.assert_array_equal(np.asarray(device_batch[k]), v)


def test_prefetch_yields_the_batches_in_order_sharded_and_checkpoints_the_consumed_state():
  mesh = mesh_lib.make_mesh()
  ref_it = _seg_iter()
  ref = [next(ref_it) for _ in range(6)]
  size = 3
  pf = mesh_lib.prefetch_to_mesh(_seg_iter(), mesh, size=size)
  for k in range(2):
    b = next(pf)
    _assert_same(b, ref[k])
    for x in b.values():
      assert isinstance(x, jax.Array) and x.sharding.is_equivalent_to(
          mesh_lib.batch_sharded(mesh), x.ndim)
  # It reads ahead: the wrapped iterator is size - 1 batches past the consumed ones ...
  ahead = _seg_iter()
  ahead.set_state(pf.iterator.get_state())
  _assert_same(next(ahead), ref[2 + size - 1])
  # ... but its checkpointable state is the one after the 2 consumed batches.
  state = pf.get_state()
  fresh = _seg_iter()
  fresh.set_state(state)
  _assert_same(next(fresh), ref[2])
  # A resumed prefetcher continues from there, and the original one goes on in order.
  resumed = mesh_lib.prefetch_to_mesh(_seg_iter(), mesh, size=size)
  resumed.set_state(state)
  for k in range(2, 6):
    _assert_same(next(resumed), ref[k])
    _assert_same(next(pf), ref[k])
  # set_state on a prefetcher holding batches read ahead drops them and goes back.
  pf.set_state(state)
  _assert_same(next(pf), ref[2])


def test_prefetch_of_a_finite_iterator_ends_after_its_last_batch():
  mesh = mesh_lib.make_mesh()
  host = [{'image': _uint8((8, 2, 2, 3), i)} for i in range(3)]
  got = list(mesh_lib.prefetch_to_mesh(iter(host), mesh, size=2))
  assert len(got) == 3
  for g, h in zip(got, host):
    _assert_same(g, h)


# ---------------------------------------------------------------------------- pipelines
def _tiny(name):
  if name == 'seg':
    c = seg_demo_config.get_config()
    c.data.update(num_train=8, image_size=32, crop_size=32)
    c.adapt.crop_size = 32
  elif name == 'pose':
    c = pose_demo_config.get_config()
    c.data.update(num_train=8, image_size=48, input_size=(32, 32))
  else:
    c = det_demo_config.get_config()
    c.data.update(num_train=8, image_size=48, canvas=(64, 64), scale=(48, 64))
  return c


@pytest.mark.parametrize('name', ['seg', 'pose', 'det'])
@pytest.mark.parametrize('stage', ['search', 'adapt'])
def test_training_pipelines_yield_uint8_as_batch_shapes_say(name, stage):
  c = _tiny(name)
  task = build.task(c)
  src = build.dataset(c, 'train')
  batch = next(task.train_data(src, np.arange(8), batch_size=2, seed=0, stage=stage))
  shapes = task.batch_shapes(2, stage)
  assert shapes['image'].dtype == jnp.uint8
  assert set(batch) == set(shapes)
  for k, s in shapes.items():
    assert (batch[k].shape, batch[k].dtype) == (s.shape, s.dtype), k


def test_benchmark_random_batch_has_valid_uint8_images_extents_and_boxes():
  """``scripts/benchmark.py``'s fake training batch (``fna_jax.bench.search.random_batch``):
  uint8 images over the whole 0..255 range, extents inside the canvas, boxes inside them."""
  from fna_jax.bench import search as search_bench
  c = _tiny('det')
  c.data.canvas = (64, 96)
  batch = search_bench.random_batch(build.task(c).batch_shapes(16, 'search'), 5)
  image = batch['image']
  assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
  hw = batch['input_hw']
  assert (hw >= [32, 48]).all() and (hw <= [64, 96]).all() and len(np.unique(hw[:, 1])) > 1
  boxes = batch['boxes']
  assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
  assert boxes.min() >= 0
  assert (boxes[..., 2] <= hw[:, 1:2] - 1).all() and (boxes[..., 3] <= hw[:, 0:1] - 1).all()

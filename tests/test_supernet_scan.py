"""Identical searched layers as one ``lax.scan`` in the single-path weight step
(``search.scan_layers``): the supernet computes the same losses, gradients and BatchNorm updates
as layer by layer (paper Sec. 3.2.2), over the same variables, and never recompiles for a new
path; the relaxed forward (Eq. 7) and evaluation are unchanged."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, seg_cityscapes
from fna_jax import build
from fna_jax.models import supernet as sn
from fna_jax.models.init import variable_shapes
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.spaces import SpaceStage
from fna_jax.tasks import seg
from fna_jax.tasks.seg.heads import DeepLabV3Head
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.train import search

from test_supernet import OPS, _norm, tiny_space
from test_supernet_remat import PATHS, SIZE, _batch, _fns, setup, weight_steps  # noqa: F401


def tiny_seg(space, scan, remat=False):
  return SegmentationNet(sn.Supernet(space, remat=remat, scan_layers=scan),
                         DeepLabV3Head(3, channels=8, rates=(1, 2, 3)))


def test_identical_runs():
  # tiny_space: stage 2 has layers (OPS, OPS+skip, OPS+skip): layers 1 and 2 are one run; stage
  # 1's layer 1 is alone, layer 0 of a stage (stride, c_in -> c_out) never joins a run.
  assert [sn.identical_runs(st) for st in tiny_space().stages] == [[], [], [[1, 2]]]
  # Layer 0 has the stage's stride and c_in -> c_out: never in a run, even with the same
  # candidates; a layer with other candidates ends a run.
  assert sn.identical_runs(SpaceStage(8, 12, (OPS,) * 3, stride=2)) == [[1, 2]]
  assert sn.identical_runs(SpaceStage(8, 8, (OPS,) * 3 + (OPS + ('skip',),) * 2)) == [[1, 2], [3, 4]]
  # The paper's MobileNetV2 seg space (max layers 4, 4, 6, 6, 4, 1 after the fixed first stage):
  # each stage's layers 1.. form one run, 3 + 3 + 5 + 5 + 3 layers; the last stage has one.
  space = build.space(seg_cityscapes.get_config())
  assert [sn.identical_runs(st) for st in space.stages] == [
      [], [[1, 2, 3]], [[1, 2, 3]], [[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]], [[1, 2, 3]], []]


def test_scan_keeps_the_variable_paths(setup):
  space, _ = setup
  plain = variable_shapes(tiny_seg(space, False), (1, SIZE, SIZE, 3), train=False)
  scanned = variable_shapes(tiny_seg(space, True), (1, SIZE, SIZE, 3), train=False)
  chex.assert_trees_all_equal_shapes_and_dtypes(scanned, plain)


def _apply_fn(model, mode):
  """Loss, gradients and new batch statistics of the task loss, jitted; ``mode`` 'path' or
  'weights' says which argument ``choice`` is."""
  def loss(params, batch_stats, choice, batch):
    kw = {'path': choice} if mode == 'path' else {'op_weights': choice}
    out, new = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'], True,
                           rngs={'dropout': jax.random.key(5)}, mutable=['batch_stats'], **kw)
    return seg.segmentation_loss(out, batch), new['batch_stats']
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _assert_same(a, b, v, layer):
  """Same loss, gradients and batch statistics, and the scanned layer's statistics moved.

  The scan runs the same float32 ops as the unrolled layers; XLA may fuse them differently, so
  agreement is to float32 rounding (relative 1e-5, absolute 1e-6 near 0).  A layer's variables
  taken from another layer, or statistics not written back, are off by O(1).
  """
  (l0, bs0), g0 = a
  (l1, bs1), g1 = b
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  chex.assert_trees_all_close(g1, g0, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(bs1, bs0, rtol=1e-5, atol=1e-6)
  before = v['batch_stats']['backbone']['stage2'][layer]
  after = bs1['backbone']['stage2'][layer]
  assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(after),
                                                   jax.tree.leaves(before)))


@pytest.mark.parametrize('remat', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_scanned_single_path_equals_layer_by_layer(setup, remat):
  space, v = setup
  plain = _apply_fn(tiny_seg(space, False, remat), 'path')
  scanned = _apply_fn(tiny_seg(space, True, remat), 'path')
  batch = jax.tree.map(jnp.asarray, _batch(0))
  for choices in PATHS:
    if choices[3] == 2 and choices[4] == 2:
      continue  # both scanned layers skipped: nothing of theirs to compare
    path = jnp.asarray(choices, jnp.int32)
    layer = 'layer1' if choices[3] != 2 else 'layer2'
    _assert_same(plain(v['params'], v['batch_stats'], path, batch),
                 scanned(v['params'], v['batch_stats'], path, batch), v, layer)


@pytest.mark.slow
def test_relaxed_forward_and_evaluation_are_unchanged(setup):
  space, v = setup
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(7), (5, 3)), -1)
  batch = jax.tree.map(jnp.asarray, _batch(1))
  _assert_same(_apply_fn(tiny_seg(space, False), 'weights')(v['params'], v['batch_stats'],
                                                            weights, batch),
               _apply_fn(tiny_seg(space, True), 'weights')(v['params'], v['batch_stats'],
                                                           weights, batch), v, 'layer2')
  # Evaluation (running statistics, nothing written) agrees as well.
  x = batch['image']
  path = jnp.asarray(PATHS[1], jnp.int32)
  for kw in ({'path': path}, {'op_weights': weights}):
    chex.assert_trees_all_close(tiny_seg(space, True).apply(v, x, False, **kw),
                                tiny_seg(space, False).apply(v, x, False, **kw),
                                rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (simulated) devices')
def test_scanned_weight_step_on_eight_devices_compiles_once_and_equals_plain(setup):
  """Four weight steps on 8 devices (batch sharded, BatchNorm statistics global over the mesh)
  with new paths each: the scanned network, and the scanned and rematerialised one (the paper
  configs' default), each compile once and end in the same state as the plain one (whose
  1-vs-8-device agreement ``test_supernet`` checks).  XLA fuses the graphs differently, so
  states agree relative to how far the steps moved them (1e-3, as there); a layer's statistics
  or gradients lost or swapped under sharding is O(1)."""
  space, v = setup
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  rep = mesh_lib.replicated(mesh)
  alphas = sn.init_alphas(jax.random.key(2), space)
  finals = []
  for scan, remat in ((False, False), (True, False), (True, True)):
    fns = _fns(space, tiny_seg(space, scan, remat), v)
    w_step, _ = search.jit_steps(fns, mesh)
    state = jax.device_put(search.init_state(fns, jax.tree.map(jnp.copy, v), jnp.copy(alphas),
                                             jax.random.key(3)), rep)
    batches = [mesh_lib.put_batch(_batch(i, n=8), mesh) for i in range(4)]
    state, compiles, paths = weight_steps(w_step, state, batches, mesh)
    assert compiles == [1, 0, 0, 0]
    assert len(set(paths)) > 1  # new paths without recompiling
    finals.append((jax.device_get(state), paths))
  (s0, p0) = finals[0]
  for s1, p1 in finals[1:]:
    assert p1 == p0
    for name in ('params', 'batch_stats'):
      a, b = getattr(s0, name), getattr(s1, name)
      diff = _norm(jax.tree.map(np.subtract, a, b))
      moved = _norm(jax.tree.map(np.subtract, a, jax.device_get(v[name])))
      assert moved > 0 and diff <= 1e-3 * moved, (name, diff, moved)


@pytest.mark.parametrize('scan', [False, True])
def test_config_search_scan_layers_reaches_the_supernet(scan):
  c = demo.get_config()
  assert c.search.scan_layers is True  # the default
  c.search.scan_layers = scan
  assert build.search_network(c, build.space(c)).backbone.scan_layers is scan

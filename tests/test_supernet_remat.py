"""Rematerialised mixed layers (``search.remat``): the single-path weight step (paper Sec. 3.2.2)
computes the same as without, over the same variables, and never recompiles for a new path."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from fna_jax import build
from fna_jax.bench.compiles import CompileEvents
from fna_jax.models import supernet as sn
from fna_jax.models.init import init_variables, variable_shapes
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.tasks import seg
from fna_jax.tasks.seg.heads import DeepLabV3Head
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.train import search

from test_supernet import OPS, tiny_space  # the tiny space those tests search

SIZE = 32
# Paths over the 5 searched layers (candidates 2, 3, 2, 3, 3): every op of every layer, skips.
PATHS = ([0, 0, 0, 0, 0], [1, 2, 1, 2, 1], [1, 1, 0, 2, 2])


def tiny_seg(space, remat):
  return SegmentationNet(sn.Supernet(space, remat=remat),
                         DeepLabV3Head(3, channels=8, rates=(1, 2, 3)))


def _batch(seed, n=4):
  rng = np.random.default_rng(seed)
  return {'image': rng.standard_normal((n, SIZE, SIZE, 3)).astype(np.float32),
          'label': rng.integers(0, 3, (n, SIZE, SIZE)).astype(np.int32)}


@pytest.fixture(scope='module')
def setup():
  space = tiny_space()
  variables = init_variables(tiny_seg(space, False), 0, (1, SIZE, SIZE, 3), train=False)
  rng = np.random.default_rng(0)  # non-trivial running statistics, so their update is visible
  variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda p, a: (0.1 * rng.standard_normal(a.shape) if p[-1].key == 'mean'
                    else rng.uniform(0.5, 1.5, a.shape)).astype(np.float32),
      variables['batch_stats'])
  return space, jax.tree.map(jnp.asarray, variables)


def _grad_fn(model):
  """The weight step's loss and gradient (as in ``search.weight_step``), jitted, path traced."""
  def loss(params, batch_stats, path, batch):
    out, new = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'], True,
                           path=path, rngs={'dropout': jax.random.key(5)},  # same mask
                           mutable=['batch_stats'])
    return seg.segmentation_loss(out, batch), new['batch_stats']
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def test_remat_keeps_the_variable_paths(setup):
  space, _ = setup
  plain = variable_shapes(tiny_seg(space, False), (1, SIZE, SIZE, 3), train=False)
  remat = variable_shapes(tiny_seg(space, True), (1, SIZE, SIZE, 3), train=False)
  chex.assert_trees_all_equal_shapes_and_dtypes(remat, plain)  # same paths, shapes, dtypes
  assert 'k5_e6' in plain['params']['backbone']['stage2']['layer1']


def test_remat_weight_step_equals_plain(setup):
  """Loss, gradients and updated BatchNorm statistics of single paths, with and without remat.

  Rematerialisation recomputes the same float32 forward inside the backward pass; XLA may fuse
  and order the recomputed ops differently, so agreement is to float32 rounding (relative 1e-5,
  absolute 1e-6 for values near 0), not bit-exact.  A wrong recomputation (other op, other
  BatchNorm mode, statistics lost) is off by O(1) relative.
  """
  space, v = setup
  plain, remat = _grad_fn(tiny_seg(space, False)), _grad_fn(tiny_seg(space, True))
  batch = jax.tree.map(jnp.asarray, _batch(0))
  for choices in PATHS:
    path = jnp.asarray(choices, jnp.int32)
    (l0, bs0), g0 = plain(v['params'], v['batch_stats'], path, batch)
    (l1, bs1), g1 = remat(v['params'], v['batch_stats'], path, batch)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    chex.assert_trees_all_close(g1, g0, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(bs1, bs0, rtol=1e-5, atol=1e-6)
    # The path's ops moved their statistics (so the comparison above covers an update).
    assert not np.allclose(bs0['backbone']['stage2']['layer0'][OPS[choices[2]]]['dw_bn']['mean'],
                           v['batch_stats']['backbone']['stage2']['layer0'][OPS[choices[2]]]
                           ['dw_bn']['mean'])


def _fns(space, model, variables):
  table = search.cost_table(model, variables, space, (1, SIZE, SIZE, 3))
  sched = search.Schedule(total_steps=10, warmup_steps=2, lr_warmup_steps=2)
  opt_w, _ = search.weight_optimizer(sched, lr=0.05)
  return search.SearchFns(model, space, seg.segmentation_loss, table, 5e-3, opt_w,
                          search.arch_optimizer(lr=0.05))


def weight_steps(w_step, state, batches, mesh):
  """``w_step`` on each of ``batches`` (the first half with uniform paths); returns the final
  state, the XLA compilations of each call and each call's sampled path."""
  rep = mesh_lib.replicated(mesh)
  events, compiles, paths = CompileEvents.get(), [], []
  for i, b in enumerate(batches):
    u = jax.device_put(np.bool_(i < len(batches) // 2), rep)
    with events.window() as win:
      state, m = w_step(state, b, u)
      jax.block_until_ready(state)
    compiles.append(win.compiles)
    paths.append(tuple(np.asarray(m['path'])))
  return state, compiles, paths


def test_remat_steps_compile_once_and_arch_step_runs(setup):
  """New paths every weight step: one compilation (the first call), none after; the relaxed arch
  step (all paths, Eq. 7) of the remat network equals the plain one's."""
  space, v = setup
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  rep = mesh_lib.replicated(mesh)
  fns = _fns(space, tiny_seg(space, True), v)
  w_step, a_step = search.jit_steps(fns, mesh)
  alphas = sn.init_alphas(jax.random.key(2), space)  # copied below: the steps donate the state
  state = jax.device_put(search.init_state(fns, jax.tree.map(jnp.copy, v), jnp.copy(alphas),
                                           jax.random.key(3)), rep)
  batches = [mesh_lib.put_batch(_batch(i), mesh) for i in range(4)]
  state, compiles, paths = weight_steps(w_step, state, batches, mesh)
  assert compiles == [1, 0, 0, 0]
  assert len(set(paths)) > 1  # the paths changed without recompiling

  # Arch step: remat leaves the relaxed forward as it is, so the two networks agree (same
  # computation, same compiled graph up to names: to float32 rounding).
  plain_fns = _fns(space, tiny_seg(space, False), v)
  _, a_plain = search.jit_steps(plain_fns, mesh)
  s = jax.device_put(search.init_state(plain_fns, jax.tree.map(jnp.copy, v), jnp.copy(alphas),
                                       jax.random.key(3)), rep)
  s_plain, m_plain = a_plain(jax.tree.map(jnp.copy, s), batches[0])
  s_remat, m_remat = a_step(s, batches[0])
  np.testing.assert_allclose(float(m_remat['arch_loss']), float(m_plain['arch_loss']), rtol=1e-5)
  chex.assert_trees_all_close(s_remat.alphas, s_plain.alphas, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(s_remat.batch_stats, s_plain.batch_stats, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('remat', [False, True])
def test_config_search_remat_reaches_the_supernet(remat):
  c = demo.get_config()
  assert c.search.remat is False  # the default search is unchanged
  c.search.remat = remat
  net = build.search_network(c, build.space(c))
  assert net.backbone.remat is remat

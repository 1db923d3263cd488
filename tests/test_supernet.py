"""Supernet: mixed op modes, architecture parameters apart, search steps, 1 vs 8 devices."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fna_jax.arch import Stem
from fna_jax.models import Backbone
from fna_jax.models import supernet as sn
from fna_jax.tasks.seg.heads import DeepLabV3Head
from fna_jax.models.init import init_variables
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.spaces import SearchSpace, SpaceStage
from fna_jax.tasks import seg
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.train import search

OPS = ('k3_e3', 'k5_e6')


def tiny_space():
  return SearchSpace('mbconv', Stem(8, 3, 2), (
      SpaceStage(8, 8, (('k3_e1',),)),
      SpaceStage(8, 12, (OPS, OPS + ('skip',)), stride=2),
      SpaceStage(12, 16, (OPS, OPS + ('skip',), OPS + ('skip',)), stride=2),
  ), name='tiny')


def tiny_seg(space, num_classes=3):
  return SegmentationNet(sn.Supernet(space), DeepLabV3Head(num_classes, channels=8, rates=(1, 2, 3)))


@pytest.fixture(scope='module')
def setup():
  space = tiny_space()
  model = tiny_seg(space)
  variables = init_variables(model, 0, (1, 16, 16, 3), train=False)
  rng = np.random.default_rng(0)  # non-trivial running statistics, so eval mode means something
  variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda p, a: (0.1 * rng.standard_normal(a.shape) if p[-1].key == 'mean'
                    else rng.uniform(0.5, 1.5, a.shape)).astype(np.float32),
      variables['batch_stats'])
  return space, model, jax.tree.map(jnp.asarray, variables)


def test_mask_and_derive():
  space = tiny_space()
  mask = sn.candidate_mask(space)
  np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
  a = space.derive([1, 2, 0, 2, 1])
  assert a.stages[1].ops == ('k5_e6', 'skip') and a.stages[2].ops == ('k3_e3', 'k5_e6', 'skip')


def test_paths_name_ops_and_skip_owns_nothing(setup):
  _, _, v = setup
  layer = v['params']['backbone']['stage1']['layer1']
  assert set(layer) == set(OPS)
  assert 'dw_conv' in v['params']['backbone']['stage0']['layer0']  # fixed layer: plain block


def test_single_path_equals_derived_network(setup):
  """A path through the supernet computes exactly the standalone network of that path."""
  space, model, v = setup
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  choices = [1, 1, 0, 2, 2]  # layer 3 skips, layer 4 skips
  y_sup = model.apply(v, x, False, path=jnp.asarray(choices, jnp.int32))
  arch = space.skeleton().with_ops([['k3_e1'], ['k5_e6', 'k5_e6'], ['k3_e3', 'skip', 'skip']])

  def select(t):  # the chosen op's subtree of every mixed layer
    out = {k: val for k, val in t.items() if not k.startswith('stage')}
    out['stage0'] = t['stage0']
    out['stage1'] = {'layer0': t['stage1']['layer0']['k5_e6'],
                     'layer1': t['stage1']['layer1']['k5_e6']}
    out['stage2'] = {'layer0': t['stage2']['layer0']['k3_e3']}
    return out

  plain_vars = {c: {'backbone': select(v[c]['backbone']), 'head': v[c]['head']}
                for c in ('params', 'batch_stats')}
  y_plain = SegmentationNet(Backbone(arch), model.head).apply(plain_vars, x, False)
  chex.assert_trees_all_close(y_sup, y_plain, atol=1e-5)


def test_relaxed_one_hot_equals_single_path(setup):
  space, model, v = setup
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  path = np.array([0, 2, 1, 0, 1])
  onehot = jax.nn.one_hot(path, space.max_candidates)
  y_relaxed = model.apply(v, x, False, op_weights=onehot)
  y_single = model.apply(v, x, False, path=jnp.asarray(path, jnp.int32))
  chex.assert_trees_all_close(y_relaxed, y_single, atol=1e-5)


def test_sample_path_respects_mask_and_distribution():
  space = tiny_space()
  mask = sn.candidate_mask(space)
  alphas = jnp.zeros(mask.shape).at[1, 2].set(3.0)
  keys = jax.random.split(jax.random.key(0), 4000)
  paths = jax.vmap(lambda k: sn.sample_path(k, alphas, mask))(keys)
  assert np.all(np.asarray(paths)[:, [0, 2]] < 2)  # two-candidate layers never pick index 2
  p = np.mean(np.asarray(paths)[:, 1] == 2)
  expected = np.exp(3) / (np.exp(3) + 2)
  assert abs(p - expected) < 0.03
  uni = jax.vmap(lambda k: sn.sample_path(k, alphas, mask, True))(keys)
  assert abs(np.mean(np.asarray(uni)[:, 1] == 2) - 1 / 3) < 0.03


def _fns(space, model, variables, steps=10):
  table = search.cost_table(model, variables, space, (1, 16, 16, 3))
  sched = search.Schedule(total_steps=steps, warmup_steps=2, lr_warmup_steps=2)
  opt_w, _ = search.weight_optimizer(sched, lr=0.05)
  return search.SearchFns(model, space, seg.segmentation_loss, table, 5e-3, opt_w,
                          search.arch_optimizer(lr=0.05))


def test_cost_table(setup):
  space, model, v = setup
  fns = _fns(space, model, v)
  t = fns.table
  assert t.shape == (5, 3) and t[0, 2] == 0 and t[1, 2] == 0  # masked and skip cost nothing
  # stage1 layer1 (12->12 at 4x4 output): k3_e3 = 1x1 12->36, dw 3x3 36, 1x1 36->12.
  assert t[1, 0] == (12 * 36 + 9 * 36 + 36 * 12) * 16
  assert t[1, 1] == (12 * 72 + 25 * 72 + 72 * 12) * 16


def _batch(seed, n=8):
  rng = np.random.default_rng(seed)
  return {'image': rng.standard_normal((n, 16, 16, 3)).astype(np.float32),
          'label': rng.integers(0, 3, (n, 16, 16)).astype(np.int32)}


def _counting_traces(monkeypatch):
  """Counts how often ``search.weight_step``/``arch_step`` are traced (public behaviour, not
  jit's private cache): a jitted step traces its Python function once per compilation."""
  traces = {'weight': 0, 'arch': 0}
  for name, fn in (('weight', search.weight_step), ('arch', search.arch_step)):
    def counted(*args, _fn=fn, _name=name):
      traces[_name] += 1
      return _fn(*args)
    monkeypatch.setattr(search, f'{name}_step', counted)
  return traces


def _run(space, model, variables, devices, n_steps=4):
  fns = _fns(space, model, variables)
  mesh = mesh_lib.make_mesh(devices)
  with pytest.MonkeyPatch.context() as mp:
    traces = _counting_traces(mp)
    w_step, a_step = search.jit_steps(fns, mesh)
    state, paths, am = _steps(fns, variables, space, mesh, w_step, a_step, n_steps)
  return state, paths, (traces['weight'], traces['arch']), am


def _steps(fns, variables, space, mesh, w_step, a_step, n_steps):
  fresh = jax.tree.map(jnp.copy, variables)  # the steps donate (delete) their input state
  state = search.init_state(fns, fresh, sn.init_alphas(jax.random.key(2), space),
                            jax.random.key(3))
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  alphas0 = np.asarray(state.alphas)
  paths = []
  for i in range(n_steps):
    b = mesh_lib.put_batch(_batch(i), mesh)
    if i >= 2:
      params_before, alphas_before = jax.device_get((state.params, state.alphas))
      state, am = a_step(state, mesh_lib.put_batch(_batch(100 + i), mesh))
      chex.assert_trees_all_equal(jax.device_get(state.params), params_before)  # weights kept
      assert not np.allclose(np.asarray(state.alphas), alphas_before)
      alphas_before = np.asarray(state.alphas)
    else:
      np.testing.assert_array_equal(np.asarray(state.alphas), alphas0)
      alphas_before = alphas0
    state, m = w_step(state, b, jnp.asarray(i < 2))
    np.testing.assert_array_equal(np.asarray(state.alphas), alphas_before)  # alphas kept
    paths.append(np.asarray(m['path']))
  return state, paths, am


def test_steps_compile_once_and_keep_parameter_sets_apart(setup):
  """Also: weight steps never touch alphas, arch steps never touch weights (checked in _run)."""
  space, model, v = setup
  state, paths, sizes, am = _run(space, model, v, jax.devices()[:1])
  assert sizes == (1, 1)
  assert len({tuple(p) for p in paths}) > 1  # paths changed without recompiling
  assert np.isfinite(float(am['arch_loss'])) and float(am['expected_gmadds']) > 0
  assert int(state.step) == 4


@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (simulated) devices')
def test_one_vs_eight_devices_identical(setup):
  space, model, v = setup
  s1, p1, _, _ = _run(space, model, v, jax.devices()[:1])
  s8, p8, _, _ = _run(space, model, v, jax.devices()[:8])
  np.testing.assert_array_equal(np.stack(p1), np.stack(p8))
  # Float32 sums reduce in another order on 8 devices, so demand agreement relative to how far
  # the 4 steps moved each tree: a sharding bug (e.g. per-device BatchNorm statistics) is O(1).
  for name in ('params', 'alphas', 'batch_stats'):
    a, b = jax.device_get(getattr(s1, name)), jax.device_get(getattr(s8, name))
    start = jax.device_get(v[name] if name != 'alphas' else sn.init_alphas(jax.random.key(2),
                                                                           space))
    diff = _norm(jax.tree.map(np.subtract, a, b))
    moved = _norm(jax.tree.map(np.subtract, a, start))
    assert moved > 0 and diff <= 1e-3 * moved, (name, diff, moved)


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))

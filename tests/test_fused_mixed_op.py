"""The fused relaxed mixed ops (``MixedLayer(relaxed_impl='fused' | 'fused_padded')``) equal the
naive one.

Paper Sec. 3.2.2, Eq. 7: a searched layer's relaxed output is ``sum_o softmax(alpha)_o * o(x)``.
The naive forward runs every candidate block; the fused ones run the MBConv candidates as wide
blocks (concatenated expansion, one depthwise conv per kernel size, or one over all candidates with
the kernels zero-padded).  They must give the same outputs (train and eval mode), the same updated
BatchNorm statistics under the same variable paths, and the same gradients w.r.t. the parameters,
the input and the architecture parameters.

Tolerances (float32): outputs are BatchNorm-normalised and mixed with weights summing to 1, so they
are O(1); the fused path differs from the naive one only in summation order (the wide 1x1 conv is
another matmul shape; the padded depthwise taps add exact zeros), a few float32 ulps (~1e-7
relative) per op, which the handful of ops and batch-statistic reductions here amplify to ~1e-6.
So values are compared at 2e-5 (relative to each tree leaf's magnitude for gradients, which the
BatchNorm backward over a 2-image batch makes less uniform: 1e-4).  The breakages these tests are
meant to catch (kernel off centre, statistics shared across candidates, a residual dropped) change
results by O(0.1), four orders of magnitude above.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import seg_cityscapes
from fna_jax import build, ops
from fna_jax.arch import Stem
from fna_jax.models import supernet as sn
from fna_jax.spaces import SearchSpace, SpaceStage

ATOL = RTOL = 2e-5     # forward values and statistics (see the module docstring)
GRAD_RTOL = 1e-4       # gradients, relative to each leaf's largest entry

POOL = ('k3_e3', 'k3_e6', 'k5_e3', 'k5_e6', 'k7_e3', 'k7_e6', 'k3_e1')


def _random_cases(n, seed=0):
  """``n`` layers with random candidates: 2-4 ops from :data:`POOL`, plus ``skip`` where the
  layer has a residual (stride 1, c_in == c_out) and a coin says so; random stride, dilation and
  widths."""
  rng = np.random.default_rng(seed)
  cases = []
  for _ in range(n):
    stride, dilation = int(rng.choice([1, 2])), int(rng.choice([1, 2]))
    c_in = int(rng.choice([8, 12]))
    c_out = c_in if rng.random() < 0.6 else int(rng.choice([8, 16]))
    ops_ = list(rng.choice(POOL, int(rng.integers(2, 5)), replace=False))
    if stride == 1 and c_in == c_out and rng.random() < 0.7:
      ops_.insert(int(rng.integers(0, len(ops_) + 1)), 'skip')
    cases.append((tuple(ops_), c_in, c_out, stride, dilation))
  return cases


# (candidates, c_in, c_out, stride, dilation): hand-picked to cover residual and non-residual
# layers, stride 2, dilation 2, skip, expansion 1 (run unfused), 3 kernel sizes at once, and
# kernel sizes shared by two candidates ('fused' runs those as one block) or held by one (a block
# of its own); then random ones.
CASES = [
    (('k3_e3', 'skip', 'k5_e6', 'k3_e1', 'k7_e3', 'k3_e6'), 8, 8, 1, 1),  # residual, all kernels
    (('k5_e3', 'k3_e6', 'skip', 'k5_e6'), 8, 8, 1, 2),                    # residual, dilated
    (('k7_e6', 'k3_e6', 'k7_e3', 'k5_e3'), 8, 16, 2, 1),                  # stride 2, no residual
    (('k3_e3', 'k5_e6', 'k3_e1', 'k5_e3'), 8, 12, 1, 2),                  # c_in != c_out, dilated
] + [pytest.param(c, marks=pytest.mark.slow) for c in _random_cases(3)]
FUSED = ('fused', 'fused_padded')


def _with_impls(cases, ids, padded_by_default):
  """``cases`` (each a tuple of test arguments, or a ``pytest.param`` of one) for both fused
  forms, the impl appended.  'fused_padded' differs from 'fused' only in how the candidates are
  grouped (one block instead of one per kernel size), so by default it runs only the ids in
  ``padded_by_default``, the rest in the slow run."""
  out = []
  for case, id_ in zip(cases, ids):
    values, marks = (case.values, case.marks) if hasattr(case, 'values') else (case, ())
    for impl in FUSED:
      slow = impl == 'fused_padded' and id_ not in padded_by_default
      out.append(pytest.param(*values, impl, id=f'{id_}-{impl}',
                              marks=tuple(marks) + ((pytest.mark.slow,) if slow else ())))
  return out


def _layer(case, impl, conv_impl='cpu'):
  cands, c_in, c_out, stride, dilation = case
  return sn.MixedLayer('mbconv', cands, c_in, c_out, stride, dilation,
                       ops.conv_module(conv_impl), relaxed_impl=impl)


def _randomise_bn(variables, seed):
  """BatchNorm scales/biases and running statistics away from their init (1, 0, 0, 1), different
  per candidate, so that eval mode and a mix-up of candidates' BatchNorms show."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = path[-1].key
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    if name in ('bias', 'mean'):
      return (0.3 * rng.standard_normal(a.shape)).astype(np.float32)
    return a
  return jax.tree.map(jnp.asarray, jax.tree_util.tree_map_with_path(draw, variables))


def _setup(case, seed=0, conv_impl='cpu'):
  _, c_in, _, _, _ = case
  x = jax.random.normal(jax.random.key(seed), (2, 16, 16, c_in))
  n = len(case[0])
  variables = _layer(case, 'naive', conv_impl).init(jax.random.key(seed + 1), x, False,
                                                    weights=jnp.ones(n) / n)
  alphas = jax.random.normal(jax.random.key(seed + 2), (n,))  # far from uniform weights
  return _randomise_bn(variables, seed), x, alphas


@functools.lru_cache(maxsize=None)
def _apply_fn(case, impl, train, conv_impl):
  """The layer's relaxed forward, jitted (one compile per configuration; eager dispatch of the
  many small ops is slower)."""
  layer = _layer(case, impl, conv_impl)
  return jax.jit(lambda v, x, a: layer.apply(v, x, train, weights=jax.nn.softmax(a),
                                             mutable=['batch_stats']))


def _run(case, impl, variables, x, alphas, train, conv_impl='cpu'):
  return _apply_fn(case, impl, train, conv_impl)(variables, x, alphas)


def _assert_trees_close(got, want, rtol, atol):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
    'case,train,impl',
    _with_impls([pytest.param(c.values[0], t, marks=c.marks) if hasattr(c, 'values') else (c, t)
                 for c in CASES for t in (True, False)],
                [f'case{i}-{t}' for i in range(len(CASES)) for t in ('train', 'eval')],
                padded_by_default={'case0-train', 'case2-train'}))
def test_forward_and_batch_stats(case, train, impl):
  variables, x, alphas = _setup(case)
  y_naive, st_naive = _run(case, 'naive', variables, x, alphas, train)
  y_fused, st_fused = _run(case, impl, variables, x, alphas, train)
  assert y_fused.shape == y_naive.shape
  np.testing.assert_allclose(y_fused, y_naive, rtol=RTOL, atol=ATOL)
  # Same variable paths updated, to the same values (train); unchanged in eval mode.
  _assert_trees_close(st_fused, st_naive, RTOL, ATOL)
  if not train:
    _assert_trees_close(st_fused, {'batch_stats': variables['batch_stats']}, 0, 0)
  else:
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), st_fused['batch_stats'],
                           variables['batch_stats'])
    assert all(jax.tree.leaves(changed))  # every candidate's BatchNorms were updated


def _grads(case, impl, variables, x, alphas, train, conv_impl='cpu'):
  # A fixed random cotangent: every output element weighs in, with its own sign.
  layer = _layer(case, impl, conv_impl)
  shape = jax.eval_shape(lambda: _run(case, impl, variables, x, alphas, train, conv_impl))[0].shape
  cot = jax.random.normal(jax.random.key(7), shape)

  def loss(params, x, alphas):
    y, _ = layer.apply({**variables, 'params': params}, x, train, weights=jax.nn.softmax(alphas),
                       mutable=['batch_stats'])
    return jnp.sum(y * cot)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(variables['params'], x, alphas)


def _assert_grads_close(got, want):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    w = np.asarray(w)
    scale = float(np.abs(w).max())
    assert scale > 0, jax.tree_util.keystr(path)  # a gradient that is all zeros tests nothing
    np.testing.assert_allclose(np.asarray(g), w, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
    'case,train,impl',
    _with_impls([(c, True) for c in CASES[:4]] + [(CASES[0], False)],
                ['case0-train', 'case1-train', 'case2-train', 'case3-train', 'case0-eval'],
                padded_by_default={'case0-train'}))
def test_gradients(case, train, impl):
  """Gradients w.r.t. every parameter, the input and the alphas (through softmax, Eq. 7)."""
  variables, x, alphas = _setup(case, seed=3)
  g_naive = _grads(case, 'naive', variables, x, alphas, train)
  g_fused = _grads(case, impl, variables, x, alphas, train)
  assert jax.tree.structure(g_fused) == jax.tree.structure(g_naive)
  _assert_grads_close(g_fused, g_naive)


@pytest.mark.parametrize('impl', _with_impls([()], ['xla'], padded_by_default=()))
def test_xla_convolutions(impl):
  """The fused convolutions go through the layer's conv implementation: 'xla' agrees too."""
  case = CASES[0]
  variables, x, alphas = _setup(case, conv_impl='xla')
  y_naive, st_naive = _run(case, 'naive', variables, x, alphas, True, 'xla')
  y_fused, st_fused = _run(case, impl, variables, x, alphas, True, 'xla')
  np.testing.assert_allclose(y_fused, y_naive, rtol=RTOL, atol=ATOL)
  _assert_trees_close(st_fused, st_naive, RTOL, ATOL)
  _assert_grads_close(_grads(case, impl, variables, x, alphas, True, 'xla'),
                      _grads(case, 'naive', variables, x, alphas, True, 'xla'))


def _tiny_space():
  a = ('k3_e3', 'k5_e6', 'k7_e3', 'k5_e3')
  return SearchSpace('mbconv', Stem(8, 3, 2), (
      SpaceStage(8, 8, (('k3_e1',),)),
      SpaceStage(8, 12, (a,), stride=2),
      SpaceStage(12, 12, (a, a + ('k3_e1', 'skip')), stride=1, dilation=2),
  ), name='tiny')


@pytest.mark.parametrize('impl,fewer_matmuls', [
    ('fused', 1), pytest.param('fused_padded', 3, marks=pytest.mark.slow)])
def test_supernet_relaxed_and_single_path(impl, fewer_matmuls):
  """Through Supernet/SuperStage: relaxed outputs and statistics agree; single path and init are
  the same modules in both (identical results)."""
  space = _tiny_space()
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  naive, fused = sn.Supernet(space, relaxed_impl='naive'), sn.Supernet(space, relaxed_impl=impl)
  v_naive = jax.jit(naive.init)(jax.random.key(1), x)
  v_fused = jax.jit(fused.init)(jax.random.key(1), x)
  _assert_trees_close(v_fused, v_naive, 0, 0)
  variables = _randomise_bn(v_naive, 0)
  mask = sn.candidate_mask(space)
  w = sn.op_weights(jax.random.normal(jax.random.key(2), mask.shape), mask)
  relaxed = lambda net: jax.jit(lambda v: net.apply(v, x, True, op_weights=w,
                                                    mutable=['batch_stats']))(variables)
  (f_n, s_n), (f_f, s_f) = relaxed(naive), relaxed(fused)
  # The fused layers did run: one expansion matmul per wide block instead of one per candidate
  # (the 1x1 convs are matmuls with conv impl 'cpu'); in each of the 3 searched layers 'fused'
  # runs k5_e6 and k5_e3 as one block (1 fewer), 'fused_padded' all 4 candidates (3 fewer).
  def matmuls(net):
    jaxpr = jax.make_jaxpr(lambda v: net.apply(v, x, True, op_weights=w,
                                               mutable=['batch_stats']))(variables)
    return str(jaxpr).count('dot_general')
  assert matmuls(naive) - matmuls(fused) == 3 * fewer_matmuls
  np.testing.assert_allclose(f_f['out'], f_n['out'], rtol=RTOL, atol=ATOL)
  _assert_trees_close(s_f, s_n, RTOL, ATOL)
  path = jnp.asarray([2, 1, 3], jnp.int32)
  single = lambda net: jax.jit(lambda v: net.apply(v, x, True, path=path,
                                                   mutable=['batch_stats']))(variables)
  (p_n, _), (p_f, _) = single(naive), single(fused)
  np.testing.assert_array_equal(p_f['out'], p_n['out'])


def test_config_switch_reaches_the_supernet():
  config = seg_cityscapes.get_config()
  assert config.search.mixed_op == 'naive'  # the default search is unchanged
  space = build.space(config)
  assert build.search_network(config, space).backbone.relaxed_impl == 'naive'
  for impl in FUSED:
    config.search.mixed_op = impl
    assert build.search_network(config, space).backbone.relaxed_impl == impl


def test_unknown_impl_is_an_error():
  case = CASES[1]
  variables, x, alphas = _setup(case)
  with pytest.raises(ValueError, match='relaxed_impl'):
    _run(case, 'fast', variables, x, alphas, True)

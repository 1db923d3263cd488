"""Whole-network remapping: function preservation, depth mapping, strategies, errors, structure."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fna_jax import arch as A
from fna_jax import models
from fna_jax.models import Backbone
from fna_jax.remap import Strategy, remap_block, remap_variables

NUM_CLASSES = 10


# ----------------------------------------------------------------------------- helpers
def _random_variables(arch: A.Arch, image: int, seed: int, num_classes: int = NUM_CLASSES,
                      bare: bool = False):
  """Variables of ``models.build(arch)`` (or a bare Backbone) with random, non-trivial values.

  Kernels are He-normal, BN scale/bias/mean/var are random (var in [0.5, 2]) so that BN is not the
  identity and wrongly placed channels show up.  Shapes come from ``jax.eval_shape`` (no init run).
  """
  module = Backbone(arch) if bare else models.build(arch, num_classes)
  x = jax.ShapeDtypeStruct((1, image, image, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':
      v = rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
    elif name in ('scale', 'var'):
      v = rng.uniform(0.5, 2.0, size=s.shape)
    else:  # bias, mean
      v = rng.normal(size=s.shape) * 0.2
    return jnp.asarray(v, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _image(size: int, seed: int = 0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(2, size, size, 3)), jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _forward(arch, variables, x):
  """Eval-mode logits and the backbone's feature dict."""
  logits, state = models.build(arch, NUM_CLASSES).apply(
      variables, x, capture_intermediates=lambda m, _: isinstance(m, Backbone))
  return logits, state['intermediates']['backbone']['__call__'][0]


# Jitted: on whole networks one compile is cheaper than eager op-by-op dispatch.
_remap_jit = jax.jit(remap_variables, static_argnums=(1, 2, 4))


def _max_rel_error(a, b):
  """max |a - b| / max |b| over every array of two matching trees."""
  errs = jax.tree.map(lambda p, q: float(jnp.max(jnp.abs(p - q)) / jnp.max(jnp.abs(q))), a, b)
  return max(jax.tree.leaves(errs))


def _layer(variables, i, j):
  return {c: v['backbone'][f'stage{i}'][f'layer{j}'] for c, v in variables.items()}


def _small_mbconv(ops1=('k3_e6', 'k3_e6'), c=(8, 8, 12, 16), last=24, stage0='k3_e1'):
  stem, c0, c1, c2 = c
  return A.Arch(A.MBCONV, A.Stem(stem, 3, 2), (
      A.Stage(stem, c0, (stage0,), 1),
      A.Stage(c0, c1, tuple(ops1), 2),
      A.Stage(c1, c2, ('k3_e6',), 2)), last_channels=last, name='small')


def _small_resnet(family=A.RESNET_BASIC, ops=('k3g1', 'k3g1'), c=(16, 16, 32), strides=(1, 2)):
  stem, c0, c1 = c
  return A.Arch(family, A.Stem(stem, 7, 2, max_pool=True), (
      A.Stage(stem, c0, tuple(ops), strides[0]),
      A.Stage(c0, c1, tuple(ops), strides[1])), None, name='small_resnet')


def _enlarged(arch: A.Arch, kernels=(5, 7), expansion=6):
  """Same widths, larger depthwise kernels (alternating), expansion 6; the k3_e1 stage kept."""
  ops, n = [], 0
  for st in arch.stages:
    stage_ops = []
    for o in st.ops:
      if o in ('k3_e1', A.SKIP):
        stage_ops.append(o)
      else:
        stage_ops.append(f'k{kernels[n % len(kernels)]}_e{expansion}')
        n += 1
    ops.append(stage_ops)
  return arch.with_ops(ops)


# ----------------------------------------------------------------------------- preservation
def _to64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


class FunctionPreservationTest(chex.TestCase):
  """Larger kernels (groups 1) and larger expansions compute exactly the seed's function.

  Checked in float64: in float32 the random deep networks amplify rounding so much that the seed
  itself differs from itself by ~4e-4 (relative) between two exact conv implementations
  (``impl='cpu'`` vs ``'xla'``), which would hide the remapping's own (zero) error.
  """

  def _check(self, src_arch, dst_arch, image, seed=0, tol=1e-10):
    src = _random_variables(src_arch, image, seed)
    dst = _random_variables(dst_arch, image, seed + 100)
    x = _image(image)
    with jax.enable_x64(True):
      src, dst, x = _to64(src), _to64(dst), jnp.asarray(x, jnp.float64)
      out = _remap_jit(src, src_arch, dst_arch, dst)
      chex.assert_trees_all_equal_shapes_and_dtypes(out, dst)
      ref = _forward(src_arch, src, x)
      got = _forward(dst_arch, out, x)
      self.assertEqual(got[0].dtype, jnp.float64)
      err = _max_rel_error(got, ref)
      # The features are not trivial (a zero network would "preserve" everything).
      self.assertGreater(float(jnp.std(ref[0])), 1e-2)
    print(f'{src_arch.name} -> {dst_arch.name}: max relative error (float64) {err:.2e}')
    self.assertLess(err, tol)
    return src, x, ref

  def test_mobilenet_v2_larger_kernels(self):
    seed = A.mobilenet_v2()
    self._check(seed, _enlarged(seed).replace(name='mbv2_k5k7'), 64)

  def test_mbconv_larger_kernels_and_expansions(self):
    # e3 -> e6 zero-fills the new hidden channels, whose BN keeps the identity fill, so they stay
    # exactly zero; the k3_e1 stage stays k3_e1.
    seed = _small_mbconv(('k3_e3', 'k3_e6')).replace(name='small_e3')
    dst = _small_mbconv(('k7_e6', 'k5_e6')).replace(name='small_k7k5_e6')
    self._check(seed, dst.with_ops([('k3_e1',), ('k7_e6', 'k5_e6'), ('k5_e6',)]), 32, seed=1)

  def test_resnet18_larger_kernels(self):
    seed = A.resnet18()
    dst = seed.with_ops([['k5g1'] * len(st.ops) for st in seed.stages]).replace(name='r18_k5g1')
    self._check(seed, dst, 64)

  def test_small_basic_resnet_kernels_and_grouping(self):
    seed = _small_resnet()
    src, x, ref = self._check(seed, _small_resnet(ops=('k7g1', 'k5g1')), 32)
    # Sanity: k3g1 -> k5g2 drops the cross-group weights (Eq. 4), so it is NOT the seed function.
    g2 = _small_resnet(ops=('k5g2', 'k5g2'))
    with jax.enable_x64(True):
      got = _forward(g2, _remap_jit(src, seed, g2, _to64(_random_variables(g2, 32, 7))), x)
      self.assertGreater(_max_rel_error(got, ref), 1e-2)

  def test_small_bottleneck_larger_kernels(self):
    seed = _small_resnet(A.RESNET_BOTTLENECK, c=(16, 32, 64))
    dst = _small_resnet(A.RESNET_BOTTLENECK, ops=('k7g1', 'k5g1'), c=(16, 32, 64))
    self._check(seed, dst, 32)


# ----------------------------------------------------------------------------- depth
class DepthTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.src_arch = _small_mbconv()
    self.src = _random_variables(self.src_arch, 32, 0)

  def _remap(self, ops1, **kw):
    dst_arch = _small_mbconv(ops1)
    return remap_variables(self.src, self.src_arch, dst_arch,
                           _random_variables(dst_arch, 32, 1), **kw)

  def test_deeper_stage_repeats_last_seed_layer(self):
    out = self._remap(('k3_e6',) * 4)
    chex.assert_trees_all_equal(_layer(out, 1, 0), _layer(self.src, 1, 0))
    for j in (1, 2, 3):
      chex.assert_trees_all_equal(_layer(out, 1, j), _layer(self.src, 1, 1))
    # Other stages untouched by the depth change.
    chex.assert_trees_all_equal(_layer(out, 2, 0), _layer(self.src, 2, 0))

  def test_shallower_stage_takes_first_layers(self):
    out = self._remap(('k3_e6',))
    self.assertEqual(sorted(out['params']['backbone']['stage1']), ['layer0'])
    chex.assert_trees_all_equal(_layer(out, 1, 0), _layer(self.src, 1, 0))

  def test_skips_own_nothing(self):
    out = self._remap(('k3_e6', 'k3_e6', 'skip', 'skip'))
    self.assertEqual(sorted(out['params']['backbone']['stage1']), ['layer0', 'layer1'])
    self.assertEqual(sorted(out['batch_stats']['backbone']['stage1']), ['layer0', 'layer1'])
    chex.assert_trees_all_equal(_layer(out, 1, 1), _layer(self.src, 1, 1))

  def test_new_layers_map_other_ops_from_last_seed_layer(self):
    out = self._remap(('k5_e3', 'k3_e6', 'k7_e6', 'k3_e3'))
    seed1 = self.src['params']['backbone']['stage1']['layer1']
    new = out['params']['backbone']['stage1']
    # layer 2 (k7): the seed's last layer's 3x3 depthwise kernel in the centre, zeros around.
    dw = new['layer2']['dw_conv']['kernel']
    chex.assert_shape(dw, (7, 7, 1, 72))
    np.testing.assert_array_equal(dw[2:5, 2:5], seed1['dw_conv']['kernel'])
    self.assertEqual(float(jnp.abs(dw).sum() - jnp.abs(dw[2:5, 2:5]).sum()), 0.0)
    # layer 3 (e3 from e6): the first 36 of the seed's 72 hidden channels.
    np.testing.assert_array_equal(new['layer3']['expand_conv']['kernel'],
                                  seed1['expand_conv']['kernel'][..., :36])
    np.testing.assert_array_equal(new['layer3']['project_conv']['kernel'],
                                  seed1['project_conv']['kernel'][:, :, :36])
    # layer 0 (k5_e3) comes from seed layer 0 (8 -> 12, hidden 24 of 48).
    seed0 = self.src['params']['backbone']['stage1']['layer0']
    np.testing.assert_array_equal(new['layer0']['dw_conv']['kernel'][1:4, 1:4],
                                  seed0['dw_conv']['kernel'][..., :24])

  def test_dilation_strategy(self):
    out = self._remap(('k5_e6', 'k7_e6'), strategy='dilation')
    seed = self.src['params']['backbone']['stage1']
    new = out['params']['backbone']['stage1']
    for j, k, pos in ((0, 5, [0, 2, 4]), (1, 7, [0, 3, 6])):
      dw = new[f'layer{j}']['dw_conv']['kernel']
      expected = np.zeros(dw.shape, np.float32)
      expected[np.ix_(pos, pos)] = seed[f'layer{j}']['dw_conv']['kernel']
      np.testing.assert_array_equal(dw, expected)


# ----------------------------------------------------------------------------- strategies
# An MBConv seed block 2 -> 2 channels, k3_e6 (12 hidden channels), remapped to k3_e3 (6 hidden).
# Expand-conv output columns are [m + d, m - d]: per-channel std |d|, L1 2 max(|m|, |d|).
_STD_SET = [0, 2, 5, 6, 9, 11]   # d = 3, m = 0: std 3, L1 6
_L1_SET = [1, 3, 4, 7, 8, 10]    # m = 5, d = 0.1: std 0.1, L1 10
_GAMMA = np.array([0.1, -4., 3., 2.5, 0.2, 0.3, 0.1, 0.1, -5., 2., 6., 0.])
_GAMMA_SET = [1, 2, 3, 8, 9, 10]  # the six largest |gamma|


def _strategy_block():
  rng = np.random.default_rng(3)
  m = np.zeros(12)
  d = np.zeros(12)
  d[_STD_SET] = 3.
  m[_L1_SET], d[_L1_SET] = 5., 0.1
  expand = np.stack([m + d, m - d])[None, None]  # (1, 1, 2, 12)

  def bn(n, scale=None):
    return ({'scale': jnp.asarray(scale if scale is not None else rng.uniform(0.5, 2, n),
                                  jnp.float32),
             'bias': jnp.asarray(rng.normal(size=n), jnp.float32)},
            {'mean': jnp.asarray(rng.normal(size=n), jnp.float32),
             'var': jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32)})

  params, stats = {}, {}
  for name, n, scale in (('expand_bn', 12, _GAMMA), ('dw_bn', 12, None), ('project_bn', 2, None)):
    params[name], stats[name] = bn(n, scale)
  params['expand_conv'] = {'kernel': jnp.asarray(expand, jnp.float32)}
  params['dw_conv'] = {'kernel': jnp.asarray(rng.normal(size=(3, 3, 1, 12)), jnp.float32)}
  params['project_conv'] = {'kernel': jnp.asarray(rng.normal(size=(1, 1, 12, 2)), jnp.float32)}
  return {'params': params, 'batch_stats': stats}


class StrategyTest(chex.TestCase):

  def _expected(self, src, idx):
    p, s = src['params'], src['batch_stats']
    take = lambda v: v[np.asarray(idx)]
    return {
        'params': {
            'expand_conv': {'kernel': p['expand_conv']['kernel'][..., np.asarray(idx)]},
            'expand_bn': jax.tree.map(take, p['expand_bn']),
            'dw_conv': {'kernel': p['dw_conv']['kernel'][..., np.asarray(idx)]},
            'dw_bn': jax.tree.map(take, p['dw_bn']),
            'project_conv': {'kernel': p['project_conv']['kernel'][:, :, np.asarray(idx)]},
            'project_bn': p['project_bn'],
        },
        'batch_stats': {
            'expand_bn': jax.tree.map(take, s['expand_bn']),
            'dw_bn': jax.tree.map(take, s['dw_bn']),
            'project_bn': s['project_bn'],
        },
    }

  @chex.variants(with_jit=True, without_jit=True)
  def test_mbconv_hidden_channels(self):
    src = _strategy_block()
    for strategy, idx in (('fna', range(6)), ('bn_gamma', _GAMMA_SET), ('std', _STD_SET),
                          ('l1', _L1_SET), (Strategy(width='bn_gamma', kernel='dilation'),
                                            _GAMMA_SET)):
      f = self.variant(functools.partial(remap_block, src_op='k3_e6', dst_op='k3_e3',
                                         family=A.MBCONV, src_io=(2, 2, 1), dst_io=(2, 2, 1),
                                         strategy=strategy))
      chex.assert_trees_all_equal(f(src), self._expected(src, list(idx)))

  def test_importance_only_shrinks(self):
    # Equal or larger hidden widths keep every seed channel in order, whatever the strategy.
    src = _strategy_block()
    fna = remap_block(src, 'k3_e6', 'k3_e6', A.MBCONV, (2, 2, 1), (2, 2, 1), 'fna')
    chex.assert_trees_all_equal(fna, src)
    for strategy in ('bn_gamma', 'std', 'l1'):
      chex.assert_trees_all_equal(
          remap_block(src, 'k3_e6', 'k3_e6', A.MBCONV, (2, 2, 1), (2, 2, 1), strategy), src)
      grown = remap_block(src, 'k3_e6', 'k3_e6', A.MBCONV, (2, 2, 1), (3, 2, 1), strategy)
      chex.assert_shape(grown['params']['expand_conv']['kernel'], (1, 1, 3, 18))
      np.testing.assert_array_equal(grown['params']['expand_conv']['kernel'][:, :, :2, :12],
                                    src['params']['expand_conv']['kernel'])
      np.testing.assert_array_equal(grown['params']['expand_conv']['kernel'][:, :, 2:], 0.)
      np.testing.assert_array_equal(grown['params']['expand_conv']['kernel'][..., 12:], 0.)
      np.testing.assert_array_equal(grown['batch_stats']['dw_bn']['var'][12:], 1.)

  def test_bottleneck_inner_channel_sets(self):
    # Bottleneck 16 -> 16 (width 4) to 8 -> 8 (width 2): set A (conv1 out, bn1, conv2 in) by |bn1|,
    # set B (conv2 out, bn2, conv3 in) by |bn2|; the residual stream takes the first channels.
    rng = np.random.default_rng(0)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    src = {'params': {'conv1': {'kernel': arr(1, 1, 16, 4)}, 'conv2': {'kernel': arr(3, 3, 4, 4)},
                      'conv3': {'kernel': arr(1, 1, 4, 16)}},
           'batch_stats': {}}
    gammas = {'bn1': [0.1, -3., 0.2, 2.], 'bn2': [5., 0.1, 4., 0.], 'bn3': list(range(1, 17))}
    for name, g in gammas.items():
      src['params'][name] = {'scale': jnp.asarray(g, jnp.float32), 'bias': arr(len(g))}
      src['batch_stats'][name] = {'mean': arr(len(g)), 'var': jnp.ones(len(g)) * 1.5}
    a, b = np.array([1, 3]), np.array([0, 2])
    out = remap_block(src, 'k3g1', 'k3g1', A.RESNET_BOTTLENECK, (16, 16, 1), (8, 8, 1), 'bn_gamma')
    p, q = src['params'], out['params']
    np.testing.assert_array_equal(q['conv1']['kernel'], p['conv1']['kernel'][:, :, :8][..., a])
    np.testing.assert_array_equal(q['conv2']['kernel'], p['conv2']['kernel'][:, :, a][..., b])
    np.testing.assert_array_equal(q['conv3']['kernel'], p['conv3']['kernel'][:, :, b, :8])
    np.testing.assert_array_equal(out['params']['bn1']['scale'], [-3., 2.])
    np.testing.assert_array_equal(out['params']['bn2']['scale'], [5., 4.])
    np.testing.assert_array_equal(out['batch_stats']['bn2']['mean'],
                                  src['batch_stats']['bn2']['mean'][b])
    np.testing.assert_array_equal(out['params']['bn3']['scale'], np.arange(1, 9))
    self.assertNotIn('downsample_conv', out['params'])

  def test_tree_passes_strategy_through(self):
    src_arch = _small_mbconv()
    dst_arch = _small_mbconv(('k3_e3', 'k3_e3'))
    src = _random_variables(src_arch, 32, 0)
    out = remap_variables(src, src_arch, dst_arch, _random_variables(dst_arch, 32, 1), 'bn_gamma')
    for j in (0, 1):
      seed = src['params']['backbone']['stage1'][f'layer{j}']
      hidden = seed['expand_bn']['scale'].shape[0] // 2
      idx = np.sort(np.argsort(-np.abs(np.asarray(seed['expand_bn']['scale'])),
                               kind='stable')[:hidden])
      np.testing.assert_array_equal(
          out['params']['backbone']['stage1'][f'layer{j}']['dw_conv']['kernel'],
          seed['dw_conv']['kernel'][..., idx])


# ----------------------------------------------------------------------------- errors
class ErrorTest(chex.TestCase):

  def test_family_mismatch(self):
    with pytest.raises(ValueError, match="families.*'mbconv'.*'resnet_basic'"):
      remap_variables({}, A.mobilenet_v2(), A.resnet18(), {})

  def test_stage_count_mismatch(self):
    r18 = A.resnet18()
    with pytest.raises(ValueError, match='4 stages.*3'):
      remap_variables({}, r18, r18.replace(stages=r18.stages[:3]), {})

  def test_expansion_one_to_six_names_the_layer(self):
    src_arch = _small_mbconv()
    dst_arch = _small_mbconv(stage0='k3_e6')
    src = _random_variables(src_arch, 32, 0)
    with pytest.raises(ValueError, match=r'backbone/stage0/layer0.*expansion 1'):
      remap_variables(src, src_arch, dst_arch, _random_variables(dst_arch, 32, 1))
    with pytest.raises(ValueError, match=r'backbone/stage1/layer1.*expansion 1'):
      dst_arch = _small_mbconv(('k3_e6', 'k3_e1'))
      remap_variables(src, src_arch, dst_arch, _random_variables(dst_arch, 32, 1))

  def test_missing_downsample_names_the_layer(self):
    src_arch = _small_resnet()
    dst_arch = _small_resnet(strides=(2, 2))
    src = _random_variables(src_arch, 32, 0)
    with pytest.raises(ValueError, match=r'backbone/stage0/layer0.*downsample'):
      remap_variables(src, src_arch, dst_arch, _random_variables(dst_arch, 32, 1))

  def test_variables_that_do_not_match_their_arch(self):
    a, b = _small_mbconv(), _small_mbconv(('k5_e6', 'k3_e6'))
    va, vb = _random_variables(a, 32, 0), _random_variables(b, 32, 1)
    with pytest.raises(ValueError, match=r'stage1/layer0.*dw_conv/kernel.*\(5, 5, 1, 48\)'):
      remap_variables(vb, a, a, va)  # source variables are b's, claimed to be a's
    with pytest.raises(ValueError, match=r'stage1/layer0/dw_conv/kernel'):
      remap_variables(va, a, a, vb)  # target variables are b's

  def test_params_only(self):
    a, b = _small_mbconv(), _small_mbconv(('k5_e3',))
    va, vb = _random_variables(a, 32, 0), _random_variables(b, 32, 1)
    out = remap_variables({'params': va['params']}, a, b, {'params': vb['params']})
    self.assertEqual(sorted(out), ['params'])
    chex.assert_trees_all_equal_shapes_and_dtypes(out['params'], vb['params'])
    with pytest.raises(ValueError, match="no 'batch_stats' collection"):
      remap_variables({'params': va['params']}, a, b, vb)

  def test_unknown_strategy(self):
    with pytest.raises(ValueError, match='unknown remapping strategy'):
      remap_block({}, 'k3_e6', 'k3_e6', A.MBCONV, (2, 2), (2, 2, 1), 'random')
    with pytest.raises(ValueError, match='Strategy.width'):
      Strategy(width='largest')

  def test_block_family_and_skip(self):
    with pytest.raises(ValueError, match="'k3g1' does not belong to family 'mbconv'"):
      remap_block({}, 'k3_e6', 'k3g1', A.MBCONV, (2, 2), (2, 2, 1))
    with pytest.raises(ValueError, match='skip layer owns no parameters'):
      remap_block({}, 'skip', 'k3_e6', A.MBCONV, (2, 2), (2, 2, 1))
    self.assertEqual(remap_block({}, 'k3_e6', 'skip', A.MBCONV, (2, 2), (2, 2, 1)), {})


# ----------------------------------------------------------------------------- structure
class StructureTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.src_arch = _small_mbconv()
    # Wider stem and stages, deeper stage 1, larger kernels: every rule is exercised.
    self.dst_arch = _small_mbconv(('k5_e3', 'k7_e6', 'k3_e6', 'skip'), c=(12, 8, 16, 16), last=32)
    self.src = _random_variables(self.src_arch, 32, 0)
    self.dst = _random_variables(self.dst_arch, 32, 1)

  def test_structure_shapes_dtypes_and_inputs_untouched(self):
    src_copy = jax.tree.map(np.array, self.src)
    dst_copy = jax.tree.map(np.array, self.dst)
    out = remap_variables(self.src, self.src_arch, self.dst_arch, self.dst)
    chex.assert_trees_all_equal_structs(out, self.dst)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, self.dst)
    chex.assert_trees_all_equal(self.src, src_copy)
    chex.assert_trees_all_equal(self.dst, dst_copy)
    # Widened stem: seed channels first, then zero kernels and identity BN.
    stem = out['params']['backbone']['stem_conv']['kernel']
    np.testing.assert_array_equal(stem[..., :8],
                                  self.src['params']['backbone']['stem_conv']['kernel'])
    np.testing.assert_array_equal(stem[..., 8:], 0.)
    bn_p = out['params']['backbone']['stem_bn']
    bn_s = out['batch_stats']['backbone']['stem_bn']
    for tree, field, fill in ((bn_p, 'scale', 1.), (bn_p, 'bias', 0.), (bn_s, 'mean', 0.),
                              (bn_s, 'var', 1.)):
      np.testing.assert_array_equal(tree[field][8:], fill)
    # The classifier (32 -> 10 here, 24 -> 10 in the seed) differs in shape: kept from dst.
    chex.assert_trees_all_equal(out['params']['classifier'], self.dst['params']['classifier'])

  def test_jit_matches_eager(self):
    f = jax.jit(remap_variables, static_argnums=(1, 2, 4))
    for strategy in ('fna', Strategy(width='l1', kernel='dilation')):
      eager = remap_variables(self.src, self.src_arch, self.dst_arch, self.dst, strategy)
      chex.assert_trees_all_equal(f(self.src, self.src_arch, self.dst_arch, self.dst, strategy),
                                  eager)

  def test_side_subtrees_and_last_conv(self):
    # Same last width and classes: the classifier is copied from the seed.
    dst_arch = _small_mbconv(('k5_e6',))
    out = remap_variables(self.src, self.src_arch, dst_arch, _random_variables(dst_arch, 32, 1))
    chex.assert_trees_all_equal(out['params']['classifier'], self.src['params']['classifier'])
    # The seed has no last conv: the target keeps its own.
    no_last = self.src_arch.replace(last_channels=None)
    src = _random_variables(no_last, 32, 2)
    dst = _random_variables(dst_arch, 32, 3)
    out = remap_variables(src, no_last, dst_arch, dst)
    for c in ('params', 'batch_stats'):
      chex.assert_trees_all_equal(out[c]['backbone']['last_bn'], dst[c]['backbone']['last_bn'])
    chex.assert_trees_all_equal(out['params']['backbone']['last_conv'],
                                dst['params']['backbone']['last_conv'])

  def test_bare_backbone_variables(self):
    # A bare Backbone's variables (no 'backbone' level) remap exactly as the nested ones do.
    src = _random_variables(self.src_arch, 32, 0, bare=True)
    dst = _random_variables(self.dst_arch, 32, 1, bare=True)
    out = remap_variables(src, self.src_arch, self.dst_arch, dst)
    chex.assert_trees_all_equal_structs(out, dst)
    self.assertNotIn('backbone', out['params'])
    nested = remap_variables({c: {'backbone': v} for c, v in src.items()}, self.src_arch,
                             self.dst_arch, {c: {'backbone': v} for c, v in dst.items()})
    chex.assert_trees_all_equal(out, {c: v['backbone'] for c, v in nested.items()})

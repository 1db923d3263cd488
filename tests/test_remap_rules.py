"""Array-level remapping rules: hand-computed cases and the functional facts behind them."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fna_jax import ops
from fna_jax.remap import rules


def _arange(*shape):
  return jnp.arange(int(np.prod(shape)), dtype=jnp.float32).reshape(shape)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _grid_kernel(k):
  """(k, k, 1, 1) kernel with value 10 * row + col + 1 (no zeros, so placements are visible)."""
  r, c = np.meshgrid(np.arange(k), np.arange(k), indexing='ij')
  return jnp.asarray(10 * r + c + 1, jnp.float32)[:, :, None, None]


class DepthTest(parameterized.TestCase):

  @parameterized.parameters((0, 3, 0), (1, 3, 1), (2, 3, 2), (3, 3, 2), (7, 3, 2), (0, 1, 0),
                            (4, 1, 0))
  def test_depth_index(self, i, l, expected):
    self.assertEqual(rules.depth_index(i, l), expected)

  def test_depth_index_errors(self):
    with pytest.raises(ValueError, match='at least one layer'):
      rules.depth_index(0, 0)
    with pytest.raises(ValueError, match='>= 0'):
      rules.depth_index(-1, 2)


class WidthTest(chex.TestCase):

  def test_shrink_takes_first_channels(self):
    x = _arange(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    np.testing.assert_array_equal(rules.width(x, 1, 2), [[0., 1.], [3., 4.]])
    np.testing.assert_array_equal(rules.width(x, 0, 1), [[0., 1., 2.]])
    np.testing.assert_array_equal(rules.width(x, -1, 1), [[0.], [3.]])

  def test_grow_copies_into_first_and_zeros_rest(self):
    x = _arange(2, 3)
    np.testing.assert_array_equal(rules.width(x, 0, 4),
                                  [[0., 1., 2.], [3., 4., 5.], [0., 0., 0.], [0., 0., 0.]])
    np.testing.assert_array_equal(rules.width(x, 1, 5),
                                  [[0., 1., 2., 0., 0.], [3., 4., 5., 0., 0.]])

  def test_hwio_both_axes(self):
    # (1, 1, I=2, O=3) -> (1, 1, I=3, O=2): W_n[i, j] = W_s[i, j] where both exist, else 0.
    x = _arange(1, 1, 2, 3)  # x[0, 0] = [[0, 1, 2], [3, 4, 5]]
    y = rules.width(rules.width(x, 2, 3), 3, 2)
    chex.assert_shape(y, (1, 1, 3, 2))
    np.testing.assert_array_equal(y[0, 0], [[0., 1.], [3., 4.], [0., 0.]])

  def test_indices_gather_then_zero(self):
    x = _arange(2, 3)
    np.testing.assert_array_equal(rules.width(x, 1, 2, indices=[2, 0]), [[2., 0.], [5., 3.]])
    np.testing.assert_array_equal(rules.width(x, 1, 3, indices=jnp.array([2])),
                                  [[2., 0., 0.], [5., 0., 0.]])

  def test_too_many_indices(self):
    with pytest.raises(ValueError, match='do not fit'):
      rules.width(_arange(2, 3), 1, 1, indices=[0, 1])

  def test_jit_with_traced_indices(self):
    f = jax.jit(rules.width, static_argnums=(1, 2))
    x = _arange(2, 4)
    np.testing.assert_array_equal(f(x, 1, 3, jnp.array([1, 3])), [[1., 3., 0.], [5., 7., 0.]])


class BNVectorTest(parameterized.TestCase):

  def test_fill_values_are_identity_init(self):
    self.assertEqual(rules.BN_FILL, {'scale': 1.0, 'bias': 0.0, 'mean': 0.0, 'var': 1.0})

  @parameterized.parameters(('scale', [5., 6., 7., 1., 1.]), ('bias', [5., 6., 7., 0., 0.]),
                            ('mean', [5., 6., 7., 0., 0.]), ('var', [5., 6., 7., 1., 1.]))
  def test_grow(self, field, expected):
    x = jnp.array([5., 6., 7.])
    np.testing.assert_array_equal(rules.bn_vector(x, 5, rules.BN_FILL[field]), expected)

  def test_shrink_and_indices(self):
    x = jnp.array([5., 6., 7.])
    np.testing.assert_array_equal(rules.bn_vector(x, 2, 1.0), [5., 6.])
    np.testing.assert_array_equal(rules.bn_vector(x, 2, 1.0, indices=[0, 2]), [5., 7.])
    np.testing.assert_array_equal(rules.bn_vector(x, 3, 1.0, indices=[1]), [6., 1., 1.])

  def test_new_channel_of_zero_input_stays_zero(self):
    # BN(0) with the identity fill: 1 * (0 - 0) / sqrt(1 + eps) + 0 == 0.
    f = {k: rules.bn_vector(jnp.array([2.0]), 2, v) for k, v in rules.BN_FILL.items()}
    y = f['scale'] * (0.0 - f['mean']) / jnp.sqrt(f['var'] + 1e-5) + f['bias']
    self.assertEqual(float(y[1]), 0.0)
    self.assertNotEqual(float(y[0]), 0.0)


class KernelTest(parameterized.TestCase):

  def test_center_crop(self):
    y = rules.kernel(_grid_kernel(5), 3)
    np.testing.assert_array_equal(y[:, :, 0, 0],
                                  [[12., 13., 14.], [22., 23., 24.], [32., 33., 34.]])
    np.testing.assert_array_equal(rules.kernel(_grid_kernel(5), 1)[:, :, 0, 0], [[23.]])

  def test_center_pad(self):
    y = rules.kernel(_grid_kernel(3), 5)
    np.testing.assert_array_equal(y[:, :, 0, 0], [
        [0., 0., 0., 0., 0.],
        [0., 1., 2., 3., 0.],
        [0., 11., 12., 13., 0.],
        [0., 21., 22., 23., 0.],
        [0., 0., 0., 0., 0.]])

  def test_dilation_eq11_3_to_5(self):
    y = rules.kernel(_grid_kernel(3), 5, mode='dilation')
    np.testing.assert_array_equal(y[:, :, 0, 0], [
        [1., 0., 2., 0., 3.],
        [0., 0., 0., 0., 0.],
        [11., 0., 12., 0., 13.],
        [0., 0., 0., 0., 0.],
        [21., 0., 22., 0., 23.]])

  def test_dilation_eq11_3_to_7(self):
    y = np.asarray(rules.kernel(_grid_kernel(3), 7, mode='dilation')[:, :, 0, 0])
    expected = np.zeros((7, 7), np.float32)
    for a, r in enumerate((0, 3, 6)):
      for b, c in enumerate((0, 3, 6)):
        expected[r, c] = 10 * a + b + 1
    np.testing.assert_array_equal(y, expected)
    self.assertEqual(rules.dilation_positions(3, 7), [0, 3, 6])

  @parameterized.parameters((5, 7), (5, 3), (3, 3), (1, 5), (7, 3))
  def test_dilation_falls_back_to_center(self, k, new_k):
    # No integral Eq. 11 grid (5 -> 7, 1 -> 5) or not growing: the centre rule.
    np.testing.assert_array_equal(rules.kernel(_grid_kernel(k), new_k, mode='dilation'),
                                  rules.kernel(_grid_kernel(k), new_k, mode='center'))

  def test_center_pad_preserves_conv(self):
    x = _normal(0, (2, 9, 9, 4))
    w = _normal(1, (3, 3, 4, 5))
    y3 = ops.conv2d(x, w, stride=2, impl='xla')
    for k in (5, 7):
      np.testing.assert_allclose(ops.conv2d(x, rules.kernel(w, k), stride=2, impl='xla'), y3,
                                 atol=1e-5, rtol=1e-5)

  def test_dilation_mode_is_a_dilated_seed_conv(self):
    # A 3x3 seed spread over 5x5 by Eq. 11 is the seed applied with dilation 2.
    x = _normal(0, (2, 9, 9, 4))
    w = _normal(1, (3, 3, 4, 5))
    np.testing.assert_allclose(ops.conv2d(x, rules.kernel(w, 5, 'dilation'), impl='xla'),
                               ops.conv2d(x, w, dilation=2, impl='xla'), atol=1e-5, rtol=1e-5)

  def test_errors(self):
    with pytest.raises(ValueError, match='odd'):
      rules.kernel(_grid_kernel(3), 4)
    with pytest.raises(ValueError, match='mode'):
      rules.kernel(_grid_kernel(3), 5, mode='bilinear')
    with pytest.raises(ValueError, match='square HWIO'):
      rules.kernel(jnp.zeros((3, 3, 2)), 5)


class GroupTest(chex.TestCase):

  @staticmethod
  def _plain(i, o):
    """(1, 1, I, O) plain kernel with value 10 * in + out."""
    c, d = np.meshgrid(np.arange(i), np.arange(o), indexing='ij')
    return jnp.asarray(10 * c + d, jnp.float32)[None, None]

  def test_grouped_from_plain_eq4(self):
    # I = O = 4, g = 2: s = 2; outputs 0, 1 (group 0) read inputs 0, 1; outputs 2, 3 read 2, 3.
    y = rules.grouped_from_plain(self._plain(4, 4), 2)
    chex.assert_shape(y, (1, 1, 2, 4))
    np.testing.assert_array_equal(y[0, 0], [[0., 1., 22., 23.], [10., 11., 32., 33.]])
    # g = 4: output i reads input i only.
    np.testing.assert_array_equal(rules.grouped_from_plain(self._plain(4, 4), 4)[0, 0],
                                  [[0., 11., 22., 33.]])
    # I = 4, O = 2, g = 2: out 0 reads inputs 0, 1; out 1 reads inputs 2, 3.
    np.testing.assert_array_equal(rules.grouped_from_plain(self._plain(4, 2), 2)[0, 0],
                                  [[0., 21.], [10., 31.]])

  def test_plain_from_grouped_is_block_diagonal(self):
    g = jnp.array([[1., 2., 3., 4.], [5., 6., 7., 8.]])[None, None]  # (1, 1, 2, 4), 2 groups
    np.testing.assert_array_equal(rules.plain_from_grouped(g, 2)[0, 0], [
        [1., 2., 0., 0.],
        [5., 6., 0., 0.],
        [0., 0., 3., 4.],
        [0., 0., 7., 8.]])

  def test_plain_from_grouped_computes_the_grouped_conv(self):
    x = _normal(0, (2, 6, 6, 8))
    w = _normal(1, (3, 3, 2, 12))
    np.testing.assert_allclose(ops.conv2d(x, w, groups=4, impl='xla'),
                               ops.conv2d(x, rules.plain_from_grouped(w, 4), impl='xla'),
                               atol=1e-4, rtol=1e-5)

  def test_regroup(self):
    w = _normal(0, (5, 5, 4, 8))  # 2 groups over 8 -> 8
    chex.assert_trees_all_equal(rules.regroup(w, 2, 2), w)
    chex.assert_trees_all_equal(rules.grouped_from_plain(rules.plain_from_grouped(w, 2), 2), w)
    p = _normal(1, (3, 3, 8, 8))
    chex.assert_trees_all_equal(rules.regroup(p, 1, 1), p)
    chex.assert_trees_all_equal(rules.regroup(p, 1, 4), rules.grouped_from_plain(p, 4))
    # 2 -> 4 groups on a (1, 1, 2, 4) kernel: output i keeps only its tap on input i.
    g2 = jnp.array([[1., 2., 3., 4.], [5., 6., 7., 8.]])[None, None]
    np.testing.assert_array_equal(rules.regroup(g2, 2, 4)[0, 0], [[1., 6., 3., 8.]])
    # 2 -> 1: the block-diagonal plain kernel.
    chex.assert_trees_all_equal(rules.regroup(g2, 2, 1), rules.plain_from_grouped(g2, 2))

  def test_bad_groups(self):
    with pytest.raises(ValueError, match='3 groups do not divide'):
      rules.grouped_from_plain(self._plain(4, 4), 3)


class ImportanceTest(chex.TestCase):

  def test_topk_sorted_ascending(self):
    v = jnp.array([0.1, 5., -3., 2., 4.])
    np.testing.assert_array_equal(rules.topk_indices(v, 3), [1, 3, 4])
    np.testing.assert_array_equal(rules.topk_indices(v, 1), [1])
    np.testing.assert_array_equal(rules.topk_indices(v, 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(rules.topk_indices(jnp.ones(3), 2), [0, 1])  # ties: lower first

  def test_topk_errors_and_jit(self):
    with pytest.raises(ValueError, match='k=4'):
      rules.topk_indices(jnp.ones(3), 4)
    f = jax.jit(rules.topk_indices, static_argnums=1)
    np.testing.assert_array_equal(f(jnp.array([3., 1., 2., 9.]), 2), [0, 3])

  def test_bn_gamma(self):
    gamma = jnp.array([-5., 1., 3., -0.5])
    np.testing.assert_array_equal(rules.bn_gamma_importance(gamma), [5., 1., 3., 0.5])
    np.testing.assert_array_equal(rules.topk_indices(rules.bn_gamma_importance(gamma), 2), [0, 2])

  def test_channel_std_and_l1(self):
    # (1, 1, I=2, O=3); output channel columns: [1, 3], [2, 2], [-4, 0].
    w = jnp.array([[1., 2., -4.], [3., 2., 0.]])[None, None]
    np.testing.assert_allclose(rules.channel_std(w), [1., 0., 2.])
    np.testing.assert_allclose(rules.channel_l1(w), [4., 4., 4.])
    # HWIO over all of (k, k, I): a (2, 1, 1, 2) kernel.
    w = jnp.array([[[[1., -1.]]], [[[-1., -5.]]]])
    np.testing.assert_allclose(rules.channel_std(w), [1., 2.])
    np.testing.assert_allclose(rules.channel_l1(w), [2., 6.])

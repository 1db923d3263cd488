"""The 'cpu' rewrites of fna_jax.ops compute the same convolution as lax.conv ('xla')."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fna_jax import ops


def _inputs(key, n, h, w, c, kernel_shape):
  kx, kk = jax.random.split(key)
  return jax.random.normal(kx, (n, h, w, c)), jax.random.normal(kk, kernel_shape)


class ConvImplTest(chex.TestCase):

  @parameterized.product(k=(3, 7), stride=(1, 2), dilation=(1, 2), size=((13, 13), (16, 11)))
  def test_depthwise_forward(self, k, stride, dilation, size):
    c = 6
    x, kern = _inputs(jax.random.key(k * 10 + stride), 2, *size, c, (k, k, 1, c))
    f = lambda impl: ops.conv2d(x, kern, stride=stride, dilation=dilation, groups=c, impl=impl)
    ref, got = f('xla'), f('cpu')
    chex.assert_equal_shape([ref, got])
    chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)

  @parameterized.product(stride=(1, 2), size=((9, 9), (10, 7)))
  def test_pointwise_forward(self, stride, size):
    x, kern = _inputs(jax.random.key(stride), 2, *size, 5, (1, 1, 5, 7))
    f = lambda impl: ops.conv2d(x, kern, stride=stride, impl=impl)
    chex.assert_trees_all_close(f('cpu'), f('xla'), atol=1e-5, rtol=1e-5)

  @parameterized.parameters(
      dict(k=3, stride=2, dilation=1, groups=8),   # depthwise, strided
      dict(k=5, stride=1, dilation=2, groups=8),   # depthwise, dilated
      dict(k=1, stride=2, dilation=1, groups=1),   # pointwise, strided
      dict(k=3, stride=2, dilation=1, groups=2),   # grouped: both impls use lax.conv
  )
  def test_gradients_match(self, k, stride, dilation, groups):
    c = 8
    x, kern = _inputs(jax.random.key(k), 2, 11, 11, c, (k, k, c // groups, 8))
    def loss(impl, x, kern):
      y = ops.conv2d(x, kern, stride=stride, dilation=dilation, groups=groups, impl=impl)
      return jnp.sum(jnp.sin(y))
    g_ref = jax.grad(lambda a, b: loss('xla', a, b), argnums=(0, 1))(x, kern)
    g_cpu = jax.grad(lambda a, b: loss('cpu', a, b), argnums=(0, 1))(x, kern)
    chex.assert_trees_all_close(g_cpu, g_ref, atol=1e-4, rtol=1e-4)


def test_depthwise_hand_computed():
  # 1 channel, 3x3 input of ones, 3x3 kernel of 1..9, padding 1: the centre output sums all taps,
  # the top-left corner sums the taps that see the input: k[1:,1:] = 5+6+8+9.
  x = jnp.ones((1, 3, 3, 1))
  k = jnp.arange(1., 10.).reshape(3, 3, 1, 1)
  for impl in ops.IMPLS:
    y = ops.conv2d(x, k, impl=impl)[0, :, :, 0]
    assert float(y[1, 1]) == 45.0 and float(y[0, 0]) == 28.0


def test_padding_is_symmetric_for_stride_2():
  # torchvision pads (k-1)/2 on every side; 'SAME' would pad only bottom/right for even inputs.
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
  k = jnp.ones((3, 3, 1, 1))
  for impl in ops.IMPLS:
    y = ops.conv2d(x, k, stride=2, impl=impl)
    assert y.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[1, 0], [0, 0]])


def test_out_size_formula():
  assert ops.out_size(321, 3, 2, 1, 1) == 161
  assert ops.out_size(64, 7, 2, 1, 3) == 32
  assert ops.out_size(20, 5, 1, 2, 4) == 20


def test_channel_mismatch_error():
  with pytest.raises(ValueError, match='input has 3 channels'):
    ops.conv2d(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 1, 4, 8)))


def test_default_impl_env(monkeypatch):
  monkeypatch.setenv(ops.ENV_VAR, 'xla')
  assert ops.default_impl() == 'xla'
  monkeypatch.setenv(ops.ENV_VAR, 'bogus')
  with pytest.raises(ValueError, match='FNA_JAX_CONV_IMPL'):
    ops.default_impl()
  monkeypatch.delenv(ops.ENV_VAR)
  assert ops.default_impl() == ('cpu' if jax.default_backend() == 'cpu' else 'xla')

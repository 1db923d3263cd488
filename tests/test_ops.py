"""The 'cpu' rewrites of fna_jax.ops compute the same convolution as lax.conv ('xla'), with the same
gradients (their backward passes are hand-written)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fna_jax import ops

# float32 results of different summation orders: values and gradients here are O(1..100).
ATOL = RTOL = 1e-5
GRAD_ATOL = GRAD_RTOL = 1e-4


def _inputs(seed, n, h, w, c, kernel_shape):
  # numpy draws: no XLA compilation for the inputs (compiles dominate this file's run time).
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((n, h, w, c), np.float32)),
          jnp.asarray(rng.standard_normal(kernel_shape, np.float32)))


def _value_and_grads(impl, x, kernel, **conv_kw):
  """conv output, and d/d(x, kernel) of a loss that weights every output element differently."""
  def loss(x, kernel):
    y = ops.conv2d(x, kernel, impl=impl, **conv_kw)
    return jnp.sum(jnp.sin(y)), y
  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
  return y, grads


def _assert_matches_xla(x, kernel, **conv_kw):
  y_ref, g_ref = _value_and_grads('xla', x, kernel, **conv_kw)
  y, g = _value_and_grads('cpu', x, kernel, **conv_kw)
  chex.assert_equal_shape([y, y_ref])
  chex.assert_trees_all_close(y, y_ref, atol=ATOL, rtol=RTOL)
  chex.assert_equal_shape([g[0], x])
  chex.assert_equal_shape([g[1], kernel])
  chex.assert_trees_all_close(g, g_ref, atol=GRAD_ATOL, rtol=GRAD_RTOL)


class DepthwiseTest(chex.TestCase):
  """Depthwise: sums of strided windows, and the hand-written backward pass."""

  @parameterized.parameters(
      dict(k=3, stride=1, dilation=1, size=(13, 13)),
      dict(k=3, stride=2, dilation=1, size=(16, 11)),   # even height: last row unused by stride 2
      dict(k=5, stride=2, dilation=1, size=(10, 9)),
      dict(k=5, stride=1, dilation=2, size=(11, 12)),
      dict(k=7, stride=2, dilation=2, size=(16, 16)),
      dict(k=7, stride=1, dilation=1, size=(5, 6)),     # kernel wider than the image
      dict(k=3, stride=1, dilation=4, size=(13, 9)),    # DeepLab-style dilation
      dict(k=3, stride=3, dilation=1, size=(14, 10)),
  )
  def test_matches_xla(self, k, stride, dilation, size):
    c = 6
    x, kern = _inputs(k * 10 + stride, 3, *size, c, (k, k, 1, c))
    _assert_matches_xla(x, kern, stride=stride, dilation=dilation, groups=c)

  @parameterized.parameters(0, 3)
  def test_explicit_padding(self, padding):
    # padding != dilation*(k-1)//2: the input-gradient's window offsets go negative (0) or exceed
    # the kernel reach (3).
    x, kern = _inputs(padding, 2, 9, 8, 4, (3, 3, 1, 4))
    _assert_matches_xla(x, kern, stride=2, groups=4, padding=padding)

  def test_non_square_kernel(self):
    # conv2d takes (k_h, k_w) kernels (Conv makes square ones only); one padding for both axes.
    x, kern = _inputs(4, 2, 11, 10, 3, (3, 5, 1, 3))
    _assert_matches_xla(x, kern, stride=2, groups=3, padding=2)

  @parameterized.parameters((1, 1), (17, 17), (18, 17), (17, 18), (32, 7))
  def test_output_sizes(self, h, w):
    # The kernel gradient unrolls the largest divisor <= 16 of the output rows or columns,
    # whichever is larger: 1 (1x1), 1 (17 is prime), 9 rows, 9 columns, 16 rows.
    x, kern = _inputs(h + w, 3, h, w, 3, (3, 3, 1, 3))
    _assert_matches_xla(x, kern, groups=3)

  def test_second_order_gradients(self):
    x, kern = _inputs(2, 2, 9, 9, 4, (3, 3, 1, 4))

    def grad_norm_grads(impl):
      inner = lambda x, k: jnp.sum(jnp.sin(ops.conv2d(x, k, stride=2, groups=4, impl=impl)))
      outer = lambda x, k: jnp.sum(jax.grad(inner, 1)(x, k) ** 2)
      return jax.jit(jax.grad(outer, (0, 1)))(x, kern)

    chex.assert_trees_all_close(grad_norm_grads('cpu'), grad_norm_grads('xla'), atol=1e-3,
                                rtol=1e-4)

  def test_forward_mode_is_refused(self):
    x, kern = _inputs(3, 1, 5, 5, 2, (3, 3, 1, 2))
    with pytest.raises(TypeError, match='forward-mode'):
      jax.jvp(lambda x: ops.conv2d(x, kern, groups=2, impl='cpu'), (x,), (x,))


class Im2colTest(chex.TestCase):
  """Every other kxk conv: lax.conv (groups 1) or im2col (grouped) forward, im2col backward."""

  @parameterized.parameters(
      dict(c_in=3, c_out=8, k=3, stride=2, dilation=1, groups=1, size=(13, 13)),   # stem
      dict(c_in=4, c_out=6, k=3, stride=1, dilation=2, groups=1, size=(11, 10)),
      dict(c_in=4, c_out=8, k=7, stride=2, dilation=1, groups=1, size=(16, 15)),   # ResNet stem
      dict(c_in=4, c_out=8, k=5, stride=1, dilation=1, groups=2, size=(9, 12)),    # k5g2
      dict(c_in=8, c_out=8, k=7, stride=2, dilation=2, groups=4, size=(16, 16)),   # k7g4, dilated
      dict(c_in=8, c_out=16, k=3, stride=1, dilation=1, groups=8, size=(7, 9)),    # groups=c_in
      dict(c_in=4, c_out=6, k=1, stride=1, dilation=1, groups=2, size=(7, 7)),     # grouped 1x1
  )
  def test_matches_xla(self, c_in, c_out, k, stride, dilation, groups, size):
    x, kern = _inputs(k + groups, 2, *size, c_in, (k, k, c_in // groups, c_out))
    _assert_matches_xla(x, kern, stride=stride, dilation=dilation, groups=groups)

  @parameterized.parameters(dict(k=3, padding=0), dict(k=1, padding=1), dict(k=3, padding=3))
  def test_explicit_padding(self, k, padding):
    x, kern = _inputs(padding, 2, 9, 10, 4, (k, k, 4, 6))
    _assert_matches_xla(x, kern, stride=2, padding=padding)


  def test_non_square_kernel(self):
    x, kern = _inputs(5, 2, 10, 11, 4, (5, 3, 2, 6))
    _assert_matches_xla(x, kern, stride=2, dilation=2, groups=2, padding=3)


class PointwiseTest(chex.TestCase):

  @parameterized.product(stride=(1, 2), size=((9, 9), (10, 7)))
  def test_matches_xla(self, stride, size):
    x, kern = _inputs(stride, 2, *size, 5, (1, 1, 5, 7))
    _assert_matches_xla(x, kern, stride=stride)


@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (simulated) devices')
@pytest.mark.parametrize('n', (8, 16))   # 1 and 2 images per device
@pytest.mark.parametrize('groups, c_out, stride, k',
                         [(4, 4, 1, 3), (4, 4, 2, 3), (4, 4, 1, 7), (4, 4, 2, 5), (1, 6, 2, 3),
                          (2, 6, 1, 3)],
                         ids=['depthwise', 'depthwise_s2', 'depthwise_k7', 'depthwise_k5_s2',
                              'kxk', 'kxk_grouped'])
def test_gradients_with_batch_sharded_over_8_devices(n, groups, c_out, stride, k):
  """Data parallelism: gradients with the batch split over 8 devices equal the 1-device ones.

  Regression test: the depthwise kernel gradient once summed the batch with strided slices
  (images i, i+q, ...) of the sharded batch axis, which XLA's SPMD partitioner mis-compiles when a
  slice holds one image (n == q): one image counted twice, another dropped.  5x5 and 7x7
  depthwise kernels take the other code path (their kernel rows as a loop).
  """
  from fna_jax.runtime import mesh as mesh_lib
  x, kern = _inputs(n + groups, n, 9, 10, 4, (k, k, 4 // groups, c_out))

  def loss(x, kern):
    y = ops.conv2d(x, kern, stride=stride, groups=groups, impl='cpu')
    return jnp.sum(jnp.sin(y) * jnp.arange(1., c_out + 1))

  grads = jax.grad(loss, (0, 1))
  want = jax.jit(grads)(x, kern)
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  batch, rep = mesh_lib.batch_sharded(mesh), mesh_lib.replicated(mesh)
  got = jax.jit(grads, in_shardings=(batch, rep), out_shardings=(batch, rep))(
      jax.device_put(x, batch), jax.device_put(kern, rep))
  # Only the float32 summation order differs (per-device partial sums, then an all-reduce): allow
  # 1e-5 of each gradient's largest entry (the sharding bug was off by ~30% of it).
  for g, w in zip(jax.device_get(got), jax.device_get(want)):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.max(np.abs(w)))


def test_depthwise_hand_computed():
  # 1 channel, 3x3 input of ones, 3x3 kernel of 1..9, padding 1: the centre output sums all taps,
  # the top-left corner sums the taps that see the input: k[1:,1:] = 5+6+8+9.
  x = jnp.ones((1, 3, 3, 1))
  k = jnp.arange(1., 10.).reshape(3, 3, 1, 1)
  for impl in ops.IMPLS:
    y = ops.conv2d(x, k, impl=impl)[0, :, :, 0]
    assert float(y[1, 1]) == 45.0 and float(y[0, 0]) == 28.0


def test_depthwise_kernel_gradient_hand_computed():
  # d(sum y)/d k[a, b] = sum of the input pixels that tap (a, b) sees over all outputs.  A 2x2
  # input [[1, 2], [3, 4]], padding 1: y[i, j] = sum_ab x_pad[i + a, j + b] k[a, b], so tap (0, 0)
  # sees x[0, 0] only (at output (1, 1)), tap (0, 1) sees the top row, tap (1, 1) all four.
  x = jnp.arange(1., 5.).reshape(1, 2, 2, 1)
  k = jnp.zeros((3, 3, 1, 1))
  expected = np.array([[1, 1 + 2, 2], [1 + 3, 10, 2 + 4], [3, 3 + 4, 4]], np.float32)
  for impl in ops.IMPLS:
    dk = jax.grad(lambda k: jnp.sum(ops.conv2d(x, k, groups=1, impl=impl)))(k)
    np.testing.assert_array_equal(np.asarray(dk[:, :, 0, 0]), expected)


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


@pytest.mark.parametrize('k, looped', [(3, False), (5, True), (7, True)])
def test_depthwise_kernel_gradient_loops_over_rows_of_large_kernels(k, looped):
  """5x5 and 7x7 kernels compute their kernel gradient as a loop over the kernel rows (one row's
  code in the program, for compile time); 3x3 ones unroll their 9 taps."""
  x, kern = _inputs(k, 2, 9, 9, 4, (k, k, 1, 4))
  grad = jax.grad(lambda k_: jnp.sum(jnp.sin(ops.conv2d(x, k_, groups=4, impl='cpu'))))
  jaxpr = jax.make_jaxpr(grad)(kern)
  loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']
  assert len(loops) == (1 if looped else 0)
  if looped:
    assert loops[0].params['length'] == k

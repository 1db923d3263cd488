"""Convolution primitives: exact everywhere, fast where they run.

Every convolution in fna_jax goes through :func:`conv2d` (or the :class:`Conv` module that owns
its kernel).  This module alone decides how a convolution is computed:

* ``'xla'``: ``lax.conv_general_dilated`` with explicit symmetric padding.  Used on GPU/TPU.
* ``'cpu'``: algebraically identical rewrites that XLA:CPU runs much faster (measured on 2 cores,
  see ``scripts/benchmark.py``), each with a hand-written backward pass:

  - depthwise conv -> sum over the k*k kernel taps of strided windows of the padded input, each
    multiplied by that tap's per-channel weights (:func:`_depthwise_taps`); its gradients are again
    sums of windows, keeping only the padded input alive (autodiff of the taps would keep all k*k
    windows, and ``lax.conv``'s depthwise kernel gradient is ~30x slower);
  - 1x1 conv (any stride, groups 1) -> a strided slice then one matmul;
  - every other conv (the stem, ResNet convs, grouped convs) -> ``lax.conv`` forward (im2col
    matmuls for groups > 1) and an im2col backward pass (:func:`_conv_im2col`): XLA:CPU's
    convolution gradients are 2x (groups 1) to 10x+ (grouped) slower than the matmuls.

  The custom backward passes support reverse-mode autodiff (``jax.grad``, ``jax.vjp``, also of
  higher order) but not forward mode (``jax.jvp``, ``jax.jacfwd``): use ``impl='xla'`` there.

``impl=None`` (the default everywhere) means :func:`default_impl`: the ``FNA_JAX_CONV_IMPL``
environment variable if set, else ``'cpu'`` on the CPU backend and ``'xla'`` elsewhere.

Shapes: inputs NHWC; kernels HWIO with ``I = C_in / groups`` (flax's convention), so a depthwise
kernel is ``(k, k, 1, C)``.  Padding is always symmetric, ``dilation * (k - 1) // 2`` on each side,
as in torchvision (never 'SAME', which pads asymmetrically for stride 2).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ('xla', 'cpu')
ENV_VAR = 'FNA_JAX_CONV_IMPL'


def default_impl() -> str:
  """``$FNA_JAX_CONV_IMPL`` if set, else ``'cpu'`` on the CPU backend and ``'xla'`` elsewhere."""
  impl = os.environ.get(ENV_VAR)
  if impl:
    if impl not in IMPLS:
      raise ValueError(f'{ENV_VAR}={impl!r}; expected one of {IMPLS}')
    return impl
  return 'cpu' if jax.default_backend() == 'cpu' else 'xla'


def out_size(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
  """Output length of a convolution along one spatial axis."""
  return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel: int, dilation: int = 1) -> int:
  """torchvision's symmetric padding for an odd kernel: ``dilation * (kernel - 1) // 2``."""
  return dilation * (kernel - 1) // 2


def _conv_xla(x, kernel, stride, dilation, padding, groups):
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=((padding, padding),) * 2,
      rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)


def _window(x, start, count, step):
  """``x[:, start[0] + step[0]*i, start[1] + step[1]*j, :]`` for ``i < count[0]``, ``j < count[1]``.

  Slices the two spatial axes of NHWC ``x`` only: never the batch axis, which is the one sharded
  under data parallelism.
  """
  n, _, _, c = x.shape
  return lax.slice(x, (0, start[0], start[1], 0),
                   (n, start[0] + (count[0] - 1) * step[0] + 1,
                    start[1] + (count[1] - 1) * step[1] + 1, c),
                   (1, step[0], step[1], 1))


def _strided_window(x, row, col, h_out, w_out, stride):
  """``x[:, row + stride*i, col + stride*j, :]`` for ``i < h_out``, ``j < w_out``."""
  return _window(x, (row, col), (h_out, w_out), (stride, stride))


def _taps(xp, kernel, h_out, w_out, stride, dilation):
  """Depthwise correlation of an already padded ``xp`` (N, H+2p, W+2p, C) with ``kernel``.

  ``sum_{a,b} window(xp, a*d, b*d) * kernel[a, b, 0, :]``, accumulated in row-major tap order; XLA
  fuses the whole sum into one loop over the output.
  """
  kh, kw = kernel.shape[:2]
  out = None
  for a in range(kh):
    for b in range(kw):
      term = _strided_window(xp, a * dilation, b * dilation, h_out, w_out, stride) * kernel[a, b, 0]
      out = term if out is None else out + term
  return out


def _pad_hw(x, padding):
  if not padding:
    return x
  return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


# Unrolled terms per fused loop in the depthwise kernel gradient (bounds compile time).
_MAX_UNROLLED_TERMS = 16
# Kernels with more rows compute their kernel gradient in a loop over the rows (compile time).
_MAX_UNROLLED_KERNEL_ROWS = 3


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_taps(x, kernel, stride, dilation, padding):
  """Depthwise conv (NHWC x (k, k, 1, C)) as a sum of k*k strided windows times kernel taps.

  Differentiable in reverse mode only (``jax.grad``/``jax.vjp``; the backward pass is hand-written,
  see :func:`_depthwise_taps_bwd`); forward-mode (``jax.jvp``) needs ``impl='xla'``.
  """
  return _depthwise_taps_fwd(x, kernel, stride, dilation, padding)[0]


def _depthwise_taps_fwd(x, kernel, stride, dilation, padding):
  _, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  xp = _pad_hw(x, padding)
  y = _taps(xp, kernel, out_size(h, kh, stride, dilation, padding),
            out_size(w, kw, stride, dilation, padding), stride, dilation)
  # The padded input is the only activation kept: the kernel gradient reads its windows again.
  return y, (xp, kernel)


def _depthwise_taps_bwd(stride, dilation, padding, residuals, g):
  """Input and kernel gradients of :func:`_depthwise_taps`, both again as sums of windows.

  Why hand-written: autodiff of the forward keeps all k*k windows of the input alive for the
  kernel gradient (k*k times the activation memory, each window written out by its own pass), and
  fuses whatever produced ``g`` into each of the k*k terms of the input gradient.

  * input gradient: the transposed conv, ``dx[u] = sum_a g~[u + a*d] * kernel[k-1-a]`` where ``g~``
    is ``g`` with ``stride - 1`` zeros between its pixels and ``d*(k-1) - p`` zeros before; one
    fused loop over ``dx``.
  * kernel gradient: ``dk[a, b, c] = sum_{n,i,j} g[n,i,j,c] * window_ab(xp)[n,i,j,c]``; the sum
    over output rows (or columns, whichever has the larger divisor <= 16) is unrolled, q terms
    inside one fused loop per tap whose output is q times smaller than the windows, then one
    plain ``jnp.sum`` over the batch and the rest.  (A plain ``jnp.sum`` of the products becomes
    an XLA:CPU library reduction that cannot read strided windows: each window would be written
    out first, 2x slower.)  Kernels of more than 3 rows (5x5, 7x7) run their rows as a loop
    (``lax.map``; the rows of ``xp`` that kernel row ``a`` reads cut out by a dynamic slice along
    H, the row's kw taps unrolled inside), so the program holds one row's code instead of kh
    copies: unrolled, these k*k*q terms took about half of the search supernet's XLA compile
    time (6 depthwise convs of sizes 3, 5, 7 per searched layer); the weight step measured no
    slower (README, search benchmark; a loop over single taps was 1.2x slower).  The unrolled
    sum must not run over the batch axis: under data parallelism that axis is sharded, and XLA's
    SPMD partitioner mis-compiles a sum of strided batch slices that hold one image each (one
    image counted twice, another dropped; seen with jax/jaxlib 0.10.2).  The final ``jnp.sum`` over
    the batch becomes per-device sums and an all-reduce.
  """
  xp, kernel = residuals
  _, h_out, w_out, c = g.shape
  kh, kw = kernel.shape[:2]
  h, w = xp.shape[1] - 2 * padding, xp.shape[2] - 2 * padding
  # Materialise g once: otherwise XLA recomputes g's producer (BN backward, ReLU6 mask) inside
  # every one of the k*k + k*k*q terms below that read it.
  g = lax.optimization_barrier(g)

  lo_h, lo_w = dilation * (kh - 1) - padding, dilation * (kw - 1) - padding
  hi_h = h + dilation * (kh - 1) - lo_h - ((h_out - 1) * stride + 1)
  hi_w = w + dilation * (kw - 1) - lo_w - ((w_out - 1) * stride + 1)
  zero = jnp.zeros((), g.dtype)
  g_dilated = lax.pad(g, zero, ((0, 0, 0), (lo_h, hi_h, stride - 1), (lo_w, hi_w, stride - 1),
                                (0, 0, 0)))
  dx = _taps(g_dilated, kernel[::-1, ::-1], h, w, 1, dilation)

  # Output rows (axis 0) or columns (axis 1) i, i + q, i + 2q, ... are summed as q unrolled terms
  # of one fused loop per tap; the batch axis is left whole (see the docstring).
  q_rows = _largest_divisor_at_most(h_out, _MAX_UNROLLED_TERMS)
  q_cols = _largest_divisor_at_most(w_out, _MAX_UNROLLED_TERMS)
  axis, q = (0, q_rows) if q_rows >= q_cols else (1, q_cols)
  count = [h_out, w_out]
  count[axis] //= q
  g_step, x_step = [1, 1], [stride, stride]
  g_step[axis], x_step[axis] = q, stride * q
  def tap_sums(xr, b):
    """(N, H_out/q, W_out, C) or (N, H_out, W_out/q, C): the q-term partial sums of
    ``g * window_ab(xp)``, where ``xr`` holds the rows of ``xp`` that kernel row ``a`` reads."""
    acc = None
    for i in range(q):
      g_start, x_start = [0, 0], [0, b * dilation]
      g_start[axis] += i
      x_start[axis] += stride * i
      term = _window(g, g_start, count, g_step) * _window(xr, x_start, count, x_step)
      acc = term if acc is None else acc + term
    return acc

  span_h = (h_out - 1) * stride + 1  # rows of xp that one kernel row's windows read
  if kh <= _MAX_UNROLLED_KERNEL_ROWS:
    partial_sums = [tap_sums(lax.slice_in_dim(xp, a * dilation, a * dilation + span_h, axis=1), b)
                    for a in range(kh) for b in range(kw)]
    dk = jnp.sum(jnp.stack(partial_sums), axis=(1, 2, 3)).reshape(kh, kw, 1, c)
  else:
    def row_sums(a):  # (kw, N, C)
      xr = lax.dynamic_slice_in_dim(xp, a * dilation, span_h, axis=1)
      return jnp.sum(jnp.stack([tap_sums(xr, b) for b in range(kw)]), axis=(2, 3))
    dk = jnp.sum(lax.map(row_sums, jnp.arange(kh)), axis=2).reshape(kh, kw, 1, c)
  return dx.astype(xp.dtype), dk.astype(kernel.dtype)


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


def _pointwise_matmul(x, kernel, stride):
  """1x1 conv (groups 1) as a strided slice and one (N*H*W, C_in) x (C_in, C_out) matmul."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  n, h, w, c = x.shape
  y = jnp.dot(x.reshape(n * h * w, c), kernel.reshape(c, -1))
  return y.reshape(n, h, w, -1)


def _im2col(x, kh, kw, stride, dilation, padding):
  """The ``kh*kw`` windows of the padded ``x``, stacked: ``(N, H_out, W_out, kh*kw, C)``."""
  _, h, w, _ = x.shape
  h_out = out_size(h, kh, stride, dilation, padding)
  w_out = out_size(w, kw, stride, dilation, padding)
  xp = _pad_hw(x, padding)
  return jnp.stack([_strided_window(xp, a * dilation, b * dilation, h_out, w_out, stride)
                    for a in range(kh) for b in range(kw)], axis=3)


def _cols_matmul(cols, kernel, groups):
  """``(N, H, W, T, C_in)`` windows times a ``(k, k, C_in/groups, C_out)`` kernel -> NHWC.

  One matmul ``(N*H*W, T*C_in) x (T*C_in, C_out)`` for ``groups == 1``, else one matmul per group
  (a batched ``dot_general`` over the groups).
  """
  n, h, w, taps, c_in = cols.shape
  _, _, c_group, c_out = kernel.shape
  if groups == 1:
    y = jnp.dot(cols.reshape(n * h * w, taps * c_in), kernel.reshape(taps * c_in, c_out))
    return y.reshape(n, h, w, c_out)
  o_group = c_out // groups
  y = lax.dot_general(cols.reshape(n * h * w, taps, groups, c_group),
                      kernel.reshape(taps, c_group, groups, o_group),
                      (((1, 3), (0, 1)), ((2,), (2,))))  # (groups, N*H*W, o_group)
  return jnp.moveaxis(y, 0, 1).reshape(n, h, w, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_im2col(x, kernel, stride, dilation, padding, groups):
  """A (grouped) kxk conv whose gradients are computed by im2col and matmuls.

  Forward: ``lax.conv`` for ``groups == 1`` (XLA:CPU runs it well), else im2col and one matmul
  per group.  Backward (where XLA:CPU's convolutions are slow, grouped ones by 10x or more): the
  windows are rebuilt from the input (the only activation kept), ``dk = cols^T g`` and
  ``dx = col2im(g W^T)``; see :func:`_conv_im2col_bwd`.  Reverse-mode only, like
  :func:`_depthwise_taps`.
  """
  return _conv_im2col_fwd(x, kernel, stride, dilation, padding, groups)[0]


def _conv_im2col_fwd(x, kernel, stride, dilation, padding, groups):
  if groups == 1:
    y = _conv_xla(x, kernel, stride, dilation, padding, groups)
  else:
    kh, kw = kernel.shape[:2]
    y = _cols_matmul(_im2col(x, kh, kw, stride, dilation, padding), kernel, groups)
  return y, (x, kernel)


def _conv_im2col_bwd(stride, dilation, padding, groups, residuals, g):
  """Gradients of the im2col formulation, by autodiff: the kernel gradient is one matmul of the
  windows with ``g``, the input gradient ``g W^T`` scattered back by the windows' transposes (pads,
  summed in one fused loop)."""
  x, kernel = residuals
  kh, kw = kernel.shape[:2]

  def im2col_conv(x, k):
    return _cols_matmul(_im2col(x, kh, kw, stride, dilation, padding), k, groups)

  _, vjp = jax.vjp(im2col_conv, x, kernel)
  return vjp(g)


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, dilation: int = 1,
           groups: int = 1, padding: int | None = None, impl: str | None = None) -> jax.Array:
  """2-D convolution, NHWC x HWIO -> NHWC, symmetric zero padding.

  Args:
    x: ``(N, H, W, C_in)``.
    kernel: ``(k_h, k_w, C_in // groups, C_out)``.
    stride, dilation, groups: as in ``torch.nn.Conv2d``.
    padding: pixels of zeros on each side; default ``dilation * (k - 1) // 2``.
    impl: ``'xla'`` or ``'cpu'`` (see the module docstring); default :func:`default_impl`.

  Returns:
    ``(N, H_out, W_out, C_out)`` with ``H_out = (H + 2p - d(k-1) - 1) // stride + 1``.
  """
  kh, kw, cin_g, cout = kernel.shape
  if x.shape[-1] != cin_g * groups:
    raise ValueError(f'conv2d: input has {x.shape[-1]} channels, kernel {kernel.shape} with '
                     f'{groups} groups expects {cin_g * groups}')
  if padding is None:
    padding = same_padding(kh, dilation)
  impl = impl or default_impl()
  if impl not in IMPLS:
    raise ValueError(f'conv2d: impl {impl!r} not in {IMPLS}')
  if impl == 'cpu':
    if groups == x.shape[-1] and cin_g == 1 and cout == groups:
      return _depthwise_taps(x, kernel, stride, dilation, padding)
    if kh == kw == 1 and groups == 1 and padding == 0:
      return _pointwise_matmul(x, kernel, stride)
    return _conv_im2col(x, kernel, stride, dilation, padding, groups)
  return _conv_xla(x, kernel, stride, dilation, padding, groups)


def torch_kaiming_out(key, shape, dtype=jnp.float32):
  """torchvision's conv init: kaiming normal, mode="fan_out" (fan_out = k_h * k_w * C_out)."""
  kh, kw, _, cout = shape
  std = (2.0 / (kh * kw * cout)) ** 0.5
  return std * jax.random.normal(key, shape, dtype)


class Conv(nn.Module):
  """A bias-free (by default) convolution whose kernel is ``(k, k, C_in // groups, features)``.

  Attributes:
    features: output channels.
    kernel_size: odd spatial size ``k``.
    stride, dilation, groups: as in ``torch.nn.Conv2d``; padding is ``dilation * (k - 1) // 2``.
    use_bias: adds a ``bias`` param of shape ``(features,)``.
    impl: see :func:`conv2d`.
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  dilation: int = 1
  groups: int = 1
  use_bias: bool = False
  impl: str | None = None

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    if c_in % self.groups or self.features % self.groups:
      raise ValueError(f'{self.name}: {self.groups} groups do not divide {c_in}->{self.features}')
    kernel = self.param('kernel', torch_kaiming_out,
                        (self.kernel_size, self.kernel_size, c_in // self.groups, self.features))
    y = conv2d(x, kernel, stride=self.stride, dilation=self.dilation, groups=self.groups,
               impl=self.impl)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


def conv_module(impl: str | None = None):
  """The :class:`Conv` every module of a network builds, with its implementation fixed.

  ``impl``: ``'xla'``, ``'cpu'`` or ``None``/``''`` for :func:`default_impl` (resolved here, once).
  Networks take the result as their ``conv`` attribute (as flax's ImageNet example passes
  ``conv``), so the implementation is chosen in one place: :func:`fna_jax.build.conv`.
  """
  impl = impl or default_impl()
  if impl not in IMPLS:
    raise ValueError(f'conv implementation {impl!r} not in {IMPLS}')
  return functools.partial(Conv, impl=impl)

"""Convolution primitives: exact everywhere, fast where they run.

Every convolution in fna_jax goes through :func:`conv2d` (or the :class:`Conv` module that owns
its kernel).  This module alone decides how a convolution is computed:

* ``'xla'``: ``lax.conv_general_dilated`` with explicit symmetric padding.  Used on GPU/TPU.
* ``'cpu'``: algebraically identical rewrites that XLA:CPU runs much faster (measured on 2 cores,
  see ``scripts/benchmark.py``):

  - depthwise conv -> sum over the k*k kernel taps of strided slices of the padded input, each
    multiplied by that tap's per-channel weights;
  - 1x1 conv (any stride, groups 1) -> a strided slice then one matmul;
  - everything else -> ``lax.conv_general_dilated``.

``impl=None`` (the default everywhere) means :func:`default_impl`: the ``FNA_JAX_CONV_IMPL``
environment variable if set, else ``'cpu'`` on the CPU backend and ``'xla'`` elsewhere.

Shapes: inputs NHWC; kernels HWIO with ``I = C_in / groups`` (flax's convention), so a depthwise
kernel is ``(k, k, 1, C)``.  Padding is always symmetric, ``dilation * (k - 1) // 2`` on each side,
as in torchvision (never 'SAME', which pads asymmetrically for stride 2).
"""

from __future__ import annotations

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


def _depthwise_taps(x, kernel, stride, dilation, padding):
  """Depthwise conv as sum_{a,b} slice(x_pad, a*d, b*d, stride) * kernel[a, b, 0, :]."""
  n, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  ho = out_size(h, kh, stride, dilation, padding)
  wo = out_size(w, kw, stride, dilation, padding)
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = None
  for a in range(kh):
    for b in range(kw):
      r0, c0 = a * dilation, b * dilation
      patch = lax.slice(x, (0, r0, c0, 0), (n, r0 + (ho - 1) * stride + 1,
                                           c0 + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
      term = patch * kernel[a, b, 0]
      out = term if out is None else out + term
  return out


def _pointwise_matmul(x, kernel, stride):
  """1x1 conv (groups 1) as a strided slice and one (N*H*W, C_in) x (C_in, C_out) matmul."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  n, h, w, c = x.shape
  y = jnp.dot(x.reshape(n * h * w, c), kernel.reshape(c, -1))
  return y.reshape(n, h, w, -1)


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

"""Building blocks, each built from one op name (see :mod:`fna_jax.arch`).

Parameter names inside a block are fixed, so converters and remapping address them by path:

* :class:`MBConv`: ``expand_conv``/``expand_bn`` (absent when expansion is 1), ``dw_conv``/``dw_bn``,
  ``project_conv``/``project_bn``.
* :class:`BasicBlock`: ``conv1``/``bn1`` (the searched conv), ``conv2``/``bn2``, and
  ``downsample_conv``/``downsample_bn`` when stride or width change.
* :class:`Bottleneck`: ``conv1``/``bn1`` (1x1), ``conv2``/``bn2`` (the searched conv),
  ``conv3``/``bn3`` (1x1), ``downsample_conv``/``downsample_bn``.

All blocks take and return NHWC float arrays and a ``train`` flag that selects batch statistics
(train) or running averages (eval).  BatchNorm (:class:`BatchNorm`) matches torch's
``nn.BatchNorm2d``, as the authors' release (github.com/JaminFong/FNA) uses it: eps 1e-5,
running-average momentum 0.1 (flax ``momentum=0.9``), running variance from the unbiased batch
variance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fna_jax import arch as arch_lib
from fna_jax.ops import Conv

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # flax convention: new = m * old + (1 - m) * batch; torch's momentum 0.1


class BatchNorm(nn.Module):
  """torch ``nn.BatchNorm2d`` over the last axis, with flax ``nn.BatchNorm``'s variables.

  Variables: params ``scale`` (1) and ``bias`` (0), batch_stats ``mean`` (0) and ``var`` (1), all
  float32, the names and collections of flax's ``nn.BatchNorm`` (converters and remapping address
  them by name).  In training (``use_running_average=False``) the input is normalised with the
  batch mean and the biased batch variance over all but the last axis; the running averages are
  updated (not while initialising) as ``new = momentum * old + (1 - momentum) * batch`` where the
  batch variance is the unbiased one, ``var * n / (n - 1)`` with ``n`` the number of elements per
  channel, as torch does (flax's ``nn.BatchNorm`` averages the biased one).  The difference
  matters where ``n`` is small: DeepLab's image-pooling branch has one value per image, so ``n`` is
  the batch size.  Under a jit with the batch sharded over devices the statistics, and ``n``, are
  global (SyncBN, as the release's ``C.sync_bn``).  ``n == 1`` (torch refuses it in training)
  updates with the biased variance, 0.  ``unbiased_running_var=False`` gives flax's update.

  Statistics are computed in float32, the variance as flax does (``E[x^2] - E[x]^2``, clamped at
  0), so the output is computed as flax's ``nn.BatchNorm`` computes it, in training and eval.
  """
  use_running_average: bool | None = None
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPS
  unbiased_running_var: bool = True

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    ra_mean, ra_var, scale, bias = batch_norm_variables(self, x.shape[-1])
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = batch_moments(x)
      if not self.is_initializing():
        update_running_averages(ra_mean, ra_var, mean, var, x.size // x.shape[-1],
                                self.momentum, self.unbiased_running_var)
    return normalise(x, mean, var, scale, bias, self.epsilon)


def batch_norm_variables(mdl: nn.Module, c: int):
  """Declares (or reads) a BatchNorm's variables in ``mdl``'s compact method, for ``c`` channels.

  Returns ``(ra_mean, ra_var, scale, bias)``: the running averages as flax ``Variable`` s
  (collection ``batch_stats``, ``mean`` 0 and ``var`` 1 at init), ``scale`` (1) and ``bias`` (0)
  as ``(c,)`` float32 params: the names and collections of flax's ``nn.BatchNorm``.
  """
  ra_mean = mdl.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
  ra_var = mdl.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
  scale = mdl.param('scale', nn.initializers.ones, (c,), jnp.float32)
  bias = mdl.param('bias', nn.initializers.zeros, (c,), jnp.float32)
  return ra_mean, ra_var, scale, bias


def batch_moments(x):
  """Per-channel batch mean and biased variance of ``x`` ``(..., C)`` over all but the last axis:
  two ``(C,)`` float32 arrays, the variance as flax's ``nn.BatchNorm`` computes it (one pass,
  ``E[x^2] - E[x]^2``, clamped at 0)."""
  xf = jnp.asarray(x, jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(xf, axes)
  return mean, jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)


def update_running_averages(ra_mean, ra_var, mean, var, n: int, momentum: float,
                            unbiased: bool = True):
  """``new = momentum * old + (1 - momentum) * batch`` for the running mean and variance
  (``Variable`` s); the batch variance ``var`` (biased) is made unbiased, ``var * n / (n - 1)``
  with ``n`` the elements per channel, when ``unbiased`` and ``n > 1`` (torch's update)."""
  running_var = var * (n / (n - 1)) if unbiased and n > 1 else var
  ra_mean.value = momentum * ra_mean.value + (1.0 - momentum) * mean
  ra_var.value = momentum * ra_var.value + (1.0 - momentum) * running_var


def normalise(x, mean, var, scale, bias, epsilon: float):
  """``(x - mean) / sqrt(var + epsilon) * scale + bias`` per channel (last axis), in float32, in
  ``x``'s dtype (bfloat16 under mixed precision, :mod:`fna_jax.runtime.precision`; float32 for
  integer inputs)."""
  y = (jnp.asarray(x, jnp.float32) - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return jnp.asarray(y, x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)


def batch_norm(train: bool, name: str) -> BatchNorm:
  """The BatchNorm of every block and head: batch statistics when ``train``, else running ones."""
  return BatchNorm(use_running_average=not train, name=name)


class MBConv(nn.Module):
  """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise -> BN -> ReLU6 -> 1x1 -> BN.

  The residual is added when ``stride == 1 and c_in == c_out``.  Hidden width is
  ``c_in * expansion``.  The depthwise conv has dilation ``dilation`` and padding
  ``dilation * (kernel - 1) // 2``.
  """
  c_in: int
  c_out: int
  kernel: int
  expansion: int
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    hidden = self.c_in * self.expansion
    h = x
    if self.expansion != 1:
      h = conv(hidden, 1, name='expand_conv')(h)
      h = jax.nn.relu6(batch_norm(train, 'expand_bn')(h))
    h = conv(hidden, self.kernel, self.stride, self.dilation, groups=hidden, name='dw_conv')(h)
    h = jax.nn.relu6(batch_norm(train, 'dw_bn')(h))
    h = conv(self.c_out, 1, name='project_conv')(h)
    h = batch_norm(train, 'project_bn')(h)
    if self.stride == 1 and self.c_in == self.c_out:
      h = h + x
    return h


class BasicBlock(nn.Module):
  """ResNet basic block; ``conv1`` is the searched ``kernel x kernel`` conv with ``groups``."""
  c_in: int
  c_out: int
  kernel: int = 3
  groups: int = 1
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    h = conv(self.c_out, self.kernel, self.stride, self.dilation, self.groups, name='conv1')(x)
    h = jax.nn.relu(batch_norm(train, 'bn1')(h))
    h = conv(self.c_out, 3, 1, self.dilation, name='conv2')(h)
    h = batch_norm(train, 'bn2')(h)
    shortcut = x
    if self.stride != 1 or self.c_in != self.c_out:
      shortcut = conv(self.c_out, 1, self.stride, name='downsample_conv')(x)
      shortcut = batch_norm(train, 'downsample_bn')(shortcut)
    return jax.nn.relu(h + shortcut)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck (stride on the middle conv); ``conv2`` is the searched conv.

  Width of the middle convs is ``c_out // 4``.
  """
  c_in: int
  c_out: int
  kernel: int = 3
  groups: int = 1
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    width = self.c_out // arch_lib.BOTTLENECK_EXPANSION
    h = conv(width, 1, name='conv1')(x)
    h = jax.nn.relu(batch_norm(train, 'bn1')(h))
    h = conv(width, self.kernel, self.stride, self.dilation, self.groups, name='conv2')(h)
    h = jax.nn.relu(batch_norm(train, 'bn2')(h))
    h = conv(self.c_out, 1, name='conv3')(h)
    h = batch_norm(train, 'bn3')(h)
    shortcut = x
    if self.stride != 1 or self.c_in != self.c_out:
      shortcut = conv(self.c_out, 1, self.stride, name='downsample_conv')(x)
      shortcut = batch_norm(train, 'downsample_bn')(shortcut)
    return jax.nn.relu(h + shortcut)


def make_block(family: str, op_name: str, c_in: int, c_out: int, stride: int, dilation: int,
               name: str, conv: Any = Conv) -> nn.Module | None:
  """The block for one layer of an architecture; ``None`` for ``skip`` (identity)."""
  op = arch_lib.parse_op(op_name)
  if op.is_skip:
    return None
  if family == arch_lib.MBCONV:
    return MBConv(c_in, c_out, op.kernel, op.expansion, stride, dilation, conv=conv, name=name)
  cls = BasicBlock if family == arch_lib.RESNET_BASIC else Bottleneck
  return cls(c_in, c_out, op.kernel, op.groups, stride, dilation, conv=conv, name=name)

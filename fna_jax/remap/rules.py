"""Array-level parameter-remapping rules (paper Sec. 3.1 and 4.9).

Each rule maps one seed array to the shape a new network needs.  All rules are pure ``jnp``
functions whose output shapes depend only on static Python arguments (sizes, kernel sizes, group
counts, the length of an index vector), so they run under ``jax.jit``; index vectors and importance
vectors may be traced arrays.

Conventions: conv kernels are HWIO, ``(k_h, k_w, C_in // groups, C_out)`` (flax's layout), so a
depthwise kernel is ``(k, k, 1, C)``.  Depth indices are 0-indexed (the paper's Eq. 1 is 1-indexed).

Rules
-----
* :func:`depth_index` -- Eq. 1: new layer ``i`` of a stage takes seed layer ``min(i, l - 1)``.
* :func:`width` -- Eq. 2/3: fewer channels take the first ones (or the given ``indices``,
  Algorithm 1); more channels copy the seed into the first ones and fill the rest with 0.
* :func:`bn_vector` -- BatchNorm vectors: like :func:`width` but new channels are filled with the
  field's identity value (scale 1, bias 0, mean 0, var 1; see :data:`BN_FILL`).
* :func:`kernel` -- Eq. 5/6 (``mode='center'``): smaller kernels take the central crop, larger ones
  hold the seed in their centre with a zero ring; Eq. 11 (``mode='dilation'``): the seed's taps are
  spread over the larger kernel.
* :func:`grouped_from_plain` -- Eq. 4: a plain conv's kernel to a grouped conv's.
  :func:`plain_from_grouped` is its block-diagonal inverse and :func:`regroup` composes the two.
* Importance vectors for the width alternatives of Tab. 15 (Algorithm 1):
  :func:`topk_indices`, :func:`bn_gamma_importance`, :func:`channel_std`, :func:`channel_l1`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_MODES = ('center', 'dilation')

# Identity initialisation of BatchNorm fields (flax names): channels beyond the seed keep these.
BN_FILL = {'scale': 1.0, 'bias': 0.0, 'mean': 0.0, 'var': 1.0}


# --------------------------------------------------------------------------- depth
def depth_index(i: int, seed_layers: int) -> int:
  """Eq. 1 (0-indexed): the seed layer that new layer ``i`` of a stage takes its parameters from.

  Args:
    i: index of the layer in the new stage, ``>= 0``.
    seed_layers: number of parameter-owning layers ``l`` of the seed stage, ``>= 1``.

  Returns:
    ``min(i, l - 1)``: layers the seed has are copied one-to-one, deeper ones repeat its last layer.
  """
  if seed_layers < 1:
    raise ValueError(f'depth_index: the seed stage needs at least one layer, got {seed_layers}')
  if i < 0:
    raise ValueError(f'depth_index: layer index must be >= 0, got {i}')
  return min(i, seed_layers - 1)


# --------------------------------------------------------------------------- width
def _resize_axis(x: jax.Array, axis: int, new_size: int, fill: float,
                 indices: jax.Array | Sequence[int] | None) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError('width rules need an array with at least one axis')
  axis = axis % x.ndim
  if new_size < 1:
    raise ValueError(f'new size must be >= 1, got {new_size}')
  if indices is None:
    kept = jax.lax.slice_in_dim(x, 0, min(x.shape[axis], new_size), axis=axis)
  else:
    indices = jnp.asarray(indices)
    if indices.ndim != 1:
      raise ValueError(f'indices must be a vector, got shape {indices.shape}')
    if indices.shape[0] > new_size:
      raise ValueError(f'{indices.shape[0]} indices do not fit in {new_size} channels')
    kept = jnp.take(x, indices, axis=axis)
  missing = new_size - kept.shape[axis]
  if missing == 0:
    return kept
  pad_shape = list(kept.shape)
  pad_shape[axis] = missing
  return jnp.concatenate([kept, jnp.full(pad_shape, fill, kept.dtype)], axis=axis)


def width(x: jax.Array, axis: int, new_size: int,
          indices: jax.Array | Sequence[int] | None = None) -> jax.Array:
  """Width-level remapping of one axis (Eq. 2/3; Algorithm 1 with ``indices``).

  Args:
    x: any array, e.g. an HWIO kernel ``(k, k, I, O)``.
    axis: the channel axis to remap (negative counts from the end).
    new_size: channels along ``axis`` in the result.
    indices: optional ``(n,)`` integer vector, ``n <= new_size``: seed channels to keep, in the
      order given (Algorithm 1 passes sorted top-k indices).  ``None`` keeps the first
      ``min(new_size, x.shape[axis])`` channels.

  Returns:
    ``x`` with ``axis`` of length ``new_size``: the kept channels first, then zeros.
  """
  return _resize_axis(x, axis, new_size, 0.0, indices)


def bn_vector(x: jax.Array, new_size: int, fill: float,
              indices: jax.Array | Sequence[int] | None = None) -> jax.Array:
  """Width-level remapping of a BatchNorm vector (scale, bias, running mean or running var).

  Args:
    x: ``(C,)`` seed vector.
    new_size: ``C'``, channels of the new layer.
    fill: value of channels beyond the seed: the field's identity init, ``BN_FILL[field]``
      (scale 1, bias 0, mean 0, var 1), so a new all-zero input channel stays zero after BN.
    indices: optional ``(n,)`` seed channels to keep (``n <= C'``), as in :func:`width`.

  Returns:
    ``(C',)``: the kept seed channels, then ``fill``.
  """
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(f'bn_vector: expected a vector, got shape {x.shape}')
  return _resize_axis(x, 0, new_size, fill, indices)


# --------------------------------------------------------------------------- kernel
def dilation_positions(k: int, new_k: int) -> list[int] | None:
  """Rows (and columns) of a ``new_k`` kernel that the ``k`` seed taps land on in dilation mode.

  Eq. 11 places a 3x3 seed on rows/cols ``0, (k'-1)/2, k'-1``; in general tap ``a`` lands on
  ``a * (k' - 1) / (k - 1)``.  Returns ``None`` when that is not an integer grid (``k == 1``, or
  ``(k' - 1) % (k - 1) != 0``, e.g. 5 -> 7), where :func:`kernel` falls back to the centre rule.
  """
  if k == 1 or new_k <= k or (new_k - 1) % (k - 1):
    return None
  step = (new_k - 1) // (k - 1)
  return [a * step for a in range(k)]


def kernel(x: jax.Array, new_k: int, mode: str = 'center') -> jax.Array:
  """Kernel-level remapping of an HWIO kernel (Eq. 5/6, or Eq. 11 with ``mode='dilation'``).

  Args:
    x: ``(k, k, I, O)`` kernel, ``k`` odd.
    new_k: odd ``k'``.
    mode: ``'center'``: ``k' <= k`` takes the central ``k' x k'`` crop; ``k' > k`` puts the seed in
      the centre and zeros around it (with symmetric 'same' padding this computes the same
      function).
      ``'dilation'`` (Tab. 15, Eq. 11): for ``k' > k`` the seed taps land on rows/cols
      ``a * (k' - 1) / (k - 1)`` (for a 3x3 seed: ``0, (k'-1)/2, k'-1``), every other tap 0.
      Where that grid is not integral (a 1x1 seed, or e.g. 5 -> 7) and whenever ``k' <= k``
      (shrinking, or equal sizes), dilation mode falls back to the centre rule.

  Returns:
    ``(k', k', I, O)``.
  """
  x = jnp.asarray(x)
  if x.ndim != 4 or x.shape[0] != x.shape[1]:
    raise ValueError(f'kernel: expected a square HWIO kernel, got shape {x.shape}')
  k = x.shape[0]
  if k % 2 == 0 or new_k % 2 == 0 or new_k < 1:
    raise ValueError(f'kernel: sizes must be odd, got {k} -> {new_k}')
  if mode not in KERNEL_MODES:
    raise ValueError(f'kernel: mode {mode!r} not in {KERNEL_MODES}')
  if new_k == k:
    return x
  if new_k < k:
    o = (k - new_k) // 2
    return x[o:o + new_k, o:o + new_k]
  if mode == 'dilation':
    pos = dilation_positions(k, new_k)
    if pos is not None:
      out = jnp.zeros((new_k, new_k) + x.shape[2:], x.dtype)
      pos = np.asarray(pos)
      return out.at[pos[:, None], pos[None, :]].set(x)
  o = (new_k - k) // 2
  return jnp.pad(x, ((o, o), (o, o), (0, 0), (0, 0)))


# --------------------------------------------------------------------------- groups
def _group_index(in_channels: int, out_channels: int, groups: int, where: str):
  """``(s, O)`` static index of the input channel (of the plain conv) each grouped tap reads."""
  if groups < 1 or in_channels % groups or out_channels % groups:
    raise ValueError(f'{where}: {groups} groups do not divide {in_channels} input and '
                     f'{out_channels} output channels')
  s = in_channels // groups
  group_of_out = np.arange(out_channels) // (out_channels // groups)  # id_g = floor(i / (O/g))
  in_idx = group_of_out[None, :] * s + np.arange(s)[:, None]
  out_idx = np.broadcast_to(np.arange(out_channels)[None, :], in_idx.shape)
  return in_idx, out_idx


def grouped_from_plain(x: jax.Array, groups: int) -> jax.Array:
  """Eq. 4: the kernel of a ``groups``-group conv from a plain conv's kernel.

  Output channel ``i`` belongs to group ``id = i // (O / g)`` and takes the plain kernel's input
  channels ``[id * s, (id + 1) * s)``, ``s = I / g``.

  Args:
    x: ``(k, k, I, O)`` plain kernel.
    groups: ``g``, dividing ``I`` and ``O``.

  Returns:
    ``(k, k, I / g, O)`` with ``out[..., j, i] = x[..., id(i) * s + j, i]``.
  """
  x = jnp.asarray(x)
  in_idx, out_idx = _group_index(x.shape[2], x.shape[3], groups, 'grouped_from_plain')
  if groups == 1:
    return x
  return x[:, :, in_idx, out_idx]


def plain_from_grouped(x: jax.Array, groups: int) -> jax.Array:
  """The plain (block-diagonal) kernel computing the same function as a grouped kernel.

  Args:
    x: ``(k, k, I / g, O)`` kernel of a ``groups``-group conv.
    groups: ``g``.

  Returns:
    ``(k, k, I, O)``: output channel ``i`` of group ``id`` holds ``x[..., :, i]`` on input channels
    ``[id * s, (id + 1) * s)`` and zeros elsewhere.  ``grouped_from_plain(plain_from_grouped(x, g),
    g) == x``.
  """
  x = jnp.asarray(x)
  s, o = x.shape[2], x.shape[3]
  in_idx, out_idx = _group_index(s * groups, o, groups, 'plain_from_grouped')
  if groups == 1:
    return x
  out = jnp.zeros(x.shape[:2] + (s * groups, o), x.dtype)
  return out.at[:, :, in_idx, out_idx].set(x)


def regroup(x: jax.Array, src_groups: int, dst_groups: int) -> jax.Array:
  """A ``src_groups`` kernel as a ``dst_groups`` kernel: block-diagonal expansion, then Eq. 4.

  Args:
    x: ``(k, k, I / g_src, O)``.
    src_groups, dst_groups: group counts; both divide ``I`` and ``O``.

  Returns:
    ``(k, k, I / g_dst, O)``; ``x`` itself when the group counts are equal.
  """
  if src_groups == dst_groups:
    return jnp.asarray(x)
  return grouped_from_plain(plain_from_grouped(x, src_groups), dst_groups)


# --------------------------------------------------------------------------- importance
def topk_indices(v: jax.Array, k: int) -> jax.Array:
  """Algorithm 1, lines 2-4: indices of the ``k`` largest entries of ``v``, sorted ascending.

  Args:
    v: ``(p,)`` reference vector (importance per channel).
    k: ``q <= p``, channels to keep.

  Returns:
    ``(k,)`` int32 indices in ascending order (ties prefer the lower index).
  """
  v = jnp.asarray(v)
  if v.ndim != 1:
    raise ValueError(f'topk_indices: expected a vector, got shape {v.shape}')
  if not 0 < k <= v.shape[0]:
    raise ValueError(f'topk_indices: k={k} must be in [1, {v.shape[0]}]')
  _, idx = jax.lax.top_k(v, k)
  return jnp.sort(idx).astype(jnp.int32)


def bn_gamma_importance(scale: jax.Array) -> jax.Array:
  """Tab. 15 'Width-BN' reference vector: ``|gamma|`` of a BatchNorm, ``(C,) -> (C,)``."""
  return jnp.abs(jnp.asarray(scale))


def channel_std(x: jax.Array) -> jax.Array:
  """Tab. 15 'Width-Std': per-output-channel standard deviation of a kernel.

  Args:
    x: ``(..., O)`` kernel (HWIO or any layout with output channels last).

  Returns:
    ``(O,)``: the std (population, ``ddof=0``) of each output channel's weights.
  """
  x = jnp.asarray(x)
  return jnp.std(x.reshape(-1, x.shape[-1]), axis=0)


def channel_l1(x: jax.Array) -> jax.Array:
  """Tab. 15 'Width-L1': per-output-channel L1 norm of a kernel, ``(..., O) -> (O,)``."""
  x = jnp.asarray(x)
  return jnp.sum(jnp.abs(x.reshape(-1, x.shape[-1])), axis=0)

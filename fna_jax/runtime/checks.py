"""Checks that restored variables fit a model, with a message naming the first mismatched path."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


class ModelMismatchError(ValueError):
  """A saved network does not fit what it is used as (its variables, classes or kind)."""


class VariableMismatchError(ModelMismatchError):
  """Two variable trees differ in their paths or shapes.

  Attributes:
    path: the first mismatched path (``'params/backbone/.../kernel'``), in sorted order.
    kind: ``'missing'``, ``'unexpected'`` or ``'shape'``.
    missing, unexpected, shape: every mismatched path of each kind, sorted.
  """

  def __init__(self, message: str, path: str, kind: str, missing: list[str],
               unexpected: list[str], shape: list[str]):
    super().__init__(message)
    self.path = path
    self.kind = kind
    self.missing = missing
    self.unexpected = unexpected
    self.shape = shape


def _key_str(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaves(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], Any]]:
  """``{path components: (shape, dtype)}`` of every leaf (arrays, ShapeDtypeStructs, scalars)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = tuple(leaf.shape) if hasattr(leaf, 'shape') else np.shape(leaf)
    dtype = getattr(leaf, 'dtype', None)
    out[tuple(_key_str(k) for k in path)] = (tuple(int(d) for d in shape), dtype)
  return out


def _describe(shape_dtype) -> str:
  shape, dtype = shape_dtype
  return f'{shape} {np.dtype(dtype).name}' if dtype is not None else str(shape)


def check_variables_match(expected: Any, got: Any, what: str = 'checkpoint') -> None:
  """Raises if ``got`` does not have exactly the paths and shapes of ``expected``.

  Leaves are compared path by path (``'/'``-joined keys, e.g.
  ``params/backbone/stage3/layer1/expand_conv/kernel``) in sorted order; dtypes are not compared
  (restoring casts).  The error message names the first mismatch and counts the rest.

  Args:
    expected: the model's variables, arrays or ``jax.ShapeDtypeStruct`` (e.g. from
      :func:`fna_jax.models.init.variable_shapes`).
    got: the variables to check, e.g. as restored from a checkpoint.
    what: what ``got`` is, for the message (``'checkpoint'``, ``'seed weights'``, ...).

  Raises:
    VariableMismatchError: a path is missing from ``got``, unexpected in it, or has another shape.
  """
  exp, act = _leaves(expected), _leaves(got)
  missing, unexpected, shape = [], [], []
  first = None
  for key in sorted(set(exp) | set(act)):
    if key not in act:
      kind, bucket = 'missing', missing
    elif key not in exp:
      kind, bucket = 'unexpected', unexpected
    elif exp[key][0] != act[key][0]:
      kind, bucket = 'shape', shape
    else:
      continue
    bucket.append('/'.join(key))
    if first is None:
      first = (key, kind)
  if first is None:
    return None
  key, kind = first
  path = '/'.join(key)
  if kind == 'missing':
    detail = (f"parameter '{path}' is missing from the {what} (the model expects "
              f'{_describe(exp[key])})')
  elif kind == 'unexpected':
    detail = (f"parameter '{path}' in the {what} is unexpected: the model has no such parameter "
              f'(it holds {_describe(act[key])})')
  else:
    detail = (f"parameter '{path}' has shape {act[key][0]} in the {what}, but the model expects "
              f'shape {exp[key][0]}')
  total = len(missing) + len(unexpected) + len(shape)
  message = f'{what} does not match the model: {detail}'
  if total > 1:
    message += (f' [{total} mismatches in all: {len(missing)} missing, {len(unexpected)} '
                f'unexpected, {len(shape)} of another shape]')
  raise VariableMismatchError(message, path, kind, missing, unexpected, shape)

"""Mixed precision for the train steps: compute in bfloat16, keep float32 parameters and BatchNorm
statistics.

``config.compute_dtype = 'bfloat16'`` (for GPUs and TPUs, whose matrix units run bfloat16 at
several times the float32 rate; on CPU it is slower) makes every train step
(:func:`fna_jax.runtime.steps.train_step`, the search's weight and arch steps in
:mod:`fna_jax.train.search`) cast, inside the differentiated function,

* the float32 parameters (and the arch step's op weights) to bfloat16: the convolutions and their
  gradients run in bfloat16, and the gradients reach the float32 parameters through the cast (the
  optimiser updates float32 "master" weights, as usual mixed-precision training);
* the images to bfloat16;
* the network's outputs back to float32, so the task's loss is computed in float32.

BatchNorm (:class:`fna_jax.models.blocks.BatchNorm`) computes its statistics and running averages
in float32 whatever the input and returns the input's dtype, so ``batch_stats`` stay float32.
Evaluation runs in float32.  ``'float32'`` (the default) changes nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ('float32', 'bfloat16')


def compute_dtype(name: str | None) -> Any:
  """``jnp.bfloat16`` for ``'bfloat16'``; None (compute as stored) for ``'float32'``/None/''."""
  if name in (None, '', 'float32'):
    return None
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}')
  return jnp.bfloat16


def cast_floats(tree, dtype):
  """``tree`` with its floating-point leaves cast to ``dtype`` (identity when ``dtype`` is None)."""
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
      tree)


def to_float32(tree):
  """Floating-point leaves of ``tree`` as float32 (the outputs a loss is computed on)."""
  return cast_floats(tree, jnp.float32)

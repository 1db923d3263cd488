"""The one supervised train step: seed pretraining, parameter adaptation and the benchmarks use it.

``train_step(model, tx, loss_fn, state, batch)`` runs the network in training mode on
``batch['image']`` (uint8 normalised inside the step, or float32 already normalised:
:func:`fna_jax.runtime.inputs.model_images`; BatchNorm on batch statistics, its running averages updated, dropout on),
takes ``loss_fn(outputs, batch)`` and applies one update of the optax transformation ``tx``.
:func:`jit_train_step` compiles it for a mesh: the state replicated (and donated), the batch
sharded over ``'data'``, so BatchNorm statistics are global over the mesh (SyncBN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from fna_jax.runtime import inputs
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import precision


@flax.struct.dataclass
class TrainState:
  """A network's training state (a pytree; checkpointed whole)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt: Any
  rng: jax.Array


def init_state(tx: optax.GradientTransformation, variables, rng) -> TrainState:
  """Step 0 of ``variables`` (``{'params', 'batch_stats'}``); ``rng`` seeds dropout."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'], opt=tx.init(variables['params']),
                    rng=rng)


def train_step(model, tx: optax.GradientTransformation, loss_fn: Callable, state: TrainState,
               batch, compute_dtype=None):
  """One update on ``batch`` (``{'image': uint8 or float32 (B, H, W, 3), ...}``).

  ``loss_fn(outputs, batch) -> scalar``.  ``compute_dtype`` (e.g. ``jnp.bfloat16``): mixed
  precision, :mod:`fna_jax.runtime.precision`.  Returns ``(new_state, {'loss': scalar})``.
  """
  rng, k_drop = jax.random.split(state.rng)

  def loss(params):
    outputs, new = model.apply(
        {'params': precision.cast_floats(params, compute_dtype), 'batch_stats': state.batch_stats},
        inputs.model_images(batch, compute_dtype), True, rngs={'dropout': k_drop},
        mutable=['batch_stats'])
    if compute_dtype is not None:
      outputs = precision.to_float32(outputs)
    return loss_fn(outputs, batch), new['batch_stats']

  (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  updates, opt = tx.update(grads, state.opt, state.params)
  new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      batch_stats=batch_stats, opt=opt, rng=rng)
  return new, {'loss': value}


def jit_train_step(model, tx, loss_fn, mesh, compute_dtype=None):
  """:func:`train_step` compiled for ``mesh``: state replicated (donated), batch on ``'data'``."""
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  return jax.jit(lambda s, b: train_step(model, tx, loss_fn, s, b, compute_dtype),
                 in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)

"""Orbax checkpoints of a training run: the state pytree plus a JSON record, resumable.

A run directory holds ``checkpoints/<step>/{state,meta}``: ``state`` is the whole training state
(weights, alphas, both optimiser states, step, RNG) saved with ``StandardSave``; ``meta`` is JSON
(data-iterator states, the alpha history so far, anything small).  :func:`restore_latest` restores
the newest complete step onto the shardings of an abstract target, so a killed run resumes where
its last checkpoint left it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
  """Thin wrapper over ``ocp.CheckpointManager`` for ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, wait: bool = False) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the newest checkpoint, or ``None`` when there is none.

    ``abstract_state``: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings) that
    gives the structure, shapes and placement to restore onto.
    """
    step = self.manager.latest_step()
    if step is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return step, restored['state'], restored['meta']

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

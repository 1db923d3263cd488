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
import numpy as np
import orbax.checkpoint as ocp

VARIABLES_ITEM = 'variables'


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


def save_variables(directory: str, variables: Any, meta: dict, *, meta_item: str = 'meta',
                   overwrite: bool = True) -> str:
  """Writes a network's ``{'params', 'batch_stats'}`` and a JSON ``meta`` as one orbax checkpoint.

  Items: ``variables`` (StandardSave, host arrays) and ``meta_item`` (JsonSave).  Used for a
  run's *result* (the searched supernet, the fine-tuned task network; ``meta`` records what
  rebuilds the module) and, with ``meta_item='arch'``, for seed checkpoints
  (:func:`fna_jax.seeds.save_seed`).  ``overwrite`` replaces an existing ``directory``.
  """
  path = os.path.abspath(directory)
  args = ocp.args.Composite(**{VARIABLES_ITEM: ocp.args.StandardSave(jax.device_get(variables)),
                               meta_item: ocp.args.JsonSave(meta)})
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, args=args, force=overwrite)
  return path


def load_variables(directory: str, *, meta_item: str = 'meta') -> tuple[Any, dict]:
  """``(variables, meta)`` written by :func:`save_variables` (numpy arrays)."""
  path = os.path.abspath(directory)
  if not os.path.isdir(os.path.join(path, VARIABLES_ITEM)):
    raise FileNotFoundError(f'no saved network at {path} (expected {path}/{VARIABLES_ITEM} and '
                            f'{path}/{meta_item}, written at the end of a search or fine-tuning '
                            'run)')
  args = ocp.args.Composite(**{VARIABLES_ITEM: ocp.args.StandardRestore(),
                               meta_item: ocp.args.JsonRestore()})
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(path, args=args)
  return jax.tree.map(np.asarray, restored[VARIABLES_ITEM]), restored[meta_item]

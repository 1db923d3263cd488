"""Parameter adaptation (paper Sec. 3.2.3, 4.1.1): initial weights, BN recalibration, the fine-tuning step.

FNA++ fine-tunes the derived architecture ``Arch_t`` on the target task, starting from weights
remapped from the searched supernet (``init='supernet'``, FNA++), from the seed network
(``init='seed'``, FNA) or from nothing (``init='random'``); these are the rows of the paper's
Tab. 13.  Before fine-tuning, the BatchNorm running statistics are recomputed on training batches
(:func:`recalibrate_bn`), because remapped statistics belong to other layers' inputs.

Everything here is a pure function of pytrees; :mod:`fna_jax.train.adapt_loop` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fna_jax import arch as arch_lib
from fna_jax.models.blocks import BN_MOMENTUM
from fna_jax.remap import remap_variables, supernet_to_arch
from fna_jax.spaces import SearchSpace
from fna_jax.runtime import mesh as mesh_lib

INITS = ('supernet', 'seed', 'random')


# --------------------------------------------------------------------------- initial weights
def _flat(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(p, simple=True, separator='/'): x
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def copy_matching(dst: Mapping[str, Any], src: Mapping[str, Any]) -> tuple[Any, list[str]]:
  """``dst`` with every leaf that ``src`` has at the same path and shape replaced by ``src``'s.

  Returns ``(new_tree, copied_paths)``; leaves ``src`` lacks (or has with another shape) keep
  ``dst``'s value (e.g. a DeepLabv3+ decoder when the source has a DeepLabv3 head).
  """
  flat_src = _flat(src)
  copied = []

  def leaf(path, x):
    key = jax.tree_util.keystr(path, simple=True, separator='/')
    s = flat_src.get(key)
    if s is not None and tuple(np.shape(s)) == tuple(np.shape(x)):
      copied.append(key)
      return np.asarray(s, np.asarray(x).dtype)
    return x

  return jax.tree_util.tree_map_with_path(leaf, dst), copied


def from_supernet(supernet_vars: Mapping[str, Any], space: SearchSpace, choices,
                  target_vars: Mapping[str, Any]) -> tuple[arch_lib.Arch, Any, list[str]]:
  """FNA++ ("RemapSuper"): the derived network's variables collected from the searched supernet.

  Args:
    supernet_vars: ``{'params', 'batch_stats'}`` of the search's task network (``backbone`` is the
      supernet of ``space``, ``head`` its head).
    space: the search space.
    choices: one op (index or name) per searched layer.
    target_vars: variables of the derived task network (structure, shapes, and the values of
      anything the supernet lacks, e.g. a DeepLabv3+ decoder).

  Returns:
    ``(arch, variables, fresh_paths)``: the derived architecture, its variables, and the paths
    that did not come from the supernet.
  """
  arch, backbone = supernet_to_arch({c: v['backbone'] for c, v in supernet_vars.items()},
                                    space, choices)
  src = {c: {**{k: v for k, v in supernet_vars[c].items() if k != 'backbone'},
             'backbone': backbone[c]} for c in supernet_vars}
  out, copied = copy_matching(target_vars, src)
  fresh = sorted(set(_flat(target_vars)) - set(copied))
  if any(p.split('/')[1] == 'backbone' for p in fresh):
    raise ValueError('internal: backbone variables missing from the supernet: '
                     + ', '.join(p for p in fresh if p.split('/')[1] == 'backbone')[:500])
  return arch, out, fresh


def from_seed(seed_vars: Mapping[str, Any], seed_arch: arch_lib.Arch, arch: arch_lib.Arch,
              target_vars: Mapping[str, Any], strategy: str = 'fna') -> Any:
  """FNA: the derived backbone remapped from the seed network; the head keeps ``target_vars``."""
  return remap_variables(seed_vars, seed_arch, arch, target_vars, strategy)


# --------------------------------------------------------------------------- BN recalibration
def recalibrate_bn(apply_fn: Callable, variables: Mapping[str, Any], batches: Iterable,
                   momentum: float = BN_MOMENTUM) -> dict:
  """Recomputes every BatchNorm running mean/var as the average over ``batches``.

  Each batch's statistics are what a train-mode forward feeds its running averages (the batch
  mean and the unbiased batch variance, :class:`fna_jax.models.blocks.BatchNorm`, as torch); the
  result is their plain average over all batches (torch's ``momentum=None`` cumulative average),
  independent of the old statistics.  ``apply_fn(variables, images) -> (logits, {'batch_stats':
  new})`` is a (jitted) train-mode forward with ``mutable=['batch_stats']``; it is called with the
  running statistics set to zero, so the update ``new = momentum * 0 + (1 - momentum) *
  batch_stat`` gives the batch statistic exactly up to the factor ``1 - momentum``.

  Returns ``{'params': ..., 'batch_stats': recalibrated}``.
  """
  zero_stats = jax.tree.map(jnp.zeros_like, variables['batch_stats'])
  probe = {'params': variables['params'], 'batch_stats': zero_stats}
  total, n = None, 0
  for batch in batches:
    _, new = apply_fn(probe, batch['image'])
    stats = jax.tree.map(lambda s: s / (1.0 - momentum), new['batch_stats'])
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    n += 1
  if n == 0:
    return dict(variables)
  return {'params': variables['params'], 'batch_stats': jax.tree.map(lambda s: s / n, total)}


# --------------------------------------------------------------------------- optimisation
def poly_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0, power: float = 0.9) -> optax.Schedule:
  """Linear warm-up ``warmup_start -> lr`` over ``warmup_steps``, then ``lr * (1 - t/T)^power``."""
  poly = optax.polynomial_schedule(lr, 0.0, power, max(total_steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return poly
  return optax.join_schedules(
      [optax.linear_schedule(warmup_start, lr, warmup_steps), poly], [warmup_steps])


def finetune_optimizer(lr_fn: optax.Schedule, momentum: float = 0.9,
                       weight_decay: float = 4e-5) -> optax.GradientTransformation:
  """SGD with momentum and (coupled, as torch's) weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr_fn, momentum=momentum))


def jit_bn_forward(model, mesh):
  """Train-mode forward returning the updated batch stats (for :func:`recalibrate_bn`).

  Everything runs as in training, dropout included (a fixed dropout key), as a torch model in
  train mode does when its BN statistics are recomputed; with DeepLabv3+ the decoder's BN layers
  see the dropped-out ASPP output, as they do while fine-tuning.  The batch is sharded on
  ``'data'``, so the statistics are global over the mesh.
  """
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)

  def fwd(variables, images):
    return model.apply(variables, images, True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.key(0)})
  return jax.jit(fwd, in_shardings=(rep, data), out_shardings=rep)

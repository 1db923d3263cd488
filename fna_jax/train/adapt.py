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
from fna_jax.runtime import inputs
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.train import optim

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
  independent of the old statistics.  ``apply_fn(variables, batch) -> (logits, {'batch_stats':
  new})`` is a (jitted) train-mode forward of a training batch (``{'image', ...}``; e.g.
  :func:`jit_bn_forward`) with ``mutable=['batch_stats']``; it is called with the
  running statistics set to zero, so the update ``new = momentum * 0 + (1 - momentum) *
  batch_stat`` gives the batch statistic exactly up to the factor ``1 - momentum``.

  Returns ``{'params': ..., 'batch_stats': recalibrated}``.
  """
  zero_stats = jax.tree.map(jnp.zeros_like, variables['batch_stats'])
  probe = {'params': variables['params'], 'batch_stats': zero_stats}
  total, n = None, 0
  for batch in batches:
    _, new = apply_fn(probe, batch)
    stats = jax.tree.map(lambda s: s / (1.0 - momentum), new['batch_stats'])
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    n += 1
  if n == 0:
    return dict(variables)
  return {'params': variables['params'], 'batch_stats': jax.tree.map(lambda s: s / n, total)}


# --------------------------------------------------------------------------- optimisation
def poly_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0, power: float = 0.9) -> optax.Schedule:
  """Linear warm-up ``warmup_start -> lr`` over ``warmup_steps``, then ``lr * (1 - t/T)^power``.

  Paper Sec. 4.1.1 (1e-4 -> 0.01, then poly decay to 0); the release's ``PolyLR``
  (``fna_seg/furnace/engine/lr_policy.py``) with ``warmup_iters=5000`` and ``lr_power=0.9``
  (``fna_seg/model/deeplab/cityscapes.deeplabv3/config.py``); ``T = total_steps - warmup_steps``.
  """
  poly = optax.polynomial_schedule(lr, 0.0, power, max(total_steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return poly
  return optax.join_schedules(
      [optax.linear_schedule(warmup_start, lr, warmup_steps), poly], [warmup_steps])


NO_DECAY_NAMES = ('bias', 'scale')   # BatchNorm's scale and bias, conv/dense biases


def param_groups(params) -> Any:
  """The fine-tuning parameter group of every leaf of ``params``, decided by its path.

  Returns a pytree of ``params``' structure whose leaves are labels ``f'{part}_{decay}'``:
  ``part`` is ``'backbone'`` for leaves under the top-level ``backbone`` collection and ``'head'``
  for everything else (the task head, e.g. the ASPP, decoder and classifier); ``decay`` is
  ``'decay'`` for conv/dense kernels and ``'no_decay'`` for BatchNorm scales and biases and
  every bias (a leaf named ``bias`` or ``scale``; only BatchNorm has a ``scale``), and for any
  other 1-D leaf (a per-channel vector).

  These are the four groups of the authors' release (``fna_seg/furnace/utils/init_func.py``,
  ``group_weight``): backbone conv weights (decay, lr), backbone BN (no decay, lr), other conv
  weights (decay, 10 lr) and other BN (no decay, 10 lr); see :func:`finetune_optimizer`.
  """
  def label(path, x):
    keys = [getattr(k, 'key', getattr(k, 'name', None)) for k in path]
    part = 'backbone' if keys and keys[0] == 'backbone' else 'head'
    no_decay = keys[-1] in NO_DECAY_NAMES or np.ndim(x) <= 1
    return f'{part}_{"no_decay" if no_decay else "decay"}'
  return jax.tree_util.tree_map_with_path(label, params)


OPTIMIZERS = ('sgd', 'adam')
LR_SCHEDULES = ('poly', 'multistep')


def finetune_optimizer(lr_fn: optax.Schedule, momentum: float = 0.9,
                       weight_decay: float = 5e-4, *, head_lr_mult: float = 10.0,
                       no_decay_bn_bias: bool = True,
                       optimizer: str = 'sgd') -> optax.GradientTransformation:
  """SGD with momentum (or Adam) and (coupled, as torch's) weight decay over the
  :func:`param_groups`.

  The authors' release fine-tunes with torch's SGD over four parameter groups
  (``fna_seg/furnace/utils/init_func.py``, ``group_weight``): the head (everything outside the
  backbone) at ``10 * lr``, BatchNorm scales and biases without weight decay.  Here:

  * ``weight_decay * w`` is added to the gradient of the ``*_decay`` leaves only when
    ``no_decay_bn_bias`` (else of every leaf);
  * ``optimizer='sgd'``: momentum ``buf = momentum * buf + g`` (torch's first step: ``buf = g``),
    then ``-lr(t) * buf``;
  * ``optimizer='adam'`` (SimpleBaseline's fine-tuning, paper Sec. 4.3.1): torch's Adam
    (:func:`fna_jax.train.optim.adam`, betas (0.9, 0.999), eps 1e-8; ``momentum`` unused) on the
    decayed gradient, ``-lr(t) * m_hat / (sqrt(v_hat) + eps)``;
  * the update of every ``head_*`` leaf is multiplied by ``head_lr_mult``: the same as a group lr
    of ``head_lr_mult * lr(t)`` for both optimisers, since neither torch's momentum buffer nor
    Adam's moments ``m``, ``v`` depend on the lr (the lr only scales the final update).

  ``head_lr_mult=1, no_decay_bn_bias=False`` is plain SGD over all parameters, with the same
  optimiser state structure as before these options existed (old checkpoints resume).
  """
  optim.check_choice('adapt.optimizer', optimizer, OPTIMIZERS)

  def decay_mask(params):
    return jax.tree.map(lambda l: not l.endswith('_no_decay'), param_groups(params))

  def head_mask(params):
    return jax.tree.map(lambda l: l.startswith('head_'), param_groups(params))

  update = optax.sgd(lr_fn, momentum=momentum) if optimizer == 'sgd' else optim.adam(lr_fn)
  parts = [optax.add_decayed_weights(weight_decay, mask=decay_mask if no_decay_bn_bias else None),
           update]
  if head_lr_mult != 1.0:
    parts.append(optax.masked(optax.scale(head_lr_mult), head_mask))
  return optax.chain(*parts)


def lr_schedule_from_config(ac) -> optax.Schedule:
  """The fine-tuning lr of the ``config.adapt`` dict ``ac``: ``'poly'`` (the segmentation recipe,
  :func:`poly_schedule`) or ``'multistep'`` (``lr * lr_factor^k`` after ``k`` of the milestones
  ``lr_steps``, given in optimiser steps; SimpleBaseline's x0.1 at epochs 90 and 120, paper
  Sec. 4.3.1, converted to steps by the task's config).  Both start with the linear warm-up
  ``warmup_start_lr -> lr`` over ``warmup_steps`` (0: none)."""
  optim.check_choice('adapt.lr_schedule', ac.lr_schedule, LR_SCHEDULES)
  if ac.lr_schedule == 'poly':
    return poly_schedule(ac.lr, ac.steps, ac.warmup_steps, ac.warmup_start_lr, ac.poly_power)
  return optim.multistep_schedule(ac.lr, ac.lr_steps, ac.lr_factor, ac.warmup_steps,
                                  ac.warmup_start_lr)


def finetune_optimizer_from_config(ac) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``(optimizer, lr_fn)`` of the ``config.adapt`` dict ``ac`` (what the adapt run uses)."""
  lr_fn = lr_schedule_from_config(ac)
  return finetune_optimizer(lr_fn, ac.momentum, ac.weight_decay, head_lr_mult=ac.head_lr_mult,
                            no_decay_bn_bias=ac.no_decay_bn_bias,
                            optimizer=ac.optimizer), lr_fn


def jit_bn_forward(model, mesh):
  """Train-mode forward returning the updated batch stats (for :func:`recalibrate_bn`).

  Everything runs as in training, dropout included (a fixed dropout key), as a torch model in
  train mode does when its BN statistics are recomputed; with DeepLabv3+ the decoder's BN layers
  see the dropped-out ASPP output, as they do while fine-tuning.  The batch is sharded on
  ``'data'``, so the statistics are global over the mesh.  Called as ``fwd(variables, batch)``
  on a training batch: uint8 images are normalised inside
  (:func:`fna_jax.runtime.inputs.model_images`), float32 ones used as they are.
  """
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)

  def fwd(variables, batch):
    return model.apply(variables, inputs.model_images(batch), True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.key(0)})
  return jax.jit(fwd, in_shardings=(rep, data), out_shardings=rep)

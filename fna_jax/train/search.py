"""Architecture adaptation: the weight step, the arch step and the cost objective (paper Sec. 3.2.2,
Eq. 7-9).

The search state holds two separate parameter sets with two optax optimisers:

* ``params``/``batch_stats``: the supernet's weights (backbone and task head), updated only by
  :func:`weight_step` (one sampled path, task loss, SGD with momentum and weight decay, or
  Adam: :func:`weight_optimizer`);
* ``alphas`` ``(L, K)``: architecture parameters, updated only by :func:`arch_step` (relaxed
  forward, task loss + ``lambda * log10(expected GMAdds)``, Adam).

Both steps are pure functions of ``(state, batch)``; :func:`jit_steps` compiles them once each with
the state replicated and the batch sharded over the mesh's ``'data'`` axis (BatchNorm statistics
are then global, i.e. SyncBN).  The sampled path and the warm-up flag are traced values, so new
paths and the end of warm-up never recompile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent import futures
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fna_jax import cost as cost_lib
from fna_jax.models import supernet as sn
from fna_jax.spaces import SearchSpace
from fna_jax.runtime import inputs
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import precision
from fna_jax.train import optim


@flax.struct.dataclass
class SearchState:
  """Everything a search step reads and writes (a pytree; checkpointed whole)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  alphas: jax.Array
  opt_w: Any
  opt_a: Any
  rng: jax.Array


# --------------------------------------------------------------------------- cost objective
def cost_table(supernet_model, variables, space: SearchSpace, input_shape) -> np.ndarray:
  """MAdds of every candidate of every searched layer at ``input_shape``; ``(L, K)`` int64.

  ``supernet_model`` is the task network whose body is the supernet of ``space`` (paths
  ``backbone/stage{i}/layer{j}/{op}/...``) or the bare supernet.  Skip and masked entries cost 0.
  Costs are per image, counted by :mod:`fna_jax.cost`.
  """
  layers = cost_lib.count_layers(supernet_model, variables, (1,) + tuple(input_shape[1:]),
                                 op_weights=jnp.asarray(sn.candidate_mask(space), jnp.float32))
  table = np.zeros((space.num_searched, space.max_candidates), np.int64)
  index = {}
  for l, (i, j) in enumerate(space.searched_layers()):
    for o, op in enumerate(space.candidates(i, j)):
      index[f'stage{i}', f'layer{j}', op] = (l, o)
  for rec in layers:
    parts = rec.path_tuple
    if parts and parts[0] == 'backbone':
      parts = parts[1:]
    hit = index.get(tuple(parts[:3]))
    if hit is not None:
      table[hit] += rec.madds
  return table


def expected_gmadds(weights: jax.Array, table: np.ndarray) -> jax.Array:
  """Eq. 9: ``sum_l sum_o w[l, o] * table[l, o]`` in GMAdds (searched layers only)."""
  return jnp.sum(weights * jnp.asarray(table, jnp.float32)) / 1e9


def cost_loss(weights: jax.Array, table: np.ndarray, lam: float) -> jax.Array:
  """Eq. 8's cost term: ``lambda * log10(expected GMAdds)``."""
  return lam * jnp.log10(expected_gmadds(weights, table))


# --------------------------------------------------------------------------- optimisers
@dataclasses.dataclass(frozen=True)
class Schedule:
  """Step counts of the search (paper Sec. 3.2.2: warm-up epochs, then alternation)."""
  total_steps: int
  warmup_steps: int       # weight steps with uniformly sampled paths and no arch steps
  lr_warmup_steps: int    # linear lr warm-up of the weight optimiser
  lr_milestones: tuple[int, ...] = ()  # 'multistep' lr: steps after which the lr is scaled


def _clip(max_norm: float | None) -> list[optax.GradientTransformation]:
  """``[clip_by_global_norm(max_norm)]``, or ``[]`` when ``max_norm`` is 0 or None (no clipping)."""
  return [optax.clip_by_global_norm(max_norm)] if max_norm else []


W_OPTIMIZERS = ('sgd', 'adam')
W_LR_SCHEDULES = ('cosine', 'multistep')


def weight_optimizer(schedule: Schedule, *, lr: float = 0.02, lr_start: float = 1e-4,
                     lr_end: float = 1e-3, momentum: float = 0.9, weight_decay: float = 5e-4,
                     grad_clip_norm: float | None = 35.0, optimizer: str = 'sgd',
                     lr_schedule: str = 'cosine', lr_factor: float = 0.1):
  """The weights' optimiser: by default SGD with momentum and (coupled, as torch's) weight decay;
  lr: linear warm-up then cosine.

  Paper Sec. 4.1.1 (lr 1e-4 -> 0.02 over the warm-up, cosine to 1e-3, momentum 0.9, weight decay
  5e-4).  The gradients' global L2 norm is clipped at ``grad_clip_norm`` (0/None: off) as in the
  authors' release (``fna_det/configs/fna_retinanet_fpn_search.py``: ``weight_optim``'s
  ``grad_clip=dict(max_norm=35, norm_type=2)``).  The clip comes first: torch's
  ``clip_grad_norm_`` clips the raw gradients before ``SGD.step`` adds ``weight_decay * w``, so the
  decay term is never clipped.

  Other recipes (paper Sec. 4.3.1: pose weights trained as SimpleBaseline):

  * ``optimizer='adam'``: torch's Adam (:func:`fna_jax.train.optim.adam`, betas (0.9, 0.999))
    after the same clip and coupled weight decay (``momentum`` unused);
  * ``lr_schedule='multistep'``: ``lr * lr_factor^k`` after ``k`` of ``schedule.lr_milestones``
    (steps), after the same linear warm-up from ``lr_start`` (none when
    ``schedule.lr_warmup_steps`` is 0); ``lr_end`` unused.

  The defaults build the chain of the segmentation recipe unchanged (same optimiser state; its
  checkpoints resume).  Returns ``(optimizer, lr_fn)``.
  """
  optim.check_choice('search.w_optimizer', optimizer, W_OPTIMIZERS)
  optim.check_choice('search.w_lr_schedule', lr_schedule, W_LR_SCHEDULES)
  if lr_schedule == 'cosine':
    lr_fn = optax.join_schedules([
        optax.linear_schedule(lr_start, lr, max(schedule.lr_warmup_steps, 1)),
        optax.cosine_decay_schedule(lr, max(schedule.total_steps - schedule.lr_warmup_steps, 1),
                                    alpha=lr_end / lr)], [schedule.lr_warmup_steps])
  else:
    lr_fn = optim.multistep_schedule(lr, schedule.lr_milestones, lr_factor,
                                     schedule.lr_warmup_steps, lr_start)
  update = optax.sgd(lr_fn, momentum=momentum) if optimizer == 'sgd' else optim.adam(lr_fn)
  return optax.chain(*_clip(grad_clip_norm), optax.add_decayed_weights(weight_decay),
                     update), lr_fn


def arch_optimizer(*, lr: float = 1e-3, weight_decay: float = 4e-5, b1: float = 0.5,
                   b2: float = 0.999, grad_clip_norm: float | None = 35.0):
  """Adam on the alphas with (coupled, as torch's) weight decay.

  Paper Sec. 4.1.1: Adam, fixed lr 1e-3, weight decay 4e-5.  The paper gives no betas; the
  authors' release uses ``betas=(0.5, 0.999)`` and clips the gradients' global L2 norm at 35
  (``fna_det/configs/fna_retinanet_fpn_search.py``, ``arch_optim``).  As for the weights, the
  clip (0/None: off) acts on the raw gradients, before the decay term is added.
  """
  return optax.chain(*_clip(grad_clip_norm), optax.add_decayed_weights(weight_decay),
                     optax.adam(lr, b1=b1, b2=b2))


# --------------------------------------------------------------------------- steps
@dataclasses.dataclass(frozen=True)
class SearchFns:
  """The pieces a step needs; built once by
  :func:`fna_jax.train.search_loop.make_search_fns`."""
  model: Any                      # task network with a Supernet body
  space: SearchSpace
  loss_fn: Callable               # (outputs, batch) -> scalar: the task's loss
  table: np.ndarray               # (L, K) MAdds
  lam: float
  opt_w: optax.GradientTransformation
  opt_a: optax.GradientTransformation
  compute_dtype: Any = None       # None (float32) or jnp.bfloat16: fna_jax.runtime.precision

  @property
  def mask(self) -> np.ndarray:
    return sn.candidate_mask(self.space)


def init_state(fns: SearchFns, variables, alphas, rng) -> SearchState:
  params, batch_stats = variables['params'], variables['batch_stats']
  return SearchState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     alphas=alphas, opt_w=fns.opt_w.init(params), opt_a=fns.opt_a.init(alphas),
                     rng=rng)


def weight_step(fns: SearchFns, state: SearchState, batch, uniform):
  """One weight update on a sampled path.

  Args:
    state: the search state.
    batch: ``{'image': (B, H, W, 3) uint8 (normalised in the step,
      :func:`fna_jax.runtime.inputs.model_images`) or float32 (normalised), ...}``: what the
      task's loss takes.
    uniform: bool scalar; True samples paths uniformly (warm-up), else from ``softmax(alphas)``.

  Returns:
    ``(new_state, metrics)``; ``metrics['path']`` is the sampled ``(L,)`` path.

  Ops off the path get zero gradients, and the optimiser still applies weight decay and momentum
  to them, as the authors' PyTorch 1.x release does once an op has been sampled
  (``zero_grad()`` there zeroes gradients rather than dropping them, so ``SGD.step`` updates every
  parameter that has ever had one).
  """
  rng, k_path, k_drop = jax.random.split(state.rng, 3)
  path = sn.sample_path(k_path, state.alphas, fns.mask, uniform)

  dt = fns.compute_dtype

  def loss(params):
    outputs, new_vars = fns.model.apply(
        {'params': precision.cast_floats(params, dt), 'batch_stats': state.batch_stats},
        inputs.model_images(batch, dt), True, path=path,
        rngs={'dropout': k_drop}, mutable=['batch_stats'])
    if dt is not None:
      outputs = precision.to_float32(outputs)
    return fns.loss_fn(outputs, batch), new_vars['batch_stats']

  (task_loss, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  updates, opt_w = fns.opt_w.update(grads, state.opt_w, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_w=opt_w,
                      rng=rng)
  return new, {'loss': task_loss, 'path': path}


def arch_step(fns: SearchFns, state: SearchState, batch):
  """One alpha update: relaxed forward (all paths), task loss + cost term, grads w.r.t. alphas.

  BatchNorm runs on batch statistics and its running averages are updated, as a torch module in
  train mode does during the authors' arch step.  Weights are never touched.
  """
  rng, k_drop = jax.random.split(state.rng)

  dt = fns.compute_dtype

  def loss(alphas):
    w = sn.op_weights(alphas, fns.mask)
    outputs, new_vars = fns.model.apply(
        {'params': precision.cast_floats(state.params, dt), 'batch_stats': state.batch_stats},
        inputs.model_images(batch, dt), True,
        op_weights=precision.cast_floats(w, dt), rngs={'dropout': k_drop},
        mutable=['batch_stats'])
    if dt is not None:
      outputs = precision.to_float32(outputs)
    task = fns.loss_fn(outputs, batch)
    c = cost_loss(w, fns.table, fns.lam)
    return task + c, (task, c, expected_gmadds(w, fns.table), new_vars['batch_stats'])

  (total, (task, c, gmadds, batch_stats)), grads = jax.value_and_grad(loss, has_aux=True)(
      state.alphas)
  updates, opt_a = fns.opt_a.update(grads, state.opt_a, state.alphas)
  alphas = optax.apply_updates(state.alphas, updates)
  new = state.replace(alphas=alphas, batch_stats=batch_stats, opt_a=opt_a, rng=rng)
  return new, {'arch_loss': total, 'arch_task_loss': task, 'cost_loss': c,
               'expected_gmadds': gmadds}


def jit_steps(fns: SearchFns, mesh):
  """``(weight_step(state, batch, uniform), arch_step(state, batch))`` compiled for ``mesh``.

  State replicated, batch sharded on ``'data'``, the state argument donated.
  """
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  w = jax.jit(lambda s, b, u: weight_step(fns, s, b, u), in_shardings=(rep, data, rep),
              out_shardings=(rep, rep), donate_argnums=0)
  a = jax.jit(lambda s, b: arch_step(fns, s, b), in_shardings=(rep, data),
              out_shardings=(rep, rep), donate_argnums=0)
  return w, a


def compile_steps(fns: SearchFns, mesh, state, batch):
  """Both steps of :func:`jit_steps` compiled ahead of time for the shapes of ``state``/``batch``.

  ``state`` and ``batch`` may be arrays or ``jax.ShapeDtypeStruct`` trees (nothing is computed).
  The two steps are traced one after the other, then compiled in two threads: XLA's compiler
  releases the GIL and compiles one module on one core, so on a multi-core host the pair takes
  about as long as the slower one.  The results are called like the jitted functions and never
  recompile (a call with other shapes or shardings is an error instead).
  """
  w, a = jit_steps(fns, mesh)
  lowered_w = w.lower(state, batch, jax.ShapeDtypeStruct((), jnp.bool_))
  lowered_a = a.lower(state, batch)
  with futures.ThreadPoolExecutor(2, thread_name_prefix='compile') as pool:
    cw, ca = pool.submit(lowered_w.compile), pool.submit(lowered_a.compile)
    return cw.result(), ca.result()


def abstract_state(fns: SearchFns, variable_shapes, alphas_shape) -> SearchState:
  """The :class:`SearchState` of ``variable_shapes`` as ``jax.ShapeDtypeStruct`` leaves."""
  alphas = jax.ShapeDtypeStruct(alphas_shape, jnp.float32)
  return jax.eval_shape(lambda v, al: init_state(fns, v, al, jax.random.key(0)),
                        variable_shapes, alphas)

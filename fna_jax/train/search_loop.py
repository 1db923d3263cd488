"""The architecture-adaptation run: config -> data + seed + supernet -> steps -> derived arch.

``run_search(config, workdir)`` is what ``scripts/search.py`` calls.  It

1. builds the weight and arch splits of the training data (the arch split is a deterministic
   ``arch_fraction`` of train) as endless grain pipelines;
2. gets the seed (a converted torchvision checkpoint, or for the demo a short cached pretraining)
   and remaps it into the supernet (``search.init='remap'``), or initialises randomly;
3. counts the per-candidate cost table at ``cost_input_size``;
4. alternates the steps of :mod:`fna_jax.train.search`: weight steps only (uniform paths) for
   ``warmup_epochs``, then an arch step and a weight step per iteration;
5. checkpoints everything (state, data-iterator positions, alpha history) every
   ``checkpoint_every`` steps and on SIGTERM/SIGINT, and resumes from the latest checkpoint;
6. derives the architecture (argmax per layer, skips last) and writes, in ``workdir``:
   ``arch.json``, ``arch.txt`` (release notation), ``alphas.npz`` (history of softmax(alpha)),
   ``alphas.png`` (its plot, when matplotlib is installed) and ``summary.json`` (choices, Params and
   MAdds of the derived task network at ``cost_input_size``, wall time) and ``supernet/`` (the
   searched supernet's weights, which parameter adaptation remaps from).

With ``search.method='random'`` (paper Sec. 4.8) the same budget trains the supernet with uniform
paths only, then ``random_candidates`` uniformly drawn architectures are scored on arch-split
batches (task loss + cost term, single path) and the best is derived.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent import futures
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax import arch as arch_lib
from fna_jax import build, spaces
from fna_jax import cost as cost_lib
from fna_jax.data import pipeline
from fna_jax.models import supernet as sn
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.remap import seed_to_supernet
from fna_jax.runtime import inputs
from fna_jax.runtime import loop
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import precision
from fna_jax.runtime.checkpoint import RunCheckpoints, save_variables
from fna_jax.train import search


# --------------------------------------------------------------------------- building blocks
def init_supernet_variables(shapes, space, config, seed_arch, seed_vars, log) -> dict:
  """Supernet + head variables of ``shapes`` (the searched network's variable shapes): backbone
  remapped from the seed (``search.init='remap'``) or random (``'random'``: conv kernels drawn by
  ``search.random_init``, the release's ``'normal'`` or ``'kaiming'``, see
  :mod:`fna_jax.models.init`), head random (kaiming)."""
  random_backbone = config.search.init == 'random'
  variables = random_like(shapes, config.seed,
                          backbone_conv_init=config.search.random_init if random_backbone else None)
  if config.search.init == 'remap':
    backbone = seed_to_supernet({c: v['backbone'] for c, v in seed_vars.items()}, seed_arch,
                                space, config.search.remap_strategy)
    for c in variables:
      variables[c]['backbone'] = jax.tree.map(np.asarray, backbone[c])
    log(f'supernet: {space.num_searched} searched layers remapped from the seed '
        f'({config.search.remap_strategy})')
  elif config.search.init != 'random':
    raise ValueError(f"search.init must be 'remap' or 'random', got {config.search.init!r}")
  else:
    log(f'supernet: random initialisation (no remapping; conv kernels {config.search.random_init})')
  chex_shapes = jax.tree.map(lambda a: a.shape, shapes)
  got = jax.tree.map(lambda a: a.shape, variables)
  if chex_shapes != got:
    raise AssertionError('internal: remapped supernet variables do not match the supernet')
  return variables


def make_search_fns(config, model, space: spaces.SearchSpace, table: np.ndarray,
                    schedule: search.Schedule) -> tuple[search.SearchFns, Any]:
  """The steps' pieces for ``model`` (the task network over ``space``'s supernet): the task's
  loss, the cost ``table`` and the optimisers of ``config.search`` (paper Sec. 4.1.1: SGD with
  momentum and weight decay for the weights, lr warm-up then cosine over ``schedule``; Adam for
  the alphas, betas ``(a_b1, a_b2)``; both with gradients clipped at a global norm of
  ``grad_clip_norm``, as in the authors' release: see :func:`fna_jax.train.search.arch_optimizer`;
  ``w_optimizer``/``w_lr_schedule`` select Adam / a multi-step lr for other recipes, e.g. the
  pose search's SimpleBaseline weights, Sec. 4.3.1).
  Returns ``(fns, lr_fn)``, ``lr_fn`` the weights' learning rate per step."""
  sc = config.search
  opt_w, lr_fn = search.weight_optimizer(schedule, lr=sc.w_lr, lr_start=sc.w_lr_start,
                                         lr_end=sc.w_lr_end, momentum=sc.w_momentum,
                                         weight_decay=sc.w_weight_decay,
                                         grad_clip_norm=sc.grad_clip_norm,
                                         optimizer=sc.w_optimizer,
                                         lr_schedule=sc.w_lr_schedule,
                                         lr_factor=sc.w_lr_factor)
  opt_a = search.arch_optimizer(lr=sc.a_lr, weight_decay=sc.a_weight_decay, b1=sc.a_b1,
                                b2=sc.a_b2, grad_clip_norm=sc.grad_clip_norm)
  return search.SearchFns(model, space, build.task(config).loss, table, sc.lam, opt_w,
                          opt_a, precision.compute_dtype(config.get('compute_dtype'))), lr_fn


def schedule_from_config(sc, steps_per_epoch: int) -> search.Schedule:
  """The search's step counts from the epochs of ``config.search`` (``sc``): all weight steps,
  the warm-up with uniform paths (every step for the random search), the lr warm-up, and the
  ``'multistep'`` lr milestones ``w_lr_steps`` (epochs) as steps: epoch ``e`` -> step
  ``e * steps_per_epoch``, the first step of the (0-based) epoch ``e``.  The lr warm-up is
  ``w_lr_warmup_steps`` iterations when that is set (> 0; the detection recipe's 500, paper
  Sec. 4.2.1), else ``w_lr_warmup_epochs`` epochs."""
  total = sc.epochs * steps_per_epoch
  warmup = (sc.epochs if sc.method == 'random' else sc.warmup_epochs) * steps_per_epoch
  milestones = tuple(int(round(e * steps_per_epoch)) for e in sc.w_lr_steps)
  lr_warmup = int(sc.get('w_lr_warmup_steps', 0)) or sc.w_lr_warmup_epochs * steps_per_epoch
  return search.Schedule(total, warmup, lr_warmup, milestones)


def derived_cost(space, choices, config) -> cost_lib.Cost:
  """Params and MAdds of the derived task network at the task's cost input size (one image)."""
  net = build.task_network(config, space.derive(choices))
  return cost_lib.count(net, None, (1, *build.task(config).cost_input_size(), 3))


def arch_string(space: spaces.SearchSpace, choices) -> str:
  """Compact current architecture: op per searched layer, stages separated by ``|``."""
  out, k = [], 0
  for i, st in enumerate(space.stages):
    ops = []
    for cands in st.candidates:
      if len(cands) > 1:
        ops.append(cands[int(choices[k])])
        k += 1
    if ops:
      out.append(' '.join(o.replace('_', '') for o in ops))
  return ' | '.join(out)


# --------------------------------------------------------------------------- outputs
def save_outputs(workdir, space, choices, alpha_history, cost, wall, config) -> arch_lib.Arch:
  arch = space.derive(choices)
  with open(os.path.join(workdir, 'arch.json'), 'w') as f:
    f.write(arch.to_json())
  with open(os.path.join(workdir, 'arch.txt'), 'w') as f:
    f.write(arch.to_release_string() + '\n')
  steps = np.asarray([h[0] for h in alpha_history], np.int64)
  probs = np.asarray([h[1] for h in alpha_history], np.float32)
  np.savez(os.path.join(workdir, 'alphas.npz'), steps=steps, probs=probs,
           mask=sn.candidate_mask(space),
           layers=np.asarray([space.layer_name(i, j) for i, j in space.searched_layers()]))
  plot_alphas(os.path.join(workdir, 'alphas.png'), space, steps, probs)
  summary = {'choices': [space.candidates(i, j)[int(c)] if not isinstance(c, str) else c
                         for (i, j), c in zip(space.searched_layers(), choices)],
             'params': int(cost.params), 'madds': int(cost.madds),
             'cost_input_size': list(build.task(config).cost_input_size()),
             'method': config.search.method,
             'wall_time_s': round(wall, 1)}
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return arch


def plot_alphas(path, space, steps, probs) -> bool:
  """softmax(alpha) of every searched layer over the search, one small panel per layer."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  layers = space.searched_layers()
  cols = 5
  rows = -(-len(layers) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False,
                           sharex=True, sharey=True)
  for l, (i, j) in enumerate(layers):
    ax = axes[l // cols][l % cols]
    for o, op in enumerate(space.candidates(i, j)):
      ax.plot(steps, probs[:, l, o], label=op)
    ax.set_title(space.layer_name(i, j), fontsize=8)
  for l in range(len(layers), rows * cols):
    axes[l // cols][l % cols].axis('off')
  handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat),
                        key=lambda hl: len(hl[1]))
  fig.legend(handles, labels, loc='lower right', fontsize=8)
  fig.supxlabel('weight step')
  fig.supylabel('softmax(alpha)')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return True


# --------------------------------------------------------------------------- the run
@dataclasses.dataclass
class SearchResult:
  arch: arch_lib.Arch
  choices: list
  cost: cost_lib.Cost
  workdir: str


def run_search(config, workdir: str, *, log=print, stop_after: int | None = None) -> SearchResult:
  """Runs (or resumes) the search of ``config`` in ``workdir``; see the module docstring.

  ``stop_after``: stop (with a checkpoint) after this many weight steps of *this* invocation, as
  a kill would; used by tests of resumption.
  """
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  build.setup_runtime(config)
  mesh = build.mesh()
  task = build.task(config)
  n_dev = mesh.size
  sc = config.search
  if sc.batch_size % n_dev:
    raise ValueError(f'search.batch_size={sc.batch_size} must be a multiple of the '
                     f'{n_dev} devices')
  if sc.method not in ('differentiable', 'random'):
    raise ValueError(f"search.method must be 'differentiable' or 'random', got {sc.method!r}")
  local_batch = sc.batch_size // jax.process_count()

  # Data: weight and arch splits of train.
  train_src = build.dataset(config, 'train')
  n_train = build.train_size(config, train_src)
  w_idx, a_idx = pipeline.split_train_arch(n_train, config.data.arch_fraction, config.seed)
  mk = lambda idx, seed: task.train_data(train_src, idx, batch_size=local_batch, seed=seed,
                                         stage='search')
  # Batches put on the devices one step ahead; their get_state() is the consumed batches' state.
  w_data = mesh_lib.prefetch_to_mesh(mk(w_idx, config.seed), mesh)
  a_data = mesh_lib.prefetch_to_mesh(mk(a_idx, config.seed + 1), mesh)
  steps_per_epoch = max(len(w_idx) // sc.batch_size, 1)
  sched = schedule_from_config(sc, steps_per_epoch)
  total, warmup = sched.total_steps, sched.warmup_steps
  log(f'data: {len(w_idx)} weight / {len(a_idx)} arch examples, {steps_per_epoch} steps/epoch, '
      f'{total} weight steps ({warmup} warm-up), batch {sc.batch_size} on {n_dev} device(s)')

  # Model, cost table, steps; the steps compile in the background while the seed is prepared.
  space = build.space(config)
  model = build.search_network(config, space)
  h, w = task.input_size('search')
  shapes = variable_shapes(model, (1, h, w, 3), train=False)
  table = search.cost_table(model, shapes, space, (1, *task.cost_input_size(), 3))
  fns, lr_fn = make_search_fns(config, model, space, table, sched)
  batch_shapes = task.batch_shapes(sc.batch_size, 'search')
  pool = futures.ThreadPoolExecutor(1, thread_name_prefix='search-steps')
  compiling = pool.submit(
      search.compile_steps, fns, mesh,
      search.abstract_state(fns, shapes, (space.num_searched, space.max_candidates)),
      batch_shapes)
  pool.shutdown(wait=False)  # the one task runs on; the thread ends with it
  t_compile = time.perf_counter()

  # Seed and supernet variables.
  ckpts = RunCheckpoints(workdir)
  resuming = ckpts.latest_step() is not None
  if resuming or sc.init == 'random':
    seed_arch, seed_vars = None, None
  else:
    seed_arch, seed_vars = build.seed(config, mesh, log)
  if resuming:
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  else:
    variables = init_supernet_variables(shapes, space, config, seed_arch, seed_vars, log)
  if not compiling.done():
    log('compiling the weight and arch steps ...')
  w_step, a_step = compiling.result()
  log(f'weight and arch steps compiled ({time.perf_counter() - t_compile:.0f}s, in the '
      'background)')
  key = jax.random.key(config.seed)
  k_alpha, k_state = jax.random.split(key)
  state = search.init_state(fns, variables,
                            sn.init_alphas(k_alpha, space, sc.alpha_init_scale), k_state)
  state = mesh_lib.put_replicated(state, mesh)  # also across processes (PRNG key leaf)
  history: list = []
  start = 0
  if resuming:
    start, state, meta = ckpts.restore_latest(state)
    w_data.set_state(meta['w_data'])
    a_data.set_state(meta['a_data'])
    history = [(h[0], np.asarray(h[1])) for h in meta['history']]
    log(f'resumed from {ckpts.directory} at step {start}')

  mask = sn.candidate_mask(space)
  probs = lambda s: np.asarray(sn.op_weights(s.alphas, mask))

  pending = loop.PendingMetrics()  # no host sync per step: losses checked at logs/checkpoints

  def checkpoint(step, wait=False):
    pending.check(ckpts)
    meta = {'w_data': w_data.get_state(), 'a_data': a_data.get_state(),
            'history': [(h, p.tolist()) for h, p in history]}
    ckpts.save(step, state, meta, wait=wait)

  progress = loop.Progress(total, config.log_every, sc.batch_size, prefix='search ')
  metrics: dict = {}
  with loop.Preemption() as preempt:
    for step in range(start + 1, total + 1):
      uniform = step <= warmup
      if not uniform:
        state, am = a_step(state, next(a_data))
        metrics.update(am)
      state, wm = w_step(state, next(w_data), jnp.asarray(uniform))
      metrics.update(loss=wm['loss'])
      progress.tick()
      pending.add(step, metrics)
      if progress.due(step):
        host = pending.check(ckpts)
        history.append((step, probs(state)))
        fields = {'epoch': f'{(step - 1) // steps_per_epoch + 1}/{sc.epochs}',
                  'loss': host['loss'], 'lr': float(lr_fn(step - 1))}
        if not uniform:
          g = host['expected_gmadds']
          fields.update(arch_loss=host['arch_loss'],
                        exp_madds=f'{g:.3f}G' if g >= 1 else f'{1e3 * g:.2f}M')
        fields['arch'] = arch_string(space, sn.argmax_path(state.alphas, mask))
        progress.log(step, fields)
      if loop.checkpoint_or_stop(step, start=start, total=total, every=config.checkpoint_every,
                                 stop_after=stop_after, preempt=preempt, save=checkpoint):
        ckpts.close()
        log(f'stopped at step {step}; rerun the same command to resume')
        return None

  if sc.method == 'random':
    choices = random_search(fns, state, a_data, mesh, sc.random_candidates, config.seed, log)
  else:
    choices = [int(c) for c in sn.argmax_path(state.alphas, mask)]
  ckpts.close()
  save_variables(os.path.join(workdir, 'supernet'),
                 {'params': state.params, 'batch_stats': state.batch_stats},
                 {'task': config.task, 'space': space.to_dict(),
                  'outputs': {k: config.data[k] for k in build.OUTPUT_KEYS if k in config.data}})
  cost = derived_cost(space, choices, config)
  arch = save_outputs(workdir, space, choices, history or [(0, probs(state))], cost,
                      time.perf_counter() - t_start, config)
  log('derived architecture (release notation):\n' + arch.to_release_string())
  log(f'derived network at {task.cost_input_size()}: {cost_lib.format_count(*cost)}; '
      f'outputs in {workdir}')
  return SearchResult(arch, choices, cost, workdir)


def random_search(fns: search.SearchFns, state, a_data, mesh, n: int, seed: int, log,
                  batches: int = 2) -> list[int]:
  """Scores ``n`` uniformly drawn paths (task loss + cost term on arch batches); the best.

  ``a_data`` yields arch-split training batches already on ``mesh``
  (:func:`fna_jax.runtime.mesh.prefetch_to_mesh`); uint8 images are normalised in the jitted
  scoring (:func:`fna_jax.runtime.inputs.model_images`).
  """
  mask = fns.mask
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)

  def score(state, batch, path):
    outputs = fns.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                              inputs.model_images(batch), False, path=path)
    onehot = jax.nn.one_hot(path, mask.shape[1])
    return fns.loss_fn(outputs, batch) + search.cost_loss(onehot, fns.table, fns.lam)

  score = jax.jit(score, in_shardings=(rep, data, rep))
  evals = [next(a_data) for _ in range(batches)]
  keys = jax.random.split(jax.random.key(seed + 7), n)
  best, best_path = np.inf, None
  for i in range(n):
    path = sn.sample_path(keys[i], state.alphas, mask, True)
    s = float(np.mean([float(score(state, b, path)) for b in evals]))
    if s < best:
      best, best_path = s, [int(p) for p in np.asarray(path)]
  log(f'random search: best score {best:.4f} of {n} architectures')
  return best_path

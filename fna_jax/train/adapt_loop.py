"""The parameter-adaptation run: search result -> remapped derived network -> fine-tuned network.

``run_adapt(config, workdir, search_dir)`` is what ``scripts/adapt.py`` calls.  It

1. reads the derived architecture (``arch.json``) and the choices (``summary.json``) of the search
   run in ``search_dir``;
2. builds the derived task network (head ``config.adapt.head``: DeepLabv3 or DeepLabv3+; at
   ``config.adapt.output_stride`` when set, e.g. 8 for Tab. 2's last rows) and its initial weights by ``config.adapt.init`` (:mod:`fna_jax.train.adapt`): ``'supernet'`` (FNA++,
   from ``search_dir/supernet``), ``'seed'`` (FNA) or ``'random'``;
3. recomputes the BatchNorm statistics on ``config.adapt.bn_recalib_steps`` training batches;
4. fine-tunes with SGD (linear warm-up, poly decay; the head at ``head_lr_mult`` times the lr, no
   weight decay on BatchNorm and biases: :func:`fna_jax.train.adapt.finetune_optimizer`; or Adam
   and a multi-step lr, ``adapt.optimizer``/``adapt.lr_schedule``) on
   random-scale crops and flips, with the same
   sharding, checkpoint/resume, NaN guard and progress lines as the search;
5. writes, in ``workdir``: ``arch.json``, ``model/`` (the fine-tuned variables with the settings to
   rebuild the network, :func:`fna_jax.runtime.checkpoint.save_variables`) and ``summary.json``
   (init, steps, Params, MAdds, wall time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np

from fna_jax import arch as arch_lib
from fna_jax import build, spaces
from fna_jax import cost as cost_lib
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.runtime import loop
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import precision
from fna_jax.runtime import steps as steps_lib
from fna_jax.runtime.checkpoint import RunCheckpoints, load_variables, save_variables
from fna_jax.train import adapt


def read_search(search_dir: str) -> tuple[arch_lib.Arch, list]:
  """``(derived arch, choices)`` of a finished search run."""
  paths = [os.path.join(search_dir, f) for f in ('arch.json', 'summary.json')]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
        f'{search_dir} is not a finished search run: {", ".join(missing)} missing. Run '
        f'`python scripts/search.py --config=... --workdir={search_dir}` to the end first.')
  with open(paths[0]) as f:
    text = f.read()
  try:
    arch = arch_lib.Arch.from_json(text)
  except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and ArchError are ValueErrors
    raise arch_lib.ArchError(f'{paths[0]}: cannot read the derived architecture: {e!r}') from None
  with open(paths[1]) as f:
    choices = json.load(f)['choices']
  return arch, choices


def adapt_arch(arch: arch_lib.Arch, output_stride: int) -> arch_lib.Arch:
  """The searched ``arch`` at the adaptation's output stride (``0``: as searched).

  Paper Tab. 2 adapts and evaluates the architecture searched at output stride 16 also at output
  stride 8 (DeepLabv3+): strides traded for dilation, the weights unchanged in shape.
  """
  if not output_stride or output_stride == arch.output_stride:
    return arch
  return arch.with_output_stride(output_stride)


def build_network(arch: arch_lib.Arch, config, frozen_bn: bool = False):
  """The derived task network: ``Backbone(arch)`` + the head ``config.adapt.head``."""
  return build.task_network(config, arch, head_name=config.adapt.head, frozen_bn=frozen_bn)


def initial_variables(config, arch, choices, search_dir, shapes, mesh, log):
  """Initial (numpy) variables of the derived network, of ``shapes``, by ``config.adapt.init``.

  Whatever is not remapped (the whole network with ``'random'``, the head, or the head arrays
  the searched one lacks) is drawn by :func:`fna_jax.models.init.random_like` (kaiming); with
  ``'random'`` the backbone's conv kernels are drawn by ``config.adapt.random_init`` (the
  release's ``'normal'``, std 0.01, or ``'kaiming'``).
  """
  init = config.adapt.init
  random_backbone = init == 'random'
  target = random_like(shapes, config.seed + 1,
                       backbone_conv_init=config.adapt.random_init if random_backbone else None)
  if init == 'random':
    log(f'adapt: random initialisation (no remapping; conv kernels {config.adapt.random_init})')
    return target
  if init == 'supernet':
    sup_vars, meta = load_variables(os.path.join(search_dir, 'supernet'))
    space = spaces.SearchSpace.from_dict(meta['space'])
    derived, variables, fresh = adapt.from_supernet(sup_vars, space, choices, target)
    if adapt_arch(derived, arch.output_stride) != arch:
      raise ValueError(f'{search_dir}: arch.json does not match the choices in summary.json')
    log(f'adapt: remapped from the searched supernet ({search_dir}/supernet)'
        + (f'; {len(fresh)} head arrays initialised fresh' if fresh else ''))
    return variables
  if init == 'seed':
    seed_arch, seed_vars = build.seed(config, mesh, log)
    log(f'adapt: remapped from the seed network ({config.search.remap_strategy})')
    return jax.tree.map(np.asarray, adapt.from_seed(seed_vars, seed_arch, arch, target,
                                                    config.search.remap_strategy))
  raise ValueError(f'adapt.init must be one of {adapt.INITS}, got {init!r}')


@dataclasses.dataclass
class AdaptResult:
  arch: arch_lib.Arch
  variables: dict
  cost: cost_lib.Cost
  workdir: str


def run_adapt(config, workdir: str, search_dir: str, *, log=print,
              stop_after: int | None = None) -> AdaptResult | None:
  """Runs (or resumes) the parameter adaptation of ``config`` in ``workdir``.

  ``stop_after``: stop with a checkpoint after this many steps of this invocation (tests).
  Returns ``None`` when stopped early (by ``stop_after`` or SIGTERM/SIGINT).
  """
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  build.setup_runtime(config)
  mesh = build.mesh()
  task = build.task(config)
  ac = config.adapt
  if ac.batch_size % mesh.size:
    raise ValueError(f'adapt.batch_size={ac.batch_size} must be a multiple of the {mesh.size} '
                     'devices')
  local_batch = ac.batch_size // jax.process_count()
  arch, choices = read_search(search_dir)
  arch = adapt_arch(arch, ac.output_stride)
  model = build_network(arch, config, frozen_bn=ac.frozen_bn)
  h, w = task.input_size('adapt')
  shapes = variable_shapes(model, (1, h, w, 3), train=False)
  ckpts = RunCheckpoints(workdir)
  resuming = ckpts.latest_step() is not None

  train_src = build.dataset(config, 'train')
  n_train = build.train_size(config, train_src)
  # Batches put on the devices one step ahead; data.get_state() is the consumed batches' state.
  data = mesh_lib.prefetch_to_mesh(
      task.train_data(train_src, np.arange(n_train), batch_size=local_batch,
                      seed=config.seed + 11, stage='adapt'), mesh)
  total = ac.steps
  tx, lr_fn = adapt.finetune_optimizer_from_config(ac)
  step_fn = steps_lib.jit_train_step(model, tx, task.loss, mesh,
                                     precision.compute_dtype(config.get('compute_dtype')))
  rep = mesh_lib.replicated(mesh)

  if resuming:
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  else:
    variables = initial_variables(config, arch, choices, search_dir, shapes, mesh, log)
    if ac.bn_recalib_steps > 0:
      t0 = time.perf_counter()
      fwd = adapt.jit_bn_forward(build_network(arch, config), mesh)
      batches = (next(data) for _ in range(ac.bn_recalib_steps))
      variables = jax.device_get(adapt.recalibrate_bn(fwd, jax.device_put(variables, rep),
                                                      batches))
      log(f'adapt: BatchNorm statistics recomputed on {ac.bn_recalib_steps} batches '
          f'({time.perf_counter() - t0:.0f}s)')
  state = steps_lib.init_state(tx, variables, jax.random.key(config.seed + 2))
  state = mesh_lib.put_replicated(state, mesh)  # also across processes (PRNG key leaf)
  start = 0
  if resuming:
    start, state, meta = ckpts.restore_latest(state)
    data.set_state(meta['data'])
    log(f'resumed from {ckpts.directory} at step {start}')
  log(f'adapt: {arch.name or "derived network"} at output stride {arch.output_stride}, '
      f'head {ac.head}, {total} steps of batch '
      f'{ac.batch_size} ({h}x{w} crops) on {mesh.size} device(s)')

  pending = loop.PendingMetrics()  # no host sync per step: losses checked at logs/checkpoints

  def checkpoint(step, wait=False):
    pending.check(ckpts)
    ckpts.save(step, state, {'data': data.get_state()}, wait=wait)

  progress = loop.Progress(total, config.log_every, ac.batch_size, prefix='adapt ')
  with loop.Preemption() as preempt:
    for step in range(start + 1, total + 1):
      state, metrics = step_fn(state, next(data))
      progress.tick()
      pending.add(step, metrics)
      if progress.due(step):
        host = pending.check(ckpts)
        progress.log(step, {'loss': host['loss'], 'lr': float(lr_fn(step - 1))})
      if loop.checkpoint_or_stop(step, start=start, total=total, every=config.checkpoint_every,
                                 stop_after=stop_after, preempt=preempt, save=checkpoint):
        ckpts.close()
        log(f'stopped at step {step}; rerun the same command to resume')
        return None
  pending.check(ckpts)
  ckpts.close()

  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  save_variables(os.path.join(workdir, 'model'), variables,
                 build.network_meta(config, arch, ac.head))
  cost_size = task.cost_input_size()
  cost = cost_lib.count(build_network(arch, config), None, (1, *cost_size, 3))
  with open(os.path.join(workdir, 'arch.json'), 'w') as f:
    f.write(arch.to_json())
  summary = {'init': ac.init, 'head': ac.head, 'steps': total, 'params': int(cost.params),
             'madds': int(cost.madds), 'cost_input_size': list(cost_size),
             'search_dir': os.path.abspath(search_dir),
             'wall_time_s': round(time.perf_counter() - t_start, 1)}
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  log(f'adapted network at {cost_size}: {cost_lib.format_count(*cost)}; '
      f'weights in {workdir}/model')
  return AdaptResult(arch, variables, cost, workdir)

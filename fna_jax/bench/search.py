"""The search steps of FNA++ (paper Sec. 3.2.2, Eq. 7-9), timed and measured on a config's search
network: by default the segmentation one (Sec. 4.1.1: the MobileNetV2 seg space, max layers
{4, 4, 6, 6, 4, 1}, DeepLabv3, 321x321 crops, 19 classes), or any task's (e.g. RetinaNet's,
``configs/det_coco_retinanet.py``); :func:`configure` makes it smaller or changes the batch.

Everything is built through :mod:`fna_jax.build` from a config (``configs/seg_cityscapes.py``):
the supernet's weight step (one sampled path) and arch step (relaxed, all paths), each exactly as
:func:`fna_jax.train.search.jit_steps` compiles them, and the one supervised train step
(:func:`fna_jax.runtime.steps.jit_train_step`) of two standalone task networks on the same batch
with the weight step's optimiser: the derived architecture of a sampled path P and MobileNetV2
(the seed as the task network uses it).  Subjects (:data:`NAMES`):

- ``weight step (random paths)``: a new path every step (uniform, then from softmax(alpha));
- ``weight step (path P)``: the same compiled function with alphas peaked on P, so every step
  trains P: its time over ``standalone arch(P)`` is the supernet's overhead (goal: see below);
- ``arch step (all paths)``: the relaxed mixed op computed naively (``search.mixed_op='naive'``:
  every candidate block on its own);
- ``arch step (all paths, fused)``: the same step with ``search.mixed_op='fused'`` (the MBConv
  candidates of each layer that share a kernel size as one wide block,
  :class:`fna_jax.models.supernet.MixedLayer`; the same variables and numbers), or with
  ``'fused_padded'`` (all of them as one block, kernels zero-padded) when the config asks for
  that form: its time over the naive one is the fusion's gain;
- ``standalone arch(P)``; ``standalone MobileNetV2``.

Figures:

* compile: the wall time of a subject's first call (tracing, XLA compilation and one step).
* compilations: the first ``compile_steps`` calls of each step (new paths each call; the first
  half uniform, the second from softmax(alpha)) are untimed; the XLA executables they make JAX
  build are counted (:mod:`fna_jax.bench.compiles`; target: 1 per step); the jitted function's
  cache size is shown too.
* img/s, cpu ms/step: :mod:`fna_jax.bench.measure`, all subjects interleaved.
* memory, two figures (:mod:`fna_jax.bench.memory`): XLA's buffer assignment of each step's
  executable, and (``rss=True``) the peak RSS of a fresh process that runs only that step
  (executable loaded from the persistent compilation cache, so compilation is not in it), sampled
  during its steps after the first call; it covers everything the process holds: Python and JAX,
  the loaded executable, variables, optimiser state and the step's buffers.  With ``rss=True``
  the compilation and timing run in a fresh process too, and the calling process only
  orchestrates, so that no measurement shares a process with another's memory.
* goals (:func:`goal_lines`): the search steps' performance goals, each with this run's figure
  and ``met`` or ``MISSED``; they were set for the default configuration (batch 8, 321x321).

Reference figures of the authors' PyTorch supernet (:data:`PYTORCH_REFERENCE`) are printed after
this run's, labelled: they were measured earlier, on another network, and are not compared.

The fresh processes run this module: ``python -m fna_jax.bench.search ROLE JSON``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fna_jax import arch as arch_lib
from fna_jax import build
from fna_jax.bench import compiles, measure, memory
from fna_jax.models import supernet as sn
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps
from fna_jax.train import search, search_loop

NAMES = {'weight': 'weight step (random paths)', 'weight_fixed': 'weight step (path P)',
         'standalone': 'standalone arch(P)', 'mobilenet_v2': 'standalone MobileNetV2',
         'arch': 'arch step (all paths)', 'arch_fused': 'arch step (all paths, fused)'}
KINDS = tuple(NAMES)
RSS_KINDS = ('weight', 'arch', 'arch_fused', 'standalone', 'mobilenet_v2')
CHILD_MODULE = 'fna_jax.bench.search'   # this module, run by the fresh processes

# NOT measured by this benchmark: the authors' PyTorch supernet (their public release), timed
# earlier on the 2-core machine fna_jax was developed on, at output stride 32 and without a head
# (the network timed here has output stride 16 and a DeepLabv3 head), batch 8, 321x321.
# img/s and peak memory.  Printed for orientation only, never as a ratio.
PYTORCH_REFERENCE = {'weight_img_s': 5.8, 'arch_img_s': 1.8, 'standalone_mbv2_img_s': 6.6,
                     'weight_peak_gb': 2.9, 'arch_peak_gb': 7.9}
PYTORCH_REFERENCE_LABEL = (
    "reference, NOT measured in this run: the authors' PyTorch supernet, timed earlier on the "
    '2-core development machine at output stride 32 without a head, batch 8, 321x321 (a '
    'different network from the one above, so no ratio):')


@dataclasses.dataclass(frozen=True)
class Options:
  """How the steps are run: ``compile_steps`` untimed (counted) calls each, the RNG seed of path
  P, and the timing plan (:class:`fna_jax.bench.measure.TimingPlan`'s fields)."""
  compile_steps: int = 20
  path_seed: int = 0
  warmup: int = 2
  rounds: int = 3
  steps: int = 5

  @property
  def plan(self) -> measure.TimingPlan:
    return measure.TimingPlan(self.warmup, self.rounds, self.steps)


def configure(config, *, batch: int, size: int, num_classes: int, head_channels: int,
              max_layers=()) -> ml_collections.ConfigDict:
  """A copy of ``config`` (e.g. ``configs/seg_cityscapes.get_config()``) searching at ``batch``
  images of ``size`` x ``size`` with ``num_classes`` classes and ``head_channels`` head
  channels; ``max_layers``: at most this many layers per stage, one value for every stage or one
  per stage (empty: the space's full depth)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.search.batch_size = batch
  # The training image size under the task's own key: segmentation crops, pose crops, the
  # detection canvas (and its rescale, so that images fill it).
  for key in ('crop_size', 'input_size', 'canvas', 'scale'):
    if key in c.data:
      c.data[key] = size if key == 'crop_size' else (size, size)
  if 'num_classes' in c.data:
    c.data.num_classes = num_classes
  c.head.channels = head_channels
  ml = tuple(int(v) for v in max_layers)
  if len(ml) == 1:
    ml *= len(build.space(c).stages)
  c.space.max_layers = ml
  return c


def random_batch(shapes: dict[str, jax.ShapeDtypeStruct], num_classes: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """Host arrays of ``shapes``: floats standard normal, integers uniform in ``[0, num_classes)``;
  uint8 ``'image'`` (a training batch, normalised in the steps) uniform in ``[0, 255]``;
  detection ``'input_hw'`` ``(B, 2)`` image extents before padding, uniform in
  ``[size // 2, size]`` per axis, and ``'boxes'`` ``(B, M, 4)`` valid boxes (x1 < x2, y1 < y2)
  inside each image's extent."""
  rng = np.random.default_rng(seed)

  def draw(k, s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return rng.standard_normal(s.shape).astype(s.dtype)
    if k == 'image' and s.dtype == jnp.uint8:
      return rng.integers(0, 256, s.shape).astype(np.uint8)
    return rng.integers(0, num_classes, s.shape).astype(s.dtype)

  out = {k: draw(k, s) for k, s in shapes.items()}
  if 'image' in shapes:
    b, h, w = shapes['image'].shape[:3]
    extent = np.broadcast_to(np.asarray([h, w]), (b, 2))
    if 'input_hw' in shapes:
      extent = rng.integers(extent // 2, extent + 1)
      out['input_hw'] = extent.astype(shapes['input_hw'].dtype)
  if 'boxes' in shapes and 'image' in shapes:
    lo = rng.uniform(0, 0.7, shapes['boxes'].shape[:-1] + (2,))
    hi = lo + rng.uniform(0.05, 0.3, lo.shape)
    size = np.concatenate([extent[:, ::-1], extent[:, ::-1]], -1)[:, None, :] - 1  # (B, 1, 4)
    out['boxes'] = (np.concatenate([lo, hi], -1) * size).astype(shapes['boxes'].dtype)
  return out


@dataclasses.dataclass
class Setup:
  """What every subject shares (built by :func:`setup`)."""
  config: Any
  space: Any
  mesh: Any
  batch: Any           # the task's training batch, sharded on 'data'
  fns: search.SearchFns
  w_step: Any          # jitted weight step (state, batch, uniform) -> (state, metrics)
  a_step: Any          # jitted arch step (state, batch) -> (state, metrics), naive mixed op
  a_step_fused: Any    # the same, search.mixed_op=fused_form(config)
  variables: Any       # supernet + head variables (numpy)
  path: np.ndarray     # the sampled path P, int32 (L,)
  path_arch: arch_lib.Arch


def _with_mixed_op(config, mixed_op: str):
  c = ml_collections.ConfigDict(config.to_dict())
  c.search.mixed_op = mixed_op
  return c


def fused_form(config) -> str:
  """The fused mixed op the benchmark times: ``config.search.mixed_op`` when it names a fused
  form, else ``'fused'``."""
  return config.search.mixed_op if config.search.mixed_op != 'naive' else 'fused'


def setup(config, path_seed: int = 0) -> Setup:
  """The search network, its cost table and jitted steps (the arch step with the naive and a
  fused mixed op, :func:`fused_form`), a random batch and a path P."""
  fused = _with_mixed_op(config, fused_form(config))
  config = _with_mixed_op(config, 'naive')
  task = build.task(config)
  space = build.space(config)
  mesh = build.mesh()
  model = build.search_network(config, space)
  h, w = task.input_size('search')
  variables = random_like(variable_shapes(model, (1, h, w, 3), train=False), config.seed)
  table = search.cost_table(model, variables, space, (1, *task.cost_input_size(), 3))
  fns, _ = search_loop.make_search_fns(config, model, space, table,
                                       search.Schedule(10_000, 0, 0))
  w_step, a_step = search.jit_steps(fns, mesh)
  fns_fused, _ = search_loop.make_search_fns(fused, build.search_network(fused, space), space,
                                             table, search.Schedule(10_000, 0, 0))
  _, a_step_fused = search.jit_steps(fns_fused, mesh)
  host = random_batch(task.batch_shapes(config.search.batch_size, 'search'),
                      config.data.num_classes)
  path = np.asarray(sn.sample_path(jax.random.key(path_seed),
                                   sn.init_alphas(jax.random.key(0), space),
                                   sn.candidate_mask(space), True))
  return Setup(config, space, mesh, mesh_lib.put_batch(host, mesh), fns, w_step, a_step,
               a_step_fused, variables, path, space.derive([int(p) for p in path]))


def seed_arch_in_task(space) -> arch_lib.Arch:
  """MobileNetV2 as the task network uses the seed: the space's output stride and last conv."""
  arch = arch_lib.mobilenet_v2()
  target = space.skeleton().output_stride
  if arch.output_stride > target:
    arch = arch.with_output_stride(target)
  return arch.replace(last_channels=space.last_channels)


@dataclasses.dataclass
class SearchSubject:
  """A subject: its :class:`~fna_jax.bench.measure.Subject`, the jitted function and its
  arguments."""
  kind: str
  subject: measure.Subject
  jitted: Any
  args: Callable[[], tuple]       # current arguments of the jitted function (for lowering)
  compiles: int = 0               # executables built over the first ``n_calls`` calls
  first_call_s: float = 0.0       # wall time of the first call (trace + compile + one step)
  xla_compile_s: float = 0.0      # XLA compile (or cache load) time within the first call
  from_cache: bool = False        # the first call loaded the executable from the persistent cache
  distinct_paths: int | None = None
  cache_size: int | None = None   # jitted function's in-memory cache entries afterwards


def make_subject(sb: Setup, kind: str, n_calls: int) -> SearchSubject:
  """Builds subject ``kind`` (one of :data:`KINDS`) and makes its first ``n_calls`` calls (they
  compile it and are the untimed warm-up), counting the executables they build."""
  rep = mesh_lib.replicated(sb.mesh)
  mask = sn.candidate_mask(sb.space)
  batch, n_img = sb.batch, sb.batch['image'].shape[0]
  put = lambda tree: mesh_lib.put_replicated(tree, sb.mesh)  # fresh buffers for every subject
  paths: list = []
  after = lambda: None
  if kind in ('weight', 'weight_fixed'):
    if kind == 'weight':
      # Fresh alphas; the first half of the calls sample uniformly (warm-up), the second half
      # from softmax(alpha): a new path every call.
      alphas = sn.init_alphas(jax.random.key(0), sb.space)
      flags = [jax.device_put(np.bool_(i < n_calls // 2), rep) for i in range(max(n_calls, 1))]
    else:
      # alphas peaked on P: every sampled path is P (checked below).
      onehot = np.zeros(mask.shape, np.float32)
      onehot[np.arange(len(sb.path)), sb.path] = 30.0
      alphas = jnp.asarray(np.where(mask, onehot, 0.0))
      flags = [jax.device_put(np.bool_(False), rep)]
    box = [put(search.init_state(sb.fns, sb.variables, alphas, jax.random.key(1))), None]
    calls = [0]

    def one_step():
      u = flags[min(calls[0], len(flags) - 1)]  # after the counted calls: the last flag
      calls[0] += 1
      box[0], box[1] = sb.w_step(box[0], batch, u)
      return box[0]

    jitted, args = sb.w_step, lambda: (box[0], batch, flags[-1])
    after = lambda: paths.append(np.asarray(box[1]['path']))
  elif kind in ('arch', 'arch_fused'):
    alphas = sn.init_alphas(jax.random.key(0), sb.space)
    box = [put(search.init_state(sb.fns, sb.variables, alphas, jax.random.key(1))), None]
    a_step = sb.a_step if kind == 'arch' else sb.a_step_fused

    def one_step():
      box[0], box[1] = a_step(box[0], batch)
      return box[0]

    jitted, args = a_step, lambda: (box[0], batch)
  elif kind in ('standalone', 'mobilenet_v2'):
    arch = sb.path_arch if kind == 'standalone' else seed_arch_in_task(sb.space)
    net = build.task_network(sb.config, arch)
    size = tuple(batch['image'].shape[1:3])
    variables = random_like(variable_shapes(net, (1, *size, 3), train=False), sb.config.seed)
    box = [put(steps.init_state(sb.fns.opt_w, variables, jax.random.key(2))), None]
    jitted = steps.jit_train_step(net, sb.fns.opt_w, sb.fns.loss_fn, sb.mesh)

    def one_step():
      box[0], box[1] = jitted(box[0], batch)
      return box[0]

    args = lambda: (box[0], batch)
  else:
    raise ValueError(f'unknown search subject {kind!r}; known: {KINDS}')

  events = compiles.CompileEvents.get()
  ss = SearchSubject(kind, measure.Subject(NAMES[kind], one_step, n_img), jitted, args)
  for i in range(n_calls):
    with events.window() as win:
      t0 = time.perf_counter()
      jax.block_until_ready(one_step())
      dt = time.perf_counter() - t0
    after()
    ss.compiles += win.compiles
    if i == 0:
      ss.first_call_s, ss.xla_compile_s, ss.from_cache = dt, win.compile_s, win.from_cache
  ss.subject.compile_s = ss.first_call_s
  if paths:
    ss.distinct_paths = len({p.tobytes() for p in paths})
    if kind == 'weight_fixed' and any((p != sb.path).any() for p in paths):
      raise AssertionError('weight step with alphas peaked on P sampled another path')
  cache_size = getattr(jitted, '_cache_size', None)
  ss.cache_size = int(cache_size()) if callable(cache_size) else None
  if box[1] is not None:
    loss = float(box[1].get('loss', box[1].get('arch_loss')))
    if not np.isfinite(loss):
      raise FloatingPointError(f'{NAMES[kind]}: loss is {loss} after {n_calls} steps')
  return ss


# ----------------------------------------------------------------------------- measurements
def time_all(config, opts: Options) -> dict:
  """Compiles, counts and times every subject in this process; prints the figures.

  Returns ``{'img_s': {kind: img/s}, 'median_s': {kind: s}, 'min_s': {kind: fastest step, s},
  'first_call_s': {kind: s}, 'xla_peak_bytes': {kind: bytes}, 'xla_temp_bytes': {kind: bytes}}``.
  """
  t_setup = time.perf_counter()
  sb = setup(config, opts.path_seed)
  sp, n, plan = sb.space, opts.compile_steps, opts.plan
  depth = [len(st.candidates) for st in sp.stages]
  h, w = sb.batch['image'].shape[1:3]
  print(f'== search: {config.task} space {sp.name} max layers {depth} ({sp.num_searched} '
        f'searched layers, {sp.max_candidates} candidates; search.remat={config.search.remat}, '
        f'fused mixed op {fused_form(config)!r}), '
        f'{config.head.name} head {config.head.channels} ch, '
        f'{config.data.num_classes} classes, batch {sb.batch["image"].shape[0]}, {h}x{w}, '
        f'conv impl {build.conv(config, "search").keywords["impl"]}, '
        f'backend {jax.default_backend()} x{sb.mesh.size}, {os.cpu_count()} cores, '
        f'{measure.load_line()}', flush=True)
  print(f'   {measure.memory_line()}', flush=True)
  print(f'   path P (standalone arch): {search_loop.arch_string(sp, sb.path)}', flush=True)
  print(f'   set-up (variables, cost table) {time.perf_counter() - t_setup:.1f} s; compiling and '
        f'running each step {n} times (untimed warm-up; compilations counted) ...', flush=True)
  subjects = []
  for kind in KINDS:
    ss = make_subject(sb, kind, n)
    subjects.append(ss)
    print(f'   {ss.subject.name:<26s} first call {ss.first_call_s:6.1f} s (XLA compile '
          f'{ss.xla_compile_s:.1f} s), {n} calls: {ss.compiles} compilation(s)'
          + (f', {ss.distinct_paths} distinct paths' if ss.distinct_paths is not None else '')
          + (f', jit cache entries {ss.cache_size}' if ss.cache_size is not None else ''),
          flush=True)
  print(measure.timing_line(plan), flush=True)
  stats = measure.time_interleaved([s.subject for s in subjects], plan.rounds, plan.steps)
  by_kind = {s.kind: s for s in subjects}
  med = {s.kind: stats[s.subject.name].median for s in subjects}
  fastest = {s.kind: stats[s.subject.name].min for s in subjects}
  rate = {s.kind: stats[s.subject.name].per_second(s.subject.items_per_step) for s in subjects}
  for s in subjects:
    measure.report(s.subject, stats[s.subject.name])

  print('ratios (median step times, same run):', flush=True)
  print(f'   weight step (path P) / standalone arch(P) train step: '
        f'{med["weight_fixed"] / med["standalone"]:.2f} (fastest steps: '
        f'{fastest["weight_fixed"] / fastest["standalone"]:.2f})', flush=True)
  print(f'   weight step (random paths) / standalone arch(P):      '
        f'{med["weight"] / med["standalone"]:.2f}', flush=True)
  print(f'   arch step / weight step (random paths):               '
        f'{med["arch"] / med["weight"]:.2f}', flush=True)
  print(f'   arch step fused / naive (img/s):                      '
        f'{rate["arch_fused"] / rate["arch"]:.2f}', flush=True)
  ok = all(by_kind[k].compiles == 1 for k in ('weight', 'arch', 'arch_fused'))
  print(f'compilations over {n} steps (changing paths; jax.monitoring backend-compile events): '
        f'weight step {by_kind["weight"].compiles} '
        f'(+{by_kind["weight_fixed"].compiles} for new alphas), '
        f'arch step {by_kind["arch"].compiles}, fused {by_kind["arch_fused"].compiles} '
        f'(target 1 each: {"met" if ok else "MISSED"})',
        flush=True)

  print("memory (XLA's buffer assignment of each step's executable: arguments + outputs - "
        'aliased (donated) + temporaries):', flush=True)
  peaks, temps = {}, {}
  for kind in RSS_KINDS:
    ss = by_kind[kind]
    m, how = memory.xla_buffers(ss.jitted, *ss.args())
    if m is None:
      print(f'   {ss.subject.name:<26s} {how}', flush=True)
      continue
    peaks[kind], temps[kind] = m['peak'], m['temp']
    gb = memory.gb
    print(f'   {ss.subject.name:<26s} {gb(m["peak"])} (arguments {gb(m["argument"])}, '
          f'temporaries {gb(m["temp"])}, outputs {gb(m["output"])}, aliased '
          f'{gb(m["alias"])}); {how}', flush=True)
  return {'img_s': rate, 'median_s': med, 'min_s': fastest, 'xla_peak_bytes': peaks,
          'xla_temp_bytes': temps, 'first_call_s': {s.kind: s.first_call_s for s in subjects}}


def measure_alone(config, opts: Options, kind: str) -> dict:
  """Runs subject ``kind`` alone in this process; its memory figures (bytes).

  ``pre_steps_rss`` (after set-up: variables, state, batch), ``after_first_call_rss`` (the first
  call obtains the executable, from the persistent cache when the timing process wrote it),
  ``steps_peak_rss`` (sampled peak RSS during the ``warmup`` + ``steps`` steps after it) and
  ``vm_hwm`` (the process's high-water mark, which includes tracing and loading or compiling).
  """
  sb = setup(config, opts.path_seed)
  pre = memory.rss_bytes()
  ss = make_subject(sb, kind, 1)
  first = memory.rss_bytes()
  with memory.MemorySampler() as mem:
    measure.time_steps(ss.subject.step, opts.warmup, opts.steps)
  return {'kind': kind, 'pre_steps_rss': pre, 'after_first_call_rss': first,
          'steps_peak_rss': mem.peak_bytes, 'vm_hwm': memory.vm_hwm_bytes(),
          'method': mem.method, 'compiles': ss.compiles, 'xla_compile_s': ss.xla_compile_s,
          'from_cache': ss.from_cache}


def _in_child(role: str, config, opts: Options, cache_dir: str, echo: bool):
  payload = json.dumps({'config': config.to_dict(), 'options': dataclasses.asdict(opts),
                        'cache_dir': cache_dir})
  return memory.run_child(CHILD_MODULE, role, payload, echo=echo)


def _print_rss(kind: str, r: dict) -> None:
  gb = memory.gb
  hwm = gb(r['vm_hwm']) if r['vm_hwm'] else 'n/a'
  how = 'loaded from the persistent cache' if r['from_cache'] else 'compiled (cache miss)'
  print(f'   {NAMES[kind]:<26s} peak RSS during the steps {gb(r["steps_peak_rss"])} '
        f'(after set-up {gb(r["pre_steps_rss"])}, after the first call '
        f'{gb(r["after_first_call_rss"])}; process high-water mark {hwm}; executable {how} '
        f'in {r["xla_compile_s"]:.1f} s)', flush=True)


def goal_lines(summary: dict, rss: dict) -> list[str]:
  """The search steps' performance goals, each as ``figure (goal: met|MISSED)`` from this run.

  Goals (all ratios of this run): the weight step on path P no slower than the standalone
  network of P (median step times; the fastest steps' ratio, steadier on a loaded machine, is
  printed beside it; the authors' PyTorch supernet trains a path at its standalone network's speed)
  and its XLA temporaries and peak RSS at most 1.3x that network's; the fused relaxed op at
  least 1.5x the naive sum's speed; each full-space search step's first call (trace, compile,
  one step) within 60 s.  A memory figure this run lacks (no RSS processes, or no XLA
  buffer analysis of a step) is skipped.
  """
  def verdict(ok):
    return 'met' if ok else 'MISSED'

  med, rate, temps = summary['median_s'], summary['img_s'], summary['xla_temp_bytes']
  lines = []
  r = med['weight_fixed'] / med['standalone']
  r_min = summary['min_s']['weight_fixed'] / summary['min_s']['standalone']
  lines.append(f'weight step (path P) time / standalone arch(P)\'s: {r:.2f} (fastest steps '
               f'{r_min:.2f}; goal <= 1.0 on the medians: {verdict(r <= 1.0)})')
  if 'weight' in temps and temps.get('standalone'):
    r = temps['weight'] / temps['standalone']
    lines.append(f'weight step XLA temporaries / standalone arch(P)\'s: {r:.2f} (goal <= 1.3: '
                 f'{verdict(r <= 1.3)})')
  if 'weight' in rss and 'standalone' in rss:
    r = rss['weight']['steps_peak_rss'] / rss['standalone']['steps_peak_rss']
    lines.append(f'weight step peak RSS / standalone arch(P)\'s: {r:.2f} (goal <= 1.3: '
                 f'{verdict(r <= 1.3)})')
  r = rate['arch_fused'] / rate['arch']
  lines.append(f'fused relaxed op speed / naive sum\'s: {r:.2f} (goal >= 1.5: '
               f'{verdict(r >= 1.5)})')
  for kind in ('weight', 'arch'):
    t = summary['first_call_s'][kind]
    lines.append(f'{NAMES[kind]} first call: {t:.0f} s (goal <= 60 s: {verdict(t <= 60)})')
  return lines


def print_goals(summary: dict, rss: dict) -> None:
  print('goals (set for the default paper configuration, batch 8, 321x321; figures of this run):',
        flush=True)
  for line in goal_lines(summary, rss):
    print(f'   {line}', flush=True)


def print_summary(summary: dict, rss: dict) -> None:
  """This run's headline figures, then the labelled PyTorch reference (no ratio)."""
  rate, peaks = summary['img_s'], summary['xla_peak_bytes']

  def mem(kind):
    parts = []
    if kind in rss:
      parts.append(f'peak RSS {memory.gb(rss[kind]["steps_peak_rss"])}')
    if kind in peaks:
      parts.append(f'XLA buffers {memory.gb(peaks[kind])}')
    return ', '.join(parts) or 'n/a'

  print('this run:', flush=True)
  print(f'   single-path weight step: {rate["weight"]:6.2f} img/s; memory {mem("weight")}',
        flush=True)
  print(f'   all-path arch step:      {rate["arch"]:6.2f} img/s; memory {mem("arch")}',
        flush=True)
  print(f'   ... with the fused op:   {rate["arch_fused"]:6.2f} img/s; memory '
        f'{mem("arch_fused")}', flush=True)
  print(f'   standalone MobileNetV2:  {rate["mobilenet_v2"]:6.2f} img/s; '
        f'memory {mem("mobilenet_v2")}', flush=True)
  print_goals(summary, rss)
  a = PYTORCH_REFERENCE
  print(PYTORCH_REFERENCE_LABEL, flush=True)
  print(f'   single-path weight step: {a["weight_img_s"]} img/s; peak memory '
        f'{a["weight_peak_gb"]} GB', flush=True)
  print(f'   all-path arch step:      {a["arch_img_s"]} img/s; peak memory {a["arch_peak_gb"]} GB',
        flush=True)
  print(f'   standalone MobileNetV2:  {a["standalone_mbv2_img_s"]} img/s', flush=True)


def run(config, opts: Options, *, rss: bool = True, cache_dir: str = '') -> None:
  """Times the search steps of ``config`` (see :func:`configure`) and prints every figure.

  With ``rss`` this process only orchestrates: one fresh process compiles and times every step
  (filling the persistent compilation cache ``cache_dir``; default: a temporary one, removed at
  the end), then one fresh process per step kind measures its peak RSS.  Without, everything runs
  here and there are no RSS figures.
  """
  directory = cache_dir or tempfile.mkdtemp(prefix='fna_bench_xla_')
  compiles.use_persistent_cache(directory)
  try:
    if rss:
      summary, why = _in_child('timing', config, opts, directory, echo=True)
      if summary is None:
        print(f'search timing process failed ({why})', flush=True)
        return
      print('peak RSS, each step kind alone in a fresh process (executable from the persistent '
            f'cache; RSS sampled every 5 ms over {opts.warmup} + {opts.steps} steps after the '
            'first call) ...', flush=True)
      by_kind = {}
      for kind in RSS_KINDS:
        r, why = _in_child(kind, config, opts, directory, echo=False)
        if r is None:
          print(f'   {NAMES[kind]:<26s} subprocess failed ({why})', flush=True)
          continue
        by_kind[kind] = r
        _print_rss(kind, r)
    else:
      summary, by_kind = time_all(config, opts), {}
    print_summary(summary, by_kind)
    print(f'== search done, {measure.load_line()}', flush=True)
  finally:
    if not cache_dir:
      shutil.rmtree(directory, ignore_errors=True)


def _child_main(role: str, payload: str) -> None:
  p = json.loads(payload)
  config, opts = ml_collections.ConfigDict(p['config']), Options(**p['options'])
  compiles.use_persistent_cache(p['cache_dir'])
  memory.print_result(time_all(config, opts) if role == 'timing' else
                      measure_alone(config, opts, role))


if __name__ == '__main__':
  _child_main(*sys.argv[1:])

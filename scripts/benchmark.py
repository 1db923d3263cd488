"""Throughput benchmarks of fna_jax on the local backend, all figures measured in one run.

Sections (``--bench``, comma-separated):

* ``seed`` (default; alias ``train``): the MobileNetV2 ImageNet classifier's full train step:
  forward, backward, SGD-with-momentum update (optax), BatchNorm in train mode (``batch_stats``
  mutable), softmax cross-entropy on random labels; one ``jax.jit`` with the train state donated.
  Reported per conv implementation (``--impls``, see :mod:`fna_jax.ops`) and, with ``--torch``,
  for torchvision's ``mobilenet_v2`` on the same batch, with the ratio fna_jax/torch measured in
  the same run.

* ``search``: the FNA++ segmentation search steps (:mod:`fna_jax.train.search`) on the paper's
  configuration (MobileNetV2 seg space at full depth, DeepLabv3 head 256 channels, 19 classes,
  batch 8, 321x321; ``--max_layers``, ``--batch``, ``--size`` make it smaller): the supernet's
  weight step (one sampled path) and arch step (relaxed, all paths), each exactly as
  ``jit_steps`` compiles it, and the plain train step of two standalone networks (same batch, same
  SGD optimiser): the derived architecture of a sampled path P and MobileNetV2 (the seed as the
  task network uses it).  Subjects:

  - ``weight step (random paths)``: a new path every step (uniform, then from softmax(alpha));
  - ``weight step (path P)``: the same compiled function with alphas peaked on P, so every
    step trains P: its time over ``standalone arch(P)`` is the supernet's overhead (target
    <= 1.3);
  - ``arch step (all paths)``; ``standalone arch(P)``; ``standalone MobileNetV2``.

  Compilations: the first ``--compile_steps`` (20) calls of each step (new paths each call; the
  first half uniform, the second from softmax(alpha)) are untimed; the XLA executables they make
  JAX build are counted from ``jax.monitoring``'s backend-compile events (target: 1 per step;
  the jitted function's cache size is shown too).  Memory, two figures: XLA's buffer assignment of
  each step's executable (``compiled.memory_analysis()``: arguments + outputs - donated aliases +
  temporaries), and (``--search_rss``) the peak RSS of a fresh process that runs only that step
  (executable loaded from the persistent compilation cache, so compilation is not in it), sampled
  during its steps after the first call; it covers everything the process holds: Python and JAX,
  the loaded executable, variables, optimiser state and the step's buffers.  With
  ``--search_rss`` the compilation and timing run in a fresh process too, and the invoking process
  only orchestrates, so that no measurement shares a process with another's memory.  The
  authors' PyTorch figures on the same machine are printed alongside.

Adding a section: write ``def bench_NAME() -> None`` that builds :class:`Subject` s (a step
function carrying its own state, set up and warmed up inside a :class:`MemorySampler`), times them
with :func:`time_interleaved` (or :func:`time_steps` for one), prints :func:`report` lines, and
register it in ``BENCHES``.

Figures:

* compile: wall time of ``jit(...).lower(...).compile()`` (tracing and XLA compilation); in the
  search section, wall time of the first call (tracing, XLA compilation and one step).
* img/s: ``batch / median step time``.  After ``--warmup`` untimed steps per subject, the subjects
  are timed in ``--rounds`` rounds of ``--steps`` steps each, in turn (A B A B ...), so that a
  change of machine load hits all of them alike; the median is over all rounds' steps.  Each step
  is waited for (``block_until_ready``) before the next starts.
* peak RSS (seed section; the search section's is described above): the process's resident set
  size sampled every 5 ms (psutil) during a subject's set-up
  (initialisation, compilation, warm-up steps), minus the resident set size just before it; it
  covers parameters, optimizer state, activations, XLA's buffers and compiled code.  A later
  subject can reuse memory an earlier one freed, so its figure can read low: for exact figures run
  one subject per process (e.g. ``--impls=cpu`` without ``--torch``).  Without psutil the figure
  is the growth of ``getrusage(RUSAGE_SELF).ru_maxrss`` (the process's high-water mark), which
  reads 0 when an earlier subject already went higher.
* cpu ms/step: median CPU time (user + system, all threads) of this process per step.
* Allocator: by default the script re-executes itself with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
  (``--hugepage_malloc``; the header line shows the setting).  Both XLA:CPU and torch allocate their
  large buffers afresh each step, and the 4 KiB page faults on them cost as much as the compute
  here; training scripts on CPU should be started with the same setting.

The machine may be shared: compare ratios measured in the same run, and check ``uptime`` first.

Examples::

  python scripts/benchmark.py --bench=seed --torch --rounds=3 --steps=5
  python scripts/benchmark.py --bench=search                    # paper config, ~20+ min on 2 cores
  python scripts/benchmark.py --bench=search --size=65 --batch=2 --max_layers=1   # quick check
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import threading
import time
from typing import Any, Callable

from absl import app
from absl import flags

_BENCH = flags.DEFINE_list(
    'bench', ['seed'], 'Sections to run (comma-separated): seed (alias train), search, or all.')
_IMPLS = flags.DEFINE_list('impls', ['cpu', 'xla'], 'fna_jax conv implementations to time.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per step.')
_SIZE = flags.DEFINE_integer('size', 321, 'Image height and width.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per subject per round.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Rounds; each round times every subject in turn, so that all subjects see the '
    "same machine load (the machine is shared); figures are over all rounds' steps.")
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_TORCH = flags.DEFINE_bool('torch', False, "Also time torchvision's mobilenet_v2 train step.")
_HUGEPAGE_MALLOC = flags.DEFINE_bool(
    'hugepage_malloc', True,
    'Linux/glibc: re-run this script with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (malloc asks for '
    'transparent huge pages) unless already set.  XLA:CPU and torch allocate their large buffers '
    'afresh every step; with 4 KiB pages the page faults cost about as much as the compute (both '
    'frameworks ran ~1.5x faster with it here).  --nohugepage_malloc measures without.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0,
                                      'torch.set_num_threads; 0 means the number of cores.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classifier outputs.')
_LR = flags.DEFINE_float('lr', 0.01, 'SGD learning rate (momentum 0.9).')
_MAX_LAYERS = flags.DEFINE_list(
    'max_layers', [], 'search: at most this many layers per stage of the seg space, one value '
    'for every stage or one per stage (default: full depth, paper Tab. 1).')
_SEG_CLASSES = flags.DEFINE_integer('seg_classes', 19, 'search: segmentation classes.')
_HEAD_CHANNELS = flags.DEFINE_integer('head_channels', 256, 'search: DeepLabv3 head channels.')
_COMPILE_STEPS = flags.DEFINE_integer(
    'compile_steps', 20, 'search: untimed calls of each step before timing (new paths each call); '
    'the compilations they trigger are counted.')
_SEED_PATH = flags.DEFINE_integer('path_seed', 0, 'search: RNG seed of the sampled path P.')
_SEARCH_RSS = flags.DEFINE_bool(
    'search_rss', True, 'search: time the steps in a fresh process, then measure the peak RSS of '
    'each step kind alone in a fresh process (executables from the persistent compilation cache '
    'the timing process filled).  --nosearch_rss: everything in this process, no RSS figures.')
_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', '', 'search: persistent compilation cache directory (default: a '
    'temporary one, removed at the end).  Reusing one skips compilation in later runs.  (Not named '
    '--xla_*: JAX hashes --xla* command-line arguments into its cache keys.)')
_SEARCH_CHILD = flags.DEFINE_enum(
    'search_child', '',
    ['', 'timing', 'weight', 'weight_fixed', 'standalone', 'mobilenet_v2', 'arch'],
    'internal: timing = compile, count and time every search step; a subject kind = run it alone '
    'and report its peak RSS.')


# ----------------------------------------------------------------------------- shared helpers


@dataclasses.dataclass(frozen=True)
class TimingStats:
  """Seconds per step over the timed steps: wall clock, and CPU time of this process (all threads,
  user + system; helps to judge figures taken while other processes load the machine)."""
  times: tuple[float, ...]
  cpu_times: tuple[float, ...] = ()

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def cpu_median(self) -> float | None:
    return statistics.median(self.cpu_times) if self.cpu_times else None

  @property
  def min(self) -> float:
    return min(self.times)

  @property
  def max(self) -> float:
    return max(self.times)

  def per_second(self, items_per_step: int) -> float:
    """Items per second at the median step time."""
    return items_per_step / self.median


def time_steps(fn: Callable[[], Any], n_warmup: int, n_steps: int) -> TimingStats:
  """Runs ``fn()`` ``n_warmup`` times untimed, then ``n_steps`` times timed, one at a time.

  ``fn`` performs one step (carrying its own state) and returns the arrays to wait for; each call is
  waited for with ``jax.block_until_ready`` (a no-op for non-JAX values such as torch tensors,
  which are ready when returned).
  """
  import jax
  for _ in range(n_warmup):
    jax.block_until_ready(fn())
  times, cpu_times = [], []
  for _ in range(n_steps):
    c0, t0 = _process_cpu_s(), time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
    cpu_times.append(_process_cpu_s() - c0)
  return TimingStats(tuple(times), tuple(cpu_times))


def _process_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _maxrss_bytes() -> int:
  # Linux reports kilobytes, macOS bytes.
  scale = 1 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class MemorySampler:
  """Peak resident-set growth of this process while the ``with`` block runs (see module doc).

  ``peak_mib`` is the sampled peak RSS minus the RSS at entry (psutil), or the growth of the
  process's RSS high-water mark without psutil; ``method`` says which.  ``peak_bytes`` is the
  absolute peak (the sampled RSS, or the high-water mark).
  """

  def __init__(self, interval_s: float = 0.005):
    self.interval_s = interval_s
    self.peak_mib = 0.0
    self.peak_bytes = 0
    self.method = ''

  def __enter__(self) -> MemorySampler:
    try:
      import psutil
    except ImportError:
      self._proc = None
      self.method = 'ru_maxrss growth'
      self._start = _maxrss_bytes()
      return self
    self.method = 'sampled RSS above start'
    self._proc = psutil.Process()
    self._start = self._peak = self._proc.memory_info().rss
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def _sample(self) -> None:
    while not self._stop.wait(self.interval_s):
      self._peak = max(self._peak, self._proc.memory_info().rss)

  def __exit__(self, *exc) -> None:
    if self._proc is None:
      self.peak_bytes = _maxrss_bytes()
      self.peak_mib = (self.peak_bytes - self._start) / 2**20
      return
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, self._proc.memory_info().rss)
    self.peak_bytes = self._peak
    self.peak_mib = (self._peak - self._start) / 2**20


@dataclasses.dataclass
class Subject:
  """One thing to time: ``step()`` runs one step (carrying its state) and returns what to wait for.

  ``compile_s`` and ``mem`` describe its set-up (compilation and warm-up steps).
  """
  name: str
  step: Callable[[], Any]
  items_per_step: int
  compile_s: float | None = None
  mem: MemorySampler | None = None


def time_interleaved(subjects: list[Subject], rounds: int,
                     steps_per_round: int) -> dict[str, TimingStats]:
  """Times each subject ``steps_per_round`` steps per round, subjects in turn, ``rounds`` times.

  Interleaving makes ratios between subjects fair on a machine whose load changes over time.
  Returns each subject's step times over all rounds.
  """
  times = {s.name: [] for s in subjects}
  cpu_times = {s.name: [] for s in subjects}
  for _ in range(rounds):
    for s in subjects:
      stats = time_steps(s.step, 0, steps_per_round)
      times[s.name].extend(stats.times)
      cpu_times[s.name].extend(stats.cpu_times)
  return {s.name: TimingStats(tuple(times[s.name]), tuple(cpu_times[s.name])) for s in subjects}


def report(subject: Subject, stats: TimingStats) -> None:
  """Prints one line for one subject."""
  parts = [f'{subject.name:<26s}', f'{stats.per_second(subject.items_per_step):7.2f} img/s',
           f'step median {stats.median * 1e3:7.1f} ms (min {stats.min * 1e3:.1f}, '
           f'max {stats.max * 1e3:.1f}, n={len(stats.times)})']
  if stats.cpu_median is not None:
    parts.append(f'cpu {stats.cpu_median * 1e3:6.0f} ms/step')
  if subject.compile_s is not None:
    parts.append(f'compile {subject.compile_s:5.1f} s')
  if subject.mem is not None:
    parts.append(f'peak RSS +{subject.mem.peak_mib:.0f} MiB ({subject.mem.method})')
  print(' | '.join(parts), flush=True)


HUGEPAGE_TUNABLE = 'glibc.malloc.hugetlb=1'


def _maybe_reexec_with_hugepage_malloc() -> None:
  """Re-executes this process with ``GLIBC_TUNABLES`` asking for huge pages (see the flag)."""
  if not _HUGEPAGE_MALLOC.value or not sys.platform.startswith('linux'):
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return
  env = dict(os.environ, GLIBC_TUNABLES=':'.join(t for t in (tunables, HUGEPAGE_TUNABLE) if t))
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable] + sys.argv, env)


def _memory_line() -> str:
  """The allocator settings the figures were measured under."""
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      thp = f.read().strip()
  except OSError:
    thp = 'unknown'
  return f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, transparent_hugepage: {thp}"


def _load_line() -> str:
  try:
    return 'load average %.2f %.2f %.2f' % os.getloadavg()
  except OSError:
    return 'load average unavailable'


# ----------------------------------------------------------------------------- seed train step


def make_classifier_train_step(model, tx):
  """``step(state, x, labels, rng) -> (state, loss)`` for a linen classifier with BatchNorm.

  ``state = (params, batch_stats, opt_state)``; BN uses batch statistics and its running averages
  are updated; the loss is the mean softmax cross-entropy against integer ``labels`` ``(N,)``.
  """
  import jax
  import optax

  def step(state, x, labels, rng):
    params, batch_stats, opt_state = state

    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                    mutable=['batch_stats'], rngs={'dropout': rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, new_stats, opt_state), loss

  return step


def fna_jax_seed_subject(impl: str, batch: int, size: int, num_classes: int) -> Subject:
  """The fna_jax MobileNetV2 train step with conv ``impl``, compiled and warmed up."""
  import jax
  import numpy as np
  import optax
  from fna_jax import models

  model = models.build('mobilenet_v2', num_classes=num_classes, impl=impl)
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
  labels = jax.numpy.asarray(rng.integers(0, num_classes, (batch,)), dtype=jax.numpy.int32)
  tx = optax.sgd(_LR.value, momentum=0.9)

  with MemorySampler() as mem:
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    params = variables['params']
    state = (params, variables['batch_stats'], tx.init(params))
    dropout_key = jax.random.key(1)
    step = jax.jit(make_classifier_train_step(model, tx), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, labels, dropout_key).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def one_step():
      box[0], loss = compiled(box[0], x, labels, dropout_key)
      return loss

    time_steps(one_step, _WARMUP.value, 0)
    loss = float(one_step())  # one more warm-up step, checked for divergence
  if not np.isfinite(loss):
    raise FloatingPointError(f'fna_jax impl={impl}: loss is {loss} after the warm-up steps')
  return Subject(f'fna_jax impl={impl}', one_step, batch, compile_s, mem)


def torch_seed_subject(batch: int, size: int, num_classes: int) -> Subject | None:
  """torchvision's mobilenet_v2 train step (CPU), warmed up; None (with a message) without torch."""
  try:
    import torch
    import torchvision
  except ImportError as e:
    print(f'torch: skipped ({e})', flush=True)
    return None
  torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count() or 1)
  torch.manual_seed(0)
  with MemorySampler() as mem:
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=_LR.value, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, num_classes, (batch,))

    def one_step():
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x), labels)
      loss.backward()
      opt.step()
      return None

    time_steps(one_step, _WARMUP.value + 1, 0)
  return Subject(f'torch ({torch.get_num_threads()} threads)', one_step, batch, None, mem)


def bench_seed() -> None:
  """MobileNetV2 classifier train step: fna_jax per conv impl, optionally torchvision."""
  import jax
  batch, size, ncls = _BATCH.value, _SIZE.value, _NUM_CLASSES.value
  print(f'== seed: mobilenet_v2 train step, batch {batch}, {size}x{size}, {ncls} classes, '
        f'backend {jax.default_backend()}, {os.cpu_count()} cores, {_load_line()}', flush=True)
  print(f'   {_memory_line()}', flush=True)
  subjects = [fna_jax_seed_subject(impl, batch, size, ncls) for impl in _IMPLS.value]
  if _TORCH.value:
    torch_subject = torch_seed_subject(batch, size, ncls)
    if torch_subject is not None:
      subjects.append(torch_subject)
  print(f'timing {_ROUNDS.value} rounds x {_STEPS.value} steps per subject, interleaved; '
        f'{_load_line()}', flush=True)
  stats = time_interleaved(subjects, _ROUNDS.value, _STEPS.value)
  rates = {}
  for s in subjects:
    report(s, stats[s.name])
    rates[s.name] = stats[s.name].per_second(s.items_per_step)
  torch_name = next((s.name for s in subjects if s.name.startswith('torch')), None)
  for impl in _IMPLS.value:
    if torch_name:
      ratio = rates[f'fna_jax impl={impl}'] / rates[torch_name]
      print(f'ratio fna_jax impl={impl} / torch: {ratio:.2f} (img/s at median step times)',
            flush=True)
  if 'cpu' in _IMPLS.value and 'xla' in _IMPLS.value:
    print(f"ratio fna_jax impl=cpu / impl=xla: "
          f"{rates['fna_jax impl=cpu'] / rates['fna_jax impl=xla']:.2f}", flush=True)
  print(f'== seed done, {_load_line()}', flush=True)


# ----------------------------------------------------------------------------- search steps

# The authors' PyTorch supernet on this machine (2 cores), paper's segmentation search
# configuration (issue 3): img/s and peak memory.
AUTHORS_TORCH = {'weight_img_s': 5.8, 'arch_img_s': 1.8, 'standalone_mbv2_img_s': 6.6,
                 'weight_peak_gb': 2.9, 'arch_peak_gb': 7.9}
SEARCH_NAMES = {'weight': 'weight step (random paths)', 'weight_fixed': 'weight step (path P)',
                'standalone': 'standalone arch(P)', 'mobilenet_v2': 'standalone MobileNetV2',
                'arch': 'arch step (all paths)'}
SEARCH_KINDS = tuple(SEARCH_NAMES)
_CHILD_TAG = 'SEARCH_CHILD_RESULT '
_BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'
_CACHE_RETRIEVAL = '/jax/compilation_cache/cache_retrieval_time_sec'


class CompileEvents:
  """XLA executables built while a ``with events.window():`` block runs, via ``jax.monitoring``.

  JAX records ``/jax/core/compile/backend_compile_duration`` once per executable it has to build
  for a jitted call (an XLA compilation, or a load from the persistent compilation cache, which
  then also records ``/jax/compilation_cache/cache_retrieval_time_sec``); calls served by the
  jitted function's in-memory cache record nothing.  Every function's executables count, so a
  window should hold only the calls of interest (inputs prepared beforehand); tracing and
  lowering are not counted.  Each window's records are ``(event, seconds, fun_name)``.
  """

  _instance: CompileEvents | None = None

  def __init__(self):
    self._active: list | None = None

  @classmethod
  def get(cls) -> CompileEvents:
    if cls._instance is None:
      import jax
      cls._instance = CompileEvents()
      jax.monitoring.register_event_duration_secs_listener(cls._instance._listen)
    return cls._instance

  def _listen(self, event: str, seconds: float, **kw) -> None:
    if self._active is not None and event in (_BACKEND_COMPILE, _CACHE_RETRIEVAL):
      self._active.append((event, seconds, str(kw.get('fun_name', ''))))

  def window(self) -> _EventWindow:
    return _EventWindow(self)


class _EventWindow:
  def __init__(self, owner: CompileEvents):
    self.owner, self.records = owner, []

  def __enter__(self) -> _EventWindow:
    self.owner._active = self.records
    return self

  def __exit__(self, *exc) -> None:
    self.owner._active = None

  @property
  def compiles(self) -> int:
    return sum(1 for e in self.records if e[0] == _BACKEND_COMPILE)

  @property
  def compile_s(self) -> float:
    return sum(e[1] for e in self.records if e[0] == _BACKEND_COMPILE)

  @property
  def from_cache(self) -> bool:
    return any(e[0] == _CACHE_RETRIEVAL for e in self.records)


def _set_compilation_cache(directory: str) -> None:
  """Persistent compilation cache in ``directory`` for every executable (no size/time floor)."""
  import jax
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def _max_layers() -> tuple[int, ...] | None:
  vals = [int(v) for v in _MAX_LAYERS.value]
  return tuple(vals) if vals else None


def _seg_network(body, config):
  """Task network ``body`` + the config's head, as the search builds it."""
  from fna_jax.tasks import seg
  return seg.make_network(body, config)


@dataclasses.dataclass
class SearchBench:
  """What every search-section subject shares (built by :func:`search_bench_setup`)."""
  config: Any
  space: Any
  mesh: Any
  batch: Any           # {'image': (B, S, S, 3) f32, 'label': (B, S, S) i32}, sharded on 'data'
  fns: Any             # fna_jax.train.search.SearchFns
  w_step: Any          # jitted weight step (state, batch, uniform) -> (state, metrics)
  a_step: Any          # jitted arch step (state, batch) -> (state, metrics)
  variables: Any       # supernet + head variables (numpy)
  path: Any            # the sampled path P, int32 (L,)
  path_arch: Any       # space.derive(P)


def search_bench_setup() -> SearchBench:
  """The paper's segmentation-search configuration (with the flags' overrides), steps jitted."""
  import jax
  import numpy as np
  from configs import seg_cityscapes
  from fna_jax import spaces
  from fna_jax.models import supernet as sn
  from fna_jax.models.init import random_like, variable_shapes
  from fna_jax.tasks import seg
  from fna_jax.runtime import mesh as mesh_lib
  from fna_jax.train import search
  from fna_jax.train.search_loop import make_space

  config = seg_cityscapes.get_config()
  config.data.num_classes = _SEG_CLASSES.value
  config.head.channels = _HEAD_CHANNELS.value
  space = make_space(config.space)
  ml = _max_layers()
  if ml:
    space = spaces.limit_depth(space, ml * len(space.stages) if len(ml) == 1 else ml)
  batch, size = _BATCH.value, _SIZE.value
  mesh = mesh_lib.make_mesh()
  body = sn.Supernet(space)
  model = _seg_network(body, config)
  variables = random_like(variable_shapes(model, (1, size, size, 3), train=False), 0)
  table = search.cost_table(model, variables, space, (1, *config.cost_input_size, 3))
  sc = config.search
  opt_w, _ = search.weight_optimizer(search.Schedule(10_000, 0, 0), lr=sc.w_lr,
                                     lr_start=sc.w_lr_start, lr_end=sc.w_lr_end,
                                     momentum=sc.w_momentum, weight_decay=sc.w_weight_decay)
  opt_a = search.arch_optimizer(lr=sc.a_lr, weight_decay=sc.a_weight_decay, b1=sc.a_b1,
                                b2=sc.a_b2)
  fns = search.SearchFns(model, space, seg.cross_entropy, table, sc.lam, opt_w, opt_a)
  w_step, a_step = search.jit_steps(fns, mesh)
  rng = np.random.default_rng(0)
  data = {'image': rng.standard_normal((batch, size, size, 3), dtype=np.float32),
          'label': rng.integers(0, config.data.num_classes, (batch, size, size)).astype(np.int32)}
  mask = sn.candidate_mask(space)
  path = np.asarray(sn.sample_path(jax.random.key(_SEED_PATH.value),
                                   sn.init_alphas(jax.random.key(0), space), mask, True))
  return SearchBench(config, space, mesh, mesh_lib.put_batch(data, mesh), fns, w_step, a_step,
                     variables, path, space.derive([int(p) for p in path]))


def _search_state(sb: SearchBench, alphas):
  import jax
  from fna_jax.runtime import mesh as mesh_lib
  from fna_jax.train import search
  import jax.numpy as jnp
  # jnp.array copies: every subject's (donated) state gets buffers of its own.
  state = search.init_state(sb.fns, jax.tree.map(jnp.array, sb.variables), alphas,
                            jax.random.key(1))
  return jax.device_put(state, mesh_lib.replicated(sb.mesh))


def standalone_train_step(net, tx, loss_fn, mesh):
  """``step((params, batch_stats, opt_state, rng), batch) -> (state, loss)``, jitted like the
  search steps (state replicated and donated, batch sharded on ``'data'``): forward in train mode,
  BN statistics updated, dropout, backward, ``tx`` update (the weight step's optimiser)."""
  import jax
  import optax
  from fna_jax.runtime import mesh as mesh_lib

  def step(state, batch):
    params, batch_stats, opt_state, rng = state
    rng, k_drop = jax.random.split(rng)

    def loss(p):
      logits, new_vars = net.apply({'params': p, 'batch_stats': batch_stats}, batch['image'],
                                   True, rngs={'dropout': k_drop}, mutable=['batch_stats'])
      return loss_fn(logits, batch['label']), new_vars['batch_stats']

    (value, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_stats, opt_state, rng), value

  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


@dataclasses.dataclass
class SearchSubject:
  """A search-section subject: its :class:`Subject`, the jitted function and its arguments."""
  kind: str
  subject: Subject
  jitted: Any
  args: Callable[[], tuple]       # current arguments of the jitted function (for lowering)
  compiles: int = 0               # executables built over the first ``--compile_steps`` calls
  first_call_s: float = 0.0       # wall time of the first call (trace + compile + one step)
  xla_compile_s: float = 0.0      # XLA compile (or cache load) time within the first call
  from_cache: bool = False        # the first call loaded the executable from the persistent cache
  distinct_paths: int | None = None
  cache_size: int | None = None   # jitted function's in-memory cache entries afterwards


def make_search_subject(sb: SearchBench, kind: str, n_calls: int) -> SearchSubject:
  """Builds subject ``kind`` (one of ``SEARCH_KINDS``) and makes its first ``n_calls`` calls
  (they compile it and are the untimed warm-up), counting the executables they build."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from fna_jax import arch as arch_lib
  from fna_jax.models import Backbone
  from fna_jax.models import supernet as sn
  from fna_jax.models.init import random_like, variable_shapes
  from fna_jax.tasks import seg
  from fna_jax.runtime import mesh as mesh_lib

  rep = mesh_lib.replicated(sb.mesh)
  mask = sn.candidate_mask(sb.space)
  batch, n_img = sb.batch, sb.batch['image'].shape[0]
  paths: list = []
  if kind in ('weight', 'weight_fixed'):
    if kind == 'weight':
      # Fresh alphas; the first half of the calls sample uniformly (warm-up), the second half
      # from softmax(alpha): a new path every call.
      alphas = sn.init_alphas(jax.random.key(0), sb.space)
      flags_ = [jax.device_put(np.bool_(i < n_calls // 2), rep) for i in range(max(n_calls, 1))]
      name = SEARCH_NAMES[kind]
    else:
      # alphas peaked on P: every sampled path is P (checked below).
      onehot = np.zeros(mask.shape, np.float32)
      onehot[np.arange(len(sb.path)), sb.path] = 30.0
      alphas = jnp.asarray(np.where(mask, onehot, 0.0))
      flags_ = [jax.device_put(np.bool_(False), rep)]
      name = SEARCH_NAMES[kind]
    box = [_search_state(sb, alphas), None]
    calls = [0]

    def one_step():
      u = flags_[min(calls[0], len(flags_) - 1)]  # after the counted calls: the last flag
      calls[0] += 1
      box[0], box[1] = sb.w_step(box[0], batch, u)
      return box[0]

    jitted, args = sb.w_step, lambda: (box[0], batch, flags_[-1])
    after = lambda: paths.append(np.asarray(box[1]['path']))
  elif kind == 'arch':
    box = [_search_state(sb, sn.init_alphas(jax.random.key(0), sb.space)), None]

    def one_step():
      box[0], box[1] = sb.a_step(box[0], batch)
      return box[0]

    jitted, args, after, name = sb.a_step, lambda: (box[0], batch), lambda: None, \
        SEARCH_NAMES[kind]
  elif kind in ('standalone', 'mobilenet_v2'):
    if kind == 'standalone':
      arch, name = sb.path_arch, SEARCH_NAMES[kind]
    else:
      # The seed as the task network uses it: output stride of the space, its last conv.
      arch = arch_lib.mobilenet_v2()
      target = sb.space.skeleton().output_stride
      if arch.output_stride > target:
        arch = arch.with_output_stride(target)
      arch, name = arch.replace(last_channels=sb.space.last_channels), SEARCH_NAMES[kind]
    net = _seg_network(Backbone(arch), sb.config)
    size = batch['image'].shape[1]
    v = random_like(variable_shapes(net, (1, size, size, 3), train=False), 0)
    v = jax.tree.map(jnp.array, v)
    state = (v['params'], v['batch_stats'], sb.fns.opt_w.init(v['params']), jax.random.key(2))
    jitted = standalone_train_step(net, sb.fns.opt_w, seg.cross_entropy, sb.mesh)
    box = [jax.device_put(state, rep), None]

    def one_step():
      box[0], box[1] = jitted(box[0], batch)
      return box[0]

    args, after = lambda: (box[0], batch), lambda: None
  else:
    raise ValueError(f'unknown search subject {kind!r}; known: {SEARCH_KINDS}')

  events = CompileEvents.get()
  ss = SearchSubject(kind, Subject(name, one_step, n_img), jitted, args)
  total = 0
  for i in range(n_calls):
    with events.window() as win:
      t0 = time.perf_counter()
      jax.block_until_ready(one_step())
      dt = time.perf_counter() - t0
    after()
    total += win.compiles
    if i == 0:
      ss.first_call_s, ss.xla_compile_s, ss.from_cache = dt, win.compile_s, win.from_cache
  ss.compiles = total
  ss.subject.compile_s = ss.first_call_s
  if paths:
    ss.distinct_paths = len({p.tobytes() for p in paths})
    if kind == 'weight_fixed' and any((p != sb.path).any() for p in paths):
      raise AssertionError('weight step with alphas peaked on P sampled another path')
  cache_size = getattr(jitted, '_cache_size', None)
  ss.cache_size = int(cache_size()) if callable(cache_size) else None
  if box[1] is not None:
    out = box[1]
    loss = float(out if kind in ('standalone', 'mobilenet_v2') else
                 out.get('loss', out.get('arch_loss')))
    if not np.isfinite(loss):
      raise FloatingPointError(f'{name}: loss is {loss} after {n_calls} steps')
  return ss


def memory_analysis(ss: SearchSubject) -> tuple[dict[str, int] | None, str]:
  """XLA's buffer sizes of the subject's executable, and how the executable was obtained.

  Lowers the jitted function for its current arguments and compiles it ahead of time; with the
  persistent compilation cache this is a cache load, not a second compilation.  Returns
  ``({'argument', 'output', 'alias', 'temp', 'code', 'peak'}, note)`` in bytes, where
  ``peak = argument + output - alias + temp`` (buffers live at once when the step runs; the
  donated state's outputs alias its arguments), or ``(None, reason)``.
  """
  events = CompileEvents.get()
  with events.window() as win:
    try:
      stats = ss.jitted.lower(*ss.args()).compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 -- the analysis is optional on some backends
      return None, f'unavailable ({type(e).__name__}: {e})'
  if stats is None:
    return None, 'unavailable on this backend'
  m = {'argument': stats.argument_size_in_bytes, 'output': stats.output_size_in_bytes,
       'alias': stats.alias_size_in_bytes, 'temp': stats.temp_size_in_bytes,
       'code': stats.generated_code_size_in_bytes}
  m['peak'] = m['argument'] + m['output'] - m['alias'] + m['temp']
  if win.from_cache:
    how = 'executable loaded from the persistent cache'
  elif win.compiles:
    how = f'compiled again for the analysis ({win.compile_s:.1f} s)'
  else:
    how = "the jitted call's executable (in-memory cache)"
  return m, how


def _gb(n_bytes: float) -> str:
  return f'{n_bytes / 1e9:.2f} GB'


def _search_child_main(kind: str) -> None:
  """Runs one search subject alone in this process and prints its memory (one tagged line).

  Figures (bytes): ``pre_steps_rss`` (after set-up: variables, state, batch), ``steps_peak_rss``
  (sampled peak RSS during the ``--warmup`` + ``--steps`` steps after the first call; the first
  call obtains the executable, from the persistent cache when the parent wrote it) and ``vm_hwm``
  (the process's RSS high-water mark, /proc/self/status VmHWM, which includes tracing and
  loading or compiling the executable).
  """
  import json
  sb = search_bench_setup()
  pre = _rss_bytes()
  ss = make_search_subject(sb, kind, 1)
  first = _rss_bytes()
  with MemorySampler() as mem:
    time_steps(ss.subject.step, _WARMUP.value, _STEPS.value)
  result = {'kind': kind, 'pre_steps_rss': pre, 'after_first_call_rss': first,
            'steps_peak_rss': mem.peak_bytes, 'vm_hwm': _vm_hwm_bytes(), 'method': mem.method,
            'compiles': ss.compiles, 'xla_compile_s': ss.xla_compile_s,
            'from_cache': ss.from_cache}
  print(_CHILD_TAG + json.dumps(result), flush=True)


def _vm_hwm_bytes() -> int | None:
  """This process's peak RSS from /proc/self/status (Linux), else None.

  Unlike ``ru_maxrss``, VmHWM belongs to the process's own address space, so a child started by
  fork + exec does not inherit its parent's figure.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _rss_bytes() -> int:
  try:
    import psutil
    return psutil.Process().memory_info().rss
  except ImportError:
    return _maxrss_bytes()


def _child_cmd(child: str, cache_dir: str) -> list[str]:
  return [sys.executable, os.path.abspath(__file__), *sys.argv[1:], '--bench=search',
          f'--search_child={child}', f'--compilation_cache_dir={cache_dir}']


def _rss_in_subprocesses(kinds, cache_dir: str) -> dict[str, dict]:
  """Peak RSS of each subject kind, each run alone in a fresh process (see ``--search_rss``)."""
  import json
  import subprocess
  out = {}
  for kind in kinds:
    t0 = time.perf_counter()
    proc = subprocess.run(_child_cmd(kind, cache_dir), capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith(_CHILD_TAG)), None)
    if proc.returncode or line is None:
      why = 'killed (out of memory?)' if proc.returncode == -9 else f'rc {proc.returncode}'
      print(f'   {SEARCH_NAMES[kind]:<26s} subprocess failed ({why}): '
            f'{proc.stderr.strip().splitlines()[-1:]}', flush=True)
      continue
    out[kind] = json.loads(line[len(_CHILD_TAG):])
    out[kind]['wall_s'] = time.perf_counter() - t0
    r = out[kind]
    hwm = f'{_gb(r["vm_hwm"])}' if r['vm_hwm'] else 'n/a'
    how = 'loaded from the persistent cache' if r['from_cache'] else 'compiled (cache miss)'
    print(f'   {SEARCH_NAMES[kind]:<26s} peak RSS during the steps {_gb(r["steps_peak_rss"])} '
          f'(after set-up {_gb(r["pre_steps_rss"])}, after the first call '
          f'{_gb(r["after_first_call_rss"])}; process high-water mark {hwm}; executable {how} '
          f'in {r["xla_compile_s"]:.1f} s)', flush=True)
  return out


def _timing_in_subprocess(cache_dir: str) -> dict | None:
  """Runs :func:`_bench_search` in a fresh process (its lines pass through); its summary."""
  import json
  import subprocess
  proc = subprocess.Popen(_child_cmd('timing', cache_dir), stdout=subprocess.PIPE, text=True)
  summary = None
  for line in proc.stdout:
    if line.startswith(_CHILD_TAG):
      summary = json.loads(line[len(_CHILD_TAG):])
    else:
      print(line, end='', flush=True)
  if proc.wait() or summary is None:
    print(f'search timing process failed (rc {proc.returncode})', flush=True)
    return None
  return summary


def bench_search() -> None:
  """Supernet weight step, arch step and standalone train steps of the paper's seg search.

  With ``--search_rss`` (default) this process only orchestrates, so that no process holds the
  memory of another's measurements: one fresh process compiles and times every step (filling the
  persistent compilation cache), then one fresh process per step kind measures its peak RSS.
  """
  import json
  import shutil
  import tempfile

  cache_dir = _CACHE_DIR.value or tempfile.mkdtemp(prefix='fna_bench_xla_')
  _set_compilation_cache(cache_dir)
  child = _SEARCH_CHILD.value
  if child == 'timing':
    print(_CHILD_TAG + json.dumps(_bench_search()), flush=True)
    return
  if child:
    _search_child_main(child)
    return
  try:
    if _SEARCH_RSS.value:
      summary = _timing_in_subprocess(cache_dir)
      if summary is None:
        return
      print('peak RSS, each step kind alone in a fresh process (executable from the persistent '
            f'cache; RSS sampled every 5 ms over {_WARMUP.value} + {_STEPS.value} steps after the '
            'first call) ...', flush=True)
      rss = _rss_in_subprocesses(('weight', 'arch', 'standalone', 'mobilenet_v2'), cache_dir)
    else:
      summary, rss = _bench_search(), {}
    _print_comparison(summary, rss)
  finally:
    if not _CACHE_DIR.value:
      shutil.rmtree(cache_dir, ignore_errors=True)


def _print_comparison(summary: dict, rss: dict) -> None:
  """Our figures next to the authors' PyTorch ones (``summary`` from :func:`_bench_search`)."""
  rate, peaks = summary['img_s'], summary['xla_peak_bytes']

  def mem(kind):
    parts = []
    if kind in rss:
      parts.append(f'peak RSS {_gb(rss[kind]["steps_peak_rss"])}')
    if kind in peaks:
      parts.append(f'XLA buffers {_gb(peaks[kind])}')
    return ', '.join(parts) or 'n/a'

  a = AUTHORS_TORCH
  same = ('same configuration' if summary.get('paper_config') else
          "NOT the paper's configuration (batch/size/depth/classes/head overridden): the figures "
          'do not compare')
  print(f"vs the authors' PyTorch supernet on this machine (2 cores), {same} (ours | PyTorch):",
        flush=True)
  print(f'   single-path weight step: {rate["weight"]:6.2f} | {a["weight_img_s"]} img/s; '
        f'memory {mem("weight")} | {a["weight_peak_gb"]} GB', flush=True)
  print(f'   all-path arch step:      {rate["arch"]:6.2f} | {a["arch_img_s"]} img/s; '
        f'memory {mem("arch")} | {a["arch_peak_gb"]} GB', flush=True)
  print(f'   standalone MobileNetV2:  {rate["mobilenet_v2"]:6.2f} | '
        f'{a["standalone_mbv2_img_s"]} img/s; memory {mem("mobilenet_v2")}', flush=True)
  print(f'== search done, {_load_line()}', flush=True)


def _bench_search() -> dict:
  """Compiles, counts and times every search subject in this process; prints the figures.

  Returns ``{'img_s': {kind: img/s}, 'xla_peak_bytes': {kind: bytes}}``.
  """
  import jax
  from fna_jax import ops
  from fna_jax.train.search_loop import arch_string

  t_setup = time.perf_counter()
  sb = search_bench_setup()
  sp, n = sb.space, _COMPILE_STEPS.value
  depth = [len(st.candidates) for st in sp.stages]
  print(f'== search: seg space {sp.name} max layers {depth} ({sp.num_searched} searched layers, '
        f'{sp.max_candidates} candidates), DeepLabv3 head {sb.config.head.channels} ch, '
        f'{sb.config.data.num_classes} classes, batch {_BATCH.value}, {_SIZE.value}x{_SIZE.value}, '
        f'conv impl {ops.default_impl()}, backend {jax.default_backend()} x{sb.mesh.size}, '
        f'{os.cpu_count()} cores, {_load_line()}', flush=True)
  print(f'   {_memory_line()}', flush=True)
  print(f'   path P (standalone arch): {arch_string(sp, sb.path)}', flush=True)
  print(f'   set-up (variables, cost table) {time.perf_counter() - t_setup:.1f} s; compiling and '
        f'running each step {n} times (untimed warm-up; compilations counted) ...', flush=True)
  subjects = []
  for kind in SEARCH_KINDS:
    ss = make_search_subject(sb, kind, n)
    subjects.append(ss)
    print(f'   {ss.subject.name:<26s} first call {ss.first_call_s:6.1f} s (XLA compile '
          f'{ss.xla_compile_s:.1f} s), {n} calls: {ss.compiles} compilation(s)'
          + (f', {ss.distinct_paths} distinct paths' if ss.distinct_paths is not None else '')
          + (f', jit cache entries {ss.cache_size}' if ss.cache_size is not None else ''),
          flush=True)
  print(f'timing {_ROUNDS.value} rounds x {_STEPS.value} steps per subject, interleaved; '
        f'{_load_line()}', flush=True)
  stats = time_interleaved([s.subject for s in subjects], _ROUNDS.value, _STEPS.value)
  by_kind = {s.kind: s for s in subjects}
  med = {s.kind: stats[s.subject.name].median for s in subjects}
  rate = {s.kind: stats[s.subject.name].per_second(s.subject.items_per_step) for s in subjects}
  for s in subjects:
    report(s.subject, stats[s.subject.name])

  print('ratios (median step times, same run):', flush=True)
  r_fixed = med['weight_fixed'] / med['standalone']
  print(f'   weight step (path P) / standalone arch(P) train step: {r_fixed:.2f} '
        f'(target <= 1.3: {"met" if r_fixed <= 1.3 else "MISSED"})', flush=True)
  print(f'   weight step (random paths) / standalone arch(P):      '
        f'{med["weight"] / med["standalone"]:.2f}', flush=True)
  print(f'   arch step / weight step (random paths):               '
        f'{med["arch"] / med["weight"]:.2f}', flush=True)
  ok = all(by_kind[k].compiles == 1 for k in ('weight', 'arch'))
  print(f'compilations over {n} steps (changing paths; jax.monitoring backend-compile events): '
        f'weight step {by_kind["weight"].compiles} '
        f'(+{by_kind["weight_fixed"].compiles} for new alphas), '
        f'arch step {by_kind["arch"].compiles} (target 1 each: {"met" if ok else "MISSED"})',
        flush=True)

  print("memory (XLA's buffer assignment of each step's executable: arguments + outputs - "
        'aliased (donated) + temporaries):', flush=True)
  peaks = {}
  for kind in ('weight', 'arch', 'standalone', 'mobilenet_v2'):
    m, how = memory_analysis(by_kind[kind])
    if m is None:
      print(f'   {by_kind[kind].subject.name:<26s} {how}', flush=True)
      continue
    peaks[kind] = m['peak']
    print(f'   {by_kind[kind].subject.name:<26s} {_gb(m["peak"])} (arguments {_gb(m["argument"])}, '
          f'temporaries {_gb(m["temp"])}, outputs {_gb(m["output"])}, aliased '
          f'{_gb(m["alias"])}); {how}', flush=True)
  paper = (_BATCH.value == 8 and _SIZE.value == 321 and not _max_layers()
            and _SEG_CLASSES.value == 19 and _HEAD_CHANNELS.value == 256)
  return {'img_s': rate, 'xla_peak_bytes': peaks, 'paper_config': paper}


BENCHES: dict[str, Callable[[], None]] = {
    'seed': bench_seed,
    'search': bench_search,
}
BENCH_ALIASES = {'train': 'seed'}  # --bench=train: the seed's train step


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _maybe_reexec_with_hugepage_malloc()
  names = []
  for b in _BENCH.value:
    for name in (list(BENCHES) if b == 'all' else [BENCH_ALIASES.get(b, b)]):
      if name not in BENCHES:
        raise app.UsageError(f'--bench: unknown section {b!r}; known: {sorted(BENCHES)}, '
                             f'{sorted(BENCH_ALIASES)} and all')
      if name not in names:
        names.append(name)
  from fna_jax import ops
  bad = [i for i in _IMPLS.value if i not in ops.IMPLS]
  if bad:
    raise app.UsageError(f'--impls: unknown conv impl(s) {bad}; known: {ops.IMPLS}')
  for name in names:
    BENCHES[name]()


if __name__ == '__main__':
    app.run(main)

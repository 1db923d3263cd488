"""Throughput benchmarks of fna_jax on the local backend, all figures measured in one run.

Sections (``--bench``, comma-separated):

* ``seed`` (default): the MobileNetV2 ImageNet classifier's full train step: forward, backward,
  SGD-with-momentum update (optax), BatchNorm in train mode (``batch_stats`` mutable), softmax
  cross-entropy on random labels; one ``jax.jit`` with the train state donated.  Reported per conv
  implementation (``--impls``, see :mod:`fna_jax.ops`) and, with ``--torch``, for torchvision's
  ``mobilenet_v2`` on the same batch, with the ratio fna_jax/torch measured in the same run.

Adding a section: write ``def bench_NAME() -> None`` that builds :class:`Subject` s (a step
function carrying its own state, set up and warmed up inside a :class:`MemorySampler`), times them
with :func:`time_interleaved` (or :func:`time_steps` for one), prints :func:`report` lines, and
register it in ``BENCHES``.

Figures:

* compile: wall time of ``jit(...).lower(...).compile()`` (tracing and XLA compilation).
* img/s: ``batch / median step time``.  After ``--warmup`` untimed steps per subject, the subjects
  are timed in ``--rounds`` rounds of ``--steps`` steps each, in turn (A B A B ...), so that a
  change of machine load hits all of them alike; the median is over all rounds' steps.  Each step
  is waited for (``block_until_ready``) before the next starts.
* peak RSS: the process's resident set size sampled every 5 ms (psutil) during a subject's set-up
  (initialisation, compilation, warm-up steps), minus the resident set size just before it; it covers
  parameters, optimizer state, activations, XLA's buffers and compiled code.  A later subject can
  reuse memory an earlier one freed, so its figure can read low: for exact figures run one subject
  per process (e.g. ``--impls=cpu`` without ``--torch``).  Without psutil the figure is the growth
  of ``getrusage(RUSAGE_SELF).ru_maxrss`` (the process's high-water mark), which reads 0 when an
  earlier subject already went higher.

The machine may be shared: compare ratios measured in the same run, and check ``uptime`` first.

Example::

  python scripts/benchmark.py --bench=seed --torch --rounds=3 --steps=5
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

_BENCH = flags.DEFINE_list('bench', ['seed'], 'Sections to run (comma-separated): seed.')
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


# ----------------------------------------------------------------------------- shared helpers


@dataclasses.dataclass(frozen=True)
class TimingStats:
  """Wall-clock seconds per step over the timed steps."""
  times: tuple[float, ...]

  @property
  def median(self) -> float:
    return statistics.median(self.times)

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
  times = []
  for _ in range(n_steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return TimingStats(tuple(times))


def _maxrss_bytes() -> int:
  # Linux reports kilobytes, macOS bytes.
  scale = 1 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class MemorySampler:
  """Peak resident-set growth of this process while the ``with`` block runs (see module doc).

  ``peak_mib`` is the sampled peak RSS minus the RSS at entry (psutil), or the growth of the
  process's RSS high-water mark without psutil; ``method`` says which.
  """

  def __init__(self, interval_s: float = 0.005):
    self.interval_s = interval_s
    self.peak_mib = 0.0
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
      self.peak_mib = (_maxrss_bytes() - self._start) / 2**20
      return
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, self._proc.memory_info().rss)
    self.peak_mib = (self._peak - self._start) / 2**20


@dataclasses.dataclass
class Subject:
  """One thing to time: ``step()`` runs one step (carrying its own state) and returns what to wait for.

  ``compile_s`` and ``mem`` describe its set-up (compilation and warm-up steps).
  """
  name: str
  step: Callable[[], Any]
  items_per_step: int
  compile_s: float | None = None
  mem: MemorySampler | None = None


def time_interleaved(subjects: list[Subject], rounds: int,
                     steps_per_round: int) -> dict[str, TimingStats]:
  """Times every subject ``steps_per_round`` steps per round, subjects in turn, for ``rounds`` rounds.

  Interleaving makes ratios between subjects fair on a machine whose load changes over time.
  Returns each subject's step times over all rounds.
  """
  times = {s.name: [] for s in subjects}
  for _ in range(rounds):
    for s in subjects:
      times[s.name].extend(time_steps(s.step, 0, steps_per_round).times)
  return {name: TimingStats(tuple(t)) for name, t in times.items()}


def report(subject: Subject, stats: TimingStats) -> None:
  """Prints one line for one subject."""
  parts = [f'{subject.name:<26s}', f'{stats.per_second(subject.items_per_step):7.2f} img/s',
           f'step median {stats.median * 1e3:7.1f} ms (min {stats.min * 1e3:.1f}, '
           f'max {stats.max * 1e3:.1f}, n={len(stats.times)})']
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
      print(f'ratio fna_jax impl={impl} / torch: {rates[f"fna_jax impl={impl}"] / rates[torch_name]:.2f}'
            ' (img/s at median step times)', flush=True)
  if 'cpu' in _IMPLS.value and 'xla' in _IMPLS.value:
    print(f"ratio fna_jax impl=cpu / impl=xla: "
          f"{rates['fna_jax impl=cpu'] / rates['fna_jax impl=xla']:.2f}", flush=True)
  print(f'== seed done, {_load_line()}', flush=True)


BENCHES: dict[str, Callable[[], None]] = {
    'seed': bench_seed,
}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _maybe_reexec_with_hugepage_malloc()
  unknown = [b for b in _BENCH.value if b not in BENCHES]
  if unknown:
    raise app.UsageError(f'--bench: unknown section(s) {unknown}; known: {sorted(BENCHES)}')
  from fna_jax import ops
  bad = [i for i in _IMPLS.value if i not in ops.IMPLS]
  if bad:
    raise app.UsageError(f'--impls: unknown conv impl(s) {bad}; known: {ops.IMPLS}')
  for name in _BENCH.value:
    BENCHES[name]()


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)

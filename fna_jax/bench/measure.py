"""Timing several subjects in one run, and the lines that say under what conditions.

Figures:

* img/s: ``batch / median step time``.  After ``warmup`` untimed steps per subject, the subjects
  are timed in ``rounds`` rounds of ``steps`` steps each, in turn (A B A B ...), so that a change
  of machine load hits all of them alike; the median is over all rounds' steps.  Each step is
  waited for (``jax.block_until_ready``) before the next starts.
* cpu ms/step: median CPU time (user + system, all threads) of this process per step; it helps to
  judge figures taken while other processes load the machine.
* compile: what the subject's set-up measured (e.g. the wall time of
  ``jit(...).lower(...).compile()``, or of a first call).

The machine may be shared: compare ratios measured in the same run, and check the load average
that :func:`load_line` prints before and after.

Allocator: :func:`fna_jax.cli.reexec_with_hugepage_malloc` re-executes a script with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (``malloc`` asks for transparent huge pages), as every
script does by default; :func:`memory_line` shows the setting.  Both XLA:CPU and torch allocate
their large buffers afresh each step, and the 4 KiB page faults on them cost about as much as the
compute on CPU (both ran ~1.5x faster with it on the 2-core machine).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

@dataclasses.dataclass(frozen=True)
class TimingPlan:
  """Untimed ``warmup`` steps per subject, then ``rounds`` rounds of ``steps`` timed steps."""
  warmup: int = 2
  rounds: int = 3
  steps: int = 5


@dataclasses.dataclass(frozen=True)
class TimingStats:
  """Seconds per step over the timed steps: wall clock, and CPU time of this process (all
  threads, user + system)."""
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


def process_cpu_s() -> float:
  """CPU seconds (user + system, all threads) this process has used."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_steps(fn: Callable[[], Any], n_warmup: int, n_steps: int) -> TimingStats:
  """Runs ``fn()`` ``n_warmup`` times untimed, then ``n_steps`` times timed, one at a time.

  ``fn`` performs one step (carrying its own state) and returns the arrays to wait for; each call
  is waited for with ``jax.block_until_ready`` (a no-op for non-JAX values such as torch tensors,
  which are ready when returned).
  """
  for _ in range(n_warmup):
    jax.block_until_ready(fn())
  times, cpu_times = [], []
  for _ in range(n_steps):
    c0, t0 = process_cpu_s(), time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
    cpu_times.append(process_cpu_s() - c0)
  return TimingStats(tuple(times), tuple(cpu_times))


@dataclasses.dataclass
class Subject:
  """One thing to time: ``step()`` runs one step (carrying its state) and returns what to wait for.

  ``compile_s`` and ``mem`` (a :class:`fna_jax.bench.memory.MemorySampler`) describe its set-up
  (compilation and warm-up steps).
  """
  name: str
  step: Callable[[], Any]
  items_per_step: int
  compile_s: float | None = None
  mem: Any = None


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


def timing_line(plan: TimingPlan) -> str:
  return (f'timing {plan.rounds} rounds x {plan.steps} steps per subject, interleaved; '
          f'{load_line()}')


# ----------------------------------------------------------------------------- the machine
def load_line() -> str:
  try:
    return 'load average %.2f %.2f %.2f' % os.getloadavg()
  except OSError:
    return 'load average unavailable'


def memory_line() -> str:
  """The allocator settings the figures were measured under."""
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      thp = f.read().strip()
  except OSError:
    thp = 'unknown'
  return f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, transparent_hugepage: {thp}"

"""What every training loop shares: progress lines, the NaN guard, preemption, set-up."""

from __future__ import annotations

import os
import signal
import sys
import time

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def check_finite(step: int, metrics: dict, checkpoints) -> None:
  """Raises :class:`NonFiniteLossError` naming the step and the loss when one is not finite.

  ``checkpoints`` (a :class:`~fna_jax.runtime.checkpoint.RunCheckpoints`) is closed first: the
  last good checkpoint may still be being written in the background, and the error names it.
  """
  for name, value in metrics.items():
    if 'loss' in name and not np.isfinite(value):
      checkpoints.close()
      raise NonFiniteLossError(
          f'step {step}: {name} is {value}. The run stopped; its last good checkpoint is in '
          f'{checkpoints.directory} (rerun the same command to resume from it, e.g. with a lower '
          'learning rate).')


class PendingMetrics:
  """Step metrics kept on the device until a check, so that a loop never waits for a step.

  Fetching a step's loss right after dispatching it (``float(loss)``) blocks the host until the
  step has run, so the next batch cannot be prepared and sent while the device works.  A loop
  instead calls :meth:`add` every step (no transfer) and :meth:`check` where it needs values: at
  progress lines, before writing a checkpoint (so that no checkpoint holds the state after a
  non-finite loss) and at the end.  :meth:`check` fetches every pending step's metrics in one
  transfer and raises :class:`NonFiniteLossError` for the first step whose loss was not finite,
  naming that step, as the per-step check did; the run stops at the check instead of the bad
  step, with its last good checkpoint.
  """

  def __init__(self):
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    """Records ``metrics`` (device scalars) of ``step``; nothing is transferred."""
    self._pending.append((step, dict(metrics)))

  def check(self, checkpoints) -> dict[str, float]:
    """The pending steps' metrics fetched and checked; returns the last step's as floats."""
    pending, self._pending = jax.device_get(self._pending), []
    last: dict[str, float] = {}
    for step, metrics in pending:
      last = {k: float(v) for k, v in metrics.items()}
      check_finite(step, last, checkpoints)
    return last


class Progress:
  """Prints one line every ``every`` steps (process 0 only): step, metrics, throughput, ETA."""

  def __init__(self, total_steps: int, every: int, images_per_step: int, prefix: str = ''):
    self.total, self.every, self.images = total_steps, max(every, 1), images_per_step
    self.prefix = prefix
    self._t, self._n = time.perf_counter(), 0

  def tick(self) -> None:
    self._n += 1

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total

  def line(self, step: int, fields: dict) -> str:
    now = time.perf_counter()
    dt = now - self._t
    rate = self._n * self.images / dt if dt > 0 and self._n else float('nan')
    eta = (self.total - step) * dt / self._n if self._n else float('nan')
    self._t, self._n = now, 0
    parts = [f'{self.prefix}step {step}/{self.total}']
    for k, v in fields.items():
      parts.append(f'{k} {v:.4g}' if isinstance(v, (float, np.floating)) else f'{k} {v}')
    parts.append(f'{rate:.1f} img/s')
    parts.append(f'eta {eta / 60:.1f} min')
    return '  '.join(parts)

  def log(self, step: int, fields: dict) -> None:
    if jax.process_index() == 0:
      print(self.line(step, fields), flush=True)


class Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop polls, so it can checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f'received signal {signum}: checkpointing and stopping', file=sys.stderr, flush=True)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


def checkpoint_or_stop(step: int, *, start: int, total: int, every: int,
                       stop_after: int | None, preempt: Preemption, save) -> bool:
  """The end-of-step decision every training loop shares; True means stop now.

  A run stops when SIGTERM/SIGINT arrived (``preempt``) or after ``stop_after`` steps of this
  invocation (``step - start``; tests use it as a kill).  ``save(step, wait)`` writes a
  checkpoint every ``every`` steps, at the last step (``total``) and when stopping (then
  waiting for it to be on disk).
  """
  stopping = preempt.requested or (stop_after is not None and step - start >= stop_after)
  if step % every == 0 or step == total or stopping:
    save(step, wait=stopping)
  return stopping


def setup_runtime(distributed: dict | None = None, cache_dir: str | None = None) -> None:
  """Multi-host initialisation (when configured) and JAX's persistent compilation cache."""
  if distributed and distributed.get('num_processes', 1) > 1:
    jax.distributed.initialize(coordinator_address=distributed['coordinator_address'],
                               num_processes=distributed['num_processes'],
                               process_id=distributed['process_id'])
  cache_dir = cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'fna_jax', 'xla')
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 2.0)

"""Memory of a step: the resident set of a process while it runs, and XLA's buffer assignment.

Figures:

* sampled peak RSS (:class:`MemorySampler`): the process's resident set size sampled every 5 ms
  (psutil) while a block runs (e.g. a subject's initialisation, compilation and warm-up steps),
  minus the resident set size just before it; it covers parameters, optimiser state,
  activations, XLA's buffers and compiled code.  A later subject of the same process can reuse
  memory an earlier one freed, so its figure can read low: for exact figures run one subject per
  process (:func:`run_child`).  Without psutil the figure is the growth of
  ``getrusage(RUSAGE_SELF).ru_maxrss`` (the process's high-water mark), which reads 0 when an
  earlier subject already went higher.
* process high-water mark (:func:`vm_hwm_bytes`): ``VmHWM`` of ``/proc/self/status``.  Unlike
  ``ru_maxrss`` it belongs to the process's own address space, so a child started by fork + exec
  does not inherit its parent's figure.
* XLA buffers (:func:`xla_buffers`): ``compiled.memory_analysis()`` of a step's executable,
  ``arguments + outputs - aliased (donated) + temporaries``: the buffers live at once while the
  step runs (the donated state's outputs alias its arguments).

A fresh process (:func:`run_child`) measures one step without the memory of others: the child is
``python -m MODULE ARGS...`` and reports a JSON dict on one tagged line (:func:`print_result`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading

from fna_jax.bench.compiles import CompileEvents

RESULT_TAG = 'FNA_BENCH_RESULT '


def gb(n_bytes: float) -> str:
  return f'{n_bytes / 1e9:.2f} GB'


# ----------------------------------------------------------------------------- this process
def maxrss_bytes() -> int:
  """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (Linux reports kilobytes, macOS bytes)."""
  scale = 1 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_bytes() -> int:
  """This process's resident set size now (psutil), else its high-water mark."""
  try:
    import psutil  # optional dependency
  except ImportError:
    return maxrss_bytes()
  return psutil.Process().memory_info().rss


def vm_hwm_bytes() -> int | None:
  """This process's peak RSS from /proc/self/status (Linux), else None."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


class MemorySampler:
  """Peak resident-set growth of this process while the ``with`` block runs (module docstring).

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
      import psutil  # optional dependency
    except ImportError:
      self._proc = None
      self.method = 'ru_maxrss growth'
      self._start = maxrss_bytes()
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
      self.peak_bytes = maxrss_bytes()
      self.peak_mib = (self.peak_bytes - self._start) / 2**20
      return
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, self._proc.memory_info().rss)
    self.peak_bytes = self._peak
    self.peak_mib = (self._peak - self._start) / 2**20


# ----------------------------------------------------------------------------- XLA's view
def xla_buffers(jitted, *args) -> tuple[dict[str, int] | None, str]:
  """XLA's buffer sizes of ``jitted``'s executable for ``args``, and how it was obtained.

  Lowers and compiles ahead of time; with the persistent compilation cache this is a cache load,
  not a second compilation.  Returns ``({'argument', 'output', 'alias', 'temp', 'code', 'peak'},
  note)`` in bytes, ``peak = argument + output - alias + temp``, or ``(None, reason)``.
  """
  with CompileEvents.get().window() as win:
    try:
      stats = jitted.lower(*args).compile().memory_analysis()
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


# ----------------------------------------------------------------------------- fresh processes
def print_result(result: dict) -> None:
  """In a child process: hands ``result`` (JSON-serialisable) to :func:`run_child`."""
  print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(module: str, *args: str, echo: bool = False) -> tuple[dict | None, str]:
  """Runs ``python -m module args...`` in a fresh process (same interpreter and environment).

  Returns ``(result, '')`` with the dict the child passed to :func:`print_result`, or
  ``(None, why)`` when it failed.  ``echo``: the child's other output lines pass through as they
  come (its stderr always goes to this process's stderr when echoing, else it is captured for
  ``why``).
  """
  cmd = [sys.executable, '-m', module, *args]
  result = None
  if echo:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
      if line.startswith(RESULT_TAG):
        result = json.loads(line[len(RESULT_TAG):])
      else:
        print(line, end='', flush=True)
    rc, err = proc.wait(), ''
  else:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)), None)
    result = json.loads(line[len(RESULT_TAG):]) if line else None
    rc, err = proc.returncode, ' '.join(proc.stderr.strip().splitlines()[-1:])
  if rc or result is None:
    why = 'killed (out of memory?)' if rc == -9 else f'rc {rc}'
    return None, f'{why}{": " + err if err else ""}'
  return result, ''

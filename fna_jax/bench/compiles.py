"""XLA executables a jitted call makes JAX build, counted from ``jax.monitoring`` events; the
persistent compilation cache that lets a fresh process load them instead of compiling.

JAX records ``/jax/core/compile/backend_compile_duration`` once per executable it has to build
for a jitted call (an XLA compilation, or a load from the persistent compilation cache, which
then also records ``/jax/compilation_cache/cache_retrieval_time_sec``); calls served by the jitted
function's in-memory cache record nothing.  Tracing and lowering are not counted.
"""

from __future__ import annotations

import jax

BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'
CACHE_RETRIEVAL = '/jax/compilation_cache/cache_retrieval_time_sec'


class CompileEvents:
  """Executables built while a ``with CompileEvents.get().window() as win:`` block runs.

  Every function's executables count, so a window should hold only the calls of interest (inputs
  prepared beforehand).  Each window's records are ``(event, seconds, fun_name)``.
  """

  _instance: CompileEvents | None = None

  def __init__(self):
    self._active: list | None = None

  @classmethod
  def get(cls) -> CompileEvents:
    """The process's one listener (registered with ``jax.monitoring`` on first use)."""
    if cls._instance is None:
      cls._instance = CompileEvents()
      jax.monitoring.register_event_duration_secs_listener(cls._instance._listen)
    return cls._instance

  def _listen(self, event: str, seconds: float, **kw) -> None:
    if self._active is not None and event in (BACKEND_COMPILE, CACHE_RETRIEVAL):
      self._active.append((event, seconds, str(kw.get('fun_name', ''))))

  def window(self) -> EventWindow:
    return EventWindow(self)


class EventWindow:
  """The records of one ``with`` block (see :class:`CompileEvents`)."""

  def __init__(self, owner: CompileEvents):
    self.owner, self.records = owner, []

  def __enter__(self) -> EventWindow:
    self.owner._active = self.records
    return self

  def __exit__(self, *exc) -> None:
    self.owner._active = None

  @property
  def compiles(self) -> int:
    """Executables built (compiled, or loaded from the persistent cache)."""
    return sum(1 for e in self.records if e[0] == BACKEND_COMPILE)

  @property
  def compile_s(self) -> float:
    return sum(e[1] for e in self.records if e[0] == BACKEND_COMPILE)

  @property
  def from_cache(self) -> bool:
    return any(e[0] == CACHE_RETRIEVAL for e in self.records)


def use_persistent_cache(directory: str) -> None:
  """Persistent compilation cache in ``directory`` for every executable (no size/time floor)."""
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

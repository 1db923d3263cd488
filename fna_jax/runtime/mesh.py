"""Device mesh and shardings: the batch is split over a ``'data'`` axis, the state replicated."""

from __future__ import annotations

import collections
import copy
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'
PREFETCH = 2  # batches on the devices per prefetcher: the one returned and the next (put ahead)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process) named ``'data'``."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``'data'``; the global batch must divide by its size."""
  return NamedSharding(mesh, P(DATA))


def put_batch(batch, mesh: Mesh):
  """Process-local numpy batch -> global jax arrays sharded on the batch axis."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def put_replicated(tree, mesh: Mesh):
  """A pytree with the same value in every process -> arrays replicated over ``mesh``.

  Unlike a bare ``jax.device_put(tree, replicated(mesh))`` this also works when the mesh spans
  devices of other processes (multi-host) for typed PRNG keys (``jax.random.key``), which
  ``device_put`` refuses there: they are sent as their raw key data and wrapped again.  Values
  held whole by this process (numpy, single-device arrays) are sent from the host.
  """
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and x.is_fully_addressable:
      x = np.asarray(x)
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


class DevicePrefetch:
  """Batches of a host iterator put on ``mesh`` (:func:`put_batch`) ahead of their use.

  ``next()`` first tops the buffer up to ``size`` batches already put (sharded over ``'data'``)
  and then returns the oldest, so with ``size=2`` the next batch is read and sent while the step
  just dispatched on the current one runs (jax dispatches asynchronously).  Batches come out in
  the iterator's order, unchanged.

  Resume.  The wrapped iterator has read up to ``size - 1`` batches more than the loop has
  consumed, so its own ``get_state()`` would skip them on resume.  :meth:`get_state` is the
  state after the last *consumed* batch: the iterator's state recorded just before reading the
  oldest batch still buffered (or its current state when nothing is buffered).
  :meth:`set_state` drops the buffer and restores the iterator; reading starts again from there.
  Iterators without ``get_state``/``set_state`` work too (no resume).
  """

  def __init__(self, iterator: Iterator[Any], mesh: Mesh, size: int = PREFETCH):
    if size < 1:
      raise ValueError(f'prefetch size must be at least 1, got {size}')
    self.iterator, self.mesh, self.size = iterator, mesh, int(size)
    self._buffer: collections.deque = collections.deque()  # (state before, device batch)
    self._done = False

  def __iter__(self):
    return self

  def _state(self):
    get = getattr(self.iterator, 'get_state', None)
    return copy.deepcopy(get()) if get is not None else None

  def __next__(self):
    while not self._done and len(self._buffer) < self.size:
      state = self._state()
      try:
        host = next(self.iterator)
      except StopIteration:
        self._done = True
        break
      self._buffer.append((state, put_batch(host, self.mesh)))
    if not self._buffer:
      raise StopIteration
    return self._buffer.popleft()[1]

  def get_state(self):
    """The wrapped iterator's state after the last batch returned by ``next()``."""
    if self._buffer:
      return copy.deepcopy(self._buffer[0][0])
    return self._state()

  def set_state(self, state) -> None:
    """Restores the wrapped iterator to ``state`` (from :meth:`get_state`); drops the buffer."""
    self._buffer.clear()
    self._done = False
    self.iterator.set_state(state)

  def close(self) -> None:
    self._buffer.clear()
    close = getattr(self.iterator, 'close', None)
    if close is not None:
      close()


def prefetch_to_mesh(iterator: Iterator[Any], mesh: Mesh, size: int = PREFETCH) -> DevicePrefetch:
  """``iterator``'s host batches put on ``mesh`` ``size`` at a time ahead: :class:`DevicePrefetch`."""
  return DevicePrefetch(iterator, mesh, size)

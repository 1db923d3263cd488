"""Device mesh and shardings: the batch is split over a ``'data'`` axis, the state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'


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

"""A few search steps of a tiny supernet on a global mesh; run per process by test_processes.py.

As a script (one process of a multi-process CPU run; the caller sets ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=<local devices>`` in its environment)::

  python tests/_multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz CACHE_DIR

it joins the run through :func:`fna_jax.runtime.loop.setup_runtime` (``jax.distributed.initialize``
with a coordinator on ``localhost:PORT``), builds a mesh over every device of every process, feeds
its own rows of each global batch through :func:`fna_jax.runtime.mesh.put_batch`, runs
:func:`run_steps` and writes the final state (its local copy of the replicated arrays) to
``OUT.npz``.  Imported, :func:`run_steps` gives the single-process reference on any mesh.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.arch import Stem
from fna_jax.models import supernet as sn
from fna_jax.models.init import init_variables
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.spaces import SearchSpace, SpaceStage
from fna_jax.tasks import seg
from fna_jax.tasks.seg.heads import DeepLabV3Head
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.train import search

OPS = ('k3_e3', 'k5_e6')
GLOBAL_BATCH = 8   # images per step over all processes
SIZE = 16          # image side, pixels
NUM_CLASSES = 3
N_STEPS = 4        # weight steps; an arch step precedes each one from step WARMUP on
WARMUP = 2


def tiny_setup():
  """``(space, model, variables)``: the 3-stage supernet of tests/test_supernet.py + a small head."""
  space = SearchSpace('mbconv', Stem(8, 3, 2), (
      SpaceStage(8, 8, (('k3_e1',),)),
      SpaceStage(8, 12, (OPS, OPS + ('skip',)), stride=2),
      SpaceStage(12, 16, (OPS, OPS + ('skip',), OPS + ('skip',)), stride=2),
  ), name='tiny')
  model = SegmentationNet(sn.Supernet(space),
                          DeepLabV3Head(NUM_CLASSES, channels=8, rates=(1, 2, 3)))
  variables = init_variables(model, 0, (1, SIZE, SIZE, 3), train=False)
  return space, model, variables


def global_batch(seed: int) -> dict:
  """``{'image': (8, 16, 16, 3) float32, 'label': (8, 16, 16) int32}``, the same in every process."""
  rng = np.random.default_rng(seed)
  return {'image': rng.standard_normal((GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
          'label': rng.integers(0, NUM_CLASSES, (GLOBAL_BATCH, SIZE, SIZE)).astype(np.int32)}


def local_rows(batch: dict) -> dict:
  """This process's contiguous share of a global batch (its devices come in that order)."""
  n = GLOBAL_BATCH // jax.process_count()
  p = jax.process_index()
  return {k: v[p * n:(p + 1) * n] for k, v in batch.items()}


def run_steps(mesh) -> dict:
  """``N_STEPS`` weight steps (uniform paths for ``WARMUP``), arch steps after, on ``mesh``.

  Every batch is built from this process's rows with ``put_batch``; its global shape and the rows
  each local shard holds are checked against the global batch.  Returns numpy arrays (this
  process's copy of the replicated state): ``params/...``, ``batch_stats/...``, ``alphas`` (L, K),
  ``paths`` (N_STEPS, L) int32 and ``losses`` (N_STEPS,) float32.
  """
  space, model, variables = tiny_setup()
  table = search.cost_table(model, variables, space, (1, SIZE, SIZE, 3))
  sched = search.Schedule(total_steps=10, warmup_steps=WARMUP, lr_warmup_steps=2)
  opt_w, _ = search.weight_optimizer(sched, lr=0.05)
  fns = search.SearchFns(model, space, seg.segmentation_loss, table, 5e-3, opt_w,
                         search.arch_optimizer(lr=0.05))
  w_step, a_step = search.jit_steps(fns, mesh)
  state = search.init_state(fns, jax.tree.map(jnp.asarray, variables),
                            sn.init_alphas(jax.random.key(2), space), jax.random.key(3))
  state = mesh_lib.put_replicated(state, mesh)

  def put(seed):
    full = global_batch(seed)
    arrays = mesh_lib.put_batch(local_rows(full), mesh)
    for k, a in arrays.items():
      assert a.shape == full[k].shape, (k, a.shape, full[k].shape)
      for shard in a.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), full[k][shard.index])
    return arrays

  paths, losses = [], []
  for i in range(N_STEPS):
    if i >= WARMUP:
      state, _ = a_step(state, put(100 + i))
    state, m = w_step(state, put(i), jnp.asarray(i < WARMUP))
    paths.append(_local(m['path']))
    losses.append(_local(m['loss']))
  out = {'alphas': _local(state.alphas), 'paths': np.stack(paths).astype(np.int32),
         'losses': np.asarray(losses, np.float32)}
  for name in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(state, name)):
      out[name + jax.tree_util.keystr(path, simple=True, separator='/')] = _local(leaf)
  return out


def _local(x) -> np.ndarray:
  """A replicated (possibly multi-process) array as numpy, from this process's first shard."""
  assert x.sharding.is_fully_replicated, x.sharding
  return np.asarray(x.addressable_data(0))


def main(argv):
  process_id, num_processes, port, out, cache_dir = argv[1:6]
  from fna_jax.runtime import loop
  jax.config.update('jax_default_matmul_precision', 'highest')
  loop.setup_runtime({'coordinator_address': f'localhost:{port}',
                      'num_processes': int(num_processes), 'process_id': int(process_id)},
                     cache_dir)
  info = np.asarray([jax.process_index(), jax.process_count(), jax.local_device_count(),
                     jax.device_count()])
  result = run_steps(mesh_lib.make_mesh())
  np.savez(out, info=info, **result)


if __name__ == '__main__':
  main(sys.argv)

"""The NaN guard of the training loops on a whole (tiny) parameter-adaptation run.

When the loss becomes non-finite the run must stop at once, naming the step, keep on disk only
checkpoints taken before the bad step (so every saved leaf is finite), and a plain rerun must
resume from the last good checkpoint.  The fine-tuning loop (parameter adaptation, paper
Sec. 3.2.3) is used because it compiles one step of a small derived network, much cheaper than
the supernet's two search steps; both loops share ``loop.check_finite`` and
``loop.checkpoint_or_stop``.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo as demo_config
from fna_jax.data import transforms as T
from fna_jax.models.init import variable_shapes
from fna_jax import build
from fna_jax.runtime import loop
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps
from fna_jax.runtime.checkpoint import RunCheckpoints
from fna_jax.train import adapt
from fna_jax.train.adapt_loop import build_network, read_search, run_adapt


def tiny_adapt_config(tmp_path_factory, **adapt_kw):
  """Demo config shrunk to seconds: 32x32 images, one layer per stage, a narrow DeepLabv3 head."""
  c = demo_config.get_config('rand_both')  # random init: no seed pretraining, no supernet
  c.data.update(num_train=64, num_val=11, image_size=32, crop_size=32)
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e3')
  c.head.update(name='deeplabv3', channels=16)
  c.adapt.update(head='deeplabv3', init='random', steps=6, batch_size=8, crop_size=32,
                 bn_recalib_steps=0, warmup_steps=0, lr=0.02)
  c.adapt.update(adapt_kw)
  c.eval.update(batch_size=8, num_visualize=0)
  c.cost_input_size = (32, 32)
  c.log_every = 1
  c.checkpoint_every = 2
  c.xla_cache_dir = str(tmp_path_factory.getbasetemp() / 'xla_cache')
  return c


def fake_search_dir(config, directory) -> str:
  """A finished search's ``arch.json`` + ``summary.json`` (first op everywhere), written by hand.

  With ``adapt.init='random'`` that is all parameter adaptation reads from a search run.
  """
  space = build.space(config)
  layers = space.searched_layers()
  arch = space.derive([0] * len(layers))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'arch.json'), 'w') as f:
    f.write(arch.to_json())
  with open(os.path.join(directory, 'summary.json'), 'w') as f:
    json.dump({'choices': [space.candidates(i, j)[0] for i, j in layers]}, f)
  return str(directory)


def restore_state(workdir, config, like, step=None):
  """``(step, AdaptState)`` of the checkpoint of ``step`` (default: the newest) in ``workdir``.

  ``like``: variables with the structure of the network (the restore target).
  """
  ac = config.adapt
  tx, _ = adapt.finetune_optimizer_from_config(ac)  # the adapt run's optimiser (state structure)
  target = steps.init_state(tx, like, jax.random.key(0))
  ckpts = RunCheckpoints(workdir)
  try:
    if step is None:
      step, state, _ = ckpts.restore_latest(target)
    else:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
      state = ckpts.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
  finally:
    ckpts.close()
  return step, jax.device_get(state)


def template_variables(config, search_dir):
  """Zero variables with the structure of the adapted network (a restore target)."""
  arch, _ = read_search(search_dir)
  crop = config.adapt.crop_size
  shapes = variable_shapes(build_network(arch, config), (1, crop, crop, 3), train=False)
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def float_leaves(tree):
  """Every floating-point leaf (weights, BN statistics, momenta) as numpy; skips step and key."""
  return [np.asarray(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def test_nan_loss_stops_naming_the_step_keeps_a_finite_checkpoint_and_resumes(
    tmp_path_factory, monkeypatch):
  c = tiny_adapt_config(tmp_path_factory, steps=4)
  # No progress line before the end: the losses are fetched (and checked) only before each
  # checkpoint, so the bad step is found at the step-4 checkpoint, which is then not written.
  c.log_every = 100
  search_dir = fake_search_dir(c, tmp_path_factory.mktemp('search'))
  workdir = str(tmp_path_factory.mktemp('nan_adapt'))
  bad_step = 3  # after the step-2 checkpoint (checkpoint_every=2), before the step-4 one

  # The cause: the batch of step 3 carries a NaN pixel (the uint8 batch replaced by its
  # host-normalised float32 version, which the train step takes as it is), so its loss and
  # (through the SGD update) every weight after it are NaN, as with a diverging learning rate.
  # bn_recalib_steps=0, so put_batch is called once per batch, in order; the loop's prefetcher
  # puts each batch PREFETCH - 1 steps ahead of its step.
  real_put_batch = mesh_lib.put_batch
  calls = []

  def poisoned_put_batch(batch, mesh):
    calls.append(1)
    if len(calls) == bad_step:
      image = T.normalize(np.asarray(batch['image']))
      image.flat[0] = np.nan
      batch = dict(batch, image=image)
    return real_put_batch(batch, mesh)

  monkeypatch.setattr(mesh_lib, 'put_batch', poisoned_put_batch)
  with pytest.raises(loop.NonFiniteLossError, match=rf'^step {bad_step}: loss is nan\b') as e:
    run_adapt(c, workdir, search_dir, log=lambda s: None)
  assert os.path.join(workdir, 'checkpoints') in str(e.value)
  # It ran on to the next check (the step-4 checkpoint) without waiting for the steps' losses,
  # named the first bad step there, and wrote nothing after it.
  assert len(calls) == bad_step + 1 + (mesh_lib.PREFETCH - 1)
  assert not os.path.exists(os.path.join(workdir, 'model'))  # no result written

  # The checkpoint on disk is the one before the bad step, and all of it is finite.
  assert RunCheckpoints(workdir).latest_step() == 2
  template = template_variables(c, search_dir)
  step, state = restore_state(workdir, c, template)
  assert step == 2 and int(state.step) == 2
  leaves = float_leaves(state)
  assert len(leaves) > 10
  for x in leaves:
    assert np.all(np.isfinite(x))

  # Rerun without the cause: it resumes at the checkpoint's step and runs the remaining steps.
  monkeypatch.undo()
  counted = []
  monkeypatch.setattr(mesh_lib, 'put_batch',
                      lambda b, m: (counted.append(1), real_put_batch(b, m))[1])
  lines = []
  result = run_adapt(c, workdir, search_dir, log=lines.append)
  resumed = [l for l in lines if l.startswith('resumed from')]
  assert len(resumed) == 1 and re.search(r'at step 2$', resumed[0]), lines
  assert len(counted) == c.adapt.steps - 2 + (mesh_lib.PREFETCH - 1)  # + the batch put ahead
  assert result is not None
  for x in float_leaves(result.variables):
    assert np.all(np.isfinite(x))
  step, state = restore_state(workdir, c, template)
  assert step == c.adapt.steps and int(state.step) == c.adapt.steps



def test_pending_metrics_name_the_first_bad_step_and_fetch_nothing_before_a_check(tmp_path):
  """``PendingMetrics.add`` keeps device arrays (no transfer); ``check`` raises for the first
  non-finite loss among the pending steps, naming it, and returns the last step's floats."""
  class Closable:
    directory = str(tmp_path)
    closed = False

    def close(self):
      self.closed = True

  pending = loop.PendingMetrics()
  for step, value in ((1, 0.5), (2, 0.25)):
    pending.add(step, {'loss': jnp.float32(value), 'arch_loss': jnp.float32(1.0)})
  assert all(isinstance(v, jax.Array) for _, m in pending._pending for v in m.values())
  assert pending.check(Closable()) == {'loss': 0.25, 'arch_loss': 1.0}
  for step, value in ((3, 0.1), (4, float('nan')), (5, float('inf'))):
    pending.add(step, {'loss': jnp.float32(value)})
  ckpts = Closable()
  with pytest.raises(loop.NonFiniteLossError, match=r'^step 4: loss is nan'):
    pending.check(ckpts)
  assert ckpts.closed

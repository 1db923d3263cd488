"""The search run end to end on the embedded demo data: outputs, resume after a kill, NaN stop."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo as demo_config
from fna_jax import arch as arch_lib
from fna_jax import models, seeds
from fna_jax.models.init import init_variables
from fna_jax.runtime import loop
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime.checkpoint import RunCheckpoints
from fna_jax.train.search_loop import run_search


def tiny_config(tmp_path_factory, **search):
  c = demo_config.get_config()
  c.data.num_train = 80
  c.data.image_size = c.data.crop_size = 32
  c.space.max_layers = (1, 1, 2, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e3')
  c.head.channels = 16
  c.search.update(epochs=3, warmup_epochs=1, batch_size=8, init='random')
  c.search.update(search)
  c.cost_input_size = (32, 32)
  c.log_every = 2
  c.checkpoint_every = 3
  c.xla_cache_dir = str(tmp_path_factory.getbasetemp() / 'xla_cache')
  return c


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  c = tiny_config(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp('full'))
  return c, workdir, run_search(c, workdir, log=lambda s: None)


def test_outputs(full_run):
  c, workdir, result = full_run
  for name in ('arch.json', 'arch.txt', 'alphas.npz', 'summary.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  arch = arch_lib.load(os.path.join(workdir, 'arch.json'))
  assert arch == result.arch
  with open(os.path.join(workdir, 'arch.txt')) as f:
    text = f.read()
  # The release notation (no dilation, strides before the seg space's output-stride-16
  # conversion) rebuilds the searched network once converted again.
  assert arch.output_stride == 16
  assert arch_lib.Arch.from_release_string(text, last_channels=arch.last_channels
                                           ).with_output_stride(16) == arch
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['madds'] == result.cost.madds > 0 and summary['params'] > 0
  hist = np.load(os.path.join(workdir, 'alphas.npz'))
  # 8 weight-split examples per step -> 64 weight examples / 8 = 8 steps per epoch, 24 steps.
  assert list(hist['steps']) == list(range(2, 25, 2))
  np.testing.assert_allclose(hist['probs'].sum(-1), 1.0, rtol=1e-5)
  # alphas only move after warm-up (8 steps)
  assert np.allclose(hist['probs'][0], hist['probs'][3]) and not np.allclose(
      hist['probs'][3], hist['probs'][-1])


def test_resume_after_kill_gives_the_same_architecture(full_run, tmp_path_factory):
  c, _, result = full_run
  workdir = str(tmp_path_factory.mktemp('killed'))
  assert run_search(c, workdir, log=lambda s: None, stop_after=10) is None  # killed at step 10
  assert RunCheckpoints(workdir).latest_step() == 10
  resumed = run_search(c, workdir, log=lambda s: None)
  assert resumed.choices == result.choices
  a = np.load(os.path.join(workdir, 'alphas.npz'))['probs']
  b = np.load(os.path.join(result.workdir, 'alphas.npz'))['probs']
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_remap_from_seed_checkpoint(tmp_path_factory):
  c = tiny_config(tmp_path_factory, init='remap', epochs=1)
  seed_dir = str(tmp_path_factory.mktemp('seed') / 'mbv2')
  arch = arch_lib.mobilenet_v2()
  seeds.save_seed(seed_dir, arch, init_variables(models.build(arch), 0, (1, 32, 32, 3)))
  c.seed_net.checkpoint = seed_dir
  lines = []
  result = run_search(c, str(tmp_path_factory.mktemp('remap')), log=lines.append)
  assert any('remapped from the seed' in l for l in lines)
  assert result.arch.family == 'mbconv'


@pytest.mark.slow
def test_nan_loss_stops_with_last_good_checkpoint(tmp_path_factory, monkeypatch):
  """The search's own wiring of the NaN guard: a NaN weight batch after the step-3 checkpoint
  stops the run at that step, the step-3 checkpoint is finite, and a rerun resumes from it."""
  c = tiny_config(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp('nan'))
  real_put_batch = mesh_lib.put_batch
  weight_batches = []

  def poisoned(batch, mesh):  # warm-up steps (1-8) put one weight batch each, in order
    weight_batches.append(1)
    if len(weight_batches) == 5:
      # The images are uint8 (the compiled steps take nothing else): a label outside [0, C)
      # that is not the ignore label makes the cross-entropy NaN (jnp.take_along_axis fills
      # out-of-range gathers with NaN).
      label = np.array(batch['label'])
      label.flat[0] = c.data.num_classes
      batch = dict(batch, label=label)
    return real_put_batch(batch, mesh)

  monkeypatch.setattr(mesh_lib, 'put_batch', poisoned)
  with pytest.raises(loop.NonFiniteLossError, match=r'^step 5: loss is nan'):
    run_search(c, workdir, log=lambda s: None)
  ckpts = RunCheckpoints(workdir)
  assert ckpts.latest_step() == 3  # checkpoint_every=3
  restored = ckpts.manager.restore(3, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  leaves = [np.asarray(x) for x in jax.tree.leaves(restored['state'])
            if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  assert len(leaves) > 10 and all(np.all(np.isfinite(x)) for x in leaves)
  ckpts.close()
  monkeypatch.undo()
  lines = []
  assert run_search(c, workdir, log=lines.append) is not None
  assert any(l.startswith('resumed from') and l.endswith('at step 3') for l in lines), lines


def test_missing_seed_checkpoint_says_how_to_convert(tmp_path_factory):
  c = tiny_config(tmp_path_factory, init='remap')
  c.seed_net.pretrain.steps = 0
  with pytest.raises(FileNotFoundError, match='python -m weights_convert'):
    run_search(c, str(tmp_path_factory.mktemp('noseed')), log=lambda s: None)

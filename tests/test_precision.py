"""Mixed precision (``config.compute_dtype='bfloat16'``): the train steps compute in bfloat16 with
float32 parameters and BatchNorm statistics, and their losses agree with float32's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo
from fna_jax import build
from fna_jax.models import supernet as sn
from fna_jax.models.init import init_variables, random_like, variable_shapes
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import precision
from fna_jax.runtime import steps as steps_lib
from fna_jax.train import search, search_loop

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%); through ~15 conv + BN
# layers the errors add up to about a percent of a cross-entropy loss of ~1.8, which is what we
# allow.  A broken cast (e.g. BatchNorm statistics in bfloat16, or a loss on bfloat16 outputs)
# stays within this too, so the dtypes are checked separately below.
LOSS_RTOL = 2e-2


def _tiny_config():
  c = demo.get_config()
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e3')
  c.head.channels = 16
  c.search.batch_size = 4
  return c


def _batch(c, n=4, size=32):
  rng = np.random.default_rng(0)
  return {'image': rng.normal(size=(n, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, c.data.num_classes, (n, size, size)).astype(np.int32)}


def _conv_dtypes(fn, *args) -> set[str]:
  """dtypes of the convolutions and matrix products in ``fn``'s jaxpr (inner jaxprs too)."""
  text = str(jax.make_jaxpr(fn)(*args))
  return {dt for dt in ('bf16', 'f32') for line in text.splitlines()
          if ('conv_general_dilated' in line or 'dot_general' in line) and f'{dt}[' in
          line.split('=')[0]}


def test_compute_dtype_names():
  assert precision.compute_dtype('float32') is None and precision.compute_dtype('') is None
  assert precision.compute_dtype('bfloat16') == jnp.bfloat16
  with pytest.raises(ValueError, match='compute_dtype'):
    precision.compute_dtype('float16')


def test_train_step_bfloat16_agrees_with_float32():
  """The supervised step (fine-tuning, pretraining): same loss within LOSS_RTOL; parameters,
  optimiser state and BatchNorm statistics stay float32; the convolutions do run in bfloat16."""
  c = _tiny_config()
  space = build.space(c)
  net = build.task_network(c, space.derive([0] * space.num_searched))
  variables = init_variables(net, 0, (1, 32, 32, 3))
  task, tx, mesh = build.task(c), optax.sgd(0.01, momentum=0.9), build.mesh(jax.devices()[:1])
  batch = mesh_lib.put_batch(_batch(c), mesh)
  out = {}
  for name, dt in (('f32', None), ('bf16', jnp.bfloat16)):
    state = mesh_lib.put_replicated(steps_lib.init_state(tx, variables, jax.random.key(0)), mesh)
    step = steps_lib.jit_train_step(net, tx, task.loss, mesh, dt)
    convs = _conv_dtypes(lambda s, b: steps_lib.train_step(net, tx, task.loss, s, b, dt),
                         state, batch)
    assert convs == ({'f32'} if dt is None else {'bf16'}), (name, convs)
    new, metrics = step(state, batch)
    for leaf in jax.tree.leaves((new.params, new.batch_stats, new.opt)):
      assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    out[name] = (float(metrics['loss']), new.batch_stats)
  assert out['bf16'][0] == pytest.approx(out['f32'][0], rel=LOSS_RTOL)
  assert out['bf16'][0] != out['f32'][0]        # it did compute in another precision
  # The running statistics' updates (0.1 x the batch statistics minus the old value), over the
  # whole tree: bfloat16 activations of this randomly initialised network change the deepest
  # layers' batch variances by up to ~14% element-wise, the whole update by ~5%; 10% allowed.
  def update(stats):
    return np.concatenate([(np.asarray(s) - np.asarray(v)).ravel() for s, v in zip(
        jax.tree.leaves(stats), jax.tree.leaves(variables['batch_stats']))])
  d_bf16, d_f32 = update(out['bf16'][1]), update(out['f32'][1])
  assert np.linalg.norm(d_bf16 - d_f32) < 0.1 * np.linalg.norm(d_f32)


@pytest.mark.slow
def test_search_steps_bfloat16_agree_with_float32():
  """The search's weight step (one path) and arch step (all paths): same losses within
  LOSS_RTOL; alphas and parameters stay float32."""
  results = {}
  for name in ('float32', 'bfloat16'):
    c = _tiny_config()
    c.compute_dtype = name
    space = build.space(c)
    model = build.search_network(c, space)
    variables = random_like(variable_shapes(model, (1, 32, 32, 3), train=False), 0)
    table = search.cost_table(model, variables, space, (1, 32, 32, 3))
    fns, _ = search_loop.make_search_fns(c, model, space, table, search.Schedule(100, 0, 0))
    assert fns.compute_dtype == precision.compute_dtype(name)
    mesh = build.mesh(jax.devices()[:1])
    w_step, a_step = search.jit_steps(fns, mesh)
    alphas = sn.init_alphas(jax.random.key(0), space)
    state = mesh_lib.put_replicated(
        search.init_state(fns, variables, alphas, jax.random.key(1)), mesh)
    batch = mesh_lib.put_batch(_batch(c), mesh)
    state, wm = w_step(state, batch, True)
    state, am = a_step(state, batch)
    assert state.alphas.dtype == jnp.float32
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(state.params))
    results[name] = (float(wm['loss']), float(am['arch_task_loss']),
                     np.asarray(state.alphas) - np.asarray(alphas))
  f, b = results['float32'], results['bfloat16']
  assert b[0] == pytest.approx(f[0], rel=LOSS_RTOL) and b[1] == pytest.approx(f[1], rel=LOSS_RTOL)
  # Not compared: the alphas' first Adam step (lr * sign(grad)).  At initialisation the
  # candidates' outputs differ little, so the alphas' gradients are small differences of large
  # sums, and in bfloat16 half of this tiny space's layers flipped their sign.
  assert np.all(np.abs(b[2]) > 0)              # the arch step did update the alphas

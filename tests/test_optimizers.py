"""The search and fine-tuning optimisers as the authors' release configures them.

Search (``fna_det/configs/fna_retinanet_fpn_search.py`` of the release): Adam with betas
``(0.5, 0.999)`` for the alphas, gradients of both optimisers clipped at a global L2 norm of 35.
Fine-tuning (``fna_seg/furnace/utils/init_func.py: group_weight`` and
``fna_seg/model/deeplab/cityscapes.deeplabv3/config.py``): the head at 10x the lr, no weight decay
on BatchNorm scales/biases and biases, 5000 warm-up iterations from 1e-4 (``PolyLR``).

Every expected update is recomputed in numpy with torch's formulas (``torch.optim.SGD``/``Adam``
with coupled weight decay, ``clip_grad_norm_`` on the raw gradients).  float32 optax against
float64 numpy: relative tolerance 1e-5 (a few float32 ulps through a handful of operations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo, seg_cityscapes
from fna_jax import build
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.train import adapt, search, search_loop

RTOL = 1e-5


def _search_optimizers(config, schedule=None):
  """``(opt_w, lr_fn, opt_a)`` exactly as the search run builds them from ``config``."""
  schedule = schedule or search.Schedule(total_steps=10, warmup_steps=0, lr_warmup_steps=4)
  fns, lr_fn = search_loop.make_search_fns(config, None, None, None, schedule)
  return fns.opt_w, lr_fn, fns.opt_a


def _run(tx, params, grads_seq):
  """Updates of ``tx`` for the gradients ``grads_seq`` (params updated in between)."""
  state = tx.init(params)
  out = []
  for g in grads_seq:
    upd, state = tx.update(g, state, params)
    params = optax.apply_updates(params, upd)
    out.append(jax.tree.map(np.asarray, upd))
  return out


def _np_adam(p, grads, lr, wd, b1, b2, eps=1e-8):
  """torch.optim.Adam (coupled weight decay) in float64: the update of every step."""
  p = np.asarray(p, np.float64)
  m, v, out = np.zeros_like(p), np.zeros_like(p), []
  for t, g in enumerate(grads, 1):
    g = np.asarray(g, np.float64) + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = -lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    out.append(step)
    p = p + step
  return out


def _clip_np(grads: dict, max_norm: float) -> dict:
  """torch.nn.utils.clip_grad_norm_: scale every gradient by ``max_norm / global_norm`` if > 1."""
  norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values()))
  scale = min(1.0, max_norm / norm)
  return {k: np.asarray(g, np.float64) * scale for k, g in grads.items()}


# --------------------------------------------------------------------------- search
def test_search_config_is_the_release_recipe():
  sc = seg_cityscapes.get_config().search
  assert (sc.a_b1, sc.a_b2, sc.grad_clip_norm) == (0.5, 0.999, 35.0)
  assert demo.get_config().search.grad_clip_norm == 35.0


def test_arch_adam_uses_beta1_half():
  """Two Adam steps on the alphas (the second one depends on beta1) = torch's Adam, b1 = 0.5.

  Built by the search run's own code from the Cityscapes config, and with the function's
  defaults.  Gradients are small (norm << 35), so the clip does not act.
  """
  c = seg_cityscapes.get_config()
  _, _, opt_a = _search_optimizers(c)
  rng = np.random.default_rng(0)
  alphas = rng.normal(0, 1e-3, (4, 3)).astype(np.float32)
  grads = [rng.normal(0, 0.1, (4, 3)).astype(np.float32) for _ in range(2)]
  assert max(np.linalg.norm(g) for g in grads) < 35
  want = _np_adam(alphas, grads, c.search.a_lr, c.search.a_weight_decay, b1=0.5, b2=0.999)
  for tx in (opt_a, search.arch_optimizer(lr=c.search.a_lr,
                                          weight_decay=c.search.a_weight_decay)):
    got = _run(tx, jnp.asarray(alphas), [jnp.asarray(g) for g in grads])
    for t in range(2):
      np.testing.assert_allclose(got[t], want[t], rtol=RTOL, atol=1e-12)
  # Sanity of the check: with b1 = 0.9 the second update differs by far more than the tolerance.
  other = _np_adam(alphas, grads, c.search.a_lr, c.search.a_weight_decay, b1=0.9, b2=0.999)
  assert np.max(np.abs(other[1] - want[1])) > 100 * RTOL * np.max(np.abs(want[1]))


@pytest.mark.parametrize('scale', [100.0, 0.01])
def test_weight_step_gradient_clip(scale):
  """SGD on two weight arrays: the raw gradients are clipped to global norm 35 (if above), then
  weight decay is added; first step: ``update = -lr(0) * (clip(g) + wd * w)``."""
  c = seg_cityscapes.get_config()
  opt_w, lr_fn, _ = _search_optimizers(c)
  rng = np.random.default_rng(1)
  params = {'a': rng.normal(0, 1, (3, 5)).astype(np.float32),
            'b': rng.normal(0, 1, (7,)).astype(np.float32)}
  grads = {k: (scale * rng.normal(0, 1, v.shape)).astype(np.float32) for k, v in params.items()}
  norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
  assert (norm > 35) == (scale > 1)
  clipped = _clip_np(grads, 35.0)
  lr0 = c.search.w_lr_start  # the linear warm-up starts at w_lr_start
  want = {k: -lr0 * (clipped[k] + c.search.w_weight_decay * params[k].astype(np.float64))
          for k in params}
  got = _run(opt_w, jax.tree.map(jnp.asarray, params), [jax.tree.map(jnp.asarray, grads)])[0]
  assert float(lr_fn(0)) == pytest.approx(lr0, rel=RTOL)  # float32 schedule
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize('scale', [1000.0, 0.01])
def test_arch_step_gradient_clip(scale):
  """Two Adam steps on the alphas with gradients of different norms, both above 35 (or both
  below): each is clipped to norm 35 on its own, which changes the ratio between them and so the
  second update (Adam's first update, ``-lr * sign(d)``, hardly depends on the scale)."""
  c = seg_cityscapes.get_config()
  _, _, opt_a = _search_optimizers(c)
  rng = np.random.default_rng(2)
  alphas = rng.normal(0, 1e-3, (5, 4)).astype(np.float32)
  grads = [(scale * f * rng.normal(0, 1, (5, 4))).astype(np.float32) for f in (1.0, 4.0)]
  assert all((np.linalg.norm(g) > 35) == (scale > 1) for g in grads)
  clipped = [_clip_np({'g': g}, 35.0)['g'] for g in grads]
  want = _np_adam(alphas, clipped, c.search.a_lr, c.search.a_weight_decay, 0.5, 0.999)
  got = _run(opt_a, jnp.asarray(alphas), [jnp.asarray(g) for g in grads])
  for t in range(2):
    np.testing.assert_allclose(got[t], want[t], rtol=RTOL, atol=1e-12)
  if scale > 1:  # the unclipped gradients give another update (the test can tell)
    raw = _np_adam(alphas, grads, c.search.a_lr, c.search.a_weight_decay, 0.5, 0.999)
    assert np.max(np.abs(raw[1] - want[1])) > 100 * RTOL * np.max(np.abs(want[1]))


def test_grad_clip_off():
  c = seg_cityscapes.get_config()
  c.search.grad_clip_norm = 0.0
  opt_w, _, _ = _search_optimizers(c)
  params = {'a': np.ones((4,), np.float32)}
  grads = {'a': np.full((4,), 100.0, np.float32)}
  got = _run(opt_w, params, [grads])[0]['a']
  np.testing.assert_allclose(got, -c.search.w_lr_start * (100.0 + c.search.w_weight_decay),
                             rtol=RTOL)


# --------------------------------------------------------------------------- fine-tuning
def test_adapt_config_is_the_release_recipe():
  ac = seg_cityscapes.get_config().adapt
  assert ac.warmup_steps == 5000 and ac.warmup_start_lr == 1e-4 and ac.lr == 0.01
  assert (ac.momentum, ac.weight_decay, ac.poly_power) == (0.9, 5e-4, 0.9)
  assert (ac.head_lr_mult, ac.no_decay_bn_bias) == (10.0, True)
  assert demo.get_config().adapt.warmup_steps == 20  # the demo keeps its own short warm-up


def _tiny_params():
  rng = np.random.default_rng(3)
  f = lambda *s: rng.normal(0, 1, s).astype(np.float32)
  return {'backbone': {'conv': {'kernel': f(3, 3, 2, 4)},
                       'conv_bn': {'scale': 1 + f(4), 'bias': f(4)}},
          'head': {'classifier': {'kernel': f(1, 1, 4, 3), 'bias': f(3)}}}


def test_finetune_two_sgd_steps_match_torch_param_groups():
  """Two steps of the Cityscapes config's optimiser = torch SGD over the release's groups.

  lr from the release's PolyLR warm-up, ``1e-4 + (0.01 - 1e-4) / 5000 * it``; the head's groups
  at 10x; weight decay only on conv kernels; momentum ``buf = 0.9 buf + d_p`` (``buf = d_p`` on
  the first step), ``p -= lr_group * buf``.
  """
  ac = seg_cityscapes.get_config().adapt
  tx, _ = adapt.finetune_optimizer_from_config(ac)
  params = _tiny_params()
  rng = np.random.default_rng(4)
  grads = [jax.tree.map(lambda x: rng.normal(0, 1, x.shape).astype(np.float32), params)
           for _ in range(2)]
  got = _run(tx, jax.tree.map(jnp.asarray, params), grads)

  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(x, np.float64)
                    for p, x in jax.tree_util.tree_leaves_with_path(t)}
  p, bufs = flat(params), {}
  for it in range(2):
    lr = 1e-4 + (0.01 - 1e-4) / 5000 * it
    g = flat(grads[it])
    want = {}
    for k in p:
      d_p = g[k] + (5e-4 * p[k] if k.endswith("['kernel']") else 0.0)
      bufs[k] = d_p if it == 0 else 0.9 * bufs[k] + d_p
      want[k] = -(10 * lr if k.startswith("['head']") else lr) * bufs[k]
    out = flat(got[it])
    assert out.keys() == want.keys()
    for k in p:
      np.testing.assert_allclose(out[k], want[k], rtol=RTOL, atol=1e-12, err_msg=k)
      p[k] = p[k] + want[k]


def test_finetune_old_behaviour_reachable():
  """``head_lr_mult=1, no_decay_bn_bias=False``: plain coupled-decay SGD on every leaf, with the
  optimiser state of that plain chain (checkpoints written before the groups existed resume)."""
  lr_fn = adapt.poly_schedule(0.01, 100, 10, 1e-4)
  tx = adapt.finetune_optimizer(lr_fn, 0.9, 5e-4, head_lr_mult=1.0, no_decay_bn_bias=False)
  plain = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr_fn, momentum=0.9))
  params = jax.tree.map(jnp.asarray, _tiny_params())
  rng = np.random.default_rng(5)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 1, x.shape), jnp.float32), params)
           for _ in range(3)]
  assert (jax.tree.structure(tx.init(params)) == jax.tree.structure(plain.init(params)))
  for a, b in zip(_run(tx, params, grads), _run(plain, params, grads)):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def test_param_groups_of_a_real_network():
  """Every leaf of a small derived DeepLabv3 network gets a group: backbone kernels decayed at lr,
  BN scales and all biases undecayed, head leaves at 10x; one optimiser step with zero gradients
  shows the same through the optimiser (update = -mult * lr * wd * w on decayed leaves, else 0)."""
  c = demo.get_config('rand_both')
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.space.ops = ('k3_e3',)
  c.head.update(name='deeplabv3', channels=8)
  space = build.space(c)
  net = build.task_network(c, space.derive([0] * space.num_searched), head_name='deeplabv3')
  params = random_like(variable_shapes(net, (1, 32, 32, 3), train=False), 0)['params']
  labels = adapt.param_groups(params)
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  seen = set()
  for (path, x), label in zip(jax.tree_util.tree_leaves_with_path(params),
                              jax.tree.leaves(labels)):
    name = path[-1].key
    part = 'backbone' if path[0].key == 'backbone' else 'head'
    assert name in ('kernel', 'scale', 'bias'), path
    want = f'{part}_{"decay" if name == "kernel" else "no_decay"}'
    assert label == want, (jax.tree_util.keystr(path), label)
    assert (name == 'kernel') == (np.ndim(x) == 4)  # the 1-D cross-check agrees with the names
    seen.add(label)
  assert seen == {'backbone_decay', 'backbone_no_decay', 'head_decay', 'head_no_decay'}

  lr, wd = 0.1, 1e-2
  tx = adapt.finetune_optimizer(lambda step: lr, 0.9, wd)  # the defaults: the release's groups
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd = _run(tx, params, [zeros])[0]
  for (path, w), u in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(upd)):
    mult = 1.0 if path[0].key == 'backbone' else 10.0
    decay = wd if path[-1].key == 'kernel' else 0.0
    np.testing.assert_allclose(u, -mult * lr * decay * np.asarray(w, np.float64), rtol=RTOL,
                               atol=1e-12, err_msg=jax.tree_util.keystr(path))

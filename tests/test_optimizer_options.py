"""Optimiser and lr-schedule options: ``search.w_optimizer``/``w_lr_schedule`` and
``adapt.optimizer``/``lr_schedule`` (Adam and a multi-step lr for recipes such as the pose
search's SimpleBaseline weights, paper Sec. 4.3.1).

* The defaults build the segmentation recipe's optimisers exactly as before the options existed:
  the same optax state structure (old checkpoints resume) and bit-identical updates, against the
  chains written out here as they were built.
* 'adam' = ``torch.optim.Adam`` (default betas, coupled weight decay), recomputed in float64 numpy.
  Float32 optax against float64 numpy: relative tolerance 4e-5.  Adam's bias correction
  ``1 - b2^t`` is computed in float32 by optax: ``b2 = 0.999`` rounds to 0.99900001 and ``b2^t``
  near 1 carries an absolute error up to ulp(1)/2 = 6e-8, i.e. up to ~(1.3e-5 + 3e-5 / t)
  relative in ``1 - b2^t`` (~1e-3 t), halved by the square root: ~2e-5 on the update at t = 1, 2
  (1.2e-5 seen), against 1e-5 for plain float32 arithmetic (SGD, the lr).
* 'multistep' = ``torch.optim.lr_scheduler.MultiStepLR`` stepped after every update: values at
  and around the milestones by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import seg_cityscapes
from fna_jax.train import adapt, optim, search, search_loop

from test_optimizers import _run  # updates of a chain over a gradient sequence

RTOL = 1e-5
ADAM_RTOL = 4e-5  # float32 bias correction 1 - 0.999^t: see the module docstring


def _tiny_params(seed=3):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(0, 1, s).astype(np.float32)
  return {'backbone': {'conv': {'kernel': f(3, 3, 2, 4)},
                       'conv_bn': {'scale': 1 + f(4), 'bias': f(4)}},
          'head': {'classifier': {'kernel': f(1, 1, 4, 3), 'bias': f(3)}}}


def _grads(params, n, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda x: jnp.asarray(scale * rng.normal(0, 1, x.shape), jnp.float32),
                       params) for _ in range(n)]


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x, np.float64)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _np_adam_steps(p, grads, lrs, wd, decayed=lambda k: True, mult=lambda k: 1.0,
                   b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam over param groups, float64: ``p``/``grads`` flat dicts; step ``t`` at lr
  ``lrs[t]`` (times ``mult(key)``), weight decay ``wd`` added to the gradient of the leaves with
  ``decayed(key)`` (torch's coupled decay).  Returns the update of every step."""
  p = dict(p)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t, (g, lr) in enumerate(zip(grads, lrs), 1):
    step = {}
    for k in p:
      d = g[k] + (wd * p[k] if decayed(k) else 0.0)
      m[k] = b1 * m[k] + (1 - b1) * d
      v[k] = b2 * v[k] + (1 - b2) * d * d
      step[k] = -mult(k) * lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      p[k] = p[k] + step[k]
    out.append(step)
  return out


def _assert_updates(got, want):
  for t, (g, w) in enumerate(zip(got, want)):
    g = _flat(g)
    assert g.keys() == w.keys()
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=ADAM_RTOL, atol=1e-12,
                                 err_msg=f'step {t} {k}')


# --------------------------------------------------------------------------- defaults = today
def test_search_defaults_build_todays_sgd_cosine_chain():
  """The Cityscapes config's weight optimiser = the chain as it was built before the options:
  clip 35, coupled decay, SGD momentum over linear warm-up + cosine; same state structure and
  bit-identical updates over 3 steps (the first one clipped)."""
  c = seg_cityscapes.get_config()
  sc = c.search
  assert (sc.w_optimizer, sc.w_lr_schedule) == ('sgd', 'cosine')
  sched = search_loop.schedule_from_config(sc, steps_per_epoch=1)
  assert sched == search.Schedule(sc.epochs, sc.warmup_epochs, sc.w_lr_warmup_epochs)
  fns, lr_fn = search_loop.make_search_fns(c, None, None, None, sched)
  old_lr = optax.join_schedules([
      optax.linear_schedule(sc.w_lr_start, sc.w_lr, max(sched.lr_warmup_steps, 1)),
      optax.cosine_decay_schedule(sc.w_lr, max(sched.total_steps - sched.lr_warmup_steps, 1),
                                  alpha=sc.w_lr_end / sc.w_lr)], [sched.lr_warmup_steps])
  old = optax.chain(optax.clip_by_global_norm(35.0), optax.add_decayed_weights(sc.w_weight_decay),
                    optax.sgd(old_lr, momentum=sc.w_momentum))
  params = jax.tree.map(jnp.asarray, _tiny_params())
  grads = _grads(params, 1, 0, scale=100.0) + _grads(params, 2, 1)  # norm >> 35, then < 35
  assert jax.tree.structure(fns.opt_w.init(params)) == jax.tree.structure(old.init(params))
  for a, b in zip(_run(fns.opt_w, params, grads), _run(old, params, grads)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  for step in (0, 3, sched.lr_warmup_steps, sched.total_steps - 1):
    assert float(lr_fn(step)) == float(old_lr(step))


def test_adapt_defaults_build_todays_sgd_poly_chain():
  """The Cityscapes config's fine-tuning optimiser = the chain as it was: masked coupled decay,
  SGD momentum over warm-up + poly, head update x10; same state structure, identical updates."""
  ac = seg_cityscapes.get_config().adapt
  assert (ac.optimizer, ac.lr_schedule) == ('sgd', 'poly')
  tx, lr_fn = adapt.finetune_optimizer_from_config(ac)
  old_lr = adapt.poly_schedule(ac.lr, ac.steps, ac.warmup_steps, ac.warmup_start_lr,
                               ac.poly_power)
  decay = lambda p: jax.tree.map(lambda l: not l.endswith('_no_decay'), adapt.param_groups(p))
  head = lambda p: jax.tree.map(lambda l: l.startswith('head_'), adapt.param_groups(p))
  old = optax.chain(optax.add_decayed_weights(ac.weight_decay, mask=decay),
                    optax.sgd(old_lr, momentum=ac.momentum),
                    optax.masked(optax.scale(ac.head_lr_mult), head))
  params = jax.tree.map(jnp.asarray, _tiny_params())
  grads = _grads(params, 3, 2)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(old.init(params))
  for a, b in zip(_run(tx, params, grads), _run(old, params, grads)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  for step in (0, 1, ac.warmup_steps, ac.steps // 2, ac.steps - 1):
    assert float(lr_fn(step)) == float(old_lr(step))


# --------------------------------------------------------------------------- Adam
@pytest.mark.parametrize('wd', [0.0, 1e-2])
def test_search_adam_multistep_matches_torch(wd):
  """``w_optimizer='adam'``, ``w_lr_schedule='multistep'`` (the pose recipe's weights; paper
  Sec. 4.3.1), built by the search run's code: 3 steps of torch's Adam with coupled decay, the
  third at ``lr * 0.1`` (milestone epoch 1 at 2 steps per epoch = step 2).  No lr warm-up."""
  c = seg_cityscapes.get_config()
  c.search.update(w_optimizer='adam', w_lr_schedule='multistep', w_lr=1e-3, w_lr_steps=(1,),
                  w_lr_factor=0.1, w_lr_warmup_epochs=0, w_weight_decay=wd)
  sched = search_loop.schedule_from_config(c.search, steps_per_epoch=2)
  assert sched.lr_milestones == (2,)
  fns, lr_fn = search_loop.make_search_fns(c, None, None, None, sched)
  params = jax.tree.map(jnp.asarray, _tiny_params())
  grads = _grads(params, 3, 4)  # global norm ~ 7 < 35: the clip does not act
  assert all(float(optax.tree.norm(g)) < 35 for g in grads)
  want = _np_adam_steps(_flat(params), [_flat(g) for g in grads], [1e-3, 1e-3, 1e-4], wd)
  _assert_updates(_run(fns.opt_w, params, grads), want)
  # Sanity of the check: at lr 1e-3 throughout the third update differs by ~10x.
  flat_lr = _np_adam_steps(_flat(params), [_flat(g) for g in grads], [1e-3] * 3, wd)
  k = "['head']['classifier']['kernel']"
  assert np.max(np.abs(flat_lr[2][k] - want[2][k])) > 100 * ADAM_RTOL * np.max(np.abs(want[2][k]))


def test_adapt_adam_param_groups_match_torch():
  """``adapt.optimizer='adam'`` with the release's groups: torch Adam, weight decay only on conv
  kernels, the head's groups at 10x the lr (the head's update x10: Adam's m and v do not depend on
  the lr), multi-step lr x0.1 from step 2."""
  ac = seg_cityscapes.get_config().adapt
  ac.update(optimizer='adam', lr_schedule='multistep', lr=1e-3, lr_steps=(2,), lr_factor=0.1,
            warmup_steps=0, weight_decay=1e-2)
  tx, _ = adapt.finetune_optimizer_from_config(ac)
  params = jax.tree.map(jnp.asarray, _tiny_params())
  grads = _grads(params, 3, 5)
  want = _np_adam_steps(_flat(params), [_flat(g) for g in grads], [1e-3, 1e-3, 1e-4], 1e-2,
                        decayed=lambda k: k.endswith("['kernel']"),
                        mult=lambda k: 10.0 if k.startswith("['head']") else 1.0)
  _assert_updates(_run(tx, params, grads), want)


# --------------------------------------------------------------------------- multistep lr
def test_multistep_schedule_at_and_around_milestones():
  """SimpleBaseline's x0.1 at 90 and 120 (milestones given out of order), by hand:
  steps 0..89 -> 1e-3, 90..119 -> 1e-3 * 0.1 = 1e-4, from 120 -> 1e-3 * 0.01 = 1e-5."""
  f = optim.multistep_schedule(1e-3, (120, 90), 0.1)
  hand = {0: 1e-3, 89: 1e-3, 90: 1e-4, 91: 1e-4, 119: 1e-4, 120: 1e-5, 121: 1e-5, 10 ** 6: 1e-5}
  for step, lr in hand.items():
    assert float(f(step)) == pytest.approx(lr, rel=RTOL), step
    assert float(f(jnp.asarray(step, jnp.int32))) == pytest.approx(lr, rel=RTOL), step  # traced
  # No milestones: constant; a warm-up 0.0 -> 1.0 over 4 steps: 0, 0.25, 0.5, 0.75, then 1.0,
  # and x0.5 from the milestone 6 on.
  assert float(optim.multistep_schedule(2e-3, ())(10 ** 5)) == pytest.approx(2e-3, rel=RTOL)
  w = optim.multistep_schedule(1.0, (6,), 0.5, warmup_steps=4, warmup_start=0.0)
  for step, lr in {0: 0.0, 1: 0.25, 3: 0.75, 4: 1.0, 5: 1.0, 6: 0.5, 7: 0.5}.items():
    assert float(w(step)) == pytest.approx(lr, rel=RTOL, abs=1e-12), step


def test_adapt_multistep_milestones_are_steps():
  """``adapt.lr_steps`` are optimiser steps (iterations), used as given: (5, 8), factor 0.5,
  lr 0.2: steps 0..4 -> 0.2, 5..7 -> 0.1, 8.. -> 0.05 (by hand)."""
  ac = seg_cityscapes.get_config().adapt
  ac.update(lr_schedule='multistep', lr=0.2, lr_steps=(5, 8), lr_factor=0.5, warmup_steps=0)
  _, lr_fn = adapt.finetune_optimizer_from_config(ac)
  for step, lr in {0: 0.2, 4: 0.2, 5: 0.1, 7: 0.1, 8: 0.05, 1000: 0.05}.items():
    assert float(lr_fn(step)) == pytest.approx(lr, rel=RTOL), step


def test_search_multistep_milestones_are_epochs():
  """``search.w_lr_steps`` are epochs: at 7 steps per epoch, (90, 120) -> steps (630, 840); the
  first step of epoch 90 (0-based) is the first at 1e-4.  With a one-epoch warm-up the first 7
  steps ramp linearly from ``w_lr_start`` (1e-4 + (1e-3 - 1e-4) * t / 7)."""
  c = seg_cityscapes.get_config()
  c.search.update(w_lr_schedule='multistep', w_lr=1e-3, w_lr_steps=(90, 120), w_lr_factor=0.1,
                  w_lr_warmup_epochs=1, epochs=140)
  sched = search_loop.schedule_from_config(c.search, steps_per_epoch=7)
  assert sched.lr_milestones == (90 * 7, 120 * 7) and sched.total_steps == 140 * 7
  _, lr_fn = search_loop.make_search_fns(c, None, None, None, sched)
  hand = {0: 1e-4, 3: 1e-4 + 9e-4 * 3 / 7, 7: 1e-3, 629: 1e-3, 630: 1e-4, 839: 1e-4, 840: 1e-5,
          979: 1e-5}
  for step, lr in hand.items():
    assert float(lr_fn(step)) == pytest.approx(lr, rel=RTOL), step


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize('section,key,choices', [
    ('search', 'w_optimizer', "'sgd', 'adam'"),
    ('search', 'w_lr_schedule', "'cosine', 'multistep'"),
    ('adapt', 'optimizer', "'sgd', 'adam'"),
    ('adapt', 'lr_schedule', "'poly', 'multistep'")])
def test_unknown_names_are_errors_listing_the_choices(section, key, choices):
  c = seg_cityscapes.get_config()
  c[section][key] = 'rmsprop'
  with pytest.raises(ValueError, match=f"{section}.{key} must be one of {choices}; got 'rmsprop'"):
    if section == 'search':
      search_loop.make_search_fns(c, None, None, None, search.Schedule(10, 0, 2))
    else:
      adapt.finetune_optimizer_from_config(c.adapt)

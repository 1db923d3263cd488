"""The FNA++ search objective and its optimisers against independent computations.

Paper Sec. 3.2.2: the relaxed layer output (Eq. 7), the arch loss ``L_task + lambda * lg(cost)``
(Eq. 8) with ``cost`` the softmax-weighted sum of per-candidate costs in GMAdds (Eq. 9; identity
candidates cost nothing), weight updates on one sampled path (SGD, momentum 0.9, weight decay
5e-4, linear warm-up then cosine lr; Sec. 4.1.1), arch updates with Adam (weight decay 4e-5) and
derivation by the largest alpha per layer.  Random search is the Sec. 4.8 / Tab. 14 variant.

Every expected value here is recomputed in the test (numpy, or ``jax.grad`` of a loss written out
in the test), never read from the library.
"""

import dataclasses
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo as demo_config
from fna_jax.arch import Arch, Stage, Stem
from fna_jax.data import transforms as T
from fna_jax.models import supernet as sn
from fna_jax.models.init import init_variables
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.spaces import SearchSpace, SpaceStage
from fna_jax.tasks import seg
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.train import search
from fna_jax.train import search_loop

# The cheaper candidate second, so that "cheapest" is not simply index 0.
OPS = ('k5_e6', 'k3_e3')
NUM_CLASSES = 3
IMAGE = 16       # step tests
COST_IMAGE = 32  # cost table
LN10 = math.log(10.0)
# Arch optimiser of the step tests (paper Sec. 4.1.1 values, a larger lr so that moves show).
A_LR, A_WD, A_B1, A_B2, A_EPS = 0.05, 4e-5, 0.9, 0.999, 1e-8  # eps: optax.adam's default


def tiny_space():
  """3 searched layers: a stride-2 stage with a skip-able second layer and a dilated stage
  (output stride 8); 2 or 3 candidates per layer, so the (3, 3) alphas have masked entries."""
  return SearchSpace('mbconv', Stem(8, 3, 2), (
      SpaceStage(8, 8, (('k3_e1',),)),
      SpaceStage(8, 12, (OPS, OPS + ('skip',)), stride=2),
      SpaceStage(12, 16, (OPS,), stride=1, dilation=2),
  ), name='tiny')


# (stage, layer) -> (c_in, c_out, stride, input height at COST_IMAGE) of each searched layer, by
# hand: stem /2 -> 16x16; stage1 layer0 is 8->12 with stride 2 -> 8x8; stage2 keeps 8x8.
SEARCHED = {(1, 0): (8, 12, 2, 16), (1, 1): (12, 12, 1, 8), (2, 0): (12, 16, 1, 8)}


def conv_madds(k, c_in, c_out, groups, h_out, w_out):
  return k * k * (c_in // groups) * c_out * h_out * w_out


def mbconv_madds(op, c_in, c_out, stride, h_in):
  """MBConv (paper Tab. 1 ``k{k}_e{e}``): 1x1 expand at the input size, kxk depthwise with the
  stride, 1x1 project; 'same' padding, so h_out = ceil(h_in / stride) whatever the dilation."""
  k, e = int(op[1]), int(op[4])
  hidden = c_in * e
  h_out = (h_in - 1) // stride + 1
  return (conv_madds(1, c_in, hidden, 1, h_in, h_in) + conv_madds(k, hidden, hidden, hidden,
                                                                  h_out, h_out)
          + conv_madds(1, hidden, c_out, 1, h_out, h_out))


class ConvHead(nn.Module):
  """A 1x1 classifier on the body's output: keeps the compiled steps small."""
  num_classes: int

  @nn.compact
  def __call__(self, feats, train=False):
    return nn.Conv(self.num_classes, (1, 1), name='classifier')(feats['out'])


def tiny_model(space):
  return SegmentationNet(sn.Supernet(space), ConvHead(NUM_CLASSES))


def batch(seed, n=4):
  rng = np.random.default_rng(seed)
  return {'image': rng.standard_normal((n, IMAGE, IMAGE, 3)).astype(np.float32),
          'label': rng.integers(0, NUM_CLASSES, (n, IMAGE, IMAGE)).astype(np.int32)}


def plain_cross_entropy(logits, labels, ignore=255):
  """Mean cross-entropy over the pixels not labelled ``ignore``, written out."""
  z = logits - jnp.max(logits, axis=-1, keepdims=True)
  logp = z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))
  nll = -jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]) * logp, axis=-1)  # 0 where ignored
  return jnp.sum(nll) / jnp.sum(labels != ignore)


def np_softmax(alphas, mask):
  """Eq. 7's per-layer softmax over the layer's own candidates; 0 on masked entries."""
  a = np.asarray(alphas, np.float64)
  e = np.where(mask, np.exp(a - np.max(np.where(mask, a, -np.inf), -1, keepdims=True)), 0.0)
  return e / e.sum(-1, keepdims=True)


def alpha_grad_by_hand(grad_w, alphas, mask, table, lam):
  """d/d(alpha) of L_task(w) + lam * log10(sum(w * table) / 1e9) with w = softmax(alpha) per
  layer (Eq. 8-9), by the chain rule: d lg(S/1e9)/dw = table / (S ln 10), then the softmax
  Jacobian dw_o/da_o' = w_o (delta_oo' - w_o')."""
  p = np_softmax(alphas, mask)
  s = np.sum(p * table)
  gw = np.asarray(grad_w, np.float64) + lam * table / (s * LN10)
  return p * (gw - np.sum(p * gw, axis=-1, keepdims=True))


@pytest.fixture(scope='module')
def setup():
  """The tiny supernet, its cost table, and everything compiled once for all tests:

  * ``arch``: ``search.arch_step`` jitted with lambda and a task-loss scale as *arguments*
    (one compilation serves lambda = 0, the zero-task-loss runs and the Adam reference runs);
  * ``ref``: loss and gradients w.r.t. (params, op weights) of the relaxed forward (Eq. 7) with
    the plain cross-entropy; one-hot op weights make it the single path's loss.
  """
  space = tiny_space()
  model = tiny_model(space)
  variables = jax.tree.map(jnp.asarray,
                           init_variables(model, 0, (1, IMAGE, IMAGE, 3), train=False))
  table = search.cost_table(model, variables, space, (1, COST_IMAGE, COST_IMAGE, 3))
  fns = make_fns(space, model, table, lam=0.0)

  def arch(state, b, lam, task_scale):
    f = dataclasses.replace(
        fns, lam=lam, loss_fn=lambda logits, batch: task_scale * seg.segmentation_loss(logits, batch))
    return search.arch_step(f, state, b)

  def ref(params, batch_stats, b, w):
    def loss(p, w):
      logits, _ = model.apply({'params': p, 'batch_stats': batch_stats}, b['image'], True,
                              op_weights=w, mutable=['batch_stats'])
      return plain_cross_entropy(logits, b['label'])
    return jax.grad(loss, argnums=(0, 1))(params, w)

  return dict(space=space, model=model, variables=variables, table=table, fns=fns,
              mask=sn.candidate_mask(space), arch=jax.jit(arch), ref=jax.jit(ref))


def make_fns(space, model, table, *, lam, sched=None, w_kw=None):
  sched = sched or search.Schedule(total_steps=20, warmup_steps=0, lr_warmup_steps=4)
  opt_w, _ = search.weight_optimizer(sched, **(w_kw or {}))
  opt_a = search.arch_optimizer(lr=A_LR, weight_decay=A_WD, b1=A_B1, b2=A_B2)
  return search.SearchFns(model, space, seg.segmentation_loss, table, lam, opt_w, opt_a)


# --------------------------------------------------------------------------- 1. cost (Eq. 9)
def test_cost_table_matches_madds_counted_by_hand(setup):
  """Every candidate's MAdds from its block shapes (k*k*Cin/groups*Cout*Hout*Wout per conv);
  skip and masked entries cost 0."""
  space, table = setup['space'], setup['table']
  assert table.shape == (3, 3) and table.dtype == np.int64
  expected = np.zeros((3, 3), np.int64)
  for l, (i, j) in enumerate(space.searched_layers()):
    c_in, c_out, stride, h_in = SEARCHED[i, j]
    for o, op in enumerate(space.candidates(i, j)):
      if op != 'skip':
        expected[l, o] = mbconv_madds(op, c_in, c_out, stride, h_in)
  # Two entries spelled out: stage1 layer0 k5_e6 (8->48 at 16x16, dw 5x5 on 48 at 8x8,
  # 48->12 at 8x8) and stage2 layer0 k3_e3 (12->36, dw 3x3 dilated, 36->16, all at 8x8).
  assert expected[0, 0] == 8 * 48 * 256 + 25 * 48 * 64 + 48 * 12 * 64
  assert expected[2, 1] == (12 * 36 + 9 * 36 + 36 * 16) * 64
  np.testing.assert_array_equal(table, expected)
  assert table[1, 2] == 0                  # skip
  assert table[0, 2] == table[2, 2] == 0   # masked


def test_expected_gmadds_and_cost_term_by_hand():
  """Eq. 8-9 on a hand-made table: sum_l sum_o softmax(alpha)_lo * cost_lo / 1e9, then
  lambda * log10; masked entries carry garbage costs that must not count."""
  mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
  table = np.array([[30e6, 10e6, 999e9],     # masked entry: huge garbage
                    [50e6, 20e6, 0],          # skip last, costs 0
                    [40e6, 999e9, 999e9]], np.int64)
  alphas = np.array([[0.3, -0.2, 7.0], [0.1, 0.5, -1.0], [2.0, 5.0, 5.0]], np.float32)
  w = sn.op_weights(jnp.asarray(alphas), mask)
  p = np_softmax(alphas, mask)
  np.testing.assert_allclose(np.asarray(w), p, rtol=1e-6, atol=1e-7)
  by_hand = 0.0
  for l in range(3):
    for o in range(3):
      if mask[l, o]:
        by_hand += p[l, o] * float(table[l, o])
  by_hand /= 1e9                                  # GMAdds
  assert 0.05 < by_hand < 0.1                     # tens of MAdds: no garbage counted
  # float32 sums of 1e7-sized terms: ~1e-7 relative error.
  np.testing.assert_allclose(float(search.expected_gmadds(w, table)), by_hand, rtol=1e-5)
  lam = 0.37
  np.testing.assert_allclose(float(search.cost_loss(w, table, lam)), lam * math.log10(by_hand),
                             rtol=1e-5)
  # One-hot weights (a single path): the path's own cost; choosing skip adds nothing.
  onehot = jax.nn.one_hot(jnp.array([1, 2, 0]), 3)
  np.testing.assert_allclose(float(search.expected_gmadds(onehot, table)), (10e6 + 40e6) / 1e9,
                             rtol=1e-6)
  np.testing.assert_allclose(float(search.cost_loss(onehot, table, 2.0)),
                             2.0 * math.log10(50e6 / 1e9), rtol=1e-6)


# --------------------------------------------------------------------------- 2. direction
def test_cost_term_alone_moves_every_layer_towards_its_cheapest_op(setup):
  """Zero task loss: one arch step raises the probability of each layer's cheapest candidate
  (skip where offered) and lowers the expected cost: lambda * lg(cost) pushes away from
  expensive ops."""
  space, table, mask = setup['space'], setup['table'], setup['mask']
  alphas = 0.1 * jax.random.normal(jax.random.key(4), mask.shape)
  state = search.init_state(setup['fns'], setup['variables'], alphas, jax.random.key(5))
  new, m = setup['arch'](state, batch(0), 1.0, 0.0)
  before, after = np_softmax(alphas, mask), np_softmax(new.alphas, mask)
  cheapest = np.argmin(np.where(mask, table, np.iinfo(np.int64).max), axis=1)
  # the cheapest op by hand: skip where offered, else k3_e3
  assert [space.candidates(i, j)[c] for (i, j), c in zip(space.searched_layers(), cheapest)] == [
      'k3_e3', 'skip', 'k3_e3']
  for l, c in enumerate(cheapest):
    assert after[l, c] > before[l, c] + 1e-3, (l, before[l], after[l])
  gm = lambda p: float(np.sum(p * table) / 1e9)
  assert gm(after) < gm(before)
  np.testing.assert_allclose(float(m['expected_gmadds']), gm(before), rtol=1e-5)
  np.testing.assert_allclose(float(m['cost_loss']), math.log10(gm(before)), rtol=1e-5)
  assert float(m['arch_task_loss']) == 0.0


def test_lambda_zero_leaves_out_the_cost_term(setup):
  """Zero task loss and lambda = 0: the alphas only move by (Adam-scaled) weight decay."""
  mask = setup['mask']
  alphas = np.asarray(0.5 * jax.random.normal(jax.random.key(6), mask.shape))
  state = search.init_state(setup['fns'], setup['variables'], jnp.asarray(alphas),
                            jax.random.key(7))
  new, m = setup['arch'](state, batch(1), 0.0, 0.0)
  assert float(m['cost_loss']) == 0.0
  g = A_WD * alphas.astype(np.float64)  # the only gradient: coupled weight decay
  # First Adam step: bias-corrected m_hat = g, v_hat = g^2.
  expected = alphas - A_LR * g / (np.abs(g) + A_EPS)
  np.testing.assert_allclose(np.asarray(new.alphas), expected, atol=1e-6)  # float32 of ~0.5


# --------------------------------------------------------------------------- 3. the updates
def lr_by_hand(t, *, lr, lr_start, lr_end, warmup, total):
  """Linear warm-up lr_start -> lr over ``warmup`` steps, then cosine annealing to lr_end."""
  if t < warmup:
    return lr_start + (lr - lr_start) * t / warmup
  s, span = t - warmup, total - warmup
  return lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * min(s, span) / span))


def test_weight_steps_match_plain_sgd_on_the_reported_path(setup):
  """Two weight steps == SGD written out: g = dL/dw + wd*w, buf = g + momentum*buf,
  w -= lr_t * buf with lr_t from the schedule at steps 0 and 1.  dL/dw is the plain
  cross-entropy's gradient along the path each step reports; ops off that path get no gradient
  yet still decay (the documented torch-like behaviour)."""
  space, model, variables, mask = (setup[k] for k in ('space', 'model', 'variables', 'mask'))
  kw = dict(lr=0.1, lr_start=0.01, lr_end=0.001, momentum=0.8, weight_decay=0.01)
  sched = search.Schedule(total_steps=10, warmup_steps=2, lr_warmup_steps=4)
  fns = make_fns(space, model, setup['table'], lam=0.5, sched=sched, w_kw=kw)
  w_step = jax.jit(lambda s, b, u: search.weight_step(fns, s, b, u))
  alphas = 0.3 * jax.random.normal(jax.random.key(8), mask.shape)
  state = search.init_state(fns, variables, alphas, jax.random.key(9))

  to64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  p = to64(variables['params'])
  buf = jax.tree.map(np.zeros_like, p)
  for t, (uniform, seed) in enumerate([(True, 10), (False, 11)]):
    b = batch(seed)
    params_before, stats_before = state.params, state.batch_stats
    state, m = w_step(state, b, jnp.asarray(uniform))
    path = np.asarray(m['path'])
    assert path.shape == (3,) and np.all(mask[np.arange(3), path])
    grads, _ = setup['ref'](params_before, stats_before, b, jax.nn.one_hot(path, 3))
    grads = to64(grads)
    lr_t = lr_by_hand(t, lr=0.1, lr_start=0.01, lr_end=0.001, warmup=4, total=10)
    g = jax.tree.map(lambda gr, w: gr + kw['weight_decay'] * w, grads, p)
    buf = jax.tree.map(lambda bu, gg: gg + kw['momentum'] * bu, buf, g)
    p = jax.tree.map(lambda w, bu: w - lr_t * bu, p, buf)
    # float32 forward/backward vs float64 bookkeeping; the updates are ~lr * |g| ~ 1e-2.
    chex.assert_trees_all_close(jax.device_get(state.params), p, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(state.alphas), np.asarray(alphas))

    if t == 0:  # the first step, from zero momentum: off-path ops only decay
      decay = 1 - lr_t * kw['weight_decay']
      for l, (i, j) in enumerate(space.searched_layers()):
        layer = lambda tree: tree['backbone'][f'stage{i}'][f'layer{j}']
        before, after, gr = layer(variables['params']), layer(state.params), layer(grads)
        for o, op in enumerate(space.candidates(i, j)):
          if op == 'skip':
            continue
          if o == path[l]:
            assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(gr[op])), (l, op)
          else:
            assert all(np.all(x == 0) for x in jax.tree.leaves(gr[op])), (l, op)
            chex.assert_trees_all_close(jax.device_get(after[op]),
                                        jax.tree.map(lambda x: decay * np.asarray(x), before[op]),
                                        rtol=1e-6, atol=1e-7)
  assert int(state.step) == 2


@pytest.mark.parametrize('lam', [0.0, 1.0])
def test_arch_steps_match_plain_adam(setup, lam):
  """Two arch steps == Adam written out on g = d(L_task + lam*lg(cost))/d(alpha) + wd*alpha:
  m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2, alpha -= lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps).
  d/d(alpha) is the chain rule by hand (alpha_grad_by_hand) on the plain cross-entropy's
  gradient w.r.t. the op weights; with lam = 0 it is the task loss alone.  Two steps, because
  one Adam step does not depend on b1 and b2."""
  mask, table, variables = setup['mask'], setup['table'], setup['variables']
  alphas = 0.3 * jax.random.normal(jax.random.key(12), mask.shape)
  state = search.init_state(setup['fns'], variables, alphas, jax.random.key(13))
  a = np.asarray(alphas, np.float64)
  mom, vel = np.zeros_like(a), np.zeros_like(a)
  for t in (1, 2):
    b = batch(20 + t)
    stats_before = state.batch_stats
    state, m = setup['arch'](state, b, lam, 1.0)
    _, grad_w = setup['ref'](variables['params'], stats_before, b,
                             jnp.asarray(np_softmax(a, mask), jnp.float32))
    gm = float(np.sum(np_softmax(a, mask) * table) / 1e9)
    np.testing.assert_allclose(float(m['expected_gmadds']), gm, rtol=1e-5)
    np.testing.assert_allclose(float(m['cost_loss']), lam * math.log10(gm), rtol=1e-5, atol=1e-7)
    if lam and t == 1:
      # The cost term's gradient is neither negligible nor overwhelming next to the task
      # loss's, so a mis-scaled (e.g. not log10) or sign-flipped cost term changes the step.
      ratio = (np.abs(alpha_grad_by_hand(np.zeros_like(a), a, mask, table, lam)).max()
               / np.abs(alpha_grad_by_hand(grad_w, a, mask, table, 0.0)).max())
      assert 0.1 < ratio < 10, ratio
    g = alpha_grad_by_hand(grad_w, a, mask, table, lam) + A_WD * a
    mom = A_B1 * mom + (1 - A_B1) * g
    vel = A_B2 * vel + (1 - A_B2) * g * g
    a = a - A_LR * (mom / (1 - A_B1 ** t)) / (np.sqrt(vel / (1 - A_B2 ** t)) + A_EPS)
    # Each step moves an alpha by up to ~lr = 0.05; float32 gradients agree to ~1e-5 relative,
    # so 1e-4 absolute is far below the effect of a wrong beta, sign or term.
    np.testing.assert_allclose(np.asarray(state.alphas), a, atol=1e-4)
  assert np.all(np.abs(a - np.asarray(alphas)) > 1e-3)  # every entry moved (decay at least)
  chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(variables['params']))


# --------------------------------------------------------------------------- 4. lr schedule
def test_weight_lr_schedule_warmup_then_cosine():
  lr, lr_start, lr_end, warmup, total = 0.02, 1e-4, 1e-3, 10, 110
  _, lr_fn = search.weight_optimizer(search.Schedule(total, 30, warmup), lr=lr,
                                     lr_start=lr_start, lr_end=lr_end)
  checks = {
      0: lr_start,                                  # start of warm-up
      5: lr_start + (lr - lr_start) * 5 / 10,       # half-way through warm-up
      10: lr,                                       # end of warm-up: the peak
      60: lr_end + (lr - lr_end) * 0.5,             # half-way through the cosine
      35: lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * 25 / 100)),
      110: lr_end,                                  # end
  }
  for t, want in checks.items():
    np.testing.assert_allclose(float(lr_fn(t)), want, rtol=1e-5, err_msg=f'step {t}')
  for t in range(0, total + 1, 7):
    np.testing.assert_allclose(float(lr_fn(t)), lr_by_hand(t, lr=lr, lr_start=lr_start,
                                                           lr_end=lr_end, warmup=warmup,
                                                           total=total), rtol=1e-5)


# --------------------------------------------------------------------------- 5. derivation
def test_argmax_derivation_moves_skips_last_and_ignores_masked_entries():
  space = SearchSpace('mbconv', Stem(8, 3, 2), (
      SpaceStage(8, 8, (('k3_e1',),)),
      SpaceStage(8, 12, (OPS, OPS + ('skip',)), stride=2),
      SpaceStage(12, 16, (OPS, OPS + ('skip',), OPS + ('skip',)), stride=1, dilation=2)))
  mask = sn.candidate_mask(space)
  alphas = jnp.array([
      [0.1, 0.2, 50.0],    # stage1 layer0: k3_e3 (masked 50 ignored)
      [0.0, -1.0, 0.5],    # stage1 layer1: skip
      [0.9, 0.3, 99.0],    # stage2 layer0: k5_e6 (masked 99 ignored)
      [0.1, 0.0, 0.4],     # stage2 layer1: skip, before a real layer
      [-0.2, 0.7, 0.1],    # stage2 layer2: k3_e3
  ])
  choices = sn.argmax_path(alphas, mask)
  np.testing.assert_array_equal(choices, [1, 2, 0, 2, 1])
  expected = Arch('mbconv', Stem(8, 3, 2), (
      Stage(8, 8, ('k3_e1',)),
      Stage(8, 12, ('k3_e3', 'skip'), stride=2),
      Stage(12, 16, ('k5_e6', 'k3_e3', 'skip'), stride=1, dilation=2)))
  assert space.derive(choices) == expected


# --------------------------------------------------------------------------- 6. random search
def path_scores(model, table, variables, batches, paths, lam):
  """Mean over batches of the eval-mode cross-entropy of each path (relaxed forward with one-hot
  op weights, Eq. 7) + lam * log10(the path's GMAdds), by hand.  Training batches carry uint8
  images (normalised inside the steps); here they are normalised on the host."""
  fwd = jax.jit(lambda v, x, w: model.apply(v, x, False, op_weights=w))
  host_images = lambda b: T.normalize(np.asarray(b['image']))
  out = []
  for path in paths:
    w = jax.nn.one_hot(path, table.shape[1])
    ce = np.mean([float(plain_cross_entropy(fwd(variables, host_images(b), w), b['label']))
                  for b in batches])
    out.append(float(ce) + lam * math.log10(sum(float(table[l, o])
                                                for l, o in enumerate(path)) / 1e9))
  return out


def record_paths(monkeypatch):
  drawn = []
  real = sn.sample_path

  def recording(key, alphas, mask, uniform=False):
    path = real(key, alphas, mask, uniform)
    if not isinstance(path, jax.core.Tracer):  # inside a compiled step: not a draw to record
      drawn.append((np.asarray(path), bool(uniform)))
    return path

  monkeypatch.setattr(sn, 'sample_path', recording)
  return drawn


def test_random_search_returns_the_lowest_scoring_drawn_path(setup, monkeypatch):
  lam = 0.3  # the cost term separates paths of similar task loss
  fns = dataclasses.replace(setup['fns'], lam=lam)
  state = search.init_state(fns, setup['variables'], jnp.zeros(setup['mask'].shape),
                            jax.random.key(0))
  batches = [batch(30), batch(31), batch(32)]
  drawn = record_paths(monkeypatch)
  best = search_loop.random_search(fns, state, iter(batches),
                                   mesh_lib.make_mesh(jax.devices()[:1]), n=6, seed=3,
                                   log=lambda s: None, batches=2)
  assert len(drawn) == 6 and all(u for _, u in drawn)  # uniform draws
  paths = [p for p, _ in drawn]
  assert len({tuple(p) for p in paths}) > 2
  scores = path_scores(setup['model'], setup['table'], setup['variables'], batches[:2], paths,
                       lam)
  order = np.argsort(scores)
  # the minimum is unambiguous at float32 precision (or a repeat of the same path)
  assert (scores[order[1]] - scores[order[0]] > 1e-4
          or tuple(paths[order[0]]) == tuple(paths[order[1]]))
  assert best == [int(x) for x in paths[order[0]]]


@pytest.mark.slow
def test_run_search_random_method_derives_the_best_candidate(tmp_path, monkeypatch):
  """search.method='random' end to end on the demo data (seed pretrained for 2 steps, remapped):
  the derived architecture is the drawn candidate with the lowest score, recomputed here on the
  arch-split batches random_search scored."""
  c = demo_config.get_config()
  c.data.update(num_train=64, num_val=8, image_size=32, crop_size=32)
  c.space.max_layers = (1, 1, 2, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e6')
  c.head.channels = 16
  c.search.update(method='random', epochs=2, batch_size=8, random_candidates=3, init='remap',
                  lam=0.3)
  c.seed_net.pretrain.update(steps=2, batch_size=8, image_size=32, num_examples=16)
  c.seed_net.cache_dir = str(tmp_path / 'seed_cache')
  c.cost_input_size = (32, 32)
  c.xla_cache_dir = str(tmp_path / 'xla_cache')

  drawn = record_paths(monkeypatch)
  seen = {}
  real_random_search = search_loop.random_search

  def spying(fns, state, a_data, mesh, n, seed, log, batches=2):
    taken = []

    def tap():
      while True:
        b = next(a_data)
        taken.append(jax.tree.map(np.asarray, b))
        yield b

    seen.update(fns=fns, variables=jax.device_get({'params': state.params,
                                                   'batch_stats': state.batch_stats}),
                batches=taken)
    return real_random_search(fns, state, tap(), mesh, n, seed, log, batches)

  monkeypatch.setattr(search_loop, 'random_search', spying)
  result = search_loop.run_search(c, str(tmp_path / 'run'), log=lambda s: None)
  fns = seen['fns']
  # Outside the compiled steps only random_search draws paths: its 3 uniform candidates.
  assert len(drawn) == 3 and all(u for _, u in drawn)
  candidates = [p for p, _ in drawn]
  assert len(seen['batches']) == 2
  scores = path_scores(fns.model, fns.table, seen['variables'], seen['batches'], candidates, 0.3)
  assert result.choices in [[int(x) for x in p] for p in candidates]
  order = np.argsort(scores)
  assert (scores[order[1]] - scores[order[0]] > 1e-4
          or tuple(candidates[order[0]]) == tuple(candidates[order[1]]))  # an unambiguous best
  assert result.choices == [int(x) for x in candidates[order[0]]]
  assert result.arch == fns.space.derive(result.choices)

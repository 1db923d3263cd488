"""The supernet of a search space and its mixed op (paper Sec. 3.2.2, Eq. 7).

Every searched layer is a :class:`MixedLayer` that owns one block per candidate op (``skip`` owns
nothing), so parameter paths read ``backbone/stage{i}/layer{j}/{op}/...``.  Fixed layers (one
candidate, e.g. MobileNetV2's ``k3_e1``) are plain blocks at ``backbone/stage{i}/layer{j}/...``,
exactly as in a :class:`~fna_jax.models.backbone.Backbone`.

Architecture parameters are *not* variables of this module: they are a separate ``(L, K)`` array
``alphas`` (``L`` searched layers in network order, ``K`` = the most candidates any layer has;
entries beyond a layer's candidates are masked out by :func:`candidate_mask`).  The search passes
what the forward needs:

* relaxed mode: ``op_weights`` ``(L, K)``, normally ``softmax(alphas)`` from :func:`op_weights`;
  each searched layer outputs ``sum_o op_weights[l, o] * o(x)`` (all paths run).
* single-path mode: ``path`` int32 ``(L,)``, one candidate index per searched layer; only that op
  runs (``flax.linen.switch``), so a new path never recompiles.  Paths come from
  :func:`sample_path`.

BatchNorm statistics and affine parameters live in every op and are trained in the supernet
(FNA++); in single-path mode only the chosen op's statistics update.

The relaxed forward has two implementations with the same variables and the same results
(``relaxed_impl``, from the config key ``search.mixed_op``): ``'naive'`` runs every candidate
block on its own; ``'fused'`` and ``'fused_padded'`` run the MBConv candidates as wide blocks
(see :class:`MixedLayer`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.models.backbone import last_conv, stem
from fna_jax import arch as arch_lib
from fna_jax.models.blocks import (BN_EPS, BN_MOMENTUM, BatchNorm, batch_moments,
                                   batch_norm_variables, make_block, normalise,
                                   update_running_averages)
from fna_jax.ops import Conv, conv2d
from fna_jax.spaces import SearchSpace, SpaceStage


def candidate_mask(space: SearchSpace) -> np.ndarray:
  """``(L, K)`` bool: ``mask[l, o]`` is True when searched layer ``l`` has an ``o``-th candidate."""
  layers = space.searched_layers()
  mask = np.zeros((len(layers), space.max_candidates), bool)
  for l, (i, j) in enumerate(layers):
    mask[l, :len(space.candidates(i, j))] = True
  return mask


def init_alphas(key: jax.Array, space: SearchSpace, scale: float = 1e-3) -> jax.Array:
  """Architecture parameters ``(L, K)`` float32, ``scale * N(0, 1)`` (scale 1e-3, as the authors' release)."""
  return scale * jax.random.normal(key, (space.num_searched, space.max_candidates), jnp.float32)


def masked_logits(alphas: jax.Array, mask: np.ndarray) -> jax.Array:
  return jnp.where(mask, alphas, -jnp.inf)


def op_weights(alphas: jax.Array, mask: np.ndarray) -> jax.Array:
  """``softmax(alphas)`` per layer over its own candidates; ``(L, K)``, zeros where masked."""
  return jax.nn.softmax(masked_logits(alphas, mask), axis=-1)


def sample_path(key: jax.Array, alphas: jax.Array, mask: np.ndarray,
                uniform: jax.Array | bool = False) -> jax.Array:
  """One op index per searched layer, int32 ``(L,)``, drawn from ``softmax(alphas)``.

  ``uniform`` (a Python or traced bool) draws uniformly over each layer's candidates instead
  (warm-up); passing it traced keeps warm-up and search in one compiled function.
  """
  logits = jnp.where(uniform, jnp.zeros_like(alphas), alphas)
  return jax.random.categorical(key, masked_logits(logits, mask), axis=-1).astype(jnp.int32)


def argmax_path(alphas: jax.Array, mask: np.ndarray) -> np.ndarray:
  """The derived choice per searched layer: ``argmax`` of its alphas, int ``(L,)``."""
  return np.asarray(jnp.argmax(masked_logits(alphas, mask), axis=-1))


RELAXED_IMPLS = ('naive', 'fused', 'fused_padded')


def _conv_impl(conv) -> str | None:
  """The ``impl`` a conv module constructor (``ops.Conv`` or ``ops.conv_module(impl)``) fixes."""
  return getattr(conv, 'keywords', {}).get('impl')


def _fusable(family: str, op_name: str) -> bool:
  """MBConv candidates with an expansion conv join the fused block; the others (``skip``,
  expansion 1, other families) run on their own."""
  op = arch_lib.parse_op(op_name)
  return family == arch_lib.MBCONV and not op.is_skip and op.expansion != 1


class _BatchNormSlot(nn.Module):
  """A :class:`~fna_jax.models.blocks.BatchNorm`'s variables (same names, same collections) for a
  caller that normalises the channels of several BatchNorms in one pass.

  ``__call__(moments, n, train, c)`` returns ``(mean, var, scale, bias)``, each ``(c,)`` for
  this BatchNorm's ``c`` channels: in training the given batch ``moments`` (``(mean, biased
  var)`` of its channels, ``n`` elements per channel), after updating the running averages with
  them exactly as the BatchNorm does; in eval the running averages (``moments`` is then
  ``None``).
  """

  @nn.compact
  def __call__(self, moments, n: int, train: bool, c: int):
    ra_mean, ra_var, scale, bias = batch_norm_variables(self, c)
    if not train:
      return ra_mean.value, ra_var.value, scale, bias
    mean, var = moments
    update_running_averages(ra_mean, ra_var, mean, var, n, BN_MOMENTUM)
    return mean, var, scale, bias


def _wide_batch_norm(x, slots, bounds, train: bool):
  """Channels ``bounds[i]:bounds[i + 1]`` of ``x`` normalised by BatchNorm ``slots[i]`` (its own
  statistics and affine parameters), all in one pass over ``x``: BatchNorm is per channel, so
  this is each BatchNorm applied to its slice of channels, without slicing ``x``."""
  moments = batch_moments(x) if train else None
  n = x.size // x.shape[-1]
  stats = [slot(None if moments is None else (moments[0][a:b], moments[1][a:b]), n, train, b - a)
           for slot, a, b in zip(slots, bounds[:-1], bounds[1:])]
  mean, var, scale, bias = (jnp.concatenate(v) for v in zip(*stats))
  return normalise(x, mean, var, scale, bias, BN_EPS)


class _MBConvParts(nn.Module):
  """An :class:`~fna_jax.models.blocks.MBConv`'s variables, used piece by piece.

  Named as the candidate (``name=op``), it addresses the very variables the ``MBConv`` of that
  name owns (``expand_conv``, ``expand_bn``, ``dw_conv``, ``dw_bn``, ``project_conv``,
  ``project_bn``: same paths), so that :class:`MixedLayer`'s fused forward can run the
  convolutions and the BatchNorms of several candidates at once while each candidate's
  BatchNorms normalise, and update the running statistics of, its own channels exactly as in
  the MBConv.  Used only after ``init`` (the MBConv creates the variables).
  """
  c_out: int
  conv: Any = Conv

  def setup(self):
    self.expand_bn = _BatchNormSlot()
    self.dw_bn = _BatchNormSlot()
    self.project_conv = self.conv(self.c_out, 1)
    self.project_bn = BatchNorm()

  def kernel(self, conv_name: str):
    """The kernel of conv ``conv_name`` (``'expand_conv'`` or ``'dw_conv'``), read as it is."""
    return self.variables['params'][conv_name]['kernel']

  def project(self, h, train: bool):
    """project_bn(project_conv(h)), ``h`` this candidate's ReLU6(dw_bn(depthwise)) output."""
    return self.project_bn(self.project_conv(h), use_running_average=not train)


class MixedLayer(nn.Module):
  """One searched layer: a block per candidate op, each submodule named by its op.

  ``__call__(x, train, index=None, weights=None)``: exactly one of ``index`` (int32 scalar: single
  path) or ``weights`` (``(n_candidates,)``: relaxed, Eq. 7) must be given, except during
  ``init``, which runs every candidate (so that all their variables exist).

  ``remat`` (single-path mode only): every branch is rematerialised (``flax.linen.checkpoint``).
  Under ``jax.grad`` a ``lax.switch`` keeps the residuals of *every* branch (those of the
  branches not taken are zeros of their shapes), so the sampled path's weight step (Sec. 3.2.2)
  holds activations for all candidates of every searched layer; a checkpointed branch's only
  residual is its input (shared by all branches), and the branch taken is recomputed in the
  backward pass, inside the switch.  The parameter paths are the same either way (the
  checkpointed function creates its block in this module's scope, by name).  The relaxed
  forward (Eq. 7) and ``init`` are unchanged.

  ``relaxed_impl`` chooses how the relaxed output ``sum_o weights[o] * o(x)`` (paper Sec. 3.2.2,
  Eq. 7) is computed; ``init`` and single-path mode are the same in both:

  * ``'naive'``: every candidate block runs on its own.
  * ``'fused'``: the MBConv candidates with an expansion conv (the others, ``skip`` and
    expansion-1 ops, run on their own) as one wide block per kernel size, i.e. the candidates
    that share a depthwise kernel size together (MobileNetV2's space: ``k3_e3`` and ``k3_e6``,
    ``k5_e3`` and ``k5_e6``, ``k7_e3`` and ``k7_e6``).  Their expansion kernels, concatenated on
    the output axis, make one 1x1 conv ``c_in -> sum_o hidden_o``; one BatchNorm pass over it
    normalises each candidate's channels with that candidate's own ``expand_bn`` (statistics,
    scale, bias: BatchNorm is per channel), ReLU6; their depthwise kernels make ONE depthwise
    conv over all the block's hidden channels with the layer's stride and dilation, then each
    candidate's ``dw_bn`` the same way, ReLU6; then per candidate its ``project_conv`` and
    ``project_bn`` (batch statistics per candidate), plus ``x`` where the layer has a residual.
    The arithmetic is the naive sum's.
  * ``'fused_padded'``: the same with all fusable candidates in ONE wide block, their depthwise
    kernels zero-padded (centred) to the largest kernel ``K`` (a ``k x k`` kernel centred in
    ``K x K`` zeros with padding ``d (K - 1) / 2`` reads the same pixels with the same weights
    as the ``k x k`` kernel with padding ``d (k - 1) / 2``, and the output size is the same):
    fewer, larger convolutions for more multiply-adds (the smaller kernels' zero taps; 1.77x
    the depthwise work in MobileNetV2's space).

  Both fused forms read the candidates' kernels from this module's variables
  (``self.variables``) and address the BatchNorms and projections through
  :class:`_MBConvParts` named as the candidate: they read and update exactly the variables
  (``{op}/expand_conv/kernel``, ``{op}/expand_bn/...``, ...) the naive one does, with the same
  values, so checkpoints, remapping and derivation do not see the difference.  Equal to
  ``'naive'`` up to float rounding (the wide matmul may sum in another order).
  """
  family: str
  candidates: tuple[str, ...]
  c_in: int
  c_out: int
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  remat: bool = False  # single path: rematerialise each branch (see the class docstring)
  relaxed_impl: str = 'naive'  # one of RELAXED_IMPLS: see above

  @nn.compact
  def __call__(self, x, train: bool = False, index=None, weights=None):
    if self.relaxed_impl not in RELAXED_IMPLS:
      raise ValueError(f'{self.name}: relaxed_impl {self.relaxed_impl!r} not in {RELAXED_IMPLS}')
    def branch(op):
      def run(mdl, x):
        del mdl  # submodules are created in this module's scope by name
        block = make_block(self.family, op, self.c_in, self.c_out, self.stride, self.dilation,
                           name=op, conv=self.conv)
        return x if block is None else block(x, train)
      return run

    branches = [branch(op) for op in self.candidates]
    if self.is_initializing():
      outs = [b(self, x) for b in branches]
      if weights is not None:
        return sum(w * o for w, o in zip(weights, outs))
      return outs[0]
    if (index is None) == (weights is None):
      raise ValueError(f'{self.name}: give exactly one of index (single path) or weights '
                       '(relaxed)')
    if weights is not None:
      if self.relaxed_impl != 'naive':
        return self._fused_relaxed(x, train, weights, branches)
      return sum(weights[o] * b(self, x) for o, b in enumerate(branches))
    if self.remat:
      # ``train`` is a Python bool closed over by ``run``, so no static_argnums are needed.
      branches = [nn.checkpoint(b) for b in branches]
    return nn.switch(index, branches, self, x)

  def _fused_relaxed(self, x, train, weights, branches):
    """``sum_o weights[o] * o(x)`` with the fusable candidates as wide blocks (class doc)."""
    fused = [o for o, op in enumerate(self.candidates) if _fusable(self.family, op)]
    outs = {o: branches[o](self, x) for o in range(len(self.candidates)) if o not in fused}
    kernel = {o: arch_lib.parse_op(self.candidates[o]).kernel for o in fused}
    if self.relaxed_impl == 'fused_padded':
      groups = [fused] if fused else []
    else:  # one group per kernel size
      groups = [[o for o in fused if kernel[o] == k] for k in sorted(set(kernel.values()))]
    for group in groups:
      outs.update(self._wide_block(x, train, group))
    return sum(weights[o] * outs[o] for o in range(len(self.candidates)))

  def _wide_block(self, x, train, group):
    """The outputs ``{o: o(x)}`` of MBConv candidates ``group`` run as one wide block."""
    ops = [arch_lib.parse_op(self.candidates[o]) for o in group]
    parts = [_MBConvParts(self.c_out, self.conv, name=op.name) for op in ops]
    bounds = np.cumsum([0] + [self.c_in * op.expansion for op in ops])
    k_max = max(op.kernel for op in ops)
    impl = _conv_impl(self.conv)
    # One 1x1 conv c_in -> sum(hidden): the candidates' expansion kernels side by side.
    w_expand = jnp.concatenate([p.kernel('expand_conv') for p in parts], axis=3)
    h = conv2d(x, w_expand, impl=impl)
    h = jax.nn.relu6(_wide_batch_norm(h, [p.expand_bn for p in parts], bounds, train))
    # One depthwise conv: each (k, k, 1, hidden) kernel centred in a (K, K) frame of zeros (no
    # zeros where the group's kernels are all K x K).
    def centred(w, k):
      pad = (k_max - k) // 2
      return jnp.pad(w, ((pad, pad), (pad, pad), (0, 0), (0, 0)))
    w_dw = jnp.concatenate([centred(p.kernel('dw_conv'), op.kernel)
                            for p, op in zip(parts, ops)], axis=3)
    h = conv2d(h, w_dw, stride=self.stride, dilation=self.dilation, groups=int(bounds[-1]),
               impl=impl)
    h = jax.nn.relu6(_wide_batch_norm(h, [p.dw_bn for p in parts], bounds, train))
    # Per candidate: its projection and project_bn.  ``jnp.split`` (``lax.split``), not slicing:
    # the gradient of a split is one concatenate, that of each slice a zero-padded copy of the
    # whole wide tensor (an earlier form that sliced ran about six times slower).
    residual = self.stride == 1 and self.c_in == self.c_out
    outs = {}
    for o, p, h_o in zip(group, parts, jnp.split(h, [int(b) for b in bounds[1:-1]], axis=-1)):
      y = p.project(h_o, train)
      outs[o] = y + x if residual else y
    return outs


def identical_runs(stage: SpaceStage) -> list[list[int]]:
  """Runs of consecutive searched layers of ``stage`` that compute the same function of their
  input and their own variables: every layer after the first (stride 1, ``c_out -> c_out``, the
  stage's dilation) with the same candidates.  Layer indices ``j`` within the stage; only runs of
  two or more layers are listed (:class:`SuperStage` scans over them)."""
  runs: list[list[int]] = []
  for j, cands in enumerate(stage.candidates):
    if j == 0 or len(cands) == 1:
      continue
    if runs and runs[-1][-1] == j - 1 and stage.candidates[runs[-1][-1]] == cands:
      runs[-1].append(j)
    else:
      runs.append([j])
  return [r for r in runs if len(r) > 1]


class SuperStage(nn.Module):
  """The layers of one stage of a search space; searched layers are :class:`MixedLayer`.

  ``scan_layers`` (single-path mode only): the searched layers after the stage's first that are
  the same function (:func:`identical_runs`) run as one ``lax.scan`` over their variables,
  stacked on the fly, so that the weight step (Sec. 3.2.2) traces and compiles one such layer per
  run instead of one per layer (MobileNetV2's seg space: 11 mixed layers instead of 25).  The
  variables stay where they are (``layer{j}/{op}/...``): each run reads its layers' variables,
  stacks them, scans, and writes the updated BatchNorm statistics back per layer; gradients reach
  each layer's own parameters through the stack.  Same results up to float rounding.  The
  relaxed forward (Eq. 7) and ``init`` always run layer by layer: under ``jax.grad`` a scan
  stores every candidate's activations of each iteration into stacked buffers, a copy the
  unrolled layers do not make (measured: the full-space arch step 19% slower, its compilation
  only 10% shorter); the single-path step keeps one branch's residuals (its input, with
  ``remat``), so the scan costs it nothing measurable.
  """
  family: str
  stage: SpaceStage
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  remat: bool = False  # MixedLayer.remat of every searched layer
  relaxed_impl: str = 'naive'  # MixedLayer.relaxed_impl
  scan_layers: bool = False  # single path: identical layers as one lax.scan (see above)

  @nn.compact
  def __call__(self, x, train: bool = False, path=None, weights=None):
    """``path`` ``(L_stage,)`` / ``weights`` ``(L_stage, K)`` cover this stage's searched layers."""
    st, k = self.stage, 0
    runs = {r[0]: r for r in identical_runs(st)} if (
        self.scan_layers and path is not None and not self.is_initializing()) else {}
    j = 0
    while j < len(st.candidates):
      cands = st.candidates[j]
      c_in, c_out, stride = (st.c_in, st.c_out, st.stride) if j == 0 else (
          st.c_out, st.c_out, 1)
      if len(cands) == 1:
        x = make_block(self.family, cands[0], c_in, c_out, stride, st.dilation, f'layer{j}',
                       self.conv)(x, train)
        j += 1
        continue
      if j in runs:
        run = runs[j]
        x = self._scan(x, train, run, cands, path[k:k + len(run)])
        j, k = j + len(run), k + len(run)
        continue
      layer = MixedLayer(self.family, cands, c_in, c_out, stride, st.dilation, self.conv,
                         remat=self.remat, relaxed_impl=self.relaxed_impl, name=f'layer{j}')
      x = layer(x, train,
                index=None if path is None else path[k],
                weights=None if weights is None else weights[k, :len(cands)])
      j, k = j + 1, k + 1
    return x

  def _scan(self, x, train, run, cands, sel):
    """Layers ``run`` (identical, :func:`identical_runs`) as one ``lax.scan``; ``sel``: their
    path entries ``(n,)`` int32."""
    st = self.stage
    layer = MixedLayer(self.family, cands, st.c_out, st.c_out, 1, st.dilation, self.conv,
                       remat=self.remat, relaxed_impl=self.relaxed_impl, parent=None)
    names = [f'layer{j}' for j in run]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    params = stack([self.variables['params'][n] for n in names])
    stats = stack([self.variables['batch_stats'][n] for n in names])
    update = train and self.is_mutable_collection('batch_stats')

    def body(h, xs):
      p, s, index = xs
      variables = {'params': p, 'batch_stats': s}
      if update:
        h, new = layer.apply(variables, h, train, index=index, mutable=['batch_stats'])
        return h, new['batch_stats']
      return layer.apply(variables, h, train, index=index), s

    x, stats = jax.lax.scan(body, x, (params, stats, sel))
    if update:
      for i, n in enumerate(names):
        self.put_variable('batch_stats', n, jax.tree.map(lambda a, i=i: a[i], stats))
    return x


class Supernet(nn.Module):
  """The supernet of ``space``; a drop-in for :class:`~fna_jax.models.backbone.Backbone`.

  ``__call__(x, train, path=None, op_weights=None)`` with ``x`` ``(N, H, W, 3)`` returns the same
  feature dict as ``Backbone`` (``'stem'``, ``'stage{i}'``, ``'last'`` if any, ``'out'``).  Give
  ``path`` (int32 ``(L,)``) for a single-path forward or ``op_weights`` (``(L, K)``) for the relaxed
  one; ``init`` needs neither.  ``remat``: the single-path forward rematerialises every mixed
  layer's branches (:class:`MixedLayer`); same variables, same results, less memory under grad.
  ``relaxed_impl``: how the relaxed forward is computed, the same numbers either way.
  """
  space: SearchSpace
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  remat: bool = False  # MixedLayer.remat of every searched layer
  relaxed_impl: str = 'naive'  # MixedLayer.relaxed_impl
  scan_layers: bool = False  # SuperStage.scan_layers of every stage (single path)

  @nn.compact
  def __call__(self, x, train: bool = False, path=None, op_weights=None):
    sp = self.space
    feats = {}
    x = feats['stem'] = stem(sp.family, sp.stem, x, train, self.conv)
    k = 0
    for i, st in enumerate(sp.stages):
      n = sum(1 for c in st.candidates if len(c) > 1)
      x = SuperStage(sp.family, st, self.conv, remat=self.remat,
                     relaxed_impl=self.relaxed_impl, scan_layers=self.scan_layers,
                     name=f'stage{i}')(
          x, train, None if path is None else path[k:k + n],
          None if op_weights is None else op_weights[k:k + n])
      feats[f'stage{i}'] = x
      k += n
    if sp.last_channels:
      x = feats['last'] = last_conv(sp.family, sp.last_channels, x, train, self.conv)
    feats['out'] = x
    return feats

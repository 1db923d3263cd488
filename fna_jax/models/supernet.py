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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fna_jax.models.backbone import last_conv, stem
from fna_jax.models.blocks import make_block
from fna_jax.ops import Conv
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
  """
  family: str
  candidates: tuple[str, ...]
  c_in: int
  c_out: int
  stride: int = 1
  dilation: int = 1
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  remat: bool = False  # single path: rematerialise each branch (see the class docstring)

  @nn.compact
  def __call__(self, x, train: bool = False, index=None, weights=None):
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
      return sum(weights[o] * b(self, x) for o, b in enumerate(branches))
    if self.remat:
      # ``train`` is a Python bool closed over by ``run``, so no static_argnums are needed.
      branches = [nn.checkpoint(b) for b in branches]
    return nn.switch(index, branches, self, x)


class SuperStage(nn.Module):
  """The layers of one stage of a search space; searched layers are :class:`MixedLayer`."""
  family: str
  stage: SpaceStage
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  remat: bool = False  # MixedLayer.remat of every searched layer

  @nn.compact
  def __call__(self, x, train: bool = False, path=None, weights=None):
    """``path`` ``(L_stage,)`` / ``weights`` ``(L_stage, K)`` cover this stage's searched layers."""
    st, k = self.stage, 0
    for j, cands in enumerate(st.candidates):
      c_in, c_out, stride = (st.c_in, st.c_out, st.stride) if j == 0 else (
          st.c_out, st.c_out, 1)
      if len(cands) == 1:
        x = make_block(self.family, cands[0], c_in, c_out, stride, st.dilation, f'layer{j}',
                       self.conv)(x, train)
        continue
      layer = MixedLayer(self.family, cands, c_in, c_out, stride, st.dilation, self.conv,
                         self.remat, name=f'layer{j}')
      x = layer(x, train,
                index=None if path is None else path[k],
                weights=None if weights is None else weights[k, :len(cands)])
      k += 1
    return x


class Supernet(nn.Module):
  """The supernet of ``space``; a drop-in for :class:`~fna_jax.models.backbone.Backbone`.

  ``__call__(x, train, path=None, op_weights=None)`` with ``x`` ``(N, H, W, 3)`` returns the same
  feature dict as ``Backbone`` (``'stem'``, ``'stage{i}'``, ``'last'`` if any, ``'out'``).  Give
  ``path`` (int32 ``(L,)``) for a single-path forward or ``op_weights`` (``(L, K)``) for the relaxed
  one; ``init`` needs neither.  ``remat``: the single-path forward rematerialises every mixed
  layer's branches (:class:`MixedLayer`); same variables, same results, less memory under grad.
  """
  space: SearchSpace
  conv: Any = Conv  # ops.Conv or ops.conv_module(impl)
  remat: bool = False  # MixedLayer.remat of every searched layer

  @nn.compact
  def __call__(self, x, train: bool = False, path=None, op_weights=None):
    sp = self.space
    feats = {}
    x = feats['stem'] = stem(sp.family, sp.stem, x, train, self.conv)
    k = 0
    for i, st in enumerate(sp.stages):
      n = sum(1 for c in st.candidates if len(c) > 1)
      x = SuperStage(sp.family, st, self.conv, self.remat, name=f'stage{i}')(
          x, train, None if path is None else path[k:k + n],
          None if op_weights is None else op_weights[k:k + n])
      feats[f'stage{i}'] = x
      k += n
    if sp.last_channels:
      x = feats['last'] = last_conv(sp.family, sp.last_channels, x, train, self.conv)
    feats['out'] = x
    return feats

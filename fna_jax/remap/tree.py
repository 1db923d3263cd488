"""Parameter remapping between whole networks (paper Sec. 3.1).

:func:`remap_variables` maps the variables of a network built by :mod:`fna_jax.models` for one
:class:`~fna_jax.arch.Arch` (the seed, or any other architecture of the same family) to the
variables of a network for another architecture.  :func:`remap_block` does the same for one layer
and is what a supernet uses to fill every candidate op of a layer from one seed layer.

Walk (0-indexed)
----------------
* The two architectures must have the same family and number of stages.
* Stem: ``stem_conv`` by width (output channels) and kernel rules, ``stem_bn`` by the BN rule.
* Stage ``i``, layer ``j`` of the new network (skips own nothing) takes the seed stage's real
  (non-skip) layer number ``depth_index(j, l)`` = ``min(j, l - 1)``, ``l`` = the seed stage's real
  layers (counted in order; architectures list real layers first, so this is the paper's Eq. 1).
* Stage strides and dilations own no parameters and may differ, except that a ResNet block's
  stride and widths decide whether it has a downsample shortcut.
* ``last_conv``/``last_bn`` (MBConv nets with ``last_channels``) by width rules when both networks
  have them.  When only the new network has them they keep the values given in ``dst_variables``.
* Other top-level subtrees next to ``backbone`` (``classifier``, a task head, ...) are copied from
  the source when it has the same subtree with identical structure and shapes, else kept from
  ``dst_variables``.

Block rules (see :func:`remap_block`)
-------------------------------------
MBConv: ``expand_conv`` by width on both axes, ``expand_bn``; ``dw_conv`` by kernel rule and width
on its output axis only (depthwise); ``dw_bn``; ``project_conv`` by width on both axes;
``project_bn``.  Expansion 1 (no expand conv) maps only to expansion 1.
ResNet: the searched conv (basic ``conv1``, bottleneck ``conv2``) is expanded to its plain
block-diagonal kernel, remapped by width on both axes and by kernel rule, then regrouped by Eq. 4;
every other conv by width on both axes; BN vectors by the BN rule; ``downsample_*`` when the new
block has one (the seed layer must have one too).

Strategies (Tab. 15)
--------------------
:class:`Strategy` ``(width, kernel)``; strings name the paper's variants: ``'fna'`` (first channels,
centre kernels; the default), ``'bn_gamma'``, ``'std'``, ``'l1'`` (width by top-k importance,
Algorithm 1), ``'dilation'`` (kernel by Eq. 11).

Importance-based width applies to the hidden channels inside a block, which nothing outside the
block sees; channels of the residual stream (a block's input and output, the stem, ``last_conv``)
must agree across blocks, so they always take the first channels.  The hidden channel sets and the
importance vector each one is chosen by (computed on the seed layer, Algorithm 1 with
``k`` = the new width, only when the new width is smaller):

* MBConv (expansion > 1): the ``c_in * e`` hidden channels shared by ``expand_conv`` (out),
  ``expand_bn``, ``dw_conv``, ``dw_bn`` and ``project_conv`` (in); importance from ``expand_bn``'s
  ``|gamma|`` or ``expand_conv``'s per-output-channel std / L1.  With expansion 1 the hidden
  channels are the block's input channels and take the first ones.
* Basic block: ``conv1`` (out), ``bn1``, ``conv2`` (in); importance from ``bn1`` / ``conv1``.
* Bottleneck: set A = ``conv1`` (out), ``bn1``, ``conv2`` (in) by ``bn1`` / ``conv1``; set B =
  ``conv2`` (out), ``bn2``, ``conv3`` (in) by ``bn2`` / ``conv2``.  Std and L1 of a grouped kernel
  are taken over its stored weights, ``(k, k, I/g)`` per output channel.

Everything is pure ``jnp`` with shapes fixed by the (static, hashable) architectures and strategy,
so ``jax.jit(remap_variables, static_argnums=(1, 2, 4))`` works.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from fna_jax import arch as arch_lib
from fna_jax.remap import rules

WIDTH_MODES = ('first', 'bn_gamma', 'std', 'l1')
PARAMS, BATCH_STATS = 'params', 'batch_stats'
BACKBONE = 'backbone'


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How width and kernel are remapped (paper Sec. 3.1 and Tab. 15).

  Attributes:
    width: ``'first'`` (Eq. 2/3, FNA++), or top-k importance by ``'bn_gamma'`` (|BN gamma|),
      ``'std'`` (per-channel weight std) or ``'l1'`` (per-channel weight L1 norm).
    kernel: ``'center'`` (Eq. 5/6, FNA++) or ``'dilation'`` (Eq. 11).
  """
  width: str = 'first'
  kernel: str = 'center'

  def __post_init__(self):
    if self.width not in WIDTH_MODES:
      raise ValueError(f'Strategy.width {self.width!r} not in {WIDTH_MODES}')
    if self.kernel not in rules.KERNEL_MODES:
      raise ValueError(f'Strategy.kernel {self.kernel!r} not in {rules.KERNEL_MODES}')


STRATEGIES = {
    'fna': Strategy(),
    'bn_gamma': Strategy(width='bn_gamma'),
    'std': Strategy(width='std'),
    'l1': Strategy(width='l1'),
    'dilation': Strategy(kernel='dilation'),
}


def as_strategy(strategy: str | Strategy) -> Strategy:
  """A :class:`Strategy` from itself or one of the names in :data:`STRATEGIES`."""
  if isinstance(strategy, Strategy):
    return strategy
  try:
    return STRATEGIES[strategy]
  except (KeyError, TypeError):
    raise ValueError(f'unknown remapping strategy {strategy!r}; expected a Strategy or one of '
                     f'{sorted(STRATEGIES)}') from None


# =========================================================================== block-level helpers
class _Reader:
  """Reads a block's (or the stem's) seed arrays, checking shapes and naming the path on failure."""

  def __init__(self, variables: Mapping[str, Any], path: str):
    self.v = variables
    self.path = path

  def get(self, collection: str, module: str, field: str, shape=None) -> jax.Array:
    try:
      x = self.v[collection][module][field]
    except (KeyError, TypeError):
      raise ValueError(f'{self.path}: the source variables have no '
                       f'{collection}/{module}/{field}') from None
    x = jnp.asarray(x)
    if shape is not None and tuple(x.shape) != tuple(shape):
      raise ValueError(f'{self.path}: source {collection}/{module}/{field} has shape '
                       f'{tuple(x.shape)}, but the source architecture implies {tuple(shape)}')
    return x

  def has(self, module: str) -> bool:
    return module in self.v.get(PARAMS, {})

  def conv(self, module: str, shape) -> jax.Array:
    return self.get(PARAMS, module, 'kernel', shape)

  def bn(self, module: str, size: int) -> dict[str, jax.Array]:
    """``{'scale', 'bias'[, 'mean', 'var']}`` of a BatchNorm (stats when the source has them)."""
    out = {f: self.get(PARAMS, module, f, (size,)) for f in ('scale', 'bias')}
    if BATCH_STATS in self.v:
      out.update({f: self.get(BATCH_STATS, module, f, (size,)) for f in ('mean', 'var')})
    return out


def _put_conv(out: dict, module: str, kernel: jax.Array) -> None:
  out.setdefault(PARAMS, {})[module] = {'kernel': kernel}


def _put_bn(out: dict, module: str, fields: Mapping[str, jax.Array], new_size: int,
            indices=None) -> None:
  """BN rule on every field present; channels beyond the seed get the field's identity value."""
  for f, x in fields.items():
    coll = PARAMS if f in ('scale', 'bias') else BATCH_STATS
    out.setdefault(coll, {}).setdefault(module, {})[f] = rules.bn_vector(
        x, new_size, rules.BN_FILL[f], indices)


def _hidden_indices(strategy: Strategy, new: int, old: int, bn_scale: jax.Array,
                    kernel: jax.Array):
  """Kept seed channels of a hidden channel set: ``None`` (first channels) or sorted top-k."""
  if strategy.width == 'first' or new >= old:
    return None
  if strategy.width == 'bn_gamma':
    v = rules.bn_gamma_importance(bn_scale)
  elif strategy.width == 'std':
    v = rules.channel_std(kernel)
  else:
    v = rules.channel_l1(kernel)
  return rules.topk_indices(v, new)


def _spatial_conv(x, src_groups, dst_k, dst_groups, c_in, c_out, strategy, in_idx=None,
                  out_idx=None):
  """A (grouped) kxk kernel -> plain -> width (in, out) -> kernel rule -> ``dst_groups``."""
  p = rules.plain_from_grouped(x, src_groups)
  p = rules.width(p, 2, c_in, in_idx)
  p = rules.width(p, 3, c_out, out_idx)
  p = rules.kernel(p, dst_k, strategy.kernel)
  return rules.grouped_from_plain(p, dst_groups)


def _as_op(op) -> arch_lib.Op:
  return op if isinstance(op, arch_lib.Op) else arch_lib.parse_op(op)


def _mbconv(r: _Reader, so, do, src_io, dst_io, strategy) -> dict:
  ci_s, co_s = src_io[:2]
  ci_d, co_d = dst_io[:2]
  if (so.expansion == 1) != (do.expansion == 1):
    raise ValueError(
        f'{r.path}: cannot remap MBConv {so.name!r} to {do.name!r}: expansion 1 has no expand '
        'conv (its hidden channels are its input channels), so expansion 1 maps only to '
        'expansion 1')
  h_s, h_d = ci_s * so.expansion, ci_d * do.expansion
  out: dict = {}
  idx = None
  if do.expansion != 1:
    w = r.conv('expand_conv', (1, 1, ci_s, h_s))
    bn = r.bn('expand_bn', h_s)
    idx = _hidden_indices(strategy, h_d, h_s, bn['scale'], w)
    _put_conv(out, 'expand_conv', rules.width(rules.width(w, 2, ci_d), 3, h_d, idx))
    _put_bn(out, 'expand_bn', bn, h_d, idx)
  dw = r.conv('dw_conv', (so.kernel, so.kernel, 1, h_s))
  _put_conv(out, 'dw_conv', rules.width(rules.kernel(dw, do.kernel, strategy.kernel), 3, h_d, idx))
  _put_bn(out, 'dw_bn', r.bn('dw_bn', h_s), h_d, idx)
  pw = r.conv('project_conv', (1, 1, h_s, co_s))
  _put_conv(out, 'project_conv', rules.width(rules.width(pw, 2, h_d, idx), 3, co_d))
  _put_bn(out, 'project_bn', r.bn('project_bn', co_s), co_d)
  return out


def _downsample(r: _Reader, out: dict, src_io, dst_io) -> None:
  ci_s, co_s = src_io[:2]
  ci_d, co_d, stride_d = dst_io
  if stride_d == 1 and ci_d == co_d:
    return
  if not r.has('downsample_conv'):
    raise ValueError(
        f'{r.path}: the new block needs downsample_conv/downsample_bn (stride {stride_d}, '
        f'{ci_d}->{co_d} channels) but its seed layer (c_in={ci_s}, c_out={co_s}) has none')
  w = r.conv('downsample_conv', (1, 1, ci_s, co_s))
  _put_conv(out, 'downsample_conv', rules.width(rules.width(w, 2, ci_d), 3, co_d))
  _put_bn(out, 'downsample_bn', r.bn('downsample_bn', co_s), co_d)


def _basic(r: _Reader, so, do, src_io, dst_io, strategy) -> dict:
  ci_s, co_s = src_io[:2]
  ci_d, co_d = dst_io[:2]
  out: dict = {}
  w1 = r.conv('conv1', (so.kernel, so.kernel, ci_s // so.groups, co_s))
  bn1 = r.bn('bn1', co_s)
  idx = _hidden_indices(strategy, co_d, co_s, bn1['scale'], w1)
  _put_conv(out, 'conv1', _spatial_conv(w1, so.groups, do.kernel, do.groups, ci_d, co_d, strategy,
                                        out_idx=idx))
  _put_bn(out, 'bn1', bn1, co_d, idx)
  w2 = r.conv('conv2', (3, 3, co_s, co_s))
  _put_conv(out, 'conv2', rules.width(rules.width(w2, 2, co_d, idx), 3, co_d))
  _put_bn(out, 'bn2', r.bn('bn2', co_s), co_d)
  _downsample(r, out, src_io, dst_io)
  return out


def _bottleneck(r: _Reader, so, do, src_io, dst_io, strategy) -> dict:
  ci_s, co_s = src_io[:2]
  ci_d, co_d = dst_io[:2]
  w_s = co_s // arch_lib.BOTTLENECK_EXPANSION
  w_d = co_d // arch_lib.BOTTLENECK_EXPANSION
  out: dict = {}
  w1 = r.conv('conv1', (1, 1, ci_s, w_s))
  bn1 = r.bn('bn1', w_s)
  idx_a = _hidden_indices(strategy, w_d, w_s, bn1['scale'], w1)
  _put_conv(out, 'conv1', rules.width(rules.width(w1, 2, ci_d), 3, w_d, idx_a))
  _put_bn(out, 'bn1', bn1, w_d, idx_a)
  w2 = r.conv('conv2', (so.kernel, so.kernel, w_s // so.groups, w_s))
  bn2 = r.bn('bn2', w_s)
  idx_b = _hidden_indices(strategy, w_d, w_s, bn2['scale'], w2)
  _put_conv(out, 'conv2', _spatial_conv(w2, so.groups, do.kernel, do.groups, w_d, w_d, strategy,
                                        in_idx=idx_a, out_idx=idx_b))
  _put_bn(out, 'bn2', bn2, w_d, idx_b)
  w3 = r.conv('conv3', (1, 1, w_s, co_s))
  _put_conv(out, 'conv3', rules.width(rules.width(w3, 2, w_d, idx_b), 3, co_d))
  _put_bn(out, 'bn3', r.bn('bn3', co_s), co_d)
  _downsample(r, out, src_io, dst_io)
  return out


def remap_block(src_block: Mapping[str, Any], src_op: str | arch_lib.Op,
                dst_op: str | arch_lib.Op, family: str, src_io: tuple[int, ...],
                dst_io: tuple[int, int, int], strategy: str | Strategy = 'fna', *,
                path: str = 'block') -> dict:
  """Remaps the variables of one layer (block) to another op and/or width.

  This is the per-layer function a supernet uses to fill each candidate op of a layer from the
  same seed layer (depth mapping is the caller's job: see :func:`rules.depth_index`).  The result
  is built from shapes alone, so no initialised target block is needed.

  Args:
    src_block: the seed layer's variables, ``{'params': {...}, 'batch_stats': {...}}`` as found at
      ``backbone/stage{i}/layer{j}`` (``batch_stats`` optional; without it none is returned).
    src_op, dst_op: op names (or parsed :class:`~fna_jax.arch.Op`) of the seed and new layer, e.g.
      ``'k3_e6'`` -> ``'k7_e3'`` or ``'k3g1'`` -> ``'k5g2'``.
    family: ``'mbconv'``, ``'resnet_basic'`` or ``'resnet_bottleneck'``.
    src_io: ``(c_in, c_out[, stride])`` of the seed layer (:meth:`Stage.layer_io`).
    dst_io: ``(c_in, c_out, stride)`` of the new layer; ResNet blocks need the stride to know
      whether the new block has a downsample shortcut.
    strategy: a :class:`Strategy` or a name in :data:`STRATEGIES`.
    path: used in error messages, e.g. ``'backbone/stage2/layer3'``.

  Returns:
    ``{'params': {...}[, 'batch_stats': {...}]}`` with exactly the modules and shapes of the new
    block (see :mod:`fna_jax.models.blocks`); ``{}`` when ``dst_op`` is ``'skip'``.

  Raises:
    ValueError naming ``path`` for a skip seed layer, ops of another family, expansion 1 <-> > 1,
    a missing downsample in the seed layer, or seed arrays whose shapes disagree with ``src_op`` /
    ``src_io``.
  """
  strategy = as_strategy(strategy)
  so, do = _as_op(src_op), _as_op(dst_op)
  if do.is_skip:
    return {}
  if so.is_skip:
    raise ValueError(f'{path}: a skip layer owns no parameters and cannot be a seed layer')
  if family not in arch_lib.FAMILIES:
    raise ValueError(f'{path}: unknown family {family!r}; expected one of {arch_lib.FAMILIES}')
  kind = arch_lib.MBCONV if family == arch_lib.MBCONV else 'resnet'
  for role, op in (('source', so), ('target', do)):
    if op.kind != kind:
      raise ValueError(f'{path}: {role} op {op.name!r} does not belong to family {family!r}')
  if len(dst_io) != 3:
    raise ValueError(f'{path}: dst_io must be (c_in, c_out, stride), got {dst_io!r}')
  r = _Reader(src_block, path)
  if family == arch_lib.MBCONV:
    return _mbconv(r, so, do, src_io, dst_io, strategy)
  if family == arch_lib.RESNET_BASIC:
    return _basic(r, so, do, src_io, dst_io, strategy)
  return _bottleneck(r, so, do, src_io, dst_io, strategy)


# =========================================================================== backbone level
def check_compatible(src_arch: arch_lib.Arch, dst_arch: arch_lib.Arch) -> None:
  """Raises ``ValueError`` unless ``src_arch`` can seed ``dst_arch`` (family and stage count)."""
  if src_arch.family != dst_arch.family:
    raise ValueError(f'cannot remap across families: source {src_arch.name or "arch"!r} is '
                     f'{src_arch.family!r}, target {dst_arch.name or "arch"!r} is '
                     f'{dst_arch.family!r}')
  if len(src_arch.stages) != len(dst_arch.stages):
    raise ValueError(f'cannot remap: source has {len(src_arch.stages)} stages, target has '
                     f'{len(dst_arch.stages)}; stage i maps to stage i')


def seed_layer(src_stage: arch_lib.Stage, j: int) -> int:
  """Index (position in ``src_stage.ops``) of the seed layer for new layer ``j`` (Eq. 1)."""
  real = [k for k, o in enumerate(src_stage.ops) if o != arch_lib.SKIP]
  return real[rules.depth_index(j, len(real))]


def remap_backbone(src_backbone: Mapping[str, Any], src_arch: arch_lib.Arch,
                   dst_arch: arch_lib.Arch, strategy: str | Strategy = 'fna') -> dict:
  """Remaps the variables of a :class:`~fna_jax.models.Backbone` to another architecture.

  Args:
    src_backbone: ``{'params': {...}, 'batch_stats': {...}}`` of a Backbone for ``src_arch`` (the
      trees found under ``backbone``; ``batch_stats`` optional).
    src_arch, dst_arch: architectures of the same family with the same number of stages.
    strategy: a :class:`Strategy` or a name in :data:`STRATEGIES`.

  Returns:
    The variables of a Backbone for ``dst_arch``, built from shapes alone.  ``last_conv`` /
    ``last_bn`` are included only when both architectures have ``last_channels``.
  """
  strategy = as_strategy(strategy)
  check_compatible(src_arch, dst_arch)
  family = dst_arch.family
  out: dict = {}

  def merge(prefix: tuple[str, ...], block: Mapping[str, Any]) -> None:
    for coll, mods in block.items():
      node = out.setdefault(coll, {})
      for p in prefix:
        node = node.setdefault(p, {})
      node.update(mods)

  # Stem: its output channels are the residual stream's, so always the first ones.
  r = _Reader(src_backbone, 'backbone')
  ss, ds = src_arch.stem, dst_arch.stem
  stem: dict = {}
  w = r.conv('stem_conv', (ss.kernel, ss.kernel, 3, ss.channels))
  _put_conv(stem, 'stem_conv', rules.kernel(rules.width(w, 3, ds.channels), ds.kernel,
                                            strategy.kernel))
  _put_bn(stem, 'stem_bn', r.bn('stem_bn', ss.channels), ds.channels)
  merge((), stem)

  for i, (s_st, d_st) in enumerate(zip(src_arch.stages, dst_arch.stages)):
    src_stage_vars = {c: v.get(f'stage{i}', {}) for c, v in src_backbone.items()}
    for j, op in enumerate(d_st.ops):
      if op == arch_lib.SKIP:
        continue
      sj = seed_layer(s_st, j)
      path = f'backbone/stage{i}/layer{j}'
      src_block = {c: v[f'layer{sj}'] for c, v in src_stage_vars.items() if f'layer{sj}' in v}
      if PARAMS not in src_block:
        raise ValueError(f'{path}: its seed layer backbone/stage{i}/layer{sj} '
                         f'({s_st.ops[sj]!r}) has no params in the source variables')
      block = remap_block(src_block, s_st.ops[sj], op, family, s_st.layer_io(sj),
                          d_st.layer_io(j), strategy,
                          path=f'{path} (from source layer{sj})')
      merge((f'stage{i}', f'layer{j}'), block)

  if src_arch.last_channels and dst_arch.last_channels:
    c_s, c_d = src_arch.stages[-1].c_out, dst_arch.stages[-1].c_out
    last: dict = {}
    w = r.conv('last_conv', (1, 1, c_s, src_arch.last_channels))
    _put_conv(last, 'last_conv', rules.width(rules.width(w, 2, c_d), 3, dst_arch.last_channels))
    _put_bn(last, 'last_bn', r.bn('last_bn', src_arch.last_channels), dst_arch.last_channels)
    merge((), last)
  return out


# =========================================================================== whole variables
def _split_backbone(variables: Mapping[str, Any]) -> tuple[dict, bool]:
  """``({collection: backbone subtree}, nested)``; ``nested`` when params hold a 'backbone' key."""
  nested = BACKBONE in variables.get(PARAMS, {})
  if nested:
    return {c: v[BACKBONE] for c, v in variables.items() if BACKBONE in v}, True
  return dict(variables), False


def _key_str(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flatten(tree: Any) -> dict[tuple[str, ...], Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_str(k) for k in path): x for path, x in leaves}


def _same_shapes(a: Any, b: Any) -> bool:
  fa, fb = _flatten(a), _flatten(b)
  return fa.keys() == fb.keys() and all(
      tuple(jnp.shape(fa[k])) == tuple(jnp.shape(fb[k])) for k in fa)


def remap_variables(src_variables: Mapping[str, Any], src_arch: arch_lib.Arch,
                    dst_arch: arch_lib.Arch, dst_variables: Mapping[str, Any],
                    strategy: str | Strategy = 'fna') -> Any:
  """Remaps a whole network's variables from ``src_arch`` to ``dst_arch`` (FNA++ Sec. 3.1).

  Args:
    src_variables: variables of a network for ``src_arch`` built by :mod:`fna_jax.models`:
      ``{'params': {'backbone': ..., 'classifier': ...}, 'batch_stats': {'backbone': ...}}``, or a
      bare Backbone's ``{'params': {...}, 'batch_stats': {...}}`` (no ``backbone`` level).
    src_arch: the source architecture (static).
    dst_arch: the target architecture (static); same family and number of stages.
    dst_variables: variables of a network for ``dst_arch`` (e.g. a fresh ``init``); they fix the
      result's tree structure, shapes and dtypes, and supply whatever has no source (``last_conv``
      when the source has none, non-backbone subtrees whose shapes differ).
    strategy: a :class:`Strategy` or one of ``'fna'``, ``'bn_gamma'``, ``'std'``, ``'l1'``,
      ``'dilation'`` (static).

  Returns:
    A new tree with exactly ``dst_variables``' structure, shapes and dtypes: the backbone
    remapped by :func:`remap_backbone`; other top-level subtrees (``classifier``, heads) copied
    from the source when it has them with identical structure and shapes, else from
    ``dst_variables``.  Inputs are not modified.

  Raises:
    ValueError naming the problem (family / stage count mismatch) or the layer path (impossible
    mapping, source or target variables that do not match their architecture).
  """
  strategy = as_strategy(strategy)
  check_compatible(src_arch, dst_arch)
  src_bb, _ = _split_backbone(src_variables)
  dst_bb, dst_nested = _split_backbone(dst_variables)
  new_bb = _flatten(remap_backbone(src_bb, src_arch, dst_arch, strategy))
  dst_flat = _flatten(dst_bb)
  remapped_collections = {k[0] for k in new_bb}
  for key in dst_flat:
    name = '/'.join(key)
    if key[0] not in remapped_collections:
      raise ValueError(f'the target variables have {name} (under backbone) but the source '
                       f'variables have no {key[0]!r} collection to remap it from')
    if key not in new_bb and not (len(key) > 1 and key[1] in ('last_conv', 'last_bn')):
      raise ValueError(f'target variables {name} (under backbone) do not belong to a '
                       f'{dst_arch.family} backbone for the target architecture')
  dst_collections = {k[0] for k in dst_flat}
  for key, x in new_bb.items():
    if key[0] not in dst_collections:
      continue
    name = '/'.join(key)
    if key not in dst_flat:
      raise ValueError(f'target variables lack {name} (under backbone), which the target '
                       'architecture has')
    if tuple(x.shape) != tuple(jnp.shape(dst_flat[key])):
      raise ValueError(f'{name} (under backbone): remapped shape {tuple(x.shape)} but the target '
                       f'variables have {tuple(jnp.shape(dst_flat[key]))}; do they belong to the '
                       'target architecture?')

  # Non-backbone top-level subtrees (classifier, heads): from the source when shapes match.
  side: dict[tuple[str, str], dict] = {}
  if dst_nested:
    src_nested = BACKBONE in src_variables.get(PARAMS, {})
    for coll, tree in dst_variables.items():
      for top, d in tree.items():
        if top == BACKBONE:
          continue
        s = src_variables.get(coll, {}).get(top) if src_nested else None
        side[coll, top] = _flatten(s if s is not None and _same_shapes(s, d) else d)

  def leaf(path, x):
    key = tuple(_key_str(k) for k in path)
    dtype = jnp.asarray(x).dtype
    if not dst_nested:
      return jnp.asarray(new_bb.get(key, x), dtype)
    if key[1] == BACKBONE:
      return jnp.asarray(new_bb.get((key[0],) + key[2:], x), dtype)
    return jnp.asarray(side[key[0], key[1]][key[2:]], dtype)

  return jax.tree_util.tree_map_with_path(leaf, dst_variables)

"""Parameter and multiply-accumulate (MAdds) counting, as the paper's Params/MAdds columns (Tab. 2, 4, 6).

Conventions, as in the paper and the usual torchvision reference numbers:

* **Params**: every scalar in ``variables['params']`` (conv and dense kernels and biases, BN
  scale and bias); ``batch_stats`` (BN running statistics) are not parameters.
* **MAdds**: multiply-accumulates of convolutions,
  ``k_h * k_w * C_in / groups * C_out * H_out * W_out``, of transposed convolutions,
  ``k_h * k_w * C_in * C_out * H_out * W_out`` (over *output* positions), and of dense layers,
  ``in * out`` (per position when applied to a feature map).  A (transposed) convolution with a
  bias adds ``C_out * H_out * W_out``, one accumulate per output, as the authors' counter does
  (``fna_det/tools/multadds_count.py`` in github.com/JaminFong/FNA; the paper's Tab. 2 and
  detection figures include it); a dense layer's bias counts nothing, as in that counter (its
  ``nn.Linear`` hook leaves biases out).  Normalisation, activations, pooling, residual
  additions and resizing count nothing.  Padding taps count like any other tap
  (XLA's own cost analysis skips them, see ``tests/test_cost.py``).
* MAdds are **per image**: each layer's count over the whole call is divided by the batch size
  ``input_shape[0]`` (an error names the layer if it does not divide).  Batch 1 is the natural
  choice.

How it works: :func:`count_layers` runs ``module.apply`` under :func:`jax.eval_shape` (shapes only,
no arithmetic) with a :func:`flax.linen.intercept_methods` interceptor that records every
``__call__`` of :class:`fna_jax.ops.Conv`, ``nn.Conv``, ``nn.ConvTranspose`` and ``nn.Dense``: its
module path, kernel shape, groups, input and output shapes.  For every one of these
``MAdds = kernel.size * prod(output.shape[:-1]) / batch`` (plus ``output.size / batch`` for a conv
with a bias), which is the formula above because flax kernels are ``(*spatial, C_in / groups,
C_out)`` (transposed: ``(*spatial, C_in, C_out)``; dense: ``(in, out)``).  Any other module that owns a ``kernel`` parameter raises :class:`CostError` rather
than go uncounted.

Branches of ``nn.switch``/``lax.switch``/``lax.cond`` are all traced, so in a supernet every
candidate op is recorded once whatever the chosen index: that is what per-candidate cost tables
need (:func:`sum_costs` over ``'backbone/stage3/layer2/k5_e6'``), but the *total* of a supernet is
then the sum over all candidates.  Count a derived (single-path) network for its cost.

Example::

  module = models.build('mobilenet_v2')
  params, madds = cost.count(module, None, (1, 224, 224, 3))   # None: shapes from module.init
  print(cost.format_count(params, madds))                      # Params 3.50M  MAdds 300.8M
  layers = cost.count_layers(module, None, (1, 224, 224, 3))
  cost.group_costs(layers, 3)['backbone/stage1/layer0']        # Cost(params=..., madds=...)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fna_jax import ops

CONV = 'conv'
CONV_TRANSPOSE = 'conv_transpose'
DENSE = 'dense'
KINDS = (CONV, CONV_TRANSPOSE, DENSE)

# Keyword arguments of ``module.apply`` that ``module.init`` does not take.
_APPLY_ONLY = ('mutable', 'rngs')


class CostError(ValueError):
  """A network, input or layer that cannot be counted."""


class Cost(NamedTuple):
  """``(params, madds)``: parameter scalars and multiply-accumulates per image."""
  params: int
  madds: int


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One call of a counted layer.

  Attributes:
    path: the module path joined by ``'/'``, e.g. ``'backbone/stage1/layer0/dw_conv'``
      (``''`` when the counted module is itself the layer).
    kind: ``'conv'``, ``'conv_transpose'`` or ``'dense'``.
    module_type: the class name of the module (``'Conv'``, ``'ConvTranspose'``, ``'Dense'``).
    kernel_shape: the kernel's shape, flax layout (``(k_h, k_w, C_in / groups, C_out)`` for convs,
      ``(in, out)`` for dense).
    groups: feature groups of a conv (1 for transposed convs and dense layers).
    input_shape: shape of the layer's input in this call (batch included).
    output_shape: shape of the layer's output in this call (batch included).
    madds: multiply-accumulates of this call per image (a conv's bias included).
    params: scalars in the module's own parameters (kernel and bias), counted at the module's first
      call only (0 for later calls of a shared module), so sums over layers never double count.
  """
  path: str
  kind: str
  module_type: str
  kernel_shape: tuple[int, ...]
  groups: int
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  madds: int
  params: int

  @property
  def path_tuple(self) -> tuple[str, ...]:
    return tuple(self.path.split('/')) if self.path else ()


def _size(x) -> int:
  return math.prod(x.shape)


def param_count(variables) -> int:
  """Scalars in ``variables['params']`` (or in ``variables`` itself when it has no ``'params'``).

  Works on arrays and on ``jax.ShapeDtypeStruct`` trees alike.
  """
  tree = variables['params'] if 'params' in variables else variables
  return sum(_size(x) for x in jax.tree.leaves(tree))


def _kind(module: nn.Module) -> str | None:
  if isinstance(module, (ops.Conv, nn.Conv)):
    return CONV
  if isinstance(module, nn.ConvTranspose):
    return CONV_TRANSPOSE
  if isinstance(module, nn.Dense):
    return DENSE
  return None


def _groups(module: nn.Module) -> int:
  if isinstance(module, ops.Conv):
    return module.groups
  if isinstance(module, nn.Conv):
    return module.feature_group_count
  return 1


def _own_params(module: nn.Module) -> dict[str, Any]:
  """The module's own parameter arrays (not its children's)."""
  params = module.variables.get('params', {})
  return {k: v for k, v in params.items() if hasattr(v, 'shape')}


def _path(module: nn.Module) -> str:
  return '/'.join(str(p) for p in module.path)


def _accepts(fn: Callable, name: str) -> bool:
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):
    return False
  return name in sig.parameters


def _call_kwargs(module: nn.Module, method, apply_kwargs: dict[str, Any]) -> dict[str, Any]:
  """``apply_kwargs`` plus ``train=False`` when the method takes ``train`` and none was given."""
  kw = dict(apply_kwargs)
  fn = getattr(module, method) if isinstance(method, str) else (method or module.__call__)
  if 'train' not in kw and _accepts(fn, 'train'):
    kw['train'] = False
  return kw


def _input_struct(input_shape: Sequence[int], dtype) -> jax.ShapeDtypeStruct:
  shape = tuple(int(s) for s in input_shape)
  if len(shape) < 2 or any(s < 1 for s in shape):
    raise CostError(f'input_shape {tuple(input_shape)} must be (batch, ...) with positive sizes, '
                    'e.g. (1, 224, 224, 3) NHWC')
  return jax.ShapeDtypeStruct(shape, dtype)


def _abstract_variables(module, variables, x, method, kw):
  if variables is not None:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  init_kw = {k: v for k, v in kw.items() if k not in _APPLY_ONLY}
  return jax.eval_shape(
      lambda xx: module.init(jax.random.key(0), xx, method=method, **init_kw), x)


def _run(module, variables, input_shape, method, dtype, apply_kwargs):
  """Traces ``module.apply`` once; returns ``(records, abstract_variables)``."""
  x = _input_struct(input_shape, dtype)
  batch = x.shape[0]
  kw = _call_kwargs(module, method, apply_kwargs)
  variables = _abstract_variables(module, variables, x, method, kw)
  records: list[LayerCost] = []
  seen: set[str] = set()

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != '__call__':
      return out
    mod = context.module
    kind = _kind(mod)
    own = _own_params(mod)
    if kind is None:
      if 'kernel' in own:
        raise CostError(
            f'layer {_path(mod)!r}: {type(mod).__name__} owns a kernel but fna_jax.cost counts '
            'only fna_jax.ops.Conv, nn.Conv, nn.ConvTranspose and nn.Dense')
      return out
    path = _path(mod)
    if 'kernel' not in own:
      raise CostError(f'layer {path!r}: {type(mod).__name__} has no kernel parameter after its '
                      'call')
    kernel_shape = tuple(int(s) for s in own['kernel'].shape)
    in_shape = tuple(int(s) for s in args[0].shape) if args and hasattr(args[0], 'shape') else ()
    out_shape = tuple(int(s) for s in out.shape)
    total = math.prod(kernel_shape) * math.prod(out_shape[:-1])
    if kind != DENSE and 'bias' in own:
      total += math.prod(out_shape)  # one accumulate per output (the authors' counter)
    if total % batch:
      raise CostError(f'layer {path!r}: {total} MAdds over output {out_shape} do not divide by the '
                      f'batch size {batch}; count with batch 1')
    params = 0 if path in seen else sum(_size(v) for v in own.values())
    seen.add(path)
    records.append(LayerCost(path=path, kind=kind, module_type=type(mod).__name__,
                             kernel_shape=kernel_shape, groups=int(_groups(mod)),
                             input_shape=in_shape, output_shape=out_shape,
                             madds=total // batch, params=params))
    return out

  def apply(v, xx):
    with nn.intercept_methods(interceptor):
      return module.apply(v, xx, method=method, **kw)

  jax.eval_shape(apply, variables, x)
  return records, variables


def count_layers(module: nn.Module, variables, input_shape: Sequence[int], *,
                 method: str | Callable | None = None, dtype=jnp.float32,
                 **apply_kwargs) -> list[LayerCost]:
  """Per-call costs of every conv, transposed conv and dense layer, in call order.

  Args:
    module: a flax linen module (e.g. ``fna_jax.models.build('mobilenet_v2')``).
    variables: its variables (arrays or ``jax.ShapeDtypeStruct``s), or ``None`` to take their
      shapes from ``module.init`` (under ``jax.eval_shape``; no arrays are made).
    input_shape: the input's shape, batch first, e.g. ``(1, 224, 224, 3)`` (NHWC).
    method: passed to ``module.apply`` (default ``__call__``).
    dtype: the input's dtype.
    **apply_kwargs: passed to ``module.apply`` (and, except ``rngs``/``mutable``, to ``module.init``
      when ``variables`` is ``None``), e.g. ``arch_index=...``.  ``train=False`` is added when the
      method takes ``train`` and it is not given.

  Returns:
    One :class:`LayerCost` per layer call; ``madds`` are per image.
  """
  records, _ = _run(module, variables, input_shape, method, dtype, apply_kwargs)
  return records


def count(module: nn.Module, variables, input_shape: Sequence[int], *,
          method: str | Callable | None = None, dtype=jnp.float32, **apply_kwargs) -> Cost:
  """``(params, madds)`` of a network for one image of ``input_shape[1:]``.

  ``params`` counts every scalar of ``variables['params']`` (all of them, also of layers that this
  input does not reach); ``madds`` is the sum of :func:`count_layers`.  Arguments as in
  :func:`count_layers`.
  """
  records, variables = _run(module, variables, input_shape, method, dtype, apply_kwargs)
  return Cost(param_count(variables), sum(r.madds for r in records))


def _prefix_match(path: str, prefix: str) -> bool:
  prefix = prefix.strip('/')
  return not prefix or path == prefix or path.startswith(prefix + '/')


def sum_costs(layers: Iterable[LayerCost], prefix: str = '') -> Cost:
  """Total ``(params, madds)`` of the layers at or under ``prefix``.

  ``prefix`` is a whole-component path prefix: ``'backbone/stage1'`` matches
  ``'backbone/stage1/layer0/dw_conv'`` but not ``'backbone/stage10/...'``; ``''`` matches
  everything.
  The params are those of conv/dense layers only (BN parameters are not layers here).
  """
  sel = [l for l in layers if _prefix_match(l.path, prefix)]
  return Cost(sum(l.params for l in sel), sum(l.madds for l in sel))


def group_costs(layers: Iterable[LayerCost],
                key: int | Callable[[LayerCost], str | None]) -> dict[str, Cost]:
  """Sums ``(params, madds)`` of layers by group, in order of first appearance.

  Args:
    layers: from :func:`count_layers`.
    key: an int ``depth`` groups by the first ``depth`` path components
      (``2`` -> ``'backbone/stage3'``; paths shorter than ``depth`` form their own group); a
      callable maps a layer to its group name, or to ``None`` to leave the layer out.

  Returns:
    ``{group: Cost}``.
  """
  if isinstance(key, int):
    if key < 1:
      raise CostError(f'group_costs: depth must be >= 1, got {key}')
    depth = key
    key = lambda l: '/'.join(l.path_tuple[:depth])  # noqa: E731
  params: dict[str, int] = {}
  madds: dict[str, int] = {}
  for l in layers:
    g = key(l)
    if g is None:
      continue
    params[g] = params.get(g, 0) + l.params
    madds[g] = madds.get(g, 0) + l.madds
  return {g: Cost(params[g], madds[g]) for g in params}


def to_giga(madds: float) -> float:
  """MAdds in G (1e9)."""
  return madds / 1e9


def to_mega(n: float) -> float:
  """A count in M (1e6)."""
  return n / 1e6


def format_count(params: int, madds: int) -> str:
  """E.g. ``'Params 3.50M  MAdds 300.8M'``; MAdds of 1e9 and more as ``'MAdds 1.82G'``."""
  m = f'{to_giga(madds):.2f}G' if madds >= 1e9 else f'{to_mega(madds):.1f}M'
  return f'Params {to_mega(params):.2f}M  MAdds {m}'

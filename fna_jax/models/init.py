"""Random initialisation from shapes alone (no forward pass, no compilation).

``module.init`` runs a forward pass; for a supernet that means every candidate op and, under jit,
a long compilation.  :func:`init_variables` instead takes the variable shapes from
``jax.eval_shape(module.init, ...)`` and draws each leaf from the distribution its module's
initialiser uses:

* conv kernels (4-D ``kernel``), by ``conv_init``: ``'kaiming'`` (default), torchvision's kaiming
  normal, fan_out (as ``fna_jax.ops.Conv``); ``'normal'``, normal with std 0.01, what the authors'
  release draws for a randomly initialised backbone (``backbone_init = "normal"`` in
  ``fna_seg/model/deeplab/cityscapes.deeplabv3/config.py`` and ``torch.nn.init.normal_(m.weight,
  0, 0.01)`` in ``.../backbone/derived_backbone.py``, github.com/JaminFong/FNA);
* dense kernels (2-D ``kernel``): normal with variance 1 / fan_in (flax's ``nn.Dense`` default is
  the truncated version of it), whatever ``conv_init`` (the release's backbone initialisation
  touches only its ``Conv2d`` and ``BatchNorm2d`` layers);
* ``bias``: 0; BatchNorm ``scale`` 1, running ``mean`` 0 and ``var`` 1 (the release: BN weight 1,
  bias 0, conv biases zeroed).

* leaves a task registered a rule for, whatever ``conv_init``: :func:`register_normal_init`
  draws kernels from normal with that rule's std (e.g. the pose head's transposed convs and final
  conv, std 0.001 as SimpleBaseline initialises them); :func:`register_leaf_init` draws any leaf
  (kernel or bias) with its own function (e.g. RetinaNet's xavier-uniform FPN convs and the
  classifier's prior bias).

``random_like(..., backbone_conv_init=...)`` applies another scheme to the conv kernels under a
``backbone`` key only (the random rows of the paper's Tab. 13 initialise the backbone as the
release does; heads keep kaiming).

Draws use numpy's generator seeded by ``seed`` (thousands of small eager jax.random calls take
tens of seconds for a supernet; numpy takes a fraction of one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import numpy as np


CONV_INITS = ('kaiming', 'normal')
NORMAL_STD = 0.01  # the release's torch.nn.init.normal_(m.weight, 0, 0.01)


# (match, draw): a leaf whose path keys (e.g. ``('params', 'head', 'deconv0', 'kernel')``)
# ``match`` accepts is ``draw(shape, dtype, rng)``; checked in order, before the defaults.
_LEAF_RULES: list[tuple[Callable[[tuple[str, ...]], bool], Callable]] = []


def register_leaf_init(match: Callable[[tuple[str, ...]], bool],
                       draw: Callable[[tuple[int, ...], Any, np.random.Generator], np.ndarray]
                       ) -> None:
  """Leaves whose path keys ``match`` accepts are ``draw(shape, dtype, rng)`` in
  :func:`random_like` (a head's own initialisation; registered once, at import)."""
  if (match, draw) not in _LEAF_RULES:
    _LEAF_RULES.append((match, draw))


_NORMAL_RULES: dict[tuple[Callable, float], tuple[Callable, Callable]] = {}


def register_normal_init(match: Callable[[tuple[str, ...]], bool], std: float) -> None:
  """Kernels whose path keys ``match`` accepts are drawn from normal(0, ``std``^2) by
  :func:`random_like` (a head's own initialisation; registered once, at import)."""
  if (match, std) not in _NORMAL_RULES:
    _NORMAL_RULES[match, std] = (
        lambda keys: keys[-1] == 'kernel' and match(keys),
        lambda shape, dtype, rng: (std * rng.standard_normal(shape)).astype(dtype))
    register_leaf_init(*_NORMAL_RULES[match, std])


def _rule(path) -> Callable | None:
  keys = tuple(str(getattr(k, 'key', k)) for k in path)
  for match, draw in _LEAF_RULES:
    if match(keys):
      return draw
  return None


def _init_leaf(path, shape_dtype, rng: np.random.Generator, conv_init: str) -> np.ndarray:
  name = path[-1].key
  shape, dtype = tuple(shape_dtype.shape), shape_dtype.dtype
  draw = _rule(path)
  if draw is not None:
    return np.asarray(draw(shape, dtype, rng), dtype)
  if name == 'kernel' and len(shape) == 4:
    kh, kw, _, c_out = shape
    std = (2.0 / (kh * kw * c_out)) ** 0.5 if conv_init == 'kaiming' else NORMAL_STD
  elif name == 'kernel' and len(shape) == 2:
    std = (1.0 / shape[0]) ** 0.5
  elif name in ('bias', 'mean'):
    return np.zeros(shape, dtype)
  elif name in ('scale', 'var'):
    return np.ones(shape, dtype)
  else:
    raise ValueError(f'init_variables: no initialiser for {jax.tree_util.keystr(path)} {shape}')
  return (std * rng.standard_normal(shape)).astype(dtype)


def _under_backbone(path) -> bool:
  return any(getattr(k, 'key', None) == 'backbone' for k in path)


def random_like(shapes, seed: int, conv_init: str = 'kaiming',
                backbone_conv_init: str | None = None):
  """A numpy variables tree with the structure of ``shapes`` (ShapeDtypeStructs or arrays).

  ``conv_init``: the conv kernels' scheme (``'kaiming'`` or ``'normal'``, see the module doc);
  ``backbone_conv_init``: the scheme of the conv kernels under a ``backbone`` key (default
  ``conv_init``).  The draws are the same standard normals whatever the schemes.
  """
  for scheme in (conv_init, backbone_conv_init):
    if scheme is not None and scheme not in CONV_INITS:
      raise ValueError(f'conv init must be one of {CONV_INITS}, got {scheme!r}')
  backbone_conv_init = backbone_conv_init or conv_init
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, s: _init_leaf(p, s, rng, backbone_conv_init if _under_backbone(p) else conv_init),
      shapes)


def variable_shapes(module, input_shape, **kwargs):
  """``{'params', 'batch_stats', ...}`` of ``module`` as ShapeDtypeStructs (``kwargs`` to init)."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape), **kwargs))


def init_variables(module, seed: int, input_shape, conv_init: str = 'kaiming', **kwargs):
  """Randomly initialised (numpy) variables of ``module`` for inputs of ``input_shape`` (NHWC)."""
  return random_like(variable_shapes(module, input_shape, **kwargs), seed, conv_init)

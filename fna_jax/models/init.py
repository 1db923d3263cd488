"""Random initialisation from shapes alone (no forward pass, no compilation).

``module.init`` runs a forward pass; for a supernet that means every candidate op and, under jit,
a long compilation.  :func:`init_variables` instead takes the variable shapes from
``jax.eval_shape(module.init, ...)`` and draws each leaf from the distribution its module's
initialiser uses:

* conv kernels (4-D ``kernel``): torchvision's kaiming normal, fan_out (as ``fna_jax.ops.Conv``);
* dense kernels (2-D ``kernel``): normal with variance 1 / fan_in (flax's ``nn.Dense`` default is
  the truncated version of it);
* ``bias``: 0; BatchNorm ``scale`` 1, running ``mean`` 0 and ``var`` 1.

Draws use numpy's generator seeded by ``seed`` (thousands of small eager jax.random calls take
tens of seconds for a supernet; numpy takes a fraction of one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import numpy as np


def _init_leaf(path, shape_dtype, rng: np.random.Generator) -> np.ndarray:
  name = path[-1].key
  shape, dtype = tuple(shape_dtype.shape), shape_dtype.dtype
  if name == 'kernel' and len(shape) == 4:
    kh, kw, _, c_out = shape
    std = (2.0 / (kh * kw * c_out)) ** 0.5
  elif name == 'kernel' and len(shape) == 2:
    std = (1.0 / shape[0]) ** 0.5
  elif name in ('bias', 'mean'):
    return np.zeros(shape, dtype)
  elif name in ('scale', 'var'):
    return np.ones(shape, dtype)
  else:
    raise ValueError(f'init_variables: no initialiser for {jax.tree_util.keystr(path)} {shape}')
  return (std * rng.standard_normal(shape)).astype(dtype)


def random_like(shapes, seed: int):
  """A numpy variables tree with the structure of ``shapes`` (ShapeDtypeStructs or arrays)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(lambda p, s: _init_leaf(p, s, rng), shapes)


def variable_shapes(module, input_shape, **kwargs):
  """``{'params', 'batch_stats', ...}`` of ``module`` as ShapeDtypeStructs (``kwargs`` to init)."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape), **kwargs))


def init_variables(module, seed: int, input_shape, **kwargs):
  """Randomly initialised (numpy) variables of ``module`` for inputs of ``input_shape`` (NHWC)."""
  return random_like(variable_shapes(module, input_shape, **kwargs), seed)

"""Remapping into and out of a supernet (paper Sec. 3.2.1 and 3.2.3).

* :func:`seed_to_supernet`: every candidate op of a searched layer is remapped from the *same* seed
  layer (depth rule, then width/kernel rules per op); stem, fixed layers and the last conv come
  from the seed as in :func:`~fna_jax.remap.tree.remap_backbone`.
* :func:`supernet_to_arch`: the derived architecture's layers are *collected*: each chosen op takes
  the parameters of the same op in the same supernet layer (a derived stage lists its real layers
  first, in supernet order, and its skips last); stem, fixed layers and the last conv are copied.

Both work on backbone variable trees ``{'params': {...}, 'batch_stats': {...}}`` (what sits under
``backbone`` in a task network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fna_jax import arch as arch_lib
from fna_jax.remap.tree import Strategy, remap_backbone, remap_block, seed_layer
from fna_jax.spaces import SearchSpace


def seed_to_supernet(seed_backbone: Mapping[str, Any], seed_arch: arch_lib.Arch,
                     space: SearchSpace, strategy: str | Strategy = 'fna') -> dict:
  """Variables of ``Supernet(space)`` remapped from a seed backbone of ``seed_arch``."""
  skeleton = space.skeleton()
  out = remap_backbone(seed_backbone, seed_arch, skeleton, strategy)
  for i, j in space.searched_layers():
    s_stage = seed_arch.stages[i]
    sj = seed_layer(s_stage, j)
    src = {c: v[f'stage{i}'][f'layer{sj}'] for c, v in seed_backbone.items()}
    mixed: dict = {c: {} for c in out}
    for op in space.candidates(i, j):
      block = remap_block(src, s_stage.ops[sj], op, space.family, s_stage.layer_io(sj),
                          skeleton.stages[i].layer_io(j), strategy,
                          path=f'backbone/stage{i}/layer{j}/{op} (from seed layer{sj})')
      for c, mods in block.items():
        mixed[c][op] = mods
    for c in out:
      out[c][f'stage{i}'][f'layer{j}'] = mixed[c]
  return out


def supernet_to_arch(supernet_backbone: Mapping[str, Any], space: SearchSpace,
                     choices: Sequence[int | str]) -> tuple[arch_lib.Arch, dict]:
  """``(space.derive(choices), its backbone variables collected from the supernet)``."""
  arch = space.derive(choices)
  chosen = dict(zip(space.searched_layers(), choices))
  out: dict = {}
  for c, tree in supernet_backbone.items():
    node = {k: v for k, v in tree.items() if not k.startswith('stage')}
    for i, st in enumerate(space.stages):
      layers, jj = {}, 0
      for j, cands in enumerate(st.candidates):
        src = tree[f'stage{i}'][f'layer{j}']
        if len(cands) == 1:
          layers[f'layer{jj}'] = src
          jj += 1
          continue
        op = chosen[i, j]
        op = cands[op] if not isinstance(op, str) else op
        if op == arch_lib.SKIP:
          continue
        layers[f'layer{jj}'] = src[op]
        jj += 1
      node[f'stage{i}'] = layers
    out[c] = node
  return arch, out

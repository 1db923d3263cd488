"""Parameter remapping (paper Sec. 3.1 and 4.9).

:mod:`fna_jax.remap.rules` holds the array-level rules (depth, width, BN, kernel, groups,
importance); :mod:`fna_jax.remap.tree` applies them to whole networks (:func:`remap_variables`),
backbones (:func:`remap_backbone`) and single layers (:func:`remap_block`).
"""

from fna_jax.remap import rules
from fna_jax.remap.tree import (STRATEGIES, Strategy, as_strategy, check_compatible,
                                remap_backbone, remap_block, remap_variables, seed_layer)

__all__ = ['STRATEGIES', 'Strategy', 'as_strategy', 'check_compatible', 'remap_backbone',
           'remap_block', 'remap_variables', 'rules', 'seed_layer']

from fna_jax.remap.supernet import seed_to_supernet, supernet_to_arch  # noqa: E402

__all__ += ['seed_to_supernet', 'supernet_to_arch']

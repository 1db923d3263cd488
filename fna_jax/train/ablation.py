"""The paper's Tab. 13 ablation of parameter remapping: which rows exist and what each sets.

Each row of Tab. 13 is the whole pipeline with one choice before the search (``search.init``:
remap the seed into the supernet, or random) and one before fine-tuning (``adapt.init``: collect
the weights from the searched supernet (FNA++), remap them from the seed (FNA), or random).
A random backbone (rows 3-5) has its conv kernels drawn as ``search.random_init`` /
``adapt.random_init`` say, by default N(0, 0.01^2) as the authors' release does
(``backbone_init = "normal"``, github.com/JaminFong/FNA); a head drawn fresh keeps kaiming.
``configs/demo.py:<variant>`` and ``scripts/ablation.py --rows=...`` both read this table.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Row:
  number: int          # the row of Tab. 13
  variant: str         # its name as a config variant (configs/demo.py:<variant>)
  search_init: str     # config.search.init
  adapt_init: str      # config.adapt.init
  method: str          # the paper's description


ROWS = {r.number: r for r in (
    Row(1, 'fna++', 'remap', 'supernet', 'Remap -> ArchAdapt -> RemapSuper -> ParamAdapt (FNA++)'),
    Row(2, 'fna', 'remap', 'seed', 'Remap -> ArchAdapt -> Remap -> ParamAdapt (FNA)'),
    Row(3, 'rand_search', 'random', 'seed', 'RandInit -> ArchAdapt -> Remap -> ParamAdapt'),
    Row(4, 'rand_adapt', 'remap', 'random', 'Remap -> ArchAdapt -> RandInit -> ParamAdapt'),
    Row(5, 'rand_both', 'random', 'random', 'RandInit -> ArchAdapt -> RandInit -> ParamAdapt'),
)}
VARIANTS = {r.variant: r for r in ROWS.values()}


def apply(config, row: Row) -> None:
  """Sets ``config.search.init`` and ``config.adapt.init`` as ``row`` says (in place)."""
  with config.unlocked():
    config.search.init, config.adapt.init = row.search_init, row.adapt_init


def apply_variant(config, variant: str | None) -> None:
  """Applies the row named ``variant`` (default ``'fna++'``; a config file's ``:<variant>``
  argument) to ``config`` in place, or raises ValueError naming the known variants."""
  variant = variant or 'fna++'
  if variant not in VARIANTS:
    raise ValueError(f'unknown demo variant {variant!r}; expected one of {sorted(VARIANTS)}')
  apply(config, VARIANTS[variant])

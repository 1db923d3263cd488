"""Input data for the segmentation search and fine-tuning (SPEC sections 4-5, paper Sec. 4.1.1).

* :mod:`fna_jax.data.demo`: a download-free synthetic shapes task (segmentation, and
  classification for seed pretraining).
* :mod:`fna_jax.data.cityscapes`: Cityscapes via ``tfds.data_source`` on ArrayRecord data, with
  the labelIds -> train ids mapping and the preparation entry point.
* :mod:`fna_jax.data.transforms`: per-example numpy transforms (resize, random scale / crop /
  flip, ImageNet normalisation).
* :mod:`fna_jax.data.pipeline`: grain pipelines yielding numpy batches, deterministic and
  resumable, sharded per process; and :func:`split_train_arch`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Attributes load lazily (PEP 562): importing the package stays cheap, and
# `python -m fna_jax.data.cityscapes` does not find its module imported twice.
_SUBMODULES = ('cityscapes', 'demo', 'pipeline', 'transforms')
_ATTRS = {
    'CityscapesSource': 'cityscapes',
    'DatasetNotPreparedError': 'cityscapes',
    'to_train_ids': 'cityscapes',
    'DemoClassification': 'demo',
    'DemoSegmentation': 'demo',
    'make_cls_pipeline': 'pipeline',
    'make_eval_pipeline': 'pipeline',
    'make_seg_pipeline': 'pipeline',
    'split_train_arch': 'pipeline',
}

__all__ = list(_SUBMODULES) + list(_ATTRS)


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _ATTRS:
    return getattr(importlib.import_module(f'{__name__}.{_ATTRS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)

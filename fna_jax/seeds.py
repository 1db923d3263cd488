"""Seed checkpoints: an architecture and its ImageNet variables, on disk as one orbax checkpoint.

A seed directory is written by :func:`save_seed` (usually through ``python -m weights_convert``,
which converts torchvision weights) and read by :func:`load_seed`.  It is a composite orbax
checkpoint with two items::

    DIR/variables   {'params': ..., 'batch_stats': ...} as float32 arrays (StandardSave)
    DIR/arch        the Arch as JSON (Arch.to_dict(), JsonSave)

Variables are stored as host (numpy) arrays and restored as numpy arrays with the same tree
structure, shapes and dtypes; ``fna_jax.models.build(arch).apply(variables, ...)`` takes them as is.
"""

from __future__ import annotations

import os
from typing import Any

from fna_jax import arch as arch_lib
from fna_jax.runtime.checkpoint import VARIABLES_ITEM, load_variables, save_variables

ARCH_ITEM = 'arch'
CONVERT_HINT = ('python -m weights_convert --arch {arch} --src TORCHVISION_WEIGHTS.pth '
                '--dst {path}')


def _abspath(directory: str | os.PathLike) -> str:
  return os.path.abspath(os.fspath(directory))


def save_seed(directory: str | os.PathLike, arch: arch_lib.Arch | str, variables: Any, *,
              overwrite: bool = False) -> str:
  """Writes ``arch`` and ``variables`` as an orbax checkpoint in ``directory``.

  Args:
    directory: the checkpoint directory to create (its parent is created if needed).
    arch: an :class:`~fna_jax.arch.Arch` or a seed name (``'mobilenet_v2'``, ``'resnet50'``, ...).
    variables: ``{'params': ..., 'batch_stats': ...}`` pytree of arrays (numpy or jax); saved as
      numpy arrays.
    overwrite: replace an existing ``directory``; otherwise an existing one is an error.

  Returns:
    The absolute path written.

  Raises:
    FileExistsError: ``directory`` exists and ``overwrite`` is false.
  """
  if isinstance(arch, str):
    arch = arch_lib.seed(arch)
  path = _abspath(directory)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'seed directory {path} already exists; remove it or pass '
                          'overwrite=True (--overwrite on the command line)')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return save_variables(path, variables, arch.to_dict(), meta_item=ARCH_ITEM,
                        overwrite=overwrite)


def load_seed(directory: str | os.PathLike) -> tuple[arch_lib.Arch, Any]:
  """Reads a seed checkpoint written by :func:`save_seed`.

  Args:
    directory: the checkpoint directory.

  Returns:
    ``(arch, variables)``: the :class:`~fna_jax.arch.Arch` and the
    ``{'params': ..., 'batch_stats': ...}`` pytree of numpy arrays.

  Raises:
    FileNotFoundError: ``directory`` does not exist (the message says how to create it).
    ValueError: ``directory`` exists but is not a seed checkpoint.
  """
  path = _abspath(directory)
  if not os.path.isdir(path):
    name = os.path.basename(path.rstrip(os.sep))
    arch_guess = name if name in arch_lib.SEEDS else '|'.join(sorted(arch_lib.SEEDS))
    raise FileNotFoundError(
        f'no seed checkpoint at {path}. Create it from torchvision weights with: '
        + CONVERT_HINT.format(arch=arch_guess, path=path))
  missing = [item for item in (VARIABLES_ITEM, ARCH_ITEM)
             if not os.path.isdir(os.path.join(path, item))]
  if missing:
    raise ValueError(f'{path} is not a seed checkpoint: it lacks {missing} (expected the '
                     f'items {VARIABLES_ITEM!r} and {ARCH_ITEM!r} written by save_seed)')
  variables, arch = load_variables(path, meta_item=ARCH_ITEM)
  return arch_lib.Arch.from_dict(arch), variables

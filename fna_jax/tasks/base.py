"""The task interface: what architecture search, parameter adaptation and evaluation need to know
of a target task (paper Sec. 3: the seed network is adapted to segmentation, detection or pose).

A task wraps a *body* (a :class:`~fna_jax.models.Backbone` of an architecture, or the
:class:`~fna_jax.models.supernet.Supernet` of a search space) into its task network, says how to
train it (loss, input pipelines), how to evaluate it (an :class:`Evaluator`) and what its headline
metric is.  The loops in :mod:`fna_jax.train` use only this interface; :mod:`fna_jax.build` maps
``config.task`` to an implementation.  :class:`fna_jax.tasks.seg.SegmentationTask` is the
reference implementation; a new task subclasses :class:`Task` and is registered with
:func:`fna_jax.build.register_task`.

Conventions every task follows:

* batches are dicts of host-local numpy arrays with the images under ``'image'`` and whatever
  the loss and evaluator need; training images are ``uint8 (B, H, W, 3)`` RGB, normalised inside
  the jitted steps (:func:`fna_jax.runtime.inputs.model_images`; an ``'input_hw'`` entry,
  ``int32 (B, 2)``, zeroes the bottom/right padding after normalising), or ``float32``
  ImageNet-normalised on the host (used as they are); evaluation images are ``float32``,
  normalised, and the evaluator feeds them to the network itself;
* a task network is called as ``net(images, train, **body_kwargs)`` (``body_kwargs``: ``path=`` or
  ``op_weights=`` for a supernet body) and returns the outputs that :meth:`Task.loss` takes;
* ``stage`` is ``'search'`` (architecture adaptation) or ``'adapt'`` (parameter adaptation).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np

STAGES = ('search', 'adapt')


class Evaluator(abc.ABC):
  """Accumulates a task's metrics over sharded batches of a validation set.

  Made by :meth:`Task.evaluator` for one network; :meth:`add` is called once per batch of
  :meth:`Task.eval_data`, in order, then :meth:`result` and :meth:`table`.
  """

  table_file: ClassVar[str] = 'table.txt'   # where the evaluation run writes :meth:`table`

  @abc.abstractmethod
  def add(self, host_batch: dict[str, np.ndarray]) -> None:
    """Predicts ``host_batch`` (a host-local batch; padding examples count nothing)."""

  @abc.abstractmethod
  def result(self) -> dict[str, Any]:
    """JSON-serialisable metrics; holds the task's headline metric and ``num_images``."""

  @abc.abstractmethod
  def table(self) -> str:
    """A human-readable breakdown (per class, per joint, ...) of :meth:`result`."""


class Task(abc.ABC):
  """One target task.  Subclasses set :attr:`name`, :attr:`metric` and implement the methods.

  Attributes:
    config: the run's ``ml_collections.ConfigDict`` (``data``, ``head``, ``search``, ``adapt``,
      ``eval``, ``cost_input_size``, ...).
  """

  name: ClassVar[str]
  metric: ClassVar[str]                 # key of the headline metric in Evaluator.result()
  higher_is_better: ClassVar[bool] = True

  def __init__(self, config):
    self.config = config

  # ----------------------------------------------------------------- the network
  @abc.abstractmethod
  def network(self, body: nn.Module, head: nn.Module, *, frozen_bn: bool = False) -> nn.Module:
    """The task network: ``body`` features -> ``head`` -> outputs (see the module docstring).

    ``frozen_bn`` keeps the body's BatchNorm layers on their running statistics in training.
    """

  @abc.abstractmethod
  def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """The training loss (a scalar) of ``outputs`` for ``batch``; jit-able."""

  @abc.abstractmethod
  def input_size(self, stage: str) -> tuple[int, int]:
    """``(height, width)`` of the training images of ``stage`` (networks are initialised at it)."""

  def cost_input_size(self) -> tuple[int, int]:
    """``(height, width)`` at which Params and MAdds are counted (the search's cost table too)."""
    h, w = self.config.cost_input_size
    return int(h), int(w)

  # ----------------------------------------------------------------- data
  @abc.abstractmethod
  def train_data(self, source: Any, indices: np.ndarray, *, batch_size: int, seed: int,
                 stage: str) -> Iterator[dict[str, np.ndarray]]:
    """An endless, resumable (``get_state``/``set_state``) iterator of training batches of
    ``source[indices]``; ``batch_size`` examples per process."""

  @abc.abstractmethod
  def batch_shapes(self, batch_size: int, stage: str) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a global training batch of ``stage`` (the steps are compiled ahead
    of time for them): exactly what :meth:`train_data` yields, e.g. ``'image'`` ``uint8``."""

  @abc.abstractmethod
  def eval_data(self, source: Any, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every example of ``source`` once, in order, batches padded to ``batch_size`` per process."""

  # ----------------------------------------------------------------- evaluation
  @abc.abstractmethod
  def evaluator(self, model: nn.Module, variables: Any, mesh: jax.sharding.Mesh, *,
                source: Any = None, out_dir: str | None = None) -> Evaluator:
    """An :class:`Evaluator` of ``model``/``variables`` on ``mesh`` for the validation
    ``source`` (class names and the like come from it); pictures go to ``out_dir``."""

  def format_metric(self, value: float) -> str:
    """The headline metric as the paper reports it (e.g. ``'46.41% mIoU'``)."""
    return f'{value:.4f} {self.metric}'


class BodyHeadNet(nn.Module):
  """The plainest task network: ``head(body(x, train, **body_kwargs), train)``.

  ``body`` is a :class:`~fna_jax.models.Backbone` or :class:`~fna_jax.models.supernet.Supernet`
  (``body_kwargs``: ``path=`` or ``op_weights=``); its feature dict goes to ``head``.  Parameter
  paths: ``backbone/...`` and ``head/...``.  ``frozen_bn=True`` runs the body's BatchNorm layers
  on their running statistics even when ``train=True``; the head trains normally.
  """
  backbone: nn.Module
  head: nn.Module
  frozen_bn: bool = False

  def __call__(self, x, train: bool = False, **body_kwargs):
    feats = self.backbone(x, train and not self.frozen_bn, **body_kwargs)
    return self.head(feats, train)


def check_stage(stage: str) -> str:
  if stage not in STAGES:
    raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
  return stage


def as_pair(values: Sequence[int] | int) -> tuple[int, int]:
  """``64`` or ``(64, 96)`` -> ``(h, w)``."""
  if isinstance(values, int):
    return values, values
  h, w = values
  return int(h), int(w)

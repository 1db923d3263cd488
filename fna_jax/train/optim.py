"""Optimiser and learning-rate options shared by the search and the fine-tuning.

The segmentation recipe (paper Sec. 4.1.1) uses SGD with a warm-up + cosine (search) or warm-up +
poly (fine-tuning) schedule; those stay in :mod:`fna_jax.train.search` and
:mod:`fna_jax.train.adapt`.  The pose recipe (paper Sec. 4.3.1: weights trained "as
SimpleBaseline", i.e. Adam with lr 1e-3 divided by 10 at epochs 90 and 120) needs Adam and a
step-wise schedule, built here:

* :func:`adam`: ``torch.optim.Adam`` with its default betas ``(0.9, 0.999)`` and eps ``1e-8``
  (SimpleBaseline builds ``optim.Adam(params, lr=cfg.TRAIN.LR)``); coupled weight decay, as torch's,
  is the caller's ``optax.add_decayed_weights`` in front of it;
* :func:`multistep_schedule`: ``torch.optim.lr_scheduler.MultiStepLR``: ``lr * factor^k`` once
  ``k`` milestones have been passed, optionally after a linear warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8   # torch.optim.Adam's defaults


def check_choice(key: str, value: str, choices: Sequence[str]) -> str:
  """``value`` if it is one of ``choices``, else a ValueError naming ``key`` and the choices."""
  if value not in choices:
    raise ValueError(f'{key} must be one of {", ".join(repr(c) for c in choices)}; '
                     f'got {value!r}')
  return value


def adam(lr_fn) -> optax.GradientTransformation:
  """torch's Adam (default betas and eps; ``eps`` added to ``sqrt(v_hat)``, as optax does)."""
  return optax.adam(lr_fn, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)


def multistep_schedule(lr: float, milestones: Sequence[int], factor: float = 0.1,
                       warmup_steps: int = 0, warmup_start: float = 0.0) -> optax.Schedule:
  """``lr * factor^k`` at optimiser step ``t`` (0-based), ``k = #{m in milestones: t >= m}``.

  ``milestones`` are optimiser steps: the update of step ``m`` is the first at the lower lr, as
  ``torch.optim.lr_scheduler.MultiStepLR`` stepped after every update (epoch milestones become
  ``epoch * steps_per_epoch``; then the first step of epoch ``m``, 0-based, is the first at the
  lower lr).  With ``warmup_steps > 0`` the first ``warmup_steps`` steps ramp linearly from
  ``warmup_start`` to ``lr`` (as the poly/cosine schedules' warm-ups), milestones counted from
  step 0 all the same.  The values ``lr * factor^k`` are computed in float64 and then cast, so
  ``lr * factor^2`` is not two rounded float32 products.
  """
  ms = sorted(int(m) for m in milestones)
  if any(m < 0 for m in ms):
    raise ValueError(f'lr milestones must be >= 0 steps, got {tuple(milestones)}')
  if factor <= 0:
    raise ValueError(f'lr factor must be > 0, got {factor}')
  values = jnp.asarray(np.asarray([lr * float(factor) ** k for k in range(len(ms) + 1)],
                                  np.float64), jnp.float32)
  bounds = jnp.asarray(ms, jnp.int32)
  warm = optax.linear_schedule(warmup_start, lr, max(warmup_steps, 1))

  def schedule(step):
    k = jnp.sum(step >= bounds) if ms else 0
    value = values[k]
    if warmup_steps > 0:
      value = jnp.where(step < warmup_steps, warm(step), value)
    return value
  return schedule

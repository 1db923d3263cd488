"""Semantic segmentation: pixel-wise cross-entropy that ignores label 255."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fna_jax.data.transforms import IGNORE_LABEL


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL):
  """Mean softmax cross-entropy over the pixels whose label is not ``ignore_label``.

  Args:
    logits: ``(N, H, W, C)`` float.
    labels: ``(N, H, W)`` int, values in ``[0, C)`` or ``ignore_label``.

  Returns:
    A scalar; 0 when every pixel is ignored.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def segmentation_loss(logits: jax.Array, batch) -> jax.Array:
  """The task loss of a batch ``{'image', 'label'}``: :func:`cross_entropy` on its labels."""
  return cross_entropy(logits, batch['label'])

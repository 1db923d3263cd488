"""Heatmap regression loss: SimpleBaseline's ``JointsMSELoss(use_target_weight=True)``
(Xiao et al. 2018, ``lib/core/loss.py``; paper Sec. 4.3.1: MSE weighted by joint visibility)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def joints_mse_loss(heatmaps: jax.Array, target: jax.Array, target_weight: jax.Array) -> jax.Array:
  """``1/J sum_j 0.5 * mean_{n, pixels} (w_nj * pred_nj - w_nj * target_nj)^2``.

  SimpleBaseline sums, over joints, half the mean squared error of the weighted heatmaps over
  the batch and the pixels, and divides by the number of joints; all joints have the same
  number of pixels, so this is half the mean over every element.

  Args:
    heatmaps: ``(N, H, W, J)`` predicted heatmaps.
    target: ``(N, H, W, J)`` Gaussian target heatmaps.
    target_weight: ``(N, J)`` per-joint weights (1 visible and inside the heatmap, else 0).
  """
  w = target_weight.astype(jnp.float32)[:, None, None, :]
  diff = (heatmaps.astype(jnp.float32) - target.astype(jnp.float32)) * w
  return 0.5 * jnp.mean(jnp.square(diff))


def pose_loss(heatmaps: jax.Array, batch) -> jax.Array:
  """The task loss of a batch ``{'image', 'target', 'target_weight'}``."""
  return joints_mse_loss(heatmaps, batch['target'], batch['target_weight'])

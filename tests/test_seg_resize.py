"""Align-corners bilinear resize (fna_jax.tasks.seg.resize) against torch, and its use where the
segmentation network upsamples logits (the release: F.interpolate(..., 'bilinear',
align_corners=True), TorchSeg's DeepLabV3.forward)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fna_jax.tasks.seg import DeepLabV3PlusHead
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.tasks.seg.resize import resize_bilinear, resize_bilinear_align_corners

# Both sides compute in float32 the same two-tap lerps per axis, with weights that differ by float
# rounding (torch: float32 scale * i; here float64 then rounded) and another order of operations:
# a few ulps of values of order 1, so 1e-6 absolute / relative (float32 eps is 1.2e-7).
TOL = dict(rtol=1e-6, atol=1e-6)


def _torch_resize(x: np.ndarray, size) -> np.ndarray:
  t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  out = F.interpolate(t, size=tuple(size), mode='bilinear', align_corners=True)
  return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('in_hw,out_hw', [
    ((5, 7), (17, 25)),     # upsampling, non-square
    ((49, 97), (769, 97)),  # height x16 (stride-16 logits of a 769 crop), width kept
    ((12, 9), (5, 4)),      # downsampling
    ((8, 8), (1, 1)),       # out == 1: position 0
    ((1, 6), (4, 11)),      # in == 1 along height
    ((6, 1), (1, 5)),       # out 1 along height, in 1 along width
    ((3, 4), (3, 4)),       # identity
    ((4, 13), (7, 3)),      # up along one axis, down along the other
])
def test_matches_torch_interpolate_align_corners(in_hw, out_hw):
  rng = np.random.default_rng(sum(in_hw) * 31 + sum(out_hw))
  x = rng.standard_normal((2,) + in_hw + (3,)).astype(np.float32)
  out = resize_bilinear_align_corners(jnp.asarray(x), out_hw)
  assert out.shape == (2,) + tuple(out_hw) + (3,) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), _torch_resize(x, out_hw), **TOL)
  # Corners map onto corners.
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0], x[:, 0, 0], **TOL)
  if min(out_hw) > 1:
    np.testing.assert_allclose(np.asarray(out)[:, -1, -1], x[:, -1, -1], **TOL)


def test_jit_grad_and_dtype():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 4, 6, 2)).astype(np.float32)
  g = rng.standard_normal((1, 9, 11, 2)).astype(np.float32)
  f = jax.jit(lambda v: resize_bilinear_align_corners(v, (9, 11)))
  np.testing.assert_allclose(np.asarray(f(x)), _torch_resize(x, (9, 11)), **TOL)
  # The gradient of <resize(x), g> w.r.t. x is torch's too (the transposed interpolation).
  grad = jax.grad(lambda v: jnp.sum(f(v) * g))(jnp.asarray(x))
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  (F.interpolate(tx, size=(9, 11), mode='bilinear', align_corners=True)
   * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()
  np.testing.assert_allclose(np.asarray(grad), tx.grad.numpy().transpose(0, 2, 3, 1), **TOL)
  # bfloat16 in, bfloat16 out (computed in float32: within bfloat16's 2**-8 relative rounding).
  xb = jnp.asarray(x, jnp.bfloat16)
  outb = resize_bilinear_align_corners(xb, (9, 11))
  assert outb.dtype == jnp.bfloat16
  ref = _torch_resize(np.asarray(xb.astype(jnp.float32)), (9, 11))
  np.testing.assert_allclose(np.asarray(outb.astype(jnp.float32)), ref, rtol=2 ** -8, atol=1e-2)


class _FixedHead(nn.Module):
  """A head whose output is a fixed ``(N, 7, 9, C)`` array, whatever the features."""
  logits: np.ndarray

  def __call__(self, feats, train=False):
    del feats, train
    return jnp.asarray(self.logits)


class _NoBody(nn.Module):
  def __call__(self, x, train=False):
    return {'out': x}


def test_segmentation_net_upsamples_logits_as_torch_align_corners():
  """A 7x9 head output upsampled to a 97x129 input (16k + 1, as the release's 769 crops) is
  torch's align-corners interpolation; ``align_corners=False`` keeps jax.image.resize's
  half-pixel rule, which differs."""
  logits = np.random.default_rng(2).standard_normal((2, 7, 9, 5)).astype(np.float32)
  x = jnp.zeros((2, 97, 129, 3))
  net = SegmentationNet(_NoBody(), _FixedHead(logits))
  out = np.asarray(net.apply({}, x))
  np.testing.assert_allclose(out, _torch_resize(logits, (97, 129)), **TOL)
  half = np.asarray(SegmentationNet(_NoBody(), _FixedHead(logits), align_corners=False).apply(
      {}, x))
  np.testing.assert_allclose(half, np.asarray(jax.image.resize(logits, (2, 97, 129, 5),
                                                               'bilinear')), **TOL)
  assert np.max(np.abs(half - out)) > 0.1


@pytest.mark.parametrize('align_corners', [True, False])
def test_deeplabv3plus_decoder_input_is_the_aspp_output_resized_by_the_rule(align_corners,
                                                                            monkeypatch):
  """The decoder of DeepLabv3+ receives the ASPP output (after dropout, eval mode) upsampled to
  the low-level size with aligned corners (torch) or half-pixel centres (jax.image.resize)."""
  from fna_jax.tasks.seg import heads  # pylint: disable=g-import-not-at-top
  seen = {}

  def spy_decoder_call(self, y, low, train=False):
    seen['y'] = y
    return y[..., :4]

  monkeypatch.setattr(heads._Decoder, '__call__', spy_decoder_call)  # pylint: disable=protected-access
  head = DeepLabV3PlusHead(num_classes=3, channels=8, rates=(1, 2, 3), separable=True,
                           align_corners=align_corners)
  rng = np.random.default_rng(5)
  feats = {'out': jnp.asarray(rng.standard_normal((1, 3, 5, 6)), jnp.float32),
           'stage1': jnp.asarray(rng.standard_normal((1, 9, 17, 4)), jnp.float32)}
  variables = head.init(jax.random.key(0), feats, False)
  head.apply(variables, feats, False)
  aspp = heads.ASPP(8, (1, 2, 3), separable=True).apply(
      {'params': variables['params']['aspp'], 'batch_stats': variables['batch_stats']['aspp']},
      feats['out'], False)
  aspp = np.asarray(aspp)
  assert np.std(aspp) > 0  # a non-constant map, so the resize rule matters
  if align_corners:
    expected = _torch_resize(aspp, (9, 17))
  else:
    expected = np.asarray(jax.image.resize(aspp, (1, 9, 17, 8), 'bilinear'))
  np.testing.assert_allclose(np.asarray(seen['y']), expected, **TOL)
  np.testing.assert_allclose(np.asarray(resize_bilinear(aspp, (9, 17), align_corners)),
                             expected, **TOL)

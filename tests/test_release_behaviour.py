"""Model behaviour of the authors' PyTorch release (github.com/JaminFong/FNA, ``fna_seg``).

* BatchNorm as torch's ``nn.BatchNorm2d`` (momentum 0.1, eps 1e-5): normalises with the biased
  batch variance, updates ``running_var`` with the unbiased one (``var * n / (n - 1)``, ``n`` the
  elements per channel).  Checked against torch itself, including the image-pooling branch's case
  of one value per image (H = W = 1, ``n`` = batch size) and a batch sharded over 8 devices.
* The DeepLab heads' dropout is channel-wise, as the release's ``nn.Dropout2d(0.1)``
  (``head/ASPP_Sep.py``).
* Random initialisation (paper Tab. 13 rows 3-5): the release draws the backbone's conv kernels
  from N(0, 0.01^2) (``backbone_init = "normal"`` in ``config.py``, ``derived_backbone.py``),
  BN weight 1 and bias 0; the search's and the adaptation's random inits draw the backbone that
  way (``search.random_init`` / ``adapt.random_init``) and the head with kaiming.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import demo as demo_config
from fna_jax.models import blocks
from fna_jax.models.init import random_like
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.tasks.seg import heads
from fna_jax.train import adapt_loop, search_loop

torch = pytest.importorskip('torch')

C = 3


class _BN(nn.Module):
  """The BatchNorm every block and head creates (``blocks.batch_norm``)."""

  @nn.compact
  def __call__(self, x, train: bool):
    return blocks.batch_norm(train, 'bn')(x)


def _torch_bn(scale, bias):
  bn = torch.nn.BatchNorm2d(C, eps=1e-5, momentum=0.1).double()
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(np.asarray(scale, np.float64)))
    bn.bias.copy_(torch.from_numpy(np.asarray(bias, np.float64)))
  return bn


def _nchw(x):
  return torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _variables(rng):
  v = _BN().init(jax.random.key(0), jnp.zeros((2, 1, 1, C)), False)
  params = {'bn': {'scale': rng.uniform(0.5, 2.0, C).astype(np.float32),
                   'bias': rng.normal(0, 1, C).astype(np.float32)}}
  return {'params': params, 'batch_stats': v['batch_stats']}


# Inputs are float32 values; torch runs in float64 on the same values, so the differences are
# float32 rounding of statistics of O(10) values: 1e-5 relative, 1e-5 absolute (outputs are O(1)).
RTOL, ATOL = 1e-5, 1e-5


@pytest.mark.parametrize('shape', [(4, 5, 6, C), (6, 1, 1, C), (2, 1, 1, C)],
                         ids=['spatial', 'pooling_n6', 'pooling_n2'])
def test_batch_norm_matches_torch_train_and_eval(shape):
  """Two train steps (outputs and running mean/var after each), then eval with the running
  statistics, against ``torch.nn.BatchNorm2d``; H = W = 1 is the image-pooling branch."""
  rng = np.random.default_rng(0)
  variables = _variables(rng)
  tbn = _torch_bn(variables['params']['bn']['scale'], variables['params']['bn']['bias'])
  model = _BN()
  for step in range(2):
    x = rng.normal(3.0 * step, 2.0 + step, shape).astype(np.float32)
    y, new = model.apply(variables, x, True, mutable=['batch_stats'])
    variables = {'params': variables['params'], 'batch_stats': new['batch_stats']}
    tbn.train()
    ty = tbn(_nchw(x))
    np.testing.assert_allclose(y, _nhwc(ty), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(new['batch_stats']['bn']['mean'], tbn.running_mean.numpy(),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(new['batch_stats']['bn']['var'], tbn.running_var.numpy(),
                               rtol=RTOL, atol=ATOL)
  for leaf in jax.tree.leaves(variables['batch_stats']):
    assert leaf.dtype == jnp.float32
  x = rng.normal(1.0, 3.0, shape).astype(np.float32)
  tbn.eval()
  np.testing.assert_allclose(model.apply(variables, x, False), _nhwc(tbn(_nchw(x))),
                             rtol=RTOL, atol=ATOL)


def test_batch_norm_running_var_uses_global_count_under_sharded_jit():
  """The pooling branch's case (one value per image) with the batch of 8 sharded over the 8
  devices, one image each: the statistics and ``n`` are those of the global batch (SyncBN, as
  the release's ``C.sync_bn``), so the running variance is torch's on the whole batch."""
  rng = np.random.default_rng(1)
  variables = _variables(rng)
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  x = rng.normal(0.5, 2.0, (8, 1, 1, C)).astype(np.float32)
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  step = jax.jit(lambda v, x: _BN().apply(v, x, True, mutable=['batch_stats']))
  y, new = step(jax.device_put(variables, NamedSharding(mesh, P())), xs)
  tbn = _torch_bn(variables['params']['bn']['scale'], variables['params']['bn']['bias'])
  ty = tbn(_nchw(x))
  np.testing.assert_allclose(np.asarray(y), _nhwc(ty), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(new['batch_stats']['bn']['var']),
                             tbn.running_var.numpy(), rtol=RTOL, atol=ATOL)


def test_batch_norm_biased_running_var_option():
  """``unbiased_running_var=False``: flax's update, ``0.9 * 1 + 0.1 * var_biased`` (numpy)."""
  x = np.random.default_rng(2).normal(0, 2, (3, 1, 1, C)).astype(np.float32)
  bn = blocks.BatchNorm(use_running_average=False, unbiased_running_var=False)
  v = bn.init(jax.random.key(0), x)
  _, new = bn.apply(v, x, mutable=['batch_stats'])
  want = 0.9 + 0.1 * np.asarray(x, np.float64).reshape(-1, C).var(0)
  np.testing.assert_allclose(new['batch_stats']['var'], want, rtol=RTOL)


@pytest.mark.parametrize('shape', [(4, 5, 6, C), (6, 1, 1, C)], ids=['spatial', 'pooling_n6'])
def test_batch_norm_gradients_match_torch(shape):
  """Training-mode gradients w.r.t. input, scale and bias against torch's autograd in float64,
  for the loss ``sum(w * bn(x))`` with random ``w``: the gradient flows through the batch mean
  and the ``E[x^2] - E[x]^2`` variance as through torch's two-pass statistics."""
  rng = np.random.default_rng(3)
  variables = _variables(rng)
  x = rng.normal(1.0, 2.0, shape).astype(np.float32)
  w = rng.normal(0, 1, shape).astype(np.float32)

  def loss(params, x):
    y, _ = _BN().apply({'params': params, 'batch_stats': variables['batch_stats']}, x, True,
                       mutable=['batch_stats'])
    return jnp.sum(w * y)

  d_params, dx = jax.grad(loss, argnums=(0, 1))(variables['params'], x)
  tbn = _torch_bn(variables['params']['bn']['scale'], variables['params']['bn']['bias'])
  tx = _nchw(x).requires_grad_(True)
  (tbn(tx) * _nchw(w)).sum().backward()
  np.testing.assert_allclose(dx, _nhwc(tx.grad), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(d_params['bn']['scale'], tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(d_params['bn']['bias'], tbn.bias.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_batch_norm_gradients_under_sharded_jit_are_global():
  """The batch of 8 sharded over 8 devices: the input and parameter gradients are those of the
  whole batch on one device (the statistics' gradients are global, as SyncBN's)."""
  rng = np.random.default_rng(5)
  variables = _variables(rng)
  x = rng.normal(0.5, 2.0, (8, 3, 2, C)).astype(np.float32)
  w = rng.normal(0, 1, x.shape).astype(np.float32)

  def loss(params, x):
    y, _ = _BN().apply({'params': params, 'batch_stats': variables['batch_stats']}, x, True,
                       mutable=['batch_stats'])
    return jnp.sum(w * y)

  grad = jax.grad(loss, argnums=(0, 1))
  want = grad(variables['params'], x)
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  got = jax.jit(grad)(jax.device_put(variables['params'], NamedSharding(mesh, P())),
                      jax.device_put(x, NamedSharding(mesh, P('data'))))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6),
               got, want)


# --------------------------------------------------------------------------- head dropout
@pytest.mark.parametrize('head_name', ['deeplabv3', 'deeplabv3+'])
def test_head_dropout_drops_whole_channels(head_name):
  """Train mode, rate 0.5: each (example, channel) map of the ASPP output is either all zero or
  all scaled by 1 / (1 - 0.5) = 2 (torch ``nn.Dropout2d``).  Element-wise dropout keeps a whole
  4x4 map with probability 2^-16, so it fails this test."""
  rate = 0.5
  rng = np.random.default_rng(3)
  feats = {'out': rng.normal(0, 1, (2, 4, 4, 8)).astype(np.float32),
           'stage1': rng.normal(0, 1, (2, 8, 8, 4)).astype(np.float32)}
  if head_name == 'deeplabv3':
    head = heads.DeepLabV3Head(num_classes=3, channels=16, rates=(1, 2, 3), dropout=rate)
  else:
    head = heads.DeepLabV3PlusHead(num_classes=3, channels=16, rates=(1, 2, 3), dropout=rate,
                                   low_channels=4)
  v = head.init(jax.random.key(0), feats, False)
  _, state = head.apply(v, feats, True, rngs={'dropout': jax.random.key(5)},
                        mutable=['batch_stats', 'intermediates'], capture_intermediates=True)
  inter = state['intermediates']
  before = np.asarray(inter['aspp']['__call__'][0])
  after = np.asarray(inter['Dropout_0']['__call__'][0])
  kept = np.all(np.isclose(after, before / (1 - rate), rtol=1e-6, atol=0), axis=(1, 2))
  dropped = np.all(after == 0, axis=(1, 2))
  assert np.all(kept | dropped)
  live = np.any(before != 0, axis=(1, 2))  # maps with some nonzero input (ReLU output)
  assert np.any(dropped & live) and np.any(kept & live)


def test_head_dropout_is_identity_in_eval():
  y = np.random.default_rng(4).normal(0, 1, (2, 3, 3, 5)).astype(np.float32)

  class Wrap(nn.Module):
    @nn.compact
    def __call__(self, y, train):
      return heads.channel_dropout(y, 0.5, train)

  np.testing.assert_array_equal(Wrap().apply({}, y, False), y)


# --------------------------------------------------------------------------- random init
def _shapes():
  """A tiny backbone + head variables tree (ShapeDtypeStructs).  Every checked kernel has at
  least 9216 entries: the relative standard error of a sample std of n normal draws is about
  1 / sqrt(2 n) <= 0.74%, so :data:`STD_RTOL` (4%) is over 5 standard errors, while the kaiming
  stds (3x3x32x64: sqrt(2 / (9 * 64)) = 0.059; depthwise 3x3x1x1024: sqrt(2 / 9216) = 0.0147)
  are over 40% away from 0.01."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  bn = lambda c: {'scale': s(c), 'bias': s(c)}
  stats = lambda c: {'mean': s(c), 'var': s(c)}
  return {
      'params': {
          'backbone': {'stem_conv': {'kernel': s(3, 3, 32, 64)}, 'stem_bn': bn(64),
                       'stage1': {'layer0': {'dw_conv': {'kernel': s(3, 3, 1, 1024)},
                                             'dw_bn': bn(1024)}}},
          'head': {'aspp': {'b0_conv': {'kernel': s(3, 3, 32, 64)}, 'b0_bn': bn(64)},
                   'classifier': {'kernel': s(1, 1, 64, 5), 'bias': s(5)}}},
      'batch_stats': {'backbone': {'stem_bn': stats(64)}, 'head': {'aspp': {'b0_bn': stats(64)}}},
  }


STD_RTOL = 0.04
RELEASE_STD = 0.01  # torch.nn.init.normal_(m.weight, 0, 0.01) in the release's derived_backbone.py


def _kaiming_std(shape):
  kh, kw, _, c_out = shape
  return np.sqrt(2.0 / (kh * kw * c_out))


def _check(variables, backbone_scheme):
  p = variables['params']
  for kernel in (p['backbone']['stem_conv']['kernel'],
                 p['backbone']['stage1']['layer0']['dw_conv']['kernel']):
    want = RELEASE_STD if backbone_scheme == 'normal' else _kaiming_std(kernel.shape)
    np.testing.assert_allclose(kernel.std(), want, rtol=STD_RTOL)
    assert abs(kernel.mean()) < 5 * want / np.sqrt(kernel.size)  # 5 standard errors
  head_kernel = p['head']['aspp']['b0_conv']['kernel']
  np.testing.assert_allclose(head_kernel.std(), _kaiming_std(head_kernel.shape), rtol=STD_RTOL)
  for bn in (p['backbone']['stem_bn'], p['backbone']['stage1']['layer0']['dw_bn'],
             p['head']['aspp']['b0_bn']):
    np.testing.assert_array_equal(bn['scale'], 1.0)
    np.testing.assert_array_equal(bn['bias'], 0.0)
  np.testing.assert_array_equal(p['head']['classifier']['bias'], 0.0)
  np.testing.assert_array_equal(variables['batch_stats']['backbone']['stem_bn']['mean'], 0.0)
  np.testing.assert_array_equal(variables['batch_stats']['backbone']['stem_bn']['var'], 1.0)


@pytest.mark.parametrize('scheme', ['normal', 'kaiming'])
def test_random_like_backbone_scheme(scheme):
  _check(random_like(_shapes(), 0, backbone_conv_init=scheme), scheme)


def test_random_like_default_is_kaiming_everywhere():
  v = random_like(_shapes(), 0)
  _check(v, 'kaiming')
  # The same standard normals under either scheme: 'normal' only rescales the backbone's.
  w = random_like(_shapes(), 0, backbone_conv_init='normal')
  k = v['params']['backbone']['stem_conv']['kernel']
  np.testing.assert_allclose(w['params']['backbone']['stem_conv']['kernel'],
                             k * (RELEASE_STD / _kaiming_std(k.shape)), rtol=1e-6)
  np.testing.assert_array_equal(w['params']['head']['aspp']['b0_conv']['kernel'],
                                v['params']['head']['aspp']['b0_conv']['kernel'])
  with pytest.raises(ValueError, match='conv init'):
    random_like(_shapes(), 0, backbone_conv_init='xavier')


def _config(stage, init, random_init=None):
  c = demo_config.get_config()
  getattr(c, stage).init = init
  if random_init is not None:
    getattr(c, stage).random_init = random_init
  return c


@pytest.mark.parametrize('random_init', [None, 'kaiming'], ids=['config_default', 'kaiming'])
def test_search_random_init_uses_the_configured_scheme(random_init):
  """``search.init='random'``: the supernet's backbone by ``search.random_init`` (the shipped
  configs: ``'normal'``, the release's), the head kaiming."""
  c = _config('search', 'random', random_init)
  v = search_loop.init_supernet_variables(_shapes(), None, c, None, None, lambda *_: None)
  _check(v, random_init or 'normal')


@pytest.mark.parametrize('random_init', [None, 'kaiming'], ids=['config_default', 'kaiming'])
def test_adapt_random_init_uses_the_configured_scheme(random_init):
  """``adapt.init='random'``: the derived network's backbone by ``adapt.random_init``."""
  c = _config('adapt', 'random', random_init)
  v = adapt_loop.initial_variables(c, None, None, None, _shapes(), None, lambda *_: None)
  _check(v, random_init or 'normal')

"""Tests of fna_jax.cost: torchvision reference points, independent analytic counts, XLA's flops."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

from fna_jax import arch as arch_lib
from fna_jax import cost, models, ops


# ----------------------------------------------------------------------------- independent counts
def _out(h: int, k: int, s: int, d: int = 1) -> int:
  p = d * (k - 1) // 2
  return (h + 2 * p - d * (k - 1) - 1) // s + 1


def analytic_madds(a: arch_lib.Arch, size: int, num_classes: int = 1000) -> int:
  """MAdds of the classifier of ``a`` for one ``size x size`` image, from the block formulas."""
  h = _out(size, a.stem.kernel, a.stem.stride)
  total = a.stem.kernel ** 2 * 3 * a.stem.channels * h * h
  if a.stem.max_pool:
    h = (h + 2 - 3) // 2 + 1
  for _, _, name, c_in, c_out, stride, dil in a.layers():
    op = arch_lib.parse_op(name)
    if op.is_skip:
      continue
    ho = _out(h, op.kernel, stride, dil)
    if a.family == arch_lib.MBCONV:
      hid = c_in * op.expansion
      if op.expansion != 1:
        total += c_in * hid * h * h
      total += op.kernel ** 2 * hid * ho * ho + hid * c_out * ho * ho
    elif a.family == arch_lib.RESNET_BASIC:
      total += op.kernel ** 2 * (c_in // op.groups) * c_out * ho * ho
      total += 9 * c_out * c_out * ho * ho
      if stride != 1 or c_in != c_out:
        total += c_in * c_out * ho * ho
    else:
      w = c_out // 4
      total += c_in * w * h * h + op.kernel ** 2 * (w // op.groups) * w * ho * ho
      total += w * c_out * ho * ho
      if stride != 1 or c_in != c_out:
        total += c_in * c_out * ho * ho
    h = ho
  if a.last_channels:
    total += a.stages[-1].c_out * a.last_channels * h * h
  return total + a.out_channels * num_classes


def _valid_taps(h: int, k: int, s: int, d: int, p: int) -> int:
  """Kernel taps along one axis that land inside the input (XLA's cost analysis skips the rest)."""
  ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
  return sum(1 for i in range(ho) for a in range(k) if 0 <= i * s - p + a * d < h)


def _xla_flops(fn, *args) -> float:
  ca = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
    ca = ca[0]
  return float(ca['flops'])


def _abstract(module, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda xx: module.init(jax.random.key(0), xx), x), x


class _Small(nn.Module):
  """Conv (stride 2) -> BN -> ReLU -> global pool -> Dense; takes ``train`` like the models."""

  def setup(self):
    self.conv = ops.Conv(4, 3, 2)
    self.bn = nn.BatchNorm()
    self.fc = nn.Dense(5)

  def features(self, x, train: bool = False):
    return nn.relu(self.bn(self.conv(x), use_running_average=not train))

  def __call__(self, x, train: bool = False):
    return self.fc(self.features(x, train).mean(axis=(1, 2)))


# ----------------------------------------------------------------------------- reference points
# (seed, torchvision params, MAdds range in G) at 224x224 with 1000 classes (torchvision's figures).
REFERENCE = [
    ('mobilenet_v2', 3_504_872, (0.29e9, 0.32e9)),
    ('resnet18', 11_689_512, (1.7e9, 1.9e9)),
    ('resnet34', 21_797_672, (3.5e9, 3.8e9)),
    ('resnet50', 25_557_032, (4.0e9, 4.2e9)),
]


class ReferenceTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(n, n, p, r) for n, p, r in REFERENCE])
  def test_seed_at_224(self, name, params, madds_range):
    module = models.build(name)
    p, m = cost.count(module, None, (1, 224, 224, 3))
    self.assertEqual(p, params)
    self.assertEqual(m, analytic_madds(arch_lib.seed(name), 224))
    self.assertBetween(m, *madds_range)

  def test_searched_ops_and_dilation(self):
    """Non-default ops (k7_e3, k5g4, skip) and output stride 16 match the analytic count."""
    mb = arch_lib.mobilenet_v2()
    mb = mb.with_ops([['k3_e1'], ['k5_e3', 'k7_e6'], ['k7_e3', 'skip', 'skip'],
                      ['k5_e6', 'k3_e3', 'skip', 'skip'], ['k7_e6', 'k5_e3', 'k3_e6'],
                      ['k5_e6', 'skip', 'skip'], ['k7_e6']]).with_output_stride(16)
    rn = arch_lib.resnet50().with_ops([['k5g2', 'k3g1', 'skip'], ['k7g4', 'k5g4', 'k7g8', 'skip'],
                                       ['k5g2'] * 6, ['k7g8', 'skip', 'skip']])
    for a in (mb, rn):
      _, m = cost.count(models.build(a), None, (1, 96, 96, 3))
      self.assertEqual(m, analytic_madds(a, 96), a.family)

  def test_given_variables_and_batch(self):
    """Real variables count the same as init shapes; MAdds are per image for any batch."""
    module = _Small()
    variables = module.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)
    ref = cost.count(module, None, (1, 8, 8, 3))
    self.assertEqual(ref, (3 * 3 * 3 * 4 + 2 * 4 + 4 * 5 + 5, 3 * 3 * 3 * 4 * 4 * 4 + 4 * 5))
    self.assertEqual(cost.count(module, variables, (1, 8, 8, 3)), ref)
    self.assertEqual(cost.count(module, variables, (4, 8, 8, 3)), ref)
    self.assertEqual(ref.params, sum(a.size for a in jax.tree.leaves(variables['params'])))
    # method=: only the conv runs (params still count every variable).
    (layer,) = cost.count_layers(module, variables, (1, 8, 8, 3), method='features')
    self.assertEqual((layer.path, layer.madds), ('conv', 3 * 3 * 3 * 4 * 4 * 4))
    self.assertEqual(cost.count(module, variables, (1, 8, 8, 3), method='features'),
                     (ref.params, layer.madds))


# ----------------------------------------------------------------------------- per-layer breakdown
class LayersTest(parameterized.TestCase):

  def test_mobilenet_v2_breakdown(self):
    module = models.build('mobilenet_v2')
    variables, _ = _abstract(module, (1, 224, 224, 3))
    layers = cost.count_layers(module, variables, (1, 224, 224, 3))
    total = cost.count(module, variables, (1, 224, 224, 3))
    self.assertEqual(sum(l.madds for l in layers), total.madds)
    self.assertEqual(cost.sum_costs(layers).madds, total.madds)
    # Layer params are exactly the kernels and biases of the network.
    flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
    owners = {path[:-1] for path, _ in flat if path[-1].key == 'kernel'}
    kb = sum(math.prod(v.shape) for path, v in flat if path[:-1] in owners)
    self.assertEqual(sum(l.params for l in layers), kb)
    bn = sum(math.prod(v.shape) for path, v in flat if path[-1].key == 'scale')
    self.assertEqual(kb + 2 * bn, total.params)  # BN: scale and bias, same size
    by_path = {l.path: l for l in layers}
    # Stage 1, layer 0: 16 -> 24, expansion 6 (hidden 96), stride 2, input 112x112 -> 56x56.
    dw = by_path['backbone/stage1/layer0/dw_conv']
    self.assertEqual(dw.madds, 3 * 3 * 96 * 56 * 56)
    self.assertEqual((dw.kind, dw.kernel_shape, dw.groups), ('conv', (3, 3, 1, 96), 96))
    self.assertEqual(dw.output_shape, (1, 56, 56, 96))
    self.assertEqual(dw.params, 3 * 3 * 96)
    self.assertEqual(by_path['backbone/stage1/layer0/expand_conv'].madds, 16 * 96 * 112 * 112)
    self.assertEqual(by_path['backbone/stage1/layer0/project_conv'].madds, 96 * 24 * 56 * 56)
    self.assertEqual(cost.sum_costs(layers, 'backbone/stage1/layer0'),
                     cost.Cost(16 * 96 + 9 * 96 + 96 * 24,
                               16 * 96 * 112 * 112 + 9 * 96 * 56 * 56 + 96 * 24 * 56 * 56))
    fc = by_path['classifier']
    self.assertEqual((fc.kind, fc.madds, fc.params), ('dense', 1280 * 1000, 1280 * 1000 + 1000))
    self.assertNotIn('backbone/stage0/layer0/expand_conv', by_path)  # expansion 1
    # Grouping: by stage, and with a callable; groups partition the total.
    by_stage = cost.group_costs(layers, 2)
    self.assertEqual(list(by_stage)[:3], ['backbone/stem_conv', 'backbone/stage0',
                                          'backbone/stage1'])
    self.assertEqual(sum(c.madds for c in by_stage.values()), total.madds)
    self.assertEqual(by_stage['backbone/stage1'], cost.sum_costs(layers, 'backbone/stage1'))
    dw_only = cost.group_costs(layers, lambda l: 'dw' if l.path.endswith('dw_conv') else None)
    depthwise = [l for l in layers if l.groups > 1 and l.groups == l.output_shape[-1]]
    self.assertEqual(dw_only['dw'].madds, sum(l.madds for l in depthwise))

  def test_prefix_is_whole_components(self):
    layers = [cost.LayerCost(p, 'conv', 'Conv', (1, 1, 1, 1), 1, (1, 1, 1, 1), (1, 1, 1, 1), m, 1)
              for p, m in [('b/stage1/x', 1), ('b/stage10/x', 10), ('b/stage1', 100)]]
    self.assertEqual(cost.sum_costs(layers, 'b/stage1').madds, 101)
    self.assertEqual(cost.sum_costs(layers, 'b/stage1/').madds, 101)
    self.assertEqual(cost.sum_costs(layers, 'b').madds, 111)
    self.assertEqual(cost.group_costs(layers, 2), {'b/stage1': cost.Cost(2, 101),
                                                   'b/stage10': cost.Cost(1, 10)})
    with self.assertRaisesRegex(cost.CostError, 'depth'):
      cost.group_costs(layers, 0)

  @parameterized.parameters('mobilenet_v2', 'resnet50')
  def test_input_size_dependence(self, name):
    """Doubling H and W multiplies every conv's MAdds by exactly 4 (sizes halve evenly); dense
    layers stay."""
    module = models.build(name)
    small = cost.count_layers(module, None, (1, 64, 64, 3))
    large = cost.count_layers(module, None, (1, 128, 128, 3))
    self.assertEqual([l.path for l in small], [l.path for l in large])
    for s, b in zip(small, large):
      self.assertEqual(b.madds, (1 if s.kind == 'dense' else 4) * s.madds, s.path)
      self.assertEqual(b.params, s.params, s.path)


# ----------------------------------------------------------------------------- layer types
class _Shared(nn.Module):

  @nn.compact
  def __call__(self, x):
    conv = ops.Conv(4, 3, name='shared')
    return conv(conv(x))


class _Pick(nn.Module):
  """Chooses a branch by a Python int (like a derived architecture), or by nn.switch."""

  @nn.compact
  def __call__(self, x, branch: int = 0, use_switch: bool = False):
    convs = [ops.Conv(4, 3, name='k3'), ops.Conv(4, 5, name='k5')]
    if self.is_initializing():
      for c in convs:
        c(x)
    if use_switch:
      return nn.switch(branch, [lambda m, v, c=c: c(v) for c in convs], self, x)
    return convs[branch](x)


class _RawKernel(nn.Module):

  @nn.compact
  def __call__(self, x):
    k = self.param('kernel', nn.initializers.zeros, (x.shape[-1], 3))
    return x @ k


class _Outer(nn.Module):

  @nn.compact
  def __call__(self, x):
    return _RawKernel(name='raw')(nn.Dense(5, name='fc')(x))


class LayerTypesTest(parameterized.TestCase):

  def test_flax_conv_transpose_dense(self):
    """Hand-computed counts for flax nn.Conv (grouped), nn.ConvTranspose and Dense on a map."""
    class Net(nn.Module):

      @nn.compact
      def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=(2, 2), feature_group_count=2, name='conv')(x)  # 6->3
        x = nn.ConvTranspose(6, (4, 4), strides=(2, 2), name='deconv')(x)  # 3x3 -> 6x6
        return nn.Dense(7, use_bias=False, name='fc')(x)

    layers = cost.count_layers(Net(), None, (2, 6, 6, 4))
    self.assertEqual([(l.path, l.kind, l.groups) for l in layers],
                     [('conv', 'conv', 2), ('deconv', 'conv_transpose', 1), ('fc', 'dense', 1)])
    conv, deconv, fc = layers
    self.assertEqual(conv.output_shape, (2, 3, 3, 8))
    # Both convs have a bias (flax's default): one more accumulate per output, C_out x H x W, as
    # the authors' counter adds (fna_det/tools/multadds_count.py, github.com/JaminFong/FNA).
    self.assertEqual(conv.madds, 3 * 3 * (4 // 2) * 8 * 3 * 3 + 8 * 3 * 3)
    self.assertEqual(conv.params, 3 * 3 * 2 * 8 + 8)
    self.assertEqual(deconv.output_shape, (2, 6, 6, 6))
    self.assertEqual(deconv.madds, 4 * 4 * 8 * 6 * 6 * 6 + 6 * 6 * 6)  # over output positions
    self.assertEqual(deconv.params, 4 * 4 * 8 * 6 + 6)
    self.assertEqual(fc.madds, 6 * 7 * 6 * 6)  # per position of the 6x6 map
    self.assertEqual(cost.count(Net(), None, (2, 6, 6, 4)),
                     cost.Cost(conv.params + deconv.params + fc.params,
                               conv.madds + deconv.madds + fc.madds))

  def test_conv_bias_counts_one_madd_per_output_dense_bias_none(self):
    """A conv's bias adds C_out x H_out x W_out MAdds (the authors' counter,
    fna_det/tools/multadds_count.py, whose figures the paper's Tab. 2 uses); a dense layer's
    bias adds none (that counter's nn.Linear hook leaves it out)."""
    def net(bias):
      class Net(nn.Module):

        @nn.compact
        def __call__(self, x):
          x = ops.Conv(5, 3, stride=2, use_bias=bias, name='conv')(x)  # 8x8 -> 4x4
          return nn.Dense(7, use_bias=bias, name='fc')(x)
      return Net()

    with_bias = cost.count_layers(net(True), None, (1, 8, 8, 3))
    without = cost.count_layers(net(False), None, (1, 8, 8, 3))
    self.assertEqual([l.madds for l in without], [3 * 3 * 3 * 5 * 4 * 4, 5 * 7 * 4 * 4])
    self.assertEqual([l.madds for l in with_bias], [3 * 3 * 3 * 5 * 4 * 4 + 5 * 4 * 4,
                                                    5 * 7 * 4 * 4])

  def test_shared_module_counts_params_once(self):
    layers = cost.count_layers(_Shared(), None, (1, 8, 8, 4))
    self.assertEqual([l.path for l in layers], ['shared', 'shared'])
    self.assertEqual([l.madds for l in layers], [9 * 4 * 4 * 64] * 2)
    self.assertEqual([l.params for l in layers], [9 * 4 * 4, 0])
    self.assertEqual(cost.count(_Shared(), None, (1, 8, 8, 4)).params, 9 * 4 * 4)

  def test_apply_kwargs_and_switch(self):
    shape = (1, 8, 8, 2)
    variables, _ = _abstract(_Pick(), shape)
    k3, k5 = 9 * 2 * 4 * 64, 25 * 2 * 4 * 64
    params = 9 * 2 * 4 + 25 * 2 * 4  # every variable, also of the branch not taken
    self.assertEqual(cost.count(_Pick(), variables, shape, branch=0), (params, k3))
    self.assertEqual(cost.count(_Pick(), variables, shape, branch=1), (params, k5))
    # nn.switch traces every branch: each candidate is recorded once, whatever the index.
    layers = cost.count_layers(_Pick(), variables, shape, branch=1, use_switch=True)
    self.assertEqual({l.path: l.madds for l in layers}, {'k3': k3, 'k5': k5})

  def test_unknown_kernel_owner_is_an_error(self):
    with self.assertRaisesRegex(cost.CostError, "'raw'.*_RawKernel"):
      cost.count(_Outer(), None, (1, 4))

  def test_bad_input_shape(self):
    with self.assertRaisesRegex(cost.CostError, 'input_shape'):
      cost.count(_Shared(), None, (8, 8, 0))

  def test_format(self):
    self.assertEqual(cost.format_count(3_504_872, 300_774_272), 'Params 3.50M  MAdds 300.8M')
    self.assertEqual(cost.format_count(11_689_512, 1_814_073_344), 'Params 11.69M  MAdds 1.81G')
    self.assertAlmostEqual(cost.to_giga(1_814_073_344), 1.814073344)


# ----------------------------------------------------------------------------- XLA's flop count
class XlaFlopsTest(parameterized.TestCase):
  """XLA counts 2 flops per multiply-accumulate, but skips taps that fall on padding."""

  @parameterized.parameters(
      # c_in, c_out, kernel, stride, dilation, groups, size
      (4, 8, 1, 2, 1, 1, 9),
      (8, 8, 3, 1, 1, 8, 10),   # depthwise
      (4, 8, 3, 2, 2, 4, 9),    # grouped, dilated, strided
      (6, 12, 5, 2, 1, 3, 11),
      (3, 16, 7, 2, 1, 1, 16),  # a ResNet stem
  )
  def test_single_conv(self, c_in, c_out, kernel, stride, dilation, groups, size):
    module = ops.Conv(c_out, kernel, stride, dilation, groups, impl='xla')
    shape = (2, size, size, c_in)
    variables, x = _abstract(module, shape)
    (layer,) = cost.count_layers(module, variables, shape)
    ho = _out(size, kernel, stride, dilation)
    self.assertEqual(layer.madds, kernel * kernel * c_in // groups * c_out * ho * ho)
    taps = _valid_taps(size, kernel, stride, dilation, dilation * (kernel - 1) // 2) ** 2
    flops = _xla_flops(module.apply, variables, x)
    # XLA counts 2 flops per multiply-accumulate for each image of the batch (2 here); jax 0.10.2
    # skips the taps that land on padding (exactly ``valid``, measured), a cost model that counted
    # every tap would give ``every``.  XLA's cost analysis is its own and may change between
    # versions, so accept either convention, with 1% for any bookkeeping flops: a wrong MAdds
    # formula (groups, stride, dilation) is off by far more (factors of 2 or more).
    every = 2 * 2 * layer.madds
    valid = every * taps / (kernel * kernel * ho * ho)
    self.assertBetween(flops, valid * 0.99, every * 1.01)

  def test_dense(self):
    module = nn.Dense(7, use_bias=False)
    variables, x = _abstract(module, (3, 5))
    # 2 flops per MAdd, 3 rows; within 1% (see test_single_conv: XLA's cost model, not ours).
    expected = 2 * 3 * cost.count(module, variables, (3, 5)).madds
    self.assertBetween(_xla_flops(module.apply, variables, x), expected * 0.99, expected * 1.01)

  def test_mobilenet_v2(self):
    """Whole network at 224: XLA flops / MAdds = 2.08 (measured, jax 0.10.2 CPU).

    1x1 convs (90% of the MAdds) have no padding, so XLA's conv flops are 2 x MAdds less a little
    for the 3x3 padding taps; BN, ReLU6 and residual adds (elementwise) add a few percent.
    """
    module = models.build('mobilenet_v2', conv=ops.conv_module('xla'))
    variables, x = _abstract(module, (1, 224, 224, 3))
    madds = cost.count(module, variables, (1, 224, 224, 3)).madds
    ratio = _xla_flops(lambda v, xx: module.apply(v, xx, train=False), variables, x) / madds
    self.assertBetween(ratio, 2.0, 2.2)

  def test_resnet18_padding_adjusted(self):
    """ResNet-18 at 64x64: with padding taps removed, 2 x MAdds is XLA's flops but the elementwise
    part (BN, ReLU, adds; 0.5% measured)."""
    module = models.build('resnet18', conv=ops.conv_module('xla'))
    variables, x = _abstract(module, (1, 64, 64, 3))
    layers = cost.count_layers(module, variables, (1, 64, 64, 3))
    adjusted = 0
    for l in layers:
      if l.kind == 'dense':
        adjusted += l.madds
        continue
      k, h, ho = l.kernel_shape[0], l.input_shape[1], l.output_shape[1]
      stride = -(-h // ho)
      taps = _valid_taps(h, k, stride, 1, (k - 1) // 2) ** 2
      adjusted += l.madds * taps // (k * k * ho * ho)
    flops = _xla_flops(lambda v, xx: module.apply(v, xx, train=False), variables, x)
    self.assertBetween((flops - 2 * adjusted) / flops, 0.0, 0.02)
    self.assertLess(adjusted, cost.sum_costs(layers).madds)  # padding taps do exist here


if __name__ == '__main__':
  pytest.main([__file__, '-q'])

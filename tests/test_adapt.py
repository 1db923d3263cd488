"""Parameter adaptation: remapping from the supernet, BN recalibration, schedule, the whole run."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fna_jax import arch as arch_lib
from fna_jax import spaces
from fna_jax.runtime.checks import VariableMismatchError
from fna_jax.train.evaluate import run_evaluation
from fna_jax.models import Backbone
from fna_jax.models.blocks import batch_norm
from fna_jax.models import supernet as sn
from fna_jax.tasks.seg.heads import DeepLabV3Head, DeepLabV3PlusHead
from fna_jax.models.init import init_variables, variable_shapes
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax import build
from fna_jax.train import adapt
from fna_jax.train.adapt_loop import run_adapt
from fna_jax.runtime.checkpoint import RunCheckpoints, save_variables
from fna_jax.train.fna import run_fna
from fna_jax.train.search_loop import run_search

from test_search_loop import tiny_config

quiet = lambda s: None


def small_space():
  space = spaces.limit_depth(spaces.mobilenet_v2_space('seg', ops=('k3_e3', 'k5_e3')),
                             (1, 2, 2, 1, 1, 1, 1))
  return space


def _randomise_bn(variables, seed):
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name == 'mean':
      return rng.normal(0, 0.3, x.shape).astype(x.dtype)
    if name == 'var':
      return rng.uniform(0.5, 2.0, x.shape).astype(x.dtype)
    if name in ('scale', 'bias'):
      return (x + rng.normal(0, 0.2, x.shape)).astype(x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(leaf, variables)


def test_from_supernet_computes_the_supernet_path():
  """The derived network with collected weights = the supernet on that path (eval mode)."""
  space = small_space()
  head = DeepLabV3Head(6, channels=8, rates=(1, 2, 3))
  sup = SegmentationNet(sn.Supernet(space), head)
  sup_vars = _randomise_bn(init_variables(sup, 0, (1, 32, 32, 3), train=False), 1)
  layers = space.searched_layers()
  # The last candidate (skip where a layer offers it), else alternate the ops.
  choices = [len(space.candidates(i, j)) - 1 if len(space.candidates(i, j)) == 3 else l % 2
             for l, (i, j) in enumerate(layers)]
  assert any(space.candidates(i, j)[c] == 'skip'
             for (i, j), c in zip(space.searched_layers(), choices))
  arch = space.derive(choices)
  net = SegmentationNet(Backbone(arch), head)
  target = init_variables(net, 5, (1, 32, 32, 3), train=False)
  derived, variables, fresh = adapt.from_supernet(sup_vars, space, choices, target)
  assert derived == arch and fresh == []
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  y_sup = sup.apply(sup_vars, x, False, path=jnp.asarray(choices, jnp.int32))
  y_net = net.apply(variables, x, False)
  np.testing.assert_allclose(y_net, y_sup, rtol=1e-4, atol=1e-4 * float(jnp.abs(y_sup).max()))


def test_deeplabv3_weights_into_deeplabv3plus():
  arch = small_space().derive([0] * small_space().num_searched)
  v3 = SegmentationNet(Backbone(arch), DeepLabV3Head(6, channels=8, rates=(1, 2, 3)))
  v3p = SegmentationNet(Backbone(arch), DeepLabV3PlusHead(6, channels=8, rates=(1, 2, 3)))
  src = init_variables(v3, 0, (1, 32, 32, 3), train=False)
  dst = init_variables(v3p, 1, (1, 32, 32, 3), train=False)
  out, copied = adapt.copy_matching(dst, src)
  assert 'params/head/aspp/b0_conv/kernel' in copied
  assert not any('decoder' in p for p in copied)
  np.testing.assert_array_equal(out['params']['head']['aspp']['b0_conv']['kernel'],
                                src['params']['head']['aspp']['b0_conv']['kernel'])
  np.testing.assert_array_equal(out['params']['head']['decoder']['low_conv']['kernel'],
                                dst['params']['head']['decoder']['low_conv']['kernel'])
  y = v3p.apply(out, jnp.zeros((1, 32, 32, 3)), False)
  assert y.shape == (1, 32, 32, 6)


class _ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    return batch_norm(train, 'bn')(x)  # the project's BN (torch's: unbiased running var)


def test_recalibrate_bn_is_the_average_of_batch_statistics():
  model = _ConvBN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  variables = {'params': variables['params'],
               'batch_stats': jax.tree.map(lambda a: a + 7.0, variables['batch_stats'])}
  batches = [{'image': np.random.default_rng(i).normal(i, 1 + i, (4, 8, 8, 3)).astype(np.float32)}
             for i in range(3)]
  fwd = jax.jit(lambda v, b: model.apply(v, b['image'], True, mutable=['batch_stats']))
  out = adapt.recalibrate_bn(fwd, variables, batches, momentum=0.9)
  conv = lambda x: nn.Conv(4, (3, 3)).apply({'params': variables['params']['conv']}, x)
  feats = [np.asarray(conv(b['image']), np.float64).reshape(-1, 4) for b in batches]
  want_mean = np.mean([f.mean(0) for f in feats], axis=0)
  # torch's recalibration (momentum=None): the average of the unbiased batch variances.
  want_var = np.mean([f.var(0, ddof=1) for f in feats], axis=0)
  np.testing.assert_allclose(out['batch_stats']['bn']['mean'], want_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out['batch_stats']['bn']['var'], want_var, rtol=1e-4)
  assert out['params'] is variables['params']


def test_poly_schedule():
  f = adapt.poly_schedule(0.01, 1000, warmup_steps=100, warmup_start=1e-4, power=0.9)
  np.testing.assert_allclose(f(0), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(f(50), 1e-4 + 0.5 * (0.01 - 1e-4), rtol=1e-5)
  np.testing.assert_allclose(f(100), 0.01, rtol=1e-5)
  np.testing.assert_allclose(f(550), 0.01 * (1 - 450 / 900) ** 0.9, rtol=1e-5)
  np.testing.assert_allclose(f(1000), 0.0, atol=1e-9)


# --------------------------------------------------------------------------- whole runs
def adapt_config(tmp_path_factory, **adapt_kw):
  c = tiny_config(tmp_path_factory, init='remap')
  c.seed_net.pretrain.update(steps=4, batch_size=8, image_size=32, num_examples=32)
  c.seed_net.cache_dir = str(tmp_path_factory.getbasetemp() / 'seed_cache')
  c.adapt.update(steps=6, batch_size=8, crop_size=32, bn_recalib_steps=2, warmup_steps=2,
                 lr=0.02)
  c.adapt.update(adapt_kw)
  c.data.num_val = 12
  c.eval.update(batch_size=8, num_visualize=2)
  return c


@pytest.fixture(scope='module')
def searched(tmp_path_factory):
  c = adapt_config(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp('search'))
  run_search(c, workdir, log=quiet)
  return c, workdir


@pytest.fixture(scope='module')
def adapted(searched, tmp_path_factory):
  """One parameter adaptation with the default init (FNA++: from the supernet)."""
  c, search_dir = searched
  workdir = str(tmp_path_factory.mktemp('adapt_supernet'))
  lines = []
  result = run_adapt(c, workdir, search_dir, log=lines.append)
  return c, search_dir, workdir, result, lines


def _check_adapt_outputs(workdir, result, init, config):
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['init'] == init and summary['madds'] == result.cost.madds > 0
  model, variables, _ = build.load_network(os.path.join(workdir, 'model'), config)
  shapes = jax.tree.map(lambda s: s.shape, variable_shapes(model, (1, 32, 32, 3)))
  assert jax.tree.map(np.shape, variables) == shapes


def test_adapt_from_supernet(adapted):
  c, search_dir, workdir, result, lines = adapted
  assert c.adapt.init == 'supernet'
  assert any('remapped from the searched supernet' in l for l in lines)
  assert any('BatchNorm statistics recomputed on 2 batches' in l for l in lines)
  _check_adapt_outputs(workdir, result, 'supernet', c)


@pytest.mark.parametrize('init', ['seed', 'random'])
def test_adapt_other_inits(searched, tmp_path_factory, init):
  c, search_dir = searched
  c = c.copy_and_resolve_references()
  c.adapt.init = init
  workdir = str(tmp_path_factory.mktemp(f'adapt_{init}'))
  lines = []
  result = run_adapt(c, workdir, search_dir, log=lines.append)
  assert any(('seed network' if init == 'seed' else 'random initialisation') in l for l in lines)
  _check_adapt_outputs(workdir, result, init, c)


def test_adapt_at_output_stride_8(searched, tmp_path_factory):
  """Paper Tab. 2's last rows: the architecture searched at OS 16 adapted at OS 8 -- the 64/96
  stages at dilation 2, the 160/320 stages at dilation 4 and the ASPP's rates doubled -- with
  the weights remapped from the supernet as at OS 16 (dilation changes no shape)."""
  c, search_dir = searched
  c = c.copy_and_resolve_references()
  c.adapt.update(output_stride=8, steps=2)
  workdir = str(tmp_path_factory.mktemp('adapt_os8'))
  lines = []
  result = run_adapt(c, workdir, search_dir, log=lines.append)
  searched_arch = arch_lib.Arch.from_json(open(os.path.join(search_dir, 'arch.json')).read())
  assert searched_arch.output_stride == 16 and result.arch.output_stride == 8
  assert result.arch == searched_arch.with_output_stride(8)
  assert arch_lib.Arch.from_json(open(os.path.join(workdir, 'arch.json')).read()) == result.arch
  assert [(st.stride, st.dilation) for st in result.arch.stages[3:]] == [
      (1, 2), (1, 2), (1, 4), (1, 4)]
  assert any('remapped from the searched supernet' in l for l in lines)
  assert any('at output stride 8' in l for l in lines)
  model, _, _ = build.load_network(os.path.join(workdir, 'model'), c)
  assert tuple(model.head.rates) == tuple(2 * r for r in c.head.rates)
  _check_adapt_outputs(workdir, result, 'supernet', c)


def test_adapt_resumes_to_the_same_weights(adapted, tmp_path_factory):
  c, search_dir, _, full, _ = adapted
  workdir = str(tmp_path_factory.mktemp('adapt_killed'))
  assert run_adapt(c, workdir, search_dir, log=quiet, stop_after=4) is None
  assert RunCheckpoints(workdir).latest_step() == 4
  resumed = run_adapt(c, workdir, search_dir, log=quiet)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               resumed.variables, full.variables)


def test_fna_pipeline_report_and_evaluation(searched, tmp_path_factory):
  c, search_dir = searched
  workdir = str(tmp_path_factory.mktemp('fna'))
  report = run_fna(c, workdir, search_dir=search_dir, log=quiet)
  assert 0.0 <= report['miou'] <= 1.0 and report['madds'] > 0
  md = open(os.path.join(workdir, 'report.md')).read()
  assert 'mIoU' in md and report['arch'].splitlines()[0] in md
  ev = json.load(open(os.path.join(workdir, 'adapt', 'eval', 'eval.json')))
  assert ev['num_images'] == 12 and set(ev['iou']) == {
      'background', 'disc', 'square', 'triangle', 'ring', 'cross'}
  pngs = sorted(os.listdir(os.path.join(workdir, 'adapt', 'eval', 'predictions')))
  assert pngs == ['000.png', '001.png']
  # Rerunning skips every finished stage and gives the same report.
  lines = []
  assert run_fna(c, workdir, search_dir=search_dir, log=lines.append) == report
  assert sum('done before' in l for l in lines) == 3
  # Sliding windows smaller than the image give a valid evaluation too.
  c2 = c.copy_and_resolve_references()
  c2.eval.update(mode='sliding', crop_size=24, stride_fraction=0.5, num_visualize=0)
  ev2 = run_evaluation(c2, os.path.join(workdir, 'adapt'), str(tmp_path_factory.mktemp('ev')),
                       log=quiet)
  assert 0.0 <= ev2['miou'] <= 1.0


def test_evaluate_rejects_a_mismatched_checkpoint(adapted, tmp_path_factory):
  c, _, workdir, _, _ = adapted
  model, variables, meta = build.load_network(os.path.join(workdir, 'model'), c)
  variables['params']['backbone']['stage2'].pop('layer0')
  bad = str(tmp_path_factory.mktemp('bad') / 'model')
  save_variables(bad, variables, meta)
  with pytest.raises(VariableMismatchError, match='params/backbone/stage2/layer0'):
    run_evaluation(c, bad, str(tmp_path_factory.mktemp('ev_bad')), log=quiet)

"""torchvision -> fna_jax weight conversion, seed checkpoints and the converter's command line.

Parity is checked against torchvision itself: random weights with non-trivial batch norm (random
scale, bias, running mean and variance), eval mode on both sides, logits and every block's output
compared at float32 with matmuls at 'highest' precision.
"""

from __future__ import annotations

import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

from fna_jax import arch as arch_lib  # noqa: E402
from fna_jax import models, ops  # noqa: E402
from fna_jax import seeds  # noqa: E402
from fna_jax.models import blocks  # noqa: E402
from weights_convert import __main__ as cli  # noqa: E402
from weights_convert import torchvision as tv  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL_TOL = 1e-4  # max |flax - torch| / max |torch| per activation, float32


def _random_torchvision(name: str, seed: int = 0):
  """A torchvision model with random weights and batch norm that is far from the identity.

  Running statistics are first set to the batch statistics of a random batch (so that signal
  neither vanishes nor explodes through the random network and every block's output depends on
  the input), then perturbed per channel: mean + 0.2 std * N(0, 1), var * U(0.5, 2); the affine
  scale is U(0.5, 1.5) and the bias N(0, 0.2).  The Linear layer gets weights N(0, 1/fan_in) so
  that logits depend on the features, not only on its bias.
  """
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)(weights=None)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      m.momentum = 1.0
    model.train()(torch.randn(4, 3, 64, 64))
    for m in bns:
      m.momentum = 0.1
      m.weight.uniform_(0.5, 1.5)
      m.bias.normal_(0.0, 0.2)
      m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
    for m in model.modules():
      if isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, m.in_features ** -0.5)
        m.bias.normal_(0.0, 0.1)
  return model.eval()


_MODELS = {}


def torch_model(name: str):
  if name not in _MODELS:
    _MODELS[name] = _random_torchvision(name)
  return _MODELS[name]


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(np.shape(x)), tree)


# ------------------------------------------------------------------------------------ tree shape
@pytest.mark.parametrize('name', ['mobilenet_v2', 'resnet18', 'resnet34', 'resnet50'])
def test_converted_tree_equals_init_tree(name):
  variables = tv.convert(torch_model(name).state_dict(), name)
  init = jax.eval_shape(models.build(name).init, jax.random.key(0),
                        np.zeros((1, 64, 64, 3), np.float32))
  init = {k: v for k, v in init.items()}
  assert jax.tree.structure(_shapes(variables)) == jax.tree.structure(_shapes(init))
  assert _shapes(variables) == _shapes(init)
  for leaf in jax.tree.leaves(variables):
    assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
  n_torch = sum(p.numel() for p in torch_model(name).parameters())
  assert tv.count_params(variables) == n_torch


def test_skip_layers_consume_no_torch_block():
  """Trailing skips (the derived-architecture convention) own nothing and shift no torch index."""
  base = arch_lib.mobilenet_v2()
  arch = base.with_ops([list(st.ops) + ['skip'] * (i % 2) for i, st in enumerate(base.stages)])
  assert arch != base
  sd = torch_model('mobilenet_v2').state_dict()
  variables = tv.convert(sd, arch)
  init = jax.eval_shape(models.build(arch).init, jax.random.key(0),
                        np.zeros((1, 64, 64, 3), np.float32))
  assert _shapes(variables) == _shapes(dict(init))
  chex.assert_trees_all_equal(variables, tv.convert(sd, 'mobilenet_v2'))
  assert tv.block_modules(arch)[('backbone', 'stage2', 'layer0')] == 'features.4'


def test_layouts_are_transposed_not_reshaped():
  """Spot checks of the layout rules on known tensors."""
  sd = torch_model('mobilenet_v2').state_dict()
  v = tv.convert(sd, 'mobilenet_v2')
  p = v['params']['backbone']
  w = sd['features.0.0.weight'].numpy()  # (32, 3, 3, 3) OIHW
  np.testing.assert_array_equal(p['stem_conv']['kernel'][1, 2, 0, 5], w[5, 0, 1, 2])
  dw = sd['features.2.conv.1.0.weight'].numpy()  # (96, 1, 3, 3) depthwise
  np.testing.assert_array_equal(p['stage1']['layer0']['dw_conv']['kernel'],
                                dw.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v['params']['classifier']['kernel'],
                                sd['classifier.1.weight'].numpy().T)
  bn = v['batch_stats']['backbone']['stage6']['layer0']['project_bn']
  np.testing.assert_array_equal(bn['var'], sd['features.17.conv.3.running_var'].numpy())
  np.testing.assert_array_equal(p['stage0']['layer0']['project_bn']['scale'],
                                sd['features.1.conv.2.weight'].numpy())


def test_numpy_state_dict_gives_the_same_variables():
  sd = torch_model('resnet18').state_dict()
  from_np = tv.convert({k: t.numpy() for k, t in sd.items()}, 'resnet18')
  chex.assert_trees_all_equal(from_np, tv.convert(sd, 'resnet18'))


def test_num_classes_inferred():
  sd = dict(torch_model('resnet18').state_dict())
  sd['fc.weight'] = sd['fc.weight'][:10]
  sd['fc.bias'] = sd['fc.bias'][:10]
  v = tv.convert(sd, 'resnet18', num_classes=None)
  chex.assert_shape(v['params']['classifier']['kernel'], (512, 10))
  with pytest.raises(tv.ConversionError, match=r"'fc.weight'.*\(10, 512\).*\(1000, 512\)"):
    tv.convert(sd, 'resnet18')


# ------------------------------------------------------------------------------------ parity
def _is_captured(mdl, method):
  del method
  return isinstance(mdl, (blocks.MBConv, blocks.BasicBlock, blocks.Bottleneck, models.Backbone))


def _parity(name: str, impl: str, shape: tuple[int, int, int, int]):
  """Relative errors of every block, the stem, the last conv and the logits; abs logit error."""
  model = torch_model(name)
  arch = arch_lib.seed(name)
  variables = tv.convert(model.state_dict(), name)
  mods = dict(model.named_modules())
  compared = dict(tv.block_modules(arch))  # flax path -> torch module
  compared[('backbone', 'stem')] = 'features.0' if arch.family == arch_lib.MBCONV else 'maxpool'
  if arch.last_channels:
    compared[('backbone', 'last')] = 'features.18'
  acts, hooks = {}, []
  for path, tname in compared.items():
    hooks.append(mods[tname].register_forward_hook(
        lambda m, i, o, path=path: acts.__setitem__(path, o.detach().numpy())))
  x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
  try:
    with torch.no_grad():
      ref = model(torch.from_numpy(x)).numpy()
  finally:
    for h in hooks:
      h.remove()
  net = models.build(name, conv=ops.conv_module(impl))
  apply = jax.jit(lambda v, y: net.apply(v, y, train=False, capture_intermediates=_is_captured,
                                         mutable=['intermediates']))
  logits, state = apply(variables, x.transpose(0, 2, 3, 1))
  inter = state['intermediates']
  feats = inter['backbone']['__call__'][0]
  rel = {}
  for path, want in acts.items():
    if path[-1] in ('stem', 'last'):
      got = feats[path[-1]]
    else:
      node = inter
      for k in path:
        node = node[k]
      got = node['__call__'][0]
    got = np.asarray(got).transpose(0, 3, 1, 2)
    assert got.shape == want.shape, (path, got.shape, want.shape)
    rel['/'.join(path[1:])] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  logits = np.asarray(logits)
  abs_err = float(np.max(np.abs(logits - ref)))
  rel['logits'] = abs_err / float(np.max(np.abs(ref)))
  return rel, abs_err, float(np.max(np.abs(ref)))


# Input (batch, height, width): one odd and one even side, so every stride-2 layer sees both an
# odd size (97 -> 49 -> 25 -> 13 -> 7 -> 4) and an even size (64 -> 32 -> 16 -> 8 -> 4 -> 2).
@pytest.mark.parametrize('name,impl,batch,height,width', [
    ('mobilenet_v2', 'cpu', 2, 97, 64),
    ('mobilenet_v2', 'xla', 1, 64, 97),
    ('resnet18', 'cpu', 1, 97, 64),
    ('resnet18', 'xla', 2, 64, 97),
    ('resnet50', 'cpu', 1, 97, 64),
])
def test_matches_torchvision_block_by_block(name, impl, batch, height, width):
  rel, abs_err, scale = _parity(name, impl, (batch, 3, height, width))
  n_blocks = len(tv.block_modules(name))
  assert len(rel) == n_blocks + 2 + (name == 'mobilenet_v2')  # blocks, stem, [last], logits
  worst = max(rel, key=rel.get)
  print(f'\n{name} impl={impl} input {batch}x3x{height}x{width}: max |logit err| {abs_err:.2e} '
        f'(max |logit| {scale:.2f}); worst relative error {rel[worst]:.2e} at {worst}')
  bad = {k: v for k, v in rel.items() if not v <= REL_TOL}
  assert not bad, f'relative errors above {REL_TOL}: {bad}'


# ------------------------------------------------------------------------------------ errors
@pytest.fixture(scope='module')
def mnv2_sd():
  return {k: v.numpy() for k, v in torch_model('mobilenet_v2').state_dict().items()}


def test_missing_key_is_named(mnv2_sd):
  sd = dict(mnv2_sd)
  del sd['features.5.conv.1.1.running_var']
  with pytest.raises(ValueError, match=r"'features\.5\.conv\.1\.1\.running_var'.*"
                     r"backbone/stage2/layer1/dw_bn/var") as e:
    tv.convert(sd, 'mobilenet_v2')
  assert isinstance(e.value, tv.ConversionError)


def test_unexpected_key_is_named(mnv2_sd):
  sd = dict(mnv2_sd)
  sd['features.0.0.bias'] = np.zeros(32, np.float32)  # torchvision's convs have no bias
  with pytest.raises(tv.ConversionError, match=r"unexpected.*'features\.0\.0\.bias'"):
    tv.convert(sd, 'mobilenet_v2')
  sd = dict(mnv2_sd)
  sd['features.19.0.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"'features\.19\.0\.weight'"):
    tv.convert(sd, 'mobilenet_v2')


def test_wrong_shape_is_named_with_both_shapes(mnv2_sd):
  sd = dict(mnv2_sd)
  sd['features.3.conv.1.0.weight'] = np.zeros((144, 1, 5, 5), np.float32)
  with pytest.raises(tv.ConversionError,
                     match=r"'features\.3\.conv\.1\.0\.weight'.*stage1/layer1/dw_conv.*"
                     r"\(144, 1, 5, 5\), expected \(144, 1, 3, 3\)"):
    tv.convert(sd, 'mobilenet_v2')


def test_resnet_state_dict_is_not_a_mobilenet(mnv2_sd):
  with pytest.raises(tv.ConversionError, match='lacks'):
    tv.convert(mnv2_sd, 'resnet18')


def test_num_batches_tracked_is_optional(mnv2_sd):
  sd = {k: v for k, v in mnv2_sd.items() if not k.endswith('num_batches_tracked')}
  chex.assert_trees_all_equal(tv.convert(sd, 'mobilenet_v2'), tv.convert(mnv2_sd, 'mobilenet_v2'))


# ------------------------------------------------------------------------------------ files
def test_load_torchvision_checkpoint_unwraps(tmp_path):
  sd = {'conv1.weight': torch.arange(6.0).reshape(1, 2, 3, 1), 'fc.bias': torch.ones(2)}
  for i, obj in enumerate([sd, {'state_dict': sd}, {'model': sd, 'epoch': 3},
                           {'state_dict': {f'module.{k}': v for k, v in sd.items()}}]):
    path = tmp_path / f'w{i}.pth'
    torch.save(obj, path)
    got = tv.load_torchvision_checkpoint(path)
    assert sorted(got) == sorted(sd)
    np.testing.assert_array_equal(got['conv1.weight'].numpy(), sd['conv1.weight'].numpy())
  torch.save(torch.nn.Linear(2, 2), tmp_path / 'module.pth')  # a pickled model, not weights
  with pytest.raises(tv.ConversionError, match=r'module\.pth.*state_dict\(\)'):
    tv.load_torchvision_checkpoint(tmp_path / 'module.pth')
  torch.save([1, 2], tmp_path / 'list.pth')
  with pytest.raises(tv.ConversionError, match='list.pth'):
    tv.load_torchvision_checkpoint(tmp_path / 'list.pth')
  with pytest.raises(FileNotFoundError, match='nothere.pth'):
    tv.load_torchvision_checkpoint(tmp_path / 'nothere.pth')


def test_seed_round_trip(tmp_path):
  variables = tv.convert(torch_model('resnet18').state_dict(), 'resnet18')
  variables = jax.tree.map(jax.numpy.asarray, variables)  # jax arrays in, numpy out
  path = seeds.save_seed(tmp_path / 'seed', 'resnet18', variables)
  arch, restored = seeds.load_seed(path)
  assert arch == arch_lib.resnet18() and arch.name == 'resnet18'
  assert jax.tree.structure(restored) == jax.tree.structure(variables)
  chex.assert_trees_all_equal(restored, jax.tree.map(np.asarray, variables))
  for leaf in jax.tree.leaves(restored):
    assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
  with pytest.raises(FileExistsError, match='already exists'):
    seeds.save_seed(path, 'resnet18', variables)
  doubled = jax.tree.map(lambda x: 2 * x, variables)
  seeds.save_seed(path, 'resnet18', doubled, overwrite=True)
  chex.assert_trees_all_equal(seeds.load_seed(path)[1], jax.tree.map(np.asarray, doubled))


def test_load_seed_missing_directory_says_how_to_create_it(tmp_path):
  missing = tmp_path / 'seeds' / 'mobilenet_v2'
  with pytest.raises(FileNotFoundError) as e:
    seeds.load_seed(missing)
  msg = str(e.value)
  assert str(missing) in msg
  assert 'python -m weights_convert --arch mobilenet_v2' in msg and '--src' in msg
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='not a seed checkpoint'):
    seeds.load_seed(tmp_path / 'empty')


# ------------------------------------------------------------------------------------ CLI
def test_cli_round_trip_and_check(tmp_path):
  sd = torch_model('resnet18').state_dict()
  src, dst = tmp_path / 'r18.pth', tmp_path / 'seeds' / 'resnet18'
  torch.save({'model': sd}, src)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run(
      [sys.executable, '-m', 'weights_convert', '--arch', 'resnet18', '--src', str(src),
       '--dst', str(dst), '--check', '--check_size', '33', '--check_batch', '1'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert str(dst) in proc.stdout and '11,689,512 parameters' in proc.stdout
  assert 'check passed' in proc.stdout and 'max |logit error|' in proc.stdout
  print('\n' + proc.stdout)
  arch, restored = seeds.load_seed(dst)
  assert arch == arch_lib.resnet18()
  chex.assert_trees_all_equal(restored, tv.convert(sd, 'resnet18'))


def test_cli_refuses_to_overwrite_and_fails_a_bad_check(tmp_path, monkeypatch, capsys):
  sd = torch_model('mobilenet_v2').state_dict()
  src, dst = tmp_path / 'mnv2.pth', tmp_path / 'mnv2'
  torch.save(sd, src)
  base = ['--arch', 'mobilenet_v2', '--src', str(src), '--dst', str(dst)]
  assert cli.main(base) == 0
  assert '3,504,872 parameters' in capsys.readouterr().out
  assert cli.main(base) == 2  # --dst exists
  assert '--overwrite' in capsys.readouterr().err
  wrong_arch = ['--arch', 'resnet18', '--src', str(src), '--dst', str(tmp_path / 'r18')]
  assert cli.main(wrong_arch) == 2
  err = capsys.readouterr().err
  assert "lacks 102 key(s): 'conv1.weight'" in err and "'features.0.0.weight'" in err

  real_convert = tv.convert

  def flipped_dw(state_dict, arch, num_classes=1000):
    """A converter with the classic layout bug: one depthwise kernel flipped spatially."""
    v = real_convert(state_dict, arch, num_classes)
    dw = v['params']['backbone']['stage1']['layer0']['dw_conv']
    dw['kernel'] = dw['kernel'][::-1, ::-1]
    return v

  monkeypatch.setattr(tv, 'convert', flipped_dw)
  check = ['--overwrite', '--check', '--check_size', '33', '--check_batch', '1', '--impl', 'xla']
  assert cli.main(base + check) == 1
  out = capsys.readouterr()
  assert 'check FAILED' in out.err
  print('\n' + out.out + out.err)

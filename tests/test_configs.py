"""Every key of the shipped configs can be overridden on the command line, and the code reads no
key a config does not declare.

Each leaf of ``configs/seg_cityscapes.py`` and ``configs/demo.py`` is overridden with a different
value of the same type through ``ml_collections.config_flags`` (what ``scripts/*.py`` use), and the
parsed config must hold the new value.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags
import pytest

from configs import demo, pose_demo, pose_mpii, seg_cityscapes, seg_cityscapes_deeplabv3plus
from fna_jax import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'seg_cityscapes': seg_cityscapes.get_config, 'demo': demo.get_config,
           'seg_cityscapes_deeplabv3plus': seg_cityscapes_deeplabv3plus.get_config,
           'pose_mpii': pose_mpii.get_config, 'pose_demo': pose_demo.get_config}


def _leaves(d: dict, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def _other(value):
  """``(flag text, expected value)``: a value of ``value``'s type that differs from it."""
  if isinstance(value, bool):
    return str(not value), (not value)
  if isinstance(value, int):
    return str(value + 1), value + 1
  if isinstance(value, float):
    return repr(value + 0.5), value + 0.5
  if isinstance(value, str):
    return value + '_x', value + '_x'
  if isinstance(value, tuple):
    new = tuple(value) + (value[-1],) if value else (3,)
    return repr(new), new
  raise TypeError(f'no override rule for {type(value).__name__}')


def _parse(config_file: str, override: str):
  argv = ['prog', f'--config={config_file}', override]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def _get(config, path: str):
  for k in path.split('.'):
    config = config[k]
  return config


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_key_can_be_overridden(name):
  config_file = os.path.join(ROOT, 'configs', f'{name}.py')
  leaves = list(_leaves(CONFIGS[name]().to_dict()))
  # None has no type to parse a command-line value as: every key has a typed default.
  assert not [p for p, v in leaves if v is None]
  assert len(leaves) > 60
  for path, value in leaves:
    text, expected = _other(value)
    got = _get(_parse(config_file, f'--config.{path}={text}'), path)
    assert got == expected, (path, got, expected)


def test_an_undeclared_key_is_an_error():
  with pytest.raises(Exception, match='no_such_key'):
    _parse(os.path.join(ROOT, 'configs', 'demo.py'), '--config.search.no_such_key=1')


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_configs_build(name):
  """The registries know every name the config uses."""
  c = CONFIGS[name]()
  assert build.task(c).name == c.task
  assert build.space(c).num_searched > 0
  for head in (c.head.name, c.adapt.head):
    assert head in build.HEADS
  assert c.data.name in build.DATASETS


def _head_param_paths(config, name):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  head = build.head(config, 16, name)
  feats = {'out': jnp.zeros((1, 4, 4, 320)), 'stage1': jnp.zeros((1, 16, 16, 24))}
  shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), feats, False))
  return {'/'.join(str(getattr(k, 'key', k)) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(shapes['params'])[0]}


def test_demo_keeps_the_light_deeplabv3plus_and_deeplabv3plus_is_the_papers():
  """The demo searches and fine-tunes with the light DeepLabv3+ (depthwise-separable convs in the
  ASPP and the decoder: its parameter paths as before); ``deeplabv3+`` is the paper's network
  (Tab. 2: regular 3x3 atrous ASPP branches and decoder convs)."""
  c = demo.get_config()
  assert c.head.name == c.adapt.head == 'deeplabv3+_light'
  light = _head_param_paths(c, 'deeplabv3+_light')
  paper = _head_param_paths(c, 'deeplabv3+')
  for i in (1, 2, 3):
    assert {f'aspp/b{i}_dw_conv/kernel', f'aspp/b{i}_pw_conv/kernel'} <= light
    assert f'aspp/b{i}_conv/kernel' in paper and f'aspp/b{i}_dw_conv/kernel' not in paper
  for i in (1, 2):
    assert {f'decoder/sep{i}_dw_conv/kernel', f'decoder/sep{i}_pw_conv/kernel'} <= light
    assert f'decoder/fuse{i}_conv/kernel' in paper and not any('sep' in p for p in paper)


def test_cityscapes_evaluates_as_the_release_sliding_769_windows_with_a_513_px_stride():
  """The release's TorchSeg config: eval_crop_size 769, eval_stride_rate 2/3 (the stride as a
  fraction of the crop: ceil(769 * 2 / 3) = ceil(512.67) = 513 px), eval_scale_array [1],
  eval_flip False; the demo keeps whole-image evaluation of its 64x64 images."""
  from fna_jax.tasks.seg import inference  # pylint: disable=g-import-not-at-top
  c = seg_cityscapes.get_config()
  assert c.eval.mode == 'sliding' and c.eval.crop_size == 769
  assert inference.sliding_stride(c.eval.crop_size, c.eval.stride_fraction) == 513
  assert 'overlap' not in c.eval  # the old name, read as 1 - stride fraction (257 px)
  assert demo.get_config().eval.mode == 'whole'


@pytest.mark.parametrize('align_corners', [True, False])
def test_head_align_corners_reaches_the_network_and_the_deeplabv3plus_heads(align_corners):
  """``head.align_corners`` (default True, the release's F.interpolate(align_corners=True)) is
  what the segmentation network and both DeepLabv3+ heads upsample with."""
  from fna_jax import arch as arch_lib  # pylint: disable=g-import-not-at-top
  assert seg_cityscapes.get_config().head.align_corners is True
  c = demo.get_config()
  c.head.align_corners = align_corners
  for name in ('deeplabv3+', 'deeplabv3+_light'):
    assert build.head(c, 16, name).align_corners is align_corners
  net = build.task_network(c, build.space(c).task_arch(arch_lib.seed(c.seed_net.arch)))
  assert net.align_corners is align_corners

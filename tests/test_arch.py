"""Architectures as data: constructors, validation, JSON and release notation."""

import json

import jax
import numpy as np
import pytest

from fna_jax import arch as arch_lib
from fna_jax import spaces
from fna_jax.arch import SKIP, Arch, ArchError, Stage, Stem
from fna_jax.models import Backbone

RELEASE_DET = """[[32, 16], ['k3_e1'], 1]|
[[16, 24], ['k3_e6', 'k3_e6', 'skip', 'skip'], 2]|
[[24, 32], ['k5_e3', 'k3_e3', 'k3_e6', 'skip'], 2]|
[[32, 64], ['k7_e6', 'k5_e6', 'skip', 'skip'], 2]|
[[64, 96], ['k5_e6', 'k5_e3', 'k3_e3', 'skip'], 1]|
[[96, 160], ['k7_e6', 'k5_e6', 'k7_e6', 'k3_e6'], 2]|
[[160, 320], ['k7_e6'], 1]"""


def test_mobilenet_v2_matches_torchvision_settings():
  a = arch_lib.mobilenet_v2()
  assert [len(s.ops) for s in a.stages] == [1, 2, 3, 4, 3, 3, 1]
  assert [s.c_out for s in a.stages] == [16, 24, 32, 64, 96, 160, 320]
  assert [s.stride for s in a.stages] == [1, 2, 2, 2, 1, 2, 1]
  assert a.stages[0].ops == ('k3_e1',) and set(a.stages[1].ops) == {'k3_e6'}
  assert a.output_stride == 32 and a.out_channels == 1280


@pytest.mark.parametrize('name,depths,c_out', [
    ('resnet18', [2, 2, 2, 2], 512), ('resnet34', [3, 4, 6, 3], 512),
    ('resnet50', [3, 4, 6, 3], 2048)])
def test_resnets(name, depths, c_out):
  a = arch_lib.seed(name)
  assert [len(s.ops) for s in a.stages] == depths
  assert a.out_channels == c_out and a.output_stride == 32 and a.stem.max_pool


@pytest.mark.parametrize('name', sorted(arch_lib.SEEDS))
def test_json_round_trip(name):
  a = arch_lib.seed(name)
  text = a.to_json()
  json.loads(text)  # valid JSON
  b = Arch.from_json(text)
  assert b == a and b.name == a.name and hash(b) == hash(a)


def test_release_string_round_trip():
  a = Arch.from_release_string(RELEASE_DET)
  assert a.to_release_string() == RELEASE_DET
  assert a.stages[1].ops == ('k3_e6', 'k3_e6', 'skip', 'skip')
  assert a.stages[1].depth == 2
  assert Arch.from_release_string(arch_lib.mobilenet_v2().to_release_string()) == (
      arch_lib.mobilenet_v2())


def test_with_output_stride_16_dilates_last_stages():
  a = arch_lib.mobilenet_v2().with_output_stride(16)
  assert a.output_stride == 16
  assert [s.stride for s in a.stages] == [1, 2, 2, 2, 1, 1, 1]
  assert [s.dilation for s in a.stages] == [1, 1, 1, 1, 1, 2, 2]
  r = arch_lib.resnet50().with_output_stride(8)
  assert [s.stride for s in r.stages] == [1, 2, 1, 1]
  assert [s.dilation for s in r.stages] == [1, 1, 2, 4]
  assert arch_lib.mobilenet_v2().with_output_stride(None) == arch_lib.mobilenet_v2()
  with pytest.raises(ArchError, match='power of two'):
    arch_lib.mobilenet_v2().with_output_stride(12)


def test_output_stride_8_is_the_same_from_32_and_from_16():
  """Paper Tab. 2, output stride 8: the 64 stage (and the 96 stage after it) at dilation 2, the
  160 and 320 stages at dilation 4, whether converted from stride 32 or from output stride 16."""
  seed = arch_lib.mobilenet_v2()
  os8 = seed.with_output_stride(8)
  assert seed.with_output_stride(16).with_output_stride(8) == os8
  assert os8.output_stride == 8
  #  c_out:                               16  24  32  64  96 160 320
  assert [s.stride for s in os8.stages] == [1, 2, 2, 1, 1, 1, 1]
  assert [s.dilation for s in os8.stages] == [1, 1, 1, 2, 2, 4, 4]
  # ... and back: the conversion is undone exactly.
  assert os8.with_output_stride(16) == seed.with_output_stride(16)
  assert os8.with_output_stride(32) == seed
  # The seg space (built at output stride 16) and an architecture derived from it convert alike.
  space = spaces.mobilenet_v2_space('seg')
  space8 = space.with_output_stride(8)
  assert [(s.stride, s.dilation) for s in space8.stages] == [
      (s.stride, s.dilation) for s in os8.stages]
  arch16 = space.derive([0] * space.num_searched)
  assert space8.derive([0] * space.num_searched) == arch16.with_output_stride(8)


@pytest.mark.parametrize('output_stride', [8, 16])
def test_backbone_output_resolution_at_output_stride(output_stride):
  """A forward of the body at 64x64 gives 64 / output_stride features (8x8 at output stride 8),
  every stage at the resolution of its running stride."""
  a = arch_lib.mobilenet_v2().with_output_stride(16).with_output_stride(output_stride).replace(
      last_channels=None)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
  # The forward traced abstractly (shapes only): the same conv shape rules, no op-by-op compute.
  feats, _ = jax.eval_shape(
      lambda x: Backbone(a).init_with_output(jax.random.key(0), x, train=False), x)
  assert feats['out'].shape == (1, 64 // output_stride, 64 // output_stride, 320)
  running = a.stem.total_stride
  for i, st in enumerate(a.stages):
    running *= st.stride
    assert feats[f'stage{i}'].shape[1:3] == (64 // running, 64 // running), i


def test_release_string_writes_strides_before_conversion():
  """The authors' notation has no dilation: strides are written as before the conversion."""
  seed = arch_lib.mobilenet_v2()
  for output_stride in (16, 8):
    assert seed.with_output_stride(output_stride).to_release_string() == seed.to_release_string()
  line160 = seed.with_output_stride(16).to_release_string().split('|\n')[5]
  assert line160 == "[[96, 160], ['k3_e6', 'k3_e6', 'k3_e6'], 2]"


def test_searched_arch_release_round_trip(tmp_path):
  """A searched seg architecture (output stride 16, Sec. 4.1.1) written in the release notation
  and read back is the searched network once converted to output stride 16; arch.json keeps
  the converted strides and the dilations."""
  space = spaces.mobilenet_v2_space('seg')
  rng = np.random.default_rng(0)
  choices = [int(rng.integers(len(space.candidates(i, j)))) for i, j in space.searched_layers()]
  arch = space.derive(choices)
  assert arch.output_stride == 16 and arch.stages[5].dilation == 2
  assert any(SKIP in st.ops for st in arch.stages)  # the draw exercises skips
  text = arch.to_release_string()
  back = Arch.from_release_string(text, last_channels=space.last_channels)
  assert back.output_stride == 32
  assert back.with_output_stride(16) == arch
  (tmp_path / 'arch.txt').write_text(text + '\n')
  assert arch_lib.load(str(tmp_path / 'arch.txt')).replace(
      last_channels=None).with_output_stride(16) == arch
  d = json.loads(arch.to_json())
  assert [(s['stride'], s['dilation']) for s in d['stages']] == [
      (s.stride, s.dilation) for s in arch.stages]
  assert Arch.from_json(arch.to_json()) == arch


@pytest.mark.parametrize('strides,dilations', [
    ((1, 2), (1, 3)),   # a ratio of 3 is no stride traded
    ((1, 2), (1, 2)),   # doubled dilation on a stage that still has stride 2
    ((1, 1), (2, 1)),   # dilation going down
])
def test_dilations_that_no_conversion_makes_are_errors(strides, dilations):
  a = Arch('mbconv', Stem(32), (Stage(32, 16, ('k3_e1',), strides[0], dilations[0]),
                                Stage(16, 24, ('k3_e6',), strides[1], dilations[1])))
  with pytest.raises(ArchError, match='not a stride traded for dilation'):
    a.to_release_string()
  with pytest.raises(ArchError, match='not a stride traded for dilation'):
    a.with_output_stride(8)


def test_skips_last():
  a = arch_lib.mobilenet_v2().with_ops(
      [['k3_e1'], ['k3_e6', 'skip'], ['k5_e3', 'skip', 'k7_e6'], ['k3_e6'] * 4, ['k3_e6'] * 3,
       ['k3_e6'] * 3, ['k3_e6']])
  assert a.skips_last().stages[2].ops == ('k5_e3', 'k7_e6', 'skip')


@pytest.mark.parametrize('stages,match', [
    ((Stage(32, 16, ('k3_e1',)), Stage(16, 24, ('k4_e6',), 2)), r'stage 1, layer 0: .*k4_e6'),
    ((Stage(32, 16, ('k3_e1',)), Stage(16, 24, ('k3_x6',), 2)), r'stage 1, layer 0: unknown op'),
    ((Stage(32, 16, ('k3_e1',)), Stage(16, 24, ('skip', 'k3_e6'), 2)),
     r'stage 1, layer 0: .*cannot be skip'),
    ((Stage(32, 16, ('k3_e1',)), Stage(24, 32, ('k3_e6',), 2)), r'stage 1: c_in=24 .* 16'),
    ((Stage(16, 16, ('k3_e1',)),), r'stage 0: c_in=16 .*stem outputs 32'),
    ((Stage(32, 16, ('k3g1',)),), r"stage 0, layer 0: op 'k3g1' does not belong"),
    ((Stage(32, 16, ('k3_e1',), stride=3),), r'stage 0: stride'),
])
def test_validation_errors_name_stage_and_layer(stages, match):
  with pytest.raises(ArchError, match=match):
    Arch('mbconv', Stem(32), stages, 1280)


def test_resnet_group_validation():
  with pytest.raises(ArchError, match=r'stage 0, layer 1: 3 groups'):
    Arch('resnet_basic', Stem(64, 7, 2, True), (Stage(64, 64, ('k3g1', 'k5g3')),))


def test_release_string_errors():
  with pytest.raises(ArchError, match='stage 1: cannot parse'):
    Arch.from_release_string("[[32, 16], ['k3_e1'], 1]|\n[[16, 24], 'oops']")
  with pytest.raises(ArchError, match='release notation describes MBConv'):
    arch_lib.resnet18().to_release_string()


def test_load(tmp_path):
  assert arch_lib.load('resnet34') == arch_lib.resnet34()
  (tmp_path / 'a.json').write_text(arch_lib.resnet50().to_json())
  assert arch_lib.load(str(tmp_path / 'a.json')) == arch_lib.resnet50()
  (tmp_path / 'a.txt').write_text(RELEASE_DET)
  assert arch_lib.load(str(tmp_path / 'a.txt')).to_release_string() == RELEASE_DET
  with pytest.raises(ArchError, match='neither a seed name'):
    arch_lib.load(str(tmp_path / 'missing.json'))

"""Architectures as data: constructors, validation, JSON and release notation."""

import json

import pytest

from fna_jax import arch as arch_lib
from fna_jax.arch import Arch, ArchError, Stage, Stem

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

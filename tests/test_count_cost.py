"""scripts/count_cost.py: one line ``params=<int> madds=<int>`` for the whole task network.

The script runs as a subprocess (as a user runs it); its figures are compared with
:func:`fna_jax.cost.count` of networks built here independently, with the search's own
:func:`~fna_jax.train.search_loop.derived_cost`, and, for MobileNetV2 + DeepLabv3, with the same
network built in torch from torchvision's MobileNetV2 and with the paper's figures (Tab. 2).
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import demo as demo_config
from configs import seg_cityscapes
from fna_jax import arch as arch_lib
from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.arch import SKIP
from fna_jax.models import Backbone
from fna_jax.tasks.seg.heads import DeepLabV3Head, DeepLabV3PlusHead
from fna_jax.tasks.seg.network import SegmentationNet
from fna_jax.build import space as make_space
from fna_jax.train.search_loop import derived_cost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'count_cost.py')
CITYSCAPES = os.path.join(ROOT, 'configs', 'seg_cityscapes.py')
DEMO = os.path.join(ROOT, 'configs', 'demo.py')
LINE = re.compile(r'^params=(\d+) madds=(\d+)$')


def run_script(*args):
  """Runs the script; returns the CompletedProcess (text mode)."""
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def count_cli(config_path, arch, input_size=None, *extra) -> cost_lib.Cost:
  args = [f'--config={config_path}', f'--arch={arch}', *extra]
  if input_size is not None:
    args.append('--input_size=' + ','.join(str(s) for s in input_size))
  proc = run_script(*args)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 1, proc.stdout
  m = LINE.match(lines[0])
  assert m, lines[0]
  return cost_lib.Cost(int(m.group(1)), int(m.group(2)))


def seg_net(arch, config):
  """Backbone of ``arch`` + the head ``config.head`` names (DeepLabv3 or DeepLabv3+)."""
  h = config.head
  args = (config.data.num_classes, h.channels, tuple(h.rates), h.dropout)
  name = h.get('name', 'deeplabv3')
  assert name in ('deeplabv3', 'deeplabv3+', 'deeplabv3+_light'), name
  head = (DeepLabV3Head(*args) if name == 'deeplabv3' else
          DeepLabV3PlusHead(*args, low_level=h.get('low_level', 'stage1'),
                            separable=name == 'deeplabv3+_light'))
  return SegmentationNet(Backbone(arch), head)


def seed_as_space_choices(seed: arch_lib.Arch, space) -> list[str]:
  """The seed's ops as one choice per searched layer of ``space`` (skips filling up stages)."""
  choices = []
  for i, j in space.searched_layers():
    ops = seed.stages[i].ops
    choices.append(ops[j] if j < len(ops) else SKIP)
  return choices


# ----------------------------------------------------------------------------- torch reference
def torch_mobilenet_v2_os16():
  """torchvision's ``mobilenet_v2().features`` without its last layer (the 1x1 conv to 1280), at
  output stride 16: the first 160-channel block (``features[14]``) runs with stride 1, and it and
  every later block run their depthwise 3x3 conv with dilation 2 (padding 2)."""
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  features = torchvision.models.mobilenet_v2(weights=None).features[:-1]
  for block in features[14:]:
    for m in block.modules():
      if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
        m.stride, m.dilation, m.padding = (1, 1), (2, 2), (2, 2)
  return features


def torch_deeplabv3plus_mobilenet_v2(num_classes=19, channels=256, rates=(6, 12, 18),
                                     low_channels=48):
  """MobileNetV2 + the paper's DeepLabv3+ (Sec. 4.1.1, Tab. 2) built in torch, independently.

  Backbone: :func:`torch_mobilenet_v2_os16`; the low-level features are the output of
  ``features[:4]`` (the 24-channel stage, stride 4).  ASPP with *regular* 3x3 atrous branches: a
  1x1 branch, three 3x3 convs with dilation r, image pooling, ``channels`` each (+ BN + ReLU);
  concat -> 1x1 -> BN -> ReLU -> dropout.  Decoder: low-level -> 1x1 to ``low_channels`` -> BN ->
  ReLU; concat with the ASPP output upsampled bilinearly to stride 4; two regular 3x3 convs of
  ``channels`` (+ BN + ReLU); 1x1 classifier with bias.
  """
  torch = pytest.importorskip('torch')
  nn = torch.nn
  F = torch.nn.functional
  features = torch_mobilenet_v2_os16()
  c_in, c_low = features[-1].out_channels, features[3].out_channels

  def conv_bn_relu(ci, co, k, r=1):
    return [nn.Conv2d(ci, co, k, padding=r * (k - 1) // 2, dilation=r, bias=False),
            nn.BatchNorm2d(co), nn.ReLU()]

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.low_features, self.high_features = features[:4], features[4:]
      self.b0 = nn.Sequential(*conv_bn_relu(c_in, channels, 1))
      self.atrous = nn.ModuleList([nn.Sequential(*conv_bn_relu(c_in, channels, 3, r))
                                   for r in rates])
      self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(c_in, channels, 1))
      self.project = nn.Sequential(*conv_bn_relu((len(rates) + 2) * channels, channels, 1),
                                   nn.Dropout(0.1))
      self.low = nn.Sequential(*conv_bn_relu(c_low, low_channels, 1))
      self.fuse = nn.Sequential(*conv_bn_relu(channels + low_channels, channels, 3),
                                *conv_bn_relu(channels, channels, 3))
      self.classifier = nn.Conv2d(channels, num_classes, 1, bias=True)

    def forward(self, x):
      low = self.low_features(x)
      x = self.high_features(low)
      pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode='bilinear')
      y = self.project(torch.cat([self.b0(x), *[b(x) for b in self.atrous], pooled], dim=1))
      y = F.interpolate(y, size=low.shape[-2:], mode='bilinear')
      return self.classifier(self.fuse(torch.cat([y, self.low(low)], dim=1)))

  return Net().eval()


def torch_deeplabv3_mobilenet_v2(num_classes=19, channels=256, rates=(6, 12, 18)):
  """MobileNetV2 + DeepLabv3 (paper Sec. 4.1, Tab. 2) built in torch, independently of fna_jax.

  Backbone: :func:`torch_mobilenet_v2_os16`.  Head (DeepLabv3 with depthwise-separable ASPP): a 1x1 branch,
  three atrous branches (dw 3x3 dilation r, BN, ReLU, 1x1, BN, ReLU), image pooling (global
  average, 1x1, BN, ReLU, upsampled), ``channels`` each; concat -> 1x1 -> BN -> ReLU -> dropout
  -> 1x1 classifier with bias.
  """
  torch = pytest.importorskip('torch')
  nn = torch.nn
  F = torch.nn.functional

  features = torch_mobilenet_v2_os16()
  c_in = features[-1].out_channels

  def bn_relu(c):
    return [nn.BatchNorm2d(c), nn.ReLU()]

  class ASPPHead(nn.Module):

    def __init__(self):
      super().__init__()
      self.b0 = nn.Sequential(nn.Conv2d(c_in, channels, 1, bias=False), *bn_relu(channels))
      self.atrous = nn.ModuleList([nn.Sequential(
          nn.Conv2d(c_in, c_in, 3, padding=r, dilation=r, groups=c_in, bias=False),
          *bn_relu(c_in),
          nn.Conv2d(c_in, channels, 1, bias=False), *bn_relu(channels)) for r in rates])
      self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, channels, 1, bias=False),
                                *bn_relu(channels))
      self.project = nn.Sequential(nn.Conv2d((len(rates) + 2) * channels, channels, 1, bias=False),
                                   *bn_relu(channels), nn.Dropout(0.1))
      self.classifier = nn.Conv2d(channels, num_classes, 1, bias=True)

    def forward(self, x):
      pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode='bilinear')
      y = torch.cat([self.b0(x), *[b(x) for b in self.atrous], pooled], dim=1)
      return self.classifier(self.project(y))

  return nn.Sequential(features, ASPPHead()).eval()


def torch_count(net, input_size):
  """``(params, madds, bias_madds)`` of a torch network for one image, by forward hooks.

  ``madds``: ``k_h * k_w * C_in / groups * C_out * H_out * W_out`` per ``nn.Conv2d`` plus, for a
  conv with a bias, ``C_out * H_out * W_out`` (one accumulate per output, as the authors' counter
  ``fna_det/tools/multadds_count.py`` in github.com/JaminFong/FNA does), and ``in * out`` per
  position of ``nn.Linear`` (whose bias that counter leaves out); ``bias_madds``: the convs' bias
  part of ``madds``.  The forward runs on torch's meta device: shapes only.
  """
  import torch  # pylint: disable=g-import-not-at-top
  totals = {'madds': 0, 'bias': 0}

  def hook(m, inputs, out):
    if isinstance(m, torch.nn.Conv2d):
      k_h, k_w = m.kernel_size
      totals['madds'] += k_h * k_w * m.in_channels // m.groups * out[0].numel()
      if m.bias is not None:
        totals['madds'] += out[0].numel()
        totals['bias'] += out[0].numel()
    else:
      totals['madds'] += m.in_features * out[0].numel()

  params = sum(p.numel() for p in net.parameters())
  handles = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  try:
    with torch.no_grad():
      net.to('meta')(torch.empty(1, 3, *input_size, device='meta'))
  finally:
    for h in handles:
      h.remove()
  return params, totals['madds'], totals['bias']


def test_mobilenet_v2_deeplabv3_matches_torch_and_paper():
  """MobileNetV2 + DeepLabv3, 19 classes, OS 16, at 1024x2048: the script's count equals the count
  of the same network built in torch; both are the paper's 2.57M / 24.52B (Tab. 2)."""
  params, madds, bias_madds = torch_count(torch_deeplabv3_mobilenet_v2(19), (1024, 2048))
  got = count_cli(CITYSCAPES, 'mobilenet_v2', (1024, 2048))
  assert got.params == params
  # Both count one accumulate per output of a conv with a bias; the only one here is the
  # classifier: 19 x 64 x 128 = 155,648 MAdds, 0.0006% of the total.
  assert bias_madds == 19 * (1024 // 16) * (2048 // 16)
  assert got.madds == madds
  # The paper's rounded figures (2.57M params, 24.52B MAdds): within 0.5%.
  assert abs(got.params / 2.57e6 - 1) < 5e-3, got.params
  assert abs(got.madds / 24.52e9 - 1) < 5e-3, got.madds


def test_mobilenet_v2_deeplabv3plus_matches_torch():
  """MobileNetV2 + the paper's DeepLabv3+ head (regular 3x3 ASPP and decoder convs), 19 classes,
  OS 16, at 1024x2048: the script's count equals that of the same network built in torch."""
  params, madds, bias_madds = torch_count(torch_deeplabv3plus_mobilenet_v2(19), (1024, 2048))
  got = count_cli(CITYSCAPES, 'mobilenet_v2', (1024, 2048), '--config.head.name=deeplabv3+')
  assert bias_madds == 19 * (1024 // 4) * (2048 // 4)  # the classifier, at stride 4
  assert got == (params, madds)


# FNA++'s segmentation architecture (paper Fig. 4), in the release notation as the authors'
# release gives it (fna_seg/model/deeplab/cityscapes.deeplabv3/config.py, ``C.net_config``, in
# github.com/JaminFong/FNA).
FNA_PP_SEG = """[[32, 16], ['k3_e1'], 1]|
[[16, 24], ['k3_e6', 'k3_e6', 'skip', 'skip'], 2]|
[[24, 32], ['k7_e6', 'k3_e6', 'k3_e6', 'k3_e6'], 2]|
[[32, 64], ['k7_e6', 'k7_e6', 'k5_e6', 'k7_e6', 'k7_e6', 'k5_e6'], 2]|
[[64, 96], ['k7_e6', 'k7_e6', 'k7_e6', 'k7_e6', 'skip', 'skip'], 1]|
[[96, 160], ['k7_e6', 'k5_e6', 'skip', 'skip'], 2]|
[[160, 320], ['k7_e3'], 1]
"""


@pytest.mark.parametrize('head,paper', [('deeplabv3', (2.47e6, 24.17e9)),
                                        ('deeplabv3+', (5.71e6, 210.11e9))])
def test_fna_pp_seg_arch_is_the_papers_cost(tmp_path, head, paper):
  """FNA++'s released segmentation architecture at OS 16, 19 classes, 1024x2048: the paper's
  Params/MAdds (Tab. 2: DeepLabv3 2.47M / 24.17B, DeepLabv3+ 5.71M / 210.11B) within 0.5%."""
  path = tmp_path / 'fna_pp.txt'
  path.write_text(FNA_PP_SEG)
  got = count_cli(CITYSCAPES, path, (1024, 2048), f'--config.head.name={head}')
  assert abs(got.params / paper[0] - 1) < 5e-3, got
  assert abs(got.madds / paper[1] - 1) < 5e-3, got


def test_fna_pp_seg_arch_at_output_stride_8_is_the_papers_cost(tmp_path):
  """Tab. 2's last DeepLabv3+ row: the same network at output stride 8, 5.71M / 313.87B at
  1024x2048, within 0.5% (``--output_stride=8``)."""
  path = tmp_path / 'fna_pp.txt'
  path.write_text(FNA_PP_SEG)
  got = count_cli(CITYSCAPES, path, (1024, 2048), '--config.head.name=deeplabv3+',
                  '--output_stride=8')
  assert abs(got.params / 5.71e6 - 1) < 5e-3, got
  assert abs(got.madds / 313.87e9 - 1) < 5e-3, got


def test_output_stride_8_network_is_the_os16_one_converted():
  """At output stride 8 the script counts the derived network with the 64/96 stages at dilation 2
  and the 160/320 stages at dilation 4 and ASPP rates 12/24/36, whether it starts from the seed
  (stride 32) or from a derived OS 16 architecture; the script's count differs from OS 16's by
  the layers that now run at stride 8 instead of 16."""
  config = seg_cityscapes.get_config()
  with config.unlocked():
    config.head.name = 'deeplabv3+'
  space = make_space(config)
  seed = arch_lib.mobilenet_v2()
  from_seed = space.task_arch(seed, 8)
  from_os16 = space.task_arch(space.task_arch(seed), 8)
  assert from_seed == from_os16
  dil = {st.c_out: (st.stride, st.dilation) for st in from_seed.stages}
  assert dil[64] == (1, 2) and dil[96] == (1, 2) and dil[160] == (1, 4) and dil[320] == (1, 4)
  net = build.task_network(config, from_seed)
  assert tuple(net.head.rates) == (12, 24, 36)
  assert tuple(build.task_network(config, space.task_arch(seed)).head.rates) == (6, 12, 18)
  size = (64, 128)
  os16 = count_cli(CITYSCAPES, 'mobilenet_v2', size, '--config.head.name=deeplabv3+')
  os8 = count_cli(CITYSCAPES, 'mobilenet_v2', size, '--config.head.name=deeplabv3+',
                  '--output_stride=8')
  assert os8.params == os16.params
  # Layer by layer: at OS 8 every layer that ran at stride 16 runs at stride 8 (4x the positions):
  # from the 64 stage's first depthwise conv (its stride 2 became 1; its expand conv still reads
  # the stride-8 input) through the last stage, and the ASPP except its image-pooling conv (one
  # pooled value per channel).  The stem, the 16/24/32 stages and the decoder are unchanged.
  l16 = {l.path: l.madds for l in cost_lib.count_layers(
      build.task_network(config, space.task_arch(seed)), None, (1, *size, 3))}
  l8 = {l.path: l.madds for l in cost_lib.count_layers(net, None, (1, *size, 3))}
  assert l8.keys() == l16.keys()

  def at_stride_16(path):
    parts = path.split('/')
    if parts[:2] == ['head', 'aspp']:
      return parts[2] != 'pool_conv'
    return (parts[0] == 'backbone' and parts[1].startswith('stage') and int(parts[1][5:]) >= 3
            and path != 'backbone/stage3/layer0/expand_conv')
  moved = {p for p in l8 if at_stride_16(p)}
  assert len(moved) > 20
  assert all(l8[p] == 4 * l16[p] for p in moved)
  assert all(l8[p] == l16[p] for p in l8 if p not in moved)
  assert os8.madds - os16.madds == 3 * sum(l16[p] for p in moved)


def test_mobilenet_v2_is_the_seed_as_the_seg_space_runs_it():
  """The seed counted by the script == the seed's ops placed in the seg space (OS 16, no 1280)."""
  config = seg_cityscapes.get_config()
  space = make_space(config)
  size = (96, 160)
  from_space = space.derive(seed_as_space_choices(arch_lib.mobilenet_v2(), space))
  # Sanity of the comparison itself: same ops once skips are dropped, strides of the space.
  assert [[o for o in st.ops if o != SKIP] for st in from_space.stages] == [
      list(st.ops) for st in arch_lib.mobilenet_v2().stages]
  assert from_space.output_stride == 16 and from_space.last_channels is None
  expected = cost_lib.count(seg_net(from_space, config), None, (1, *size, 3))
  got = count_cli(CITYSCAPES, 'mobilenet_v2', size)
  assert got == expected
  # ... and is not the seed with its 1280-channel conv (which the task network does not have).
  with_last = arch_lib.mobilenet_v2().with_output_stride(16)
  assert got.params < cost_lib.count(seg_net(with_last, config), None, (1, *size, 3)).params


def test_json_and_release_files_give_the_search_reported_cost(tmp_path):
  """A derived arch saved as JSON and in the release notation counts as the search reports."""
  config = seg_cityscapes.get_config()
  space = make_space(config)
  rng = np.random.default_rng(3)
  choices = [int(rng.integers(len(space.candidates(i, j)))) for i, j in space.searched_layers()]
  arch = space.derive(choices)
  assert any(SKIP in st.ops for st in arch.stages)  # the draw exercises skips
  (tmp_path / 'arch.json').write_text(arch.to_json())
  (tmp_path / 'arch.txt').write_text(arch.to_release_string() + '\n')
  size = (64, 128)
  with config.unlocked():
    config.cost_input_size = size
  expected = derived_cost(space, choices, config)
  assert count_cli(CITYSCAPES, tmp_path / 'arch.json', size) == expected
  assert count_cli(CITYSCAPES, tmp_path / 'arch.txt', size) == expected


def test_default_input_size_and_head_come_from_the_config():
  """Without --input_size: config.cost_input_size; the head is the config's (the demo's)."""
  config = demo_config.get_config()
  arch = arch_lib.mobilenet_v2().with_output_stride(16).replace(last_channels=None)
  expected = cost_lib.count(seg_net(arch, config), None, (1, *config.cost_input_size, 3))
  assert count_cli(DEMO, 'mobilenet_v2') == expected
  # The comparison depends on the head: the demo's (narrower, 6 classes) is not Cityscapes'.
  assert expected != cost_lib.count(seg_net(arch, seg_cityscapes.get_config()), None,
                                    (1, *config.cost_input_size, 3))


@pytest.mark.parametrize('content', [None, 'not an architecture\n', '{"family": "mbconv"}'])
def test_unreadable_arch_is_a_clear_error(tmp_path, content):
  path = tmp_path / 'arch.txt'
  if content is not None:
    path.write_text(content)
  proc = run_script(f'--config={CITYSCAPES}', f'--arch={path}')
  assert proc.returncode != 0
  assert proc.stdout == ''
  assert 'cannot read an architecture' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_malformed_input_size_is_a_clear_error():
  proc = run_script(f'--config={CITYSCAPES}', '--arch=mobilenet_v2', '--input_size=1024')
  assert proc.returncode != 0 and proc.stdout == ''
  assert '--input_size must be two positive integers' in proc.stderr

"""scripts/count_cost.py: one line ``params=<int> madds=<int>`` for the whole task network.

The script runs as a subprocess (as a user runs it); its figures are compared with
:func:`fna_jax.cost.count` of networks built here independently, with the search's own
:func:`~fna_jax.train.search_loop.derived_cost`, and with the paper's MobileNetV2 + DeepLabv3
figures.
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


def count_cli(config_path, arch, input_size=None) -> cost_lib.Cost:
  args = [f'--config={config_path}', f'--arch={arch}']
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
  assert name in ('deeplabv3', 'deeplabv3+'), name
  head = (DeepLabV3Head(*args) if name == 'deeplabv3' else
          DeepLabV3PlusHead(*args, low_level=h.get('low_level', 'stage1')))
  return SegmentationNet(Backbone(arch), head)


def seed_as_space_choices(seed: arch_lib.Arch, space) -> list[str]:
  """The seed's ops as one choice per searched layer of ``space`` (skips filling up stages)."""
  choices = []
  for i, j in space.searched_layers():
    ops = seed.stages[i].ops
    choices.append(ops[j] if j < len(ops) else SKIP)
  return choices


def test_mobilenet_v2_matches_paper_deeplabv3_figures():
  """MobileNetV2 + DeepLabv3 at 1024x2048: 2,567,507 params, 24.52 G MAdds (paper Tab. 2)."""
  got = count_cli(CITYSCAPES, 'mobilenet_v2', (1024, 2048))
  assert got.params == 2_567_507
  assert round(got.madds / 1e9, 2) == 24.52


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

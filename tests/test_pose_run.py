"""The pose task (paper Sec. 4.3) through the normal entry points: search, parameter adaptation
from the supernet, evaluation (PCKh in ``eval.json``, skeleton pictures), on tiny generated
figures; and the MPII config's recipe and network (paper Tab. 6)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs import pose_demo, pose_mpii
from fna_jax import arch as arch_lib
from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.tasks.pose import joints
from fna_jax.train.adapt_loop import run_adapt
from fna_jax.train.evaluate import run_evaluation
from fna_jax.train.search_loop import run_search


def quiet(_):
  pass


def tiny_pose_config(tmp_path_factory):
  c = pose_demo.get_config()
  c.data.update(num_train=48, num_val=10, image_size=64, input_size=(64, 64))
  c.seed_net.pretrain.update(steps=2, batch_size=8, image_size=32, num_examples=32)
  c.seed_net.cache_dir = str(tmp_path_factory.getbasetemp() / 'seed_cache')
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e3')
  c.head.channels = 16
  c.search.update(epochs=2, warmup_epochs=1, batch_size=8, w_lr_steps=(1,))
  c.adapt.update(steps=3, batch_size=8, lr_steps=(2,))
  c.eval.update(batch_size=8, num_visualize=2)
  c.cost_input_size = (64, 64)
  c.log_every = 1
  c.checkpoint_every = 100
  c.xla_cache_dir = str(tmp_path_factory.getbasetemp() / 'xla_cache')
  return c


@pytest.mark.slow
def test_pose_pipeline_end_to_end(tmp_path_factory):
  c = tiny_pose_config(tmp_path_factory)
  root = tmp_path_factory.mktemp('pose')
  search_dir, adapt_dir = str(root / 'search'), str(root / 'adapt')
  searched = run_search(c, search_dir, log=quiet)
  assert searched.arch.output_stride == 32 and searched.arch.last_channels is None
  lines = []
  adapted = run_adapt(c, adapt_dir, search_dir, log=lines.append)
  assert any('remapped from the searched supernet' in l for l in lines)
  assert adapted.arch == searched.arch
  # Heatmaps at a quarter of the input: the network counted at the config's input size.
  net, variables, meta = build.load_network(os.path.join(adapt_dir, 'model'), c)
  assert meta['task'] == 'pose' and meta['outputs'] == {'num_joints': 16}
  assert cost_lib.count(net, variables, (1, 64, 64, 3)) == adapted.cost
  result = run_evaluation(c, adapt_dir, log=quiet)
  with open(os.path.join(adapt_dir, 'eval', 'eval.json')) as f:
    saved = json.load(f)
  assert 0.0 <= saved['pckh'] <= 1.0 and saved['pckh'] == pytest.approx(result['pckh'])
  pictures = os.listdir(os.path.join(adapt_dir, 'eval', 'predictions'))
  assert len([p for p in pictures if p.endswith('.png')]) == 2


def test_mpii_config_is_the_papers_recipe():
  """Paper Sec. 4.3: batch 32, 140 epochs with arch steps from 70, alphas Adam lr 3e-3 without
  weight decay, lambda 3e-5; weights and fine-tuning as SimpleBaseline (Adam lr 1e-3, x0.1 at
  epochs 90 and 120); 256x256 crops; the MobileNetV2 pose space at output stride 32."""
  c = pose_mpii.get_config()
  s, a = c.search, c.adapt
  assert (s.batch_size, s.epochs, s.warmup_epochs, s.a_lr, s.a_weight_decay, s.lam) == (
      32, 140, 70, 3e-3, 0.0, 3e-5)
  assert (s.w_optimizer, s.w_lr, s.w_lr_schedule, tuple(s.w_lr_steps)) == (
      'adam', 1e-3, 'multistep', (90, 120))
  per_epoch = 22_246 // 32
  assert (a.optimizer, a.lr, a.lr_schedule, a.steps, tuple(a.lr_steps)) == (
      'adam', 1e-3, 'multistep', 140 * per_epoch, (90 * per_epoch, 120 * per_epoch))
  assert tuple(c.data.input_size) == (256, 256) and c.data.num_joints == 16
  space = build.space(c)
  assert space.skeleton().output_stride == 32 and space.last_channels is None
  assert [len(st.candidates) for st in space.stages] == [1, 4, 4, 4, 4, 4, 1]
  assert len(joints.JOINT_NAMES) == c.data.num_joints


def test_mobilenet_v2_pose_network_is_tab6s_size():
  """MobileNetV2 + SimpleBaseline at 256x256 as the MPII config builds it: Tab. 6's 5.23M Params
  and 6.09B MAdds within 0.5%."""
  c = pose_mpii.get_config()
  net = build.task_network(c, build.space(c).task_arch(arch_lib.mobilenet_v2()))
  got = cost_lib.count(net, None, (1, 256, 256, 3))
  assert abs(got.params / 5.23e6 - 1) < 5e-3 and abs(got.madds / 6.09e9 - 1) < 5e-3, got
  assert np.isclose(got.madds, 6_086_057_984, rtol=0)  # the figure the README states

"""What the tiny end-to-end runs of the pose and detection tasks share: the shrunken seed
pretraining and search space, and the pipeline through the normal entry points (search,
parameter adaptation remapped from the supernet, evaluation) with the checks every task's run
must pass."""

from __future__ import annotations

import dataclasses
import json
import os

from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.train.adapt_loop import run_adapt
from fna_jax.train.evaluate import run_evaluation
from fna_jax.train.search_loop import run_search


def quiet(_):
  pass


def shrink(c, tmp_path_factory, image_size: int):
  """``c`` made to run in seconds: a 2-step seed pretraining at 32x32, one layer per stage with
  two ops, costs counted at ``image_size``, a log line every step; the seed and XLA caches
  shared by the session's runs."""
  base = tmp_path_factory.getbasetemp()
  c.seed_net.pretrain.update(steps=2, batch_size=8, image_size=32, num_examples=32)
  c.seed_net.cache_dir = str(base / 'seed_cache')
  c.space.max_layers = (1, 1, 1, 1, 1, 1, 1)
  c.space.ops = ('k3_e3', 'k5_e3')
  c.cost_input_size = (image_size, image_size)
  c.log_every = 1
  c.checkpoint_every = 100
  c.xla_cache_dir = str(base / 'xla_cache')
  return c


@dataclasses.dataclass
class PipelineRun:
  adapt_dir: str
  result: dict   # what run_evaluation returned
  saved: dict    # eval/eval.json


def run_pipeline(c, root, task: str, outputs: dict) -> PipelineRun:
  """Search, adaptation and evaluation under ``root``; checks that the searched network keeps
  the task's output stride 32 without a last conv, that adaptation remapped from the supernet,
  that the saved network is the task's (``task``, ``outputs``) at the adapted cost, and that
  evaluation drew ``eval.num_visualize`` pictures."""
  search_dir, adapt_dir = str(root / 'search'), str(root / 'adapt')
  searched = run_search(c, search_dir, log=quiet)
  assert searched.arch.output_stride == 32 and searched.arch.last_channels is None
  lines = []
  adapted = run_adapt(c, adapt_dir, search_dir, log=lines.append)
  assert any('remapped from the searched supernet' in l for l in lines)
  assert adapted.arch == searched.arch
  net, variables, meta = build.load_network(os.path.join(adapt_dir, 'model'), c)
  assert meta['task'] == task and meta['outputs'] == outputs
  assert cost_lib.count(net, variables, (1, *c.cost_input_size, 3)) == adapted.cost
  result = run_evaluation(c, adapt_dir, log=quiet)
  with open(os.path.join(adapt_dir, 'eval', 'eval.json')) as f:
    saved = json.load(f)
  pictures = os.listdir(os.path.join(adapt_dir, 'eval', 'predictions'))
  assert len([p for p in pictures if p.endswith('.png')]) == c.eval.num_visualize
  return PipelineRun(adapt_dir, result, saved)

"""Evaluating a fine-tuned network on its task's validation set: what ``scripts/evaluate.py`` runs.

``run_evaluation(config, model_dir, out_dir)`` loads a network saved by parameter adaptation
(``<adapt workdir>/model``), checks its variables against the architecture it claims (a mismatch
names the first differing parameter path), runs the task's evaluator
(:meth:`fna_jax.tasks.base.Task.evaluator`) over every validation example with the batch sharded
over all devices, and writes in ``out_dir``:

* ``eval.json``: the task's metrics (segmentation: mIoU, pixel accuracy, per-class IoU, mode),
  ``num_images``, and Params and MAdds of the network at the task's cost input size;
* the evaluator's per-class table (segmentation: ``iou.txt``);
* pictures of the first ``eval.num_visualize`` predictions (segmentation: ``predictions/*.png``).
"""

from __future__ import annotations

import json
import os
import time

import jax

from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.models.init import variable_shapes
from fna_jax.runtime import checks
from fna_jax.tasks.base import Task


def evaluate_network(task: Task, model, variables, source, *, mesh=None, out_dir=None,
                     log=print) -> dict:
  """The metrics of ``model``/``variables`` on every example of ``source``; see the module
  docstring.  Returns the dict written to ``eval.json``."""
  t0 = time.perf_counter()
  mesh = mesh or build.mesh()
  config = task.config
  evaluator = task.evaluator(model, variables, mesh, source=source, out_dir=out_dir)
  batch = -(-max(config.eval.batch_size, 1) // mesh.size) * mesh.size
  for host_batch in task.eval_data(source, batch_size=batch // jax.process_count()):
    evaluator.add(host_batch)
  result = evaluator.result()
  h, w = task.cost_input_size()
  params, madds = cost_lib.count(model, None, (1, h, w, 3))
  result.update(params=int(params), madds=int(madds), cost_input_size=[h, w],
                wall_time_s=round(time.perf_counter() - t0, 1))
  table = evaluator.table()
  log(table)
  log(f'{task.format_metric(result[task.metric])} over {result["num_images"]} images; network '
      f'{cost_lib.format_count(params, madds)} at {h}x{w}')
  if out_dir and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'eval.json'), 'w') as f:
      json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, evaluator.table_file), 'w') as f:
      f.write(table + '\n')
  return result


def run_evaluation(config, model_dir: str, out_dir: str | None = None, *, log=print) -> dict:
  """Loads the network saved in ``model_dir`` and evaluates it on the validation split."""
  build.setup_runtime(config)
  if os.path.isdir(os.path.join(model_dir, 'model')):
    model_dir = os.path.join(model_dir, 'model')
  model, variables, meta = build.load_network(model_dir, config)
  if meta.get('task', 'seg') != config.task:
    raise checks.ModelMismatchError(
        f'{model_dir} is a {meta.get("task", "seg")!r} network but the config\'s task is '
        f'{config.task!r}')
  outputs = meta.get('outputs') or {'num_classes': meta['num_classes']}
  for key, n in outputs.items():
    if config.data.get(key) != n:
      raise checks.ModelMismatchError(
          f'{model_dir} predicts {key}={n} but the config\'s data ({config.data.name}) has '
          f'{key}={config.data.get(key)}')
  checks.check_variables_match(variable_shapes(model, (1, 64, 64, 3), train=False), variables,
                               what=model_dir)
  val = build.dataset(config, 'val')
  out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(model_dir)), 'eval')
  log(f'evaluating {model_dir} on {len(val)} {config.data.name} validation images')
  return evaluate_network(build.task(config), model, variables, val, out_dir=out_dir, log=log)

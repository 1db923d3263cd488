"""The whole FNA++ pipeline: seed -> remap -> search -> derive -> remap -> fine-tune -> evaluate.

``run_fna(config, workdir)`` is what ``scripts/fna.py`` calls.  The stages write into

* ``workdir/search``: the architecture adaptation (:func:`fna_jax.train.search_loop.run_search`);
* ``workdir/adapt``: the parameter adaptation (:func:`fna_jax.train.adapt_loop.run_adapt`);
* ``workdir/adapt/eval``: the evaluation (:func:`fna_jax.train.evaluate.run_evaluation`);

and the run ends with ``workdir/report.md`` and ``report.json``: the derived architecture, its
Params and MAdds, the task's headline metric (segmentation: mIoU), and the wall time of each
stage.  A stage whose outputs exist is not
rerun, and an interrupted stage resumes from its checkpoint, so rerunning the same command after a
kill continues where it stopped.

The paper's Tab. 13 ablation rows are config switches (``search.init`` and ``adapt.init``;
:mod:`fna_jax.train.ablation` lists them, ``configs/demo.py`` names them as variants, e.g.
``--config=configs/demo.py:rand_both``).
"""

from __future__ import annotations

import json
import os

from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.train.adapt_loop import run_adapt
from fna_jax.train.evaluate import run_evaluation
from fna_jax.train.search_loop import run_search


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def run_fna(config, workdir: str, *, search_dir: str | None = None, log=print) -> dict:
  """Runs (or resumes) every stage of ``config`` in ``workdir``; returns the report dict.

  ``search_dir``: use this finished (or resumable) search run instead of ``workdir/search``
  (ablations share one search between rows that differ only after it).
  """
  os.makedirs(workdir, exist_ok=True)
  search_dir = search_dir or os.path.join(workdir, 'search')
  adapt_dir = os.path.join(workdir, 'adapt')
  eval_dir = os.path.join(adapt_dir, 'eval')

  if os.path.isfile(os.path.join(search_dir, 'summary.json')):
    log(f'== search: done before ({search_dir})')
  else:
    log(f'== search -> {search_dir}')
    if run_search(config, search_dir, log=log) is None:
      return {}
  if os.path.isfile(os.path.join(adapt_dir, 'summary.json')):
    log(f'== parameter adaptation: done before ({adapt_dir})')
  else:
    log(f'== parameter adaptation ({config.adapt.init}) -> {adapt_dir}')
    if run_adapt(config, adapt_dir, search_dir, log=log) is None:
      return {}
  if os.path.isfile(os.path.join(eval_dir, 'eval.json')):
    log(f'== evaluation: done before ({eval_dir})')
  else:
    log(f'== evaluation -> {eval_dir}')
    run_evaluation(config, os.path.join(adapt_dir, 'model'), eval_dir, log=log)
  report = make_report(config, search_dir, adapt_dir, eval_dir)
  write_report(workdir, report)
  log(open(os.path.join(workdir, 'report.md')).read())
  return report


def make_report(config, search_dir: str, adapt_dir: str, eval_dir: str) -> dict:
  search = _read_json(os.path.join(search_dir, 'summary.json'))
  adapt = _read_json(os.path.join(adapt_dir, 'summary.json'))
  ev = _read_json(os.path.join(eval_dir, 'eval.json'))
  with open(os.path.join(search_dir, 'arch.txt')) as f:
    arch_txt = f.read().strip()
  task = build.task(config)
  return {
      'task': config.task, 'search_init': config.search.init,
      'search_method': config.search.method, 'adapt_init': adapt['init'], 'head': adapt['head'],
      'arch': arch_txt, 'params': adapt['params'], 'madds': adapt['madds'],
      'cost_input_size': adapt['cost_input_size'], 'metric': task.metric,
      task.metric: ev[task.metric], 'metric_text': task.format_metric(ev[task.metric]),
      'num_eval_images': ev['num_images'],
      'wall_time_s': {'search': search.get('wall_time_s'), 'adapt': adapt.get('wall_time_s'),
                      'evaluate': ev.get('wall_time_s')},
      'dirs': {'search': os.path.abspath(search_dir), 'adapt': os.path.abspath(adapt_dir),
               'eval': os.path.abspath(eval_dir)}}


def write_report(workdir: str, report: dict) -> None:
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=2)
  t = report['wall_time_s']
  h, w = report['cost_input_size']
  lines = [
      '# FNA++ run report', '',
      f'- search: {report["search_method"]}, supernet init `{report["search_init"]}`',
      f'- parameter adaptation: init `{report["adapt_init"]}`, head {report["head"]}',
      f'- derived network at {h}x{w}: '
      + cost_lib.format_count(report['params'], report['madds']),
      f'- {report["metric_text"]} on {report["num_eval_images"]} validation images',
      '', '| stage | wall time |', '|---|---|',
      *[f'| {k} | {v:.0f} s |' for k, v in t.items() if v is not None], '',
      'Derived architecture (release notation):', '', '```', report['arch'], '```', '']
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines))

"""The paper's Tab. 13 ablation of parameter remapping, on any config.

  python scripts/ablation.py --config=configs/demo.py [--workdir=runs/ablation] [--rows=1,2,4,5]

Each row is the whole pipeline (``scripts/fna.py``) with ``search.init`` / ``adapt.init`` set as the
row says; rows that share the supernet initialisation share one search run
(``<workdir>/search_remap``, ``<workdir>/search_random``).  Writes ``<workdir>/ablation.md`` (a
table: row, method, MAdds, Params, mIoU) and ``ablation.json``.  Rerunning resumes.
"""

import copy
import json
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from fna_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/ablation', 'output directory')
_ROWS = flags.DEFINE_list('rows', ['1', '2', '4', '5'], 'Tab. 13 rows to run (1-5)')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from fna_jax import cost as cost_lib
  from fna_jax.train import ablation
  from fna_jax.train.fna import run_fna
  workdir = _WORKDIR.value
  rows = [int(r) if r.strip().isdigit() else r for r in _ROWS.value]
  bad = [r for r in rows if r not in ablation.ROWS]
  if bad:  # before any row runs
    sys.exit(f'ablation.py: error: --rows: no row {", ".join(map(str, bad))}; Tab. 13 rows here '
             f'are {",".join(map(str, sorted(ablation.ROWS)))}')
  results = {}
  for row in rows:
    r = ablation.ROWS[row]
    config = copy.deepcopy(_CONFIG.value)
    ablation.apply(config, r)
    print(f'=== Tab. 13 row ({row}): {r.method}', flush=True)
    report = run_fna(config, os.path.join(workdir, f'row{row}'),
                     search_dir=os.path.join(workdir, f'search_{r.search_init}'))
    if not report:
      print('stopped; rerun the same command to resume')
      return
    results[row] = {'method': r.method, **report}
  with open(os.path.join(workdir, 'ablation.json'), 'w') as f:
    json.dump(results, f, indent=2)
  metric = next(iter(results.values()))['metric'] if results else 'metric'
  lines = [f'| row | method | Params | MAdds | {metric} |', '|---|---|---|---|---|']
  for row, r in results.items():
    lines.append(f'| ({row}) | {r["method"]} | {cost_lib.to_mega(r["params"]):.2f}M | '
                 f'{cost_lib.to_mega(r["madds"]):.1f}M | {r["metric_text"]} |')
  table = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'ablation.md'), 'w') as f:
    f.write(table)
  print(table)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)

"""The whole FNA++ pipeline in one command, with a report.

  python scripts/fna.py --config=configs/demo.py [--workdir=runs/demo]
  python scripts/fna.py --config=configs/seg_cityscapes.py --workdir=runs/seg \
      --config.seed_net.checkpoint=seeds/mobilenet_v2 --config.data.data_dir=~/tensorflow_datasets

seed -> remap -> search -> derive -> remap -> fine-tune -> evaluate; writes ``report.md`` and
``report.json`` in the work directory.  Rerunning the same command skips finished stages and
resumes an interrupted one.  Tab. 13 ablation rows: ``--config=configs/demo.py:fna`` (row 2),
``:rand_adapt`` (row 4), ``:rand_both`` (row 5); ``scripts/ablation.py`` runs them all.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from fna_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory (default: runs/<config name>)')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from fna_jax.train.fna import run_fna
  name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  variant = flags.FLAGS['config'].config_filename.partition(':')[2]
  workdir = _WORKDIR.value or os.path.join('runs', name + (f'_{variant}' if variant else ''))
  run_fna(_CONFIG.value, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)

"""Architecture adaptation (FNA++ search).

  python scripts/search.py --config=configs/demo.py [--workdir=runs/demo]
  python scripts/search.py --config=configs/seg_cityscapes.py --workdir=runs/seg \
      --config.seed_net.checkpoint=seeds/mobilenet_v2 --config.data.data_dir=~/tensorflow_datasets

Every config value can be overridden (``--config.search.batch_size=8``).  Rerunning the same
command resumes from the latest checkpoint in the work directory.
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
  from fna_jax.train.search_loop import run_search
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
      'runs', os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0])
  run_search(config, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)

"""Parameter adaptation: remap the searched architecture's weights and fine-tune them.

  python scripts/adapt.py --config=configs/demo.py --search_dir=runs/demo/search \
      [--workdir=runs/demo/adapt]
  python scripts/adapt.py --config=configs/seg_cityscapes.py --search_dir=runs/seg/search \
      --config.adapt.init=seed --config.adapt.head=deeplabv3+

``adapt.init``: ``supernet`` (FNA++, default), ``seed`` (FNA) or ``random``.  Rerunning the same
command resumes from the latest checkpoint in the work directory.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from fna_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file',
                                          lock_config=True)
_SEARCH_DIR = flags.DEFINE_string('search_dir', None, 'work directory of a finished search run')
_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory (default: <search_dir>/../adapt)')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from fna_jax.train.adapt_loop import run_adapt
  workdir = _WORKDIR.value or os.path.join(
      os.path.dirname(os.path.abspath(_SEARCH_DIR.value)), 'adapt')
  run_adapt(_CONFIG.value, workdir, _SEARCH_DIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'search_dir'])
  cli.run(main)

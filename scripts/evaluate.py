"""Evaluate a fine-tuned segmentation network: mIoU, per-class IoU, Params/MAdds, PNGs.

  python scripts/evaluate.py --config=configs/demo.py --model_dir=runs/demo/adapt
  python scripts/evaluate.py --config=configs/seg_cityscapes.py --model_dir=runs/seg/adapt \
      --config.eval.mode=whole

``model_dir`` is a parameter-adaptation work directory (or its ``model`` subdirectory).  Results go
to ``--out_dir`` (default ``<model_dir>/eval``): ``eval.json``, ``iou.txt`` and
``predictions/*.png`` (input | ground truth | prediction).
"""

from absl import flags, logging
from ml_collections import config_flags

from fna_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file',
                                          lock_config=True)
_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'work directory of a parameter adaptation')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'output directory (default: <model_dir>/eval)')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from fna_jax.train.evaluate import run_evaluation
  run_evaluation(_CONFIG.value, _MODEL_DIR.value, _OUT_DIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'model_dir'])
  cli.run(main)

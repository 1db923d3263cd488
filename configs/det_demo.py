"""The embedded detection demo: FNA++ with RetinaNet on generated shapes, minutes on 2 CPU cores.

Data: :class:`fna_jax.tasks.det.demo_data.DemoDetection` (5 shape classes with exact boxes,
several objects per image over a cluttered background, made in code; 128x128 images).  Seed: as
``configs/demo.py`` (a converted torchvision checkpoint, else the short pretraining on embedded
shape images, cached and shared with the segmentation demo).  The detection space with fewer
layers per stage, a narrower and shallower RetinaNet head (64 channels, 2 convs per branch),
anchors one octave smaller (octave base scale 2: the demo's boxes are 10-120 px, median 33;
COCO's 800-pixel images have larger ones) and short schedules; everything else is the COCO recipe
(``configs/det_coco_retinanet.py``).

Variants (the rows of the paper's Tab. 11, the detection version of Tab. 13;
``--config=configs/det_demo.py:<variant>``): ``fna++`` (default), ``fna`` (remapped from the seed
after the search), ``rand_search``, ``rand_adapt``, ``rand_both`` (random initialisation before
the search and/or before the fine-tuning), as ``configs/demo.py``.
"""

from configs import demo as seg_demo
from configs import det_coco_retinanet
from fna_jax.train import ablation


def get_config(variant: str | None = None):
  c = det_coco_retinanet.get_config()
  c.data = dict(name='det_demo', num_train=1000, num_val=200, image_size=128, data_seed=0,
                num_classes=5, canvas=(128, 128), scale=(128, 128), flip=True, max_boxes=8,
                arch_fraction=0.5, worker_count=0)
  c.seed_net = seg_demo.get_config().seed_net   # the same cached demo seed
  c.space.max_layers = (1, 2, 2, 2, 2, 2, 1)
  c.space.ops = ('k3_e3', 'k3_e6', 'k5_e6')
  c.head.update(channels=64, num_convs=2, octave_base_scale=2)
  c.search.update(epochs=8, warmup_epochs=4, batch_size=16, w_lr=0.02, w_lr_start=0.02 / 3,
                  w_lr_warmup_steps=30, w_lr_steps=(6,), a_lr=3e-3, lam=0.08,
                  random_candidates=10,
                  remat=False)   # the README's demo figures were measured without remat
  c.adapt.update(steps=1000, batch_size=16, lr=0.02, warmup_steps=30, warmup_start_lr=0.02 / 3,
                 lr_steps=(750,))
  c.eval.update(batch_size=20, num_visualize=4)
  c.cost_input_size = (128, 128)
  c.log_every = 20
  c.checkpoint_every = 100
  ablation.apply_variant(c, variant)
  return c

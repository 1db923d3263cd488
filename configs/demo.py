"""The embedded demo: the whole FNA++ search on generated shapes, a few minutes on 2 CPU cores.

Data: :class:`fna_jax.data.demo.DemoSegmentation` (6 classes, 64x64, generated in code).  Seed:
MobileNetV2, from a converted torchvision checkpoint when ``seed_net.checkpoint`` is given, else
a short pretraining on the embedded classification images (cached under ``seed_net.cache_dir``).
The space is the MobileNetV2 segmentation space with fewer layers per stage and the schedule is
short, so that the run fits in minutes; everything else is the Cityscapes recipe.
"""

import os

from configs import seg_cityscapes


def get_config():
  c = seg_cityscapes.get_config()
  c.data = dict(name='demo', num_train=800, num_val=100, image_size=64, data_seed=0,
                num_classes=6, resize_to=None, crop_size=64, flip=True, arch_fraction=0.2,
                worker_count=0)
  c.seed_net.pretrain = dict(steps=300, batch_size=32, image_size=64, lr=0.1, num_examples=4000,
                             seed=0)
  c.seed_net.cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'fna_jax')
  c.space.max_layers = (1, 2, 2, 3, 2, 2, 1)
  c.head = dict(channels=64, rates=(1, 2, 3), dropout=0.1)
  c.search.update(epochs=4, warmup_epochs=1, batch_size=16, w_lr=0.05, w_lr_start=1e-3,
                  w_lr_end=1e-3, w_lr_warmup_epochs=0, a_lr=3e-3, lam=5e-3, random_candidates=10)
  c.cost_input_size = (64, 64)
  c.log_every = 10
  c.checkpoint_every = 20
  return c

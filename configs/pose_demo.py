"""The embedded pose demo: FNA++ with SimpleBaseline on generated figures, minutes on 2 CPU cores.

Data: :class:`fna_jax.tasks.pose.demo_data.DemoPose` (figures with MPII's 16 joints, occluders,
clutter, made in code; 96x96 images).  Seed: as ``configs/demo.py`` (a converted torchvision
checkpoint, else the short pretraining on embedded shape images, cached and shared with the
segmentation demo).  The pose space with fewer layers per stage and a narrower head; short
schedules; everything else is the MPII recipe (``configs/pose_mpii.py``).
"""

from configs import demo as seg_demo
from configs import pose_mpii


def get_config():
  c = pose_mpii.get_config()
  c.data = dict(name='pose_demo', num_train=1200, num_val=200, image_size=96, data_seed=0,
                num_joints=16, input_size=(96, 96), sigma=1.0, scale_factor=0.25,
                rotation=30.0, flip=True, arch_fraction=0.2, worker_count=0)
  c.seed_net = seg_demo.get_config().seed_net   # the same cached demo seed
  c.space.max_layers = (1, 2, 2, 2, 2, 1, 1)
  c.space.ops = ('k3_e3', 'k3_e6', 'k5_e6')
  c.head.update(channels=64)
  c.search.update(epochs=6, warmup_epochs=2, batch_size=32, w_lr=2e-3, w_lr_steps=(5,),
                  a_lr=3e-3, lam=3e-5, random_candidates=10,
                  remat=False)   # the README's demo figures were measured without remat
  c.adapt.update(steps=400, batch_size=32, lr=2e-3, lr_steps=(300,))
  c.eval.update(batch_size=40, num_visualize=4)
  c.cost_input_size = (96, 96)
  c.log_every = 20
  c.checkpoint_every = 100
  return c

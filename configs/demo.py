"""The embedded demo: the whole FNA++ pipeline on generated shapes, minutes on 2 CPU cores.

Data: :class:`fna_jax.tasks.seg.demo_data.DemoSegmentation` (6 classes, 64x64, generated in code).  Seed:
MobileNetV2, from a converted torchvision checkpoint when ``seed_net.checkpoint`` is given, else
a short pretraining on the embedded classification images (cached under ``seed_net.cache_dir``).
The space is the MobileNetV2 segmentation space with fewer layers per stage, the head is narrower
and the schedules are short, so that the run fits in minutes; everything else is the Cityscapes
recipe (``configs/seg_cityscapes.py``).

Variants (paper Tab. 13 rows; ``--config=configs/demo.py:<variant>``):

* ``fna++`` (default, row 1): Remap -> ArchAdapt -> RemapSuper -> ParamAdapt
* ``fna`` (row 2): ... -> Remap (from the seed) -> ParamAdapt
* ``rand_search`` (row 3): RandInit -> ArchAdapt -> Remap -> ParamAdapt
* ``rand_adapt`` (row 4): Remap -> ArchAdapt -> RandInit -> ParamAdapt
* ``rand_both`` (row 5): RandInit -> ArchAdapt -> RandInit -> ParamAdapt
"""

from configs import seg_cityscapes
from fna_jax.train import ablation


def get_config(variant: str | None = None):
  c = seg_cityscapes.get_config()
  c.data = dict(name='demo', num_train=800, num_val=100, image_size=64, data_seed=0,
                num_classes=6, resize_to=(), crop_size=64, flip=True, arch_fraction=0.2,
                worker_count=0)
  c.seed_net.pretrain.steps = 200
  # 10 searched layers of 3 ops (+ skip after the first layer of a stage): 30 candidate blocks
  # instead of the full space's 108, because compiling the supernet's two steps is what a
  # 64x64 demo spends most of its time on.
  c.space.max_layers = (1, 2, 2, 2, 2, 1, 1)
  c.space.ops = ('k3_e3', 'k3_e6', 'k5_e6')
  # DeepLabv3+ (decoder at stride 4): at 64x64 DeepLabv3's stride-16 logits are a 4x4 grid, too
  # coarse for the demo's shapes (it learned little more than the class prior).  The light
  # variant (depthwise-separable convs in the ASPP and the decoder), not the paper's.
  c.head.update(name='deeplabv3+_light', channels=64, rates=(1, 2, 3), dropout=0.1)
  c.search.update(epochs=4, warmup_epochs=1, batch_size=16, w_lr=0.02, w_lr_start=1e-4,
                  w_lr_end=1e-3, w_lr_warmup_epochs=1, a_lr=3e-3, lam=5e-3, random_candidates=10,
                  # The README's demo figures were measured without remat (which changes float
                  # rounding only); at 64x64 the memory it saves does not matter.
                  remat=False)
  c.adapt.update(head='deeplabv3+_light', bn_recalib_steps=10, steps=300, batch_size=16, crop_size=64,
                 lr=0.01, warmup_steps=20, warmup_start_lr=1e-4)
  # Whole 64x64 images in one pass (Cityscapes' sliding 769 windows would pad them to 769).
  c.eval.update(mode='whole', crop_size=64, batch_size=20, num_visualize=4)
  c.cost_input_size = (64, 64)
  c.log_every = 10
  c.checkpoint_every = 50
  ablation.apply_variant(c, variant)
  return c

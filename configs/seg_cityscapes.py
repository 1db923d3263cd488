"""FNA++ segmentation search on Cityscapes (paper Sec. 4.1.1).

Search: DeepLabv3 on the MobileNetV2 seg space, output stride 16; 20% of train held out for arch
steps; images resized to 512x1024, random 321x321 crops, flips; batch 16; 80 epochs with arch steps
from epoch 30.  Parameter adaptation: weights remapped from the supernet, BatchNorm statistics
recomputed for 2000 iterations, 100k iterations of batch 16 on 769x769 crops of randomly rescaled
images, SGD lr 0.01 (10x for the head, no weight decay on BN and biases) with 5000 warm-up
iterations and poly decay.  Evaluation: mIoU on the validation set, sliding 769x769 windows with a
stride of 2/3 of the window (513 px), one scale, no flip.  Needs the ImageNet seed converted with
``python -m weights_convert`` and Cityscapes prepared as ArrayRecord
(``python -m fna_jax.tasks.seg.cityscapes --help``).

Usage: ``python scripts/fna.py --config=configs/seg_cityscapes.py --workdir=DIR`` (the whole
pipeline) or the stages one by one (``scripts/search.py``, ``scripts/adapt.py``,
``scripts/evaluate.py``); override any value with ``--config.search.batch_size=8`` and the like.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'seg'                           # fna_jax.build.TASKS: semantic segmentation
  c.seed = 0                               # RNG seed of the whole run
  c.data = dict(
      name='cityscapes', data_dir='', num_classes=19, resize_to=(512, 1024), crop_size=321,
      flip=True, arch_fraction=0.2, worker_count=4, num_train=-1)
  c.seed_net = dict(
      arch='mobilenet_v2',
      checkpoint='',                        # orbax dir written by `python -m weights_convert`
      # Without a checkpoint, steps > 0 pretrains the seed briefly on embedded shape images
      # (the demo's stand-in for ImageNet weights), cached under cache_dir.
      pretrain=dict(steps=0, batch_size=32, image_size=64, lr=3e-3, weight_decay=1e-4,
                    num_examples=4000, num_val=256, seed=0),
      cache_dir='~/.cache/fna_jax')
  c.space = dict(name='mobilenet_v2', task='seg',
                 ops=(),                    # candidate ops per layer; () = the paper's six
                 max_layers=())             # layers per stage; () = paper Tab. 1
  # rates: the ASPP's atrous rates at output stride 16, scaled with it (12/24/36 at 8);
  # low_level: DeepLabv3+ decoder input (the stride-4 stage)
  c.head = dict(name='deeplabv3', channels=256, rates=(6, 12, 18), dropout=0.1,
                low_level='stage1',
                # Bilinear upsampling of the logits (and of DeepLabv3+'s ASPP output) with aligned
                # corners, as the authors' release (TorchSeg: F.interpolate(..., 'bilinear',
                # align_corners=True); hence its 16k+1 crops, 769); False: half-pixel centres.
                align_corners=True)
  c.search = dict(
      method='differentiable',              # or 'random' (paper Sec. 4.8)
      init='remap',                         # or 'random': no seed remapping (Tab. 13 row 3)
      random_init='normal',                 # init='random': backbone conv kernels N(0, 0.01^2)
                                            # as the authors' release (backbone_init="normal"),
                                            # or 'kaiming' (fan_out); the head is kaiming
      remap_strategy='fna',
      epochs=80, warmup_epochs=30, batch_size=16, lam=5e-3, alpha_init_scale=1e-3,
      w_lr=0.02, w_lr_start=1e-4, w_lr_end=1e-3, w_lr_warmup_epochs=5, w_momentum=0.9,
      w_lr_warmup_steps=0,                  # > 0: the lr warm-up in iterations instead of epochs
      w_weight_decay=5e-4, a_lr=1e-3, a_weight_decay=4e-5,
      # The weights' optimiser: 'sgd' (momentum w_momentum; the paper's Sec. 4.1.1) or 'adam'
      # (torch's Adam, betas (0.9, 0.999); the pose recipe's SimpleBaseline weights, Sec. 4.3.1);
      # both with coupled weight decay w_weight_decay and the clip below.
      w_optimizer='sgd',
      # The weights' lr after the w_lr_warmup_epochs warm-up: 'cosine' (to w_lr_end, Sec. 4.1.1)
      # or 'multistep' (w_lr * w_lr_factor^k after k of the milestones w_lr_steps, in epochs: the
      # first step of 0-based epoch e is the first at the lower lr; w_lr_end unused).
      w_lr_schedule='cosine', w_lr_steps=(), w_lr_factor=0.1,
      # Adam betas and the gradient clip (global L2 norm, weights and alphas; 0 = off): not in the
      # paper; the authors' release, fna_det/configs/fna_retinanet_fpn_search.py.
      a_b1=0.5, a_b2=0.999, grad_clip_norm=35.0,
      random_candidates=20,                 # random search: architectures evaluated at the end
      conv_impl='',                         # supernet convs; '' = conv_impl below
      # Rematerialise each searched layer's candidate ops in the single-path weight step
      # (flax.linen.checkpoint in every lax.switch branch): under jax.grad a switch keeps the
      # residuals of all its branches, about 3x the sampled path's activations; with remat only
      # each layer's input is kept and the chosen op is recomputed in the backward pass.  Same
      # variables and results (float32 rounding); the arch step (all paths) is unchanged.  On
      # by default: at this size it is also the faster setting on CPU (README, performance).
      remat=True,
      # In the single-path weight step, run the searched layers after each stage's first that
      # are the same function (same candidates, stride 1, c_out -> c_out) as one lax.scan over
      # their variables (stacked on the fly; checkpoints unchanged): each such run is traced and
      # compiled once instead of once per layer (this space: 11 mixed layers instead of 25).
      # Same results up to float rounding; the arch step is unchanged.
      scan_layers=True,
      # How the arch step's relaxed mixed op (Eq. 7) is computed: 'naive' (each candidate block
      # on its own), 'fused' (the MBConv candidates that share a kernel size as one wide block)
      # or 'fused_padded' (all of them as one block, kernels zero-padded to the largest); same
      # variables and the same numbers up to float rounding.  'naive' is the fastest on CPU
      # (README, performance).
      mixed_op='naive')
  c.adapt = dict(                           # parameter adaptation (paper Sec. 4.1.1)
      init='supernet',                      # 'supernet' (FNA++), 'seed' (FNA) or 'random'
      random_init='normal',                 # init='random': backbone conv kernels 'normal'
                                            # (the release's) or 'kaiming', as in c.search
      head='deeplabv3',                     # or 'deeplabv3+': the derived backbone in DeepLabv3+
      output_stride=0,                      # 0 = as searched (16); 8: Tab. 2's last rows
      bn_recalib_steps=2000,                # BatchNorm statistics recomputed before fine-tuning
      frozen_bn=False,                      # backbone BN on running statistics while fine-tuning
      steps=100_000, batch_size=16, crop_size=769, resize_to=(),  # () = no resize
      scales=(0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
      # The release's fna_seg/model/deeplab/cityscapes.deeplabv3/config.py (lr 1e-2, warmup_iters
      # 5000, lr_power 0.9, momentum 0.9, weight_decay 5e-4) and furnace/utils/init_func.py
      # group_weight: the head at 10x the lr, no weight decay on BatchNorm scales/biases.
      lr=0.01, warmup_steps=5000, warmup_start_lr=1e-4, poly_power=0.9, momentum=0.9,
      weight_decay=5e-4,
      # 'sgd' (momentum above; the segmentation recipe) or 'adam' (torch's Adam, betas
      # (0.9, 0.999), momentum unused; SimpleBaseline's fine-tuning, paper Sec. 4.3.1).
      optimizer='sgd',
      # 'poly' (poly_power, to 0 at `steps`) or 'multistep': lr * lr_factor^k after k of the
      # milestones lr_steps, in optimiser STEPS (iterations; a task's config converts epochs);
      # both after the warmup_steps linear warm-up (0: none).
      lr_schedule='poly', lr_steps=(), lr_factor=0.1,
      head_lr_mult=10.0,                    # lr of every parameter outside 'backbone' (the head;
                                            # with Adam too: the update x10 = 10x the lr)
      no_decay_bn_bias=True)                # no weight decay on BN scales and biases, any bias
  # Evaluation as the authors' release (TorchSeg config: eval_crop_size 769, eval_stride_rate 2/3,
  # eval_scale_array [1], eval_flip False): sliding 769x769 windows, one scale, no flip.
  c.eval = dict(
      mode='sliding',                       # or 'whole': the whole image in one forward pass
      crop_size=769,                        # sliding window side in pixels
      stride_fraction=2 / 3,                # window stride as a fraction of crop_size: 769 -> 513 px
      batch_size=1, resize_to=(),           # () = full images
      num_visualize=4)                      # predictions saved as PNGs next to their inputs
  c.conv_impl = ''                          # '' = the backend's default (fna_jax.ops)
  # 'bfloat16': the search's and the fine-tuning's train steps compute in bfloat16 with float32
  # parameters and BatchNorm statistics (GPU/TPU; fna_jax.runtime.precision); evaluation float32.
  c.compute_dtype = 'float32'
  c.cost_input_size = (1024, 2048)          # MAdds of the cost table are counted at this size
  c.log_every = 20
  c.checkpoint_every = 500
  c.xla_cache_dir = ''                      # '' = ~/.cache/fna_jax/xla
  c.distributed = dict(coordinator_address='', num_processes=1, process_id=0)
  return c

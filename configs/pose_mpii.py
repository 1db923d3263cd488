"""FNA++ human pose estimation on MPII with SimpleBaseline (paper Sec. 4.3, Tab. 6).

Search (Sec. 4.3): the MobileNetV2 pose space (Tab. 1: max layers {4, 4, 4, 4, 4, 1}, output
stride 32, no 1280 conv) with SimpleBaseline's head (three 4x4 stride-2 transposed convs of 256 +
BN + ReLU, a 1x1 conv to 16 heatmaps); 20% of train held out for arch steps; 256x256 person crops;
batch 32; 140 epochs with arch steps from epoch 70; alphas: Adam, fixed lr 3e-3, no weight decay;
lambda 3e-5; weights as SimpleBaseline trains (Adam lr 1e-3, x0.1 at epochs 90 and 120).
Parameter adaptation: "the same training settings as SimpleBaseline" (its
``mpii/resnet50/256x256_d256x3_adam_lr1e-3.yaml``): Adam lr 1e-3 without weight decay (its
``get_optimizer`` passes none to Adam), 140 epochs, x0.1 at epochs 90 and 120, random scale 0.25,
rotation 30 degrees (with probability 0.6), flips with the joints' pairs swapped, Gaussian
heatmap targets (sigma 2), JointsMSELoss with target weights.  Evaluation: PCKh@0.5 on MPII's
validation set (``gt_valid.mat``), flip test with the heatmap shift.

Batch: the paper's search batch is 32; SimpleBaseline's YAML gives 32 per GPU (on 4 GPUs); here
32 per step for both, and epochs are converted to steps with MPII's 22,246 training people
(695 steps of 32 per epoch).

Data: ``python -m fna_jax.tasks.pose.mpii --help`` says which files to download and where to put
them.  Usage: ``python scripts/fna.py --config=configs/pose_mpii.py --workdir=DIR
--config.data.data_dir=MPII --config.seed_net.checkpoint=SEED``.
"""

from configs import seg_cityscapes

MPII_TRAIN_PEOPLE = 22_246        # SimpleBaseline's annot/train.json
BATCH = 32
STEPS_PER_EPOCH = MPII_TRAIN_PEOPLE // BATCH


def get_config():
  c = seg_cityscapes.get_config()
  c.task = 'pose'                           # fna_jax.build.TASKS: human pose estimation
  c.data = dict(
      name='mpii', data_dir='', num_joints=16,
      input_size=(256, 256),                # person crops; heatmaps are a quarter of it (64x64)
      sigma=2.0,                            # Gaussian heatmap targets
      scale_factor=0.25, rotation=30.0, flip=True,   # SimpleBaseline's augmentation
      arch_fraction=0.2, worker_count=4, num_train=-1)
  c.space.task = 'pose'
  c.head = dict(name='simple_baseline', channels=256, num_deconv=3, kernel=4)
  c.search.update(
      epochs=140, warmup_epochs=70, batch_size=BATCH, lam=3e-5,
      a_lr=3e-3, a_weight_decay=0.0,
      w_optimizer='adam', w_lr=1e-3, w_lr_schedule='multistep', w_lr_steps=(90, 120),
      w_lr_factor=0.1, w_lr_warmup_epochs=0, w_weight_decay=0.0,
      grad_clip_norm=0.0)                   # SimpleBaseline does not clip
  c.adapt = dict(
      init='supernet',                      # 'supernet' (FNA++), 'seed' (FNA) or 'random'
      random_init=c.adapt.random_init,      # the backbone's random init for init='random'
      head='simple_baseline',
      output_stride=0,                      # 0 = as searched (32)
      bn_recalib_steps=0,                   # SimpleBaseline fine-tunes the remapped statistics
      frozen_bn=False,
      steps=140 * STEPS_PER_EPOCH, batch_size=BATCH,
      optimizer='adam', lr=1e-3, lr_schedule='multistep',
      lr_steps=(90 * STEPS_PER_EPOCH, 120 * STEPS_PER_EPOCH), lr_factor=0.1,
      warmup_steps=0, warmup_start_lr=1e-3, poly_power=0.9, momentum=0.9,
      weight_decay=0.0, head_lr_mult=1.0,   # one parameter group in SimpleBaseline
      no_decay_bn_bias=False)
  c.eval = dict(
      batch_size=32,
      flip_test=True,                       # average with the mirrored crop's heatmaps
      shift_heatmap=True,                   # ... shifted one pixel, as SimpleBaseline
      post_process=True,                    # quarter-pixel shift toward the higher neighbour
      num_visualize=4)                      # skeleton pictures: ground truth | prediction
  c.cost_input_size = (256, 256)
  c.checkpoint_every = 1000
  return c

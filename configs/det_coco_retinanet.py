"""FNA++ object detection on MS-COCO with RetinaNet (paper Sec. 4.2, Tab. 4, 5, 11).

Network (Sec. 4.2.1; MMDetection v1's RetinaNet): the MobileNetV2 detection space of Tab. 1 (max
layers {4, 4, 4, 4, 4, 1}, output stride 32, no 1280 conv); an FPN of 256 channels on the 32-, 96-
and 320-channel stages (strides 8, 16, 32), P6 from C5, P7 from ReLU(P6); shared heads of four 3x3
convs of 256; 9 anchors per position (octave base scale 4, 3 scales per octave, ratios 0.5/1/2);
IoU assignment (>= 0.5 positive, < 0.4 negative), focal loss (alpha 0.25, gamma 2), smooth L1
(beta 0.11).  Inputs: short side 800, long side at most 1088, flips; padded to an 800x1088 canvas
(portrait images are fit into it, so they run smaller than in MMDetection, which pads each batch
to its largest image).

Search (Sec. 4.2.1): 50% of train held out for arch steps; 14 epochs, batch 16; weights SGD
momentum 0.9, weight decay 1e-4, lr warm-up over 500 iterations from 0.02/3 to 0.02, x0.1 at epochs
8 and 11; alphas Adam lr 3e-4 fixed, weight decay 1e-3 (betas (0.5, 0.999) and gradient clipping
at 35 as the authors' release); lambda 0.08; arch steps from epoch 8, one arch step per weight step.
Parameter adaptation: 12 epochs, batch 32, SGD momentum 0.9, weight decay 5e-5, the same warm-up to
0.05, x0.1 at epochs 8 and 11; weights remapped from the supernet.  Evaluation: COCO val2017,
COCOeval bbox (AP, AP50, AP75, APs, APm, APl); top 1000 anchors per level above score 0.05,
class-wise NMS at IoU 0.5, 100 detections per image.

Epochs are converted to steps with COCO train2017's 117,266 images that have boxes (MMDetection
drops the others): 3,664 steps of 32 per epoch for the adaptation; the search counts its own.

Data: ``python -m fna_jax.tasks.det.coco --help`` says which files to download and how to prepare
them.  Usage: ``python scripts/fna.py --config=configs/det_coco_retinanet.py --workdir=DIR
--config.data.data_dir=COCO --config.seed_net.checkpoint=SEED``.
"""

from configs import seg_cityscapes

COCO_TRAIN_IMAGES = 117_266     # train2017 images with at least one (non-crowd) box
ADAPT_BATCH = 32
STEPS_PER_EPOCH = COCO_TRAIN_IMAGES // ADAPT_BATCH


def retinanet_head(channels: int = 256, num_convs: int = 4) -> dict:
  """``config.head`` of RetinaNet (MMDetection v1's ``retinanet_r50_fpn_1x`` settings)."""
  return dict(
      name='retinanet', channels=channels, num_convs=num_convs,
      in_features=('stage2', 'stage4', 'stage6'),   # the 32, 96 and 320 stages: strides 8/16/32
      strides=(8, 16, 32, 64, 128),                 # P3-P7
      octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1.0, 2.0),
      pos_iou_thr=0.5, neg_iou_thr=0.4,             # MaxIoUAssigner
      focal_alpha=0.25, focal_gamma=2.0, smooth_l1_beta=0.11)


def get_config():
  c = seg_cityscapes.get_config()
  c.task = 'det'                            # fna_jax.build.TASKS: object detection
  c.data = dict(
      name='coco', data_dir='', num_classes=80,
      canvas=(800, 1088),                   # (H, W) every image is padded to (a multiple of 32)
      scale=(800, 1088),                    # (short side, longest long side) of the rescale
      flip=True, max_boxes=100,             # boxes per image kept for training (COCO: <= 93)
      arch_fraction=0.5, worker_count=4, num_train=-1)
  c.space.task = 'det'
  c.head = retinanet_head()
  c.search.update(
      epochs=14, warmup_epochs=8, batch_size=16, lam=0.08,
      a_lr=3e-4, a_weight_decay=1e-3,
      w_optimizer='sgd', w_lr=0.02, w_lr_start=0.02 / 3, w_lr_schedule='multistep',
      w_lr_steps=(8, 11), w_lr_factor=0.1, w_lr_warmup_epochs=0, w_lr_warmup_steps=500,
      w_momentum=0.9, w_weight_decay=1e-4)
  c.adapt = dict(
      init='supernet',                      # 'supernet' (FNA++), 'seed' (FNA) or 'random'
      random_init=c.adapt.random_init,      # the backbone's random init for init='random'
      head='retinanet',
      output_stride=0,                      # 0 = as searched (32)
      bn_recalib_steps=0,
      frozen_bn=False,                      # BatchNorm trains (batch statistics over the batch)
      steps=12 * STEPS_PER_EPOCH, batch_size=ADAPT_BATCH,
      optimizer='sgd', lr=0.05, lr_schedule='multistep',
      lr_steps=(8 * STEPS_PER_EPOCH, 11 * STEPS_PER_EPOCH), lr_factor=0.1,
      warmup_steps=500, warmup_start_lr=0.05 / 3, poly_power=0.9, momentum=0.9,
      weight_decay=5e-5, head_lr_mult=1.0,  # one parameter group in MMDetection v1
      no_decay_bn_bias=False)
  c.eval = dict(
      batch_size=8,
      nms_pre=1000,                         # anchors kept per level before NMS
      score_thr=0.05, nms_iou=0.5, max_per_image=100,
      num_visualize=4, show_score=0.3)      # pictures: ground truth | detections >= show_score
  c.cost_input_size = (800, 1088)
  c.checkpoint_every = 1000
  return c

"""RetinaNet's FPN and head (paper Sec. 4.2.1) against a PyTorch version written from MMDetection
v1's modules, its initialisation, and the network's size (paper Tab. 4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import det_coco_retinanet, det_demo
from fna_jax import arch as arch_lib
from fna_jax import build
from fna_jax import cost as cost_lib
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.tasks.det.heads import RetinaNetHead, prior_bias, upsample_nearest_2x

torch = pytest.importorskip('torch')
F = torch.nn.functional


def _torch_conv(x, kernel, bias, stride=1):
  """A flax ``(kh, kw, C_in, C_out)`` kernel applied as torch's Conv2d (padding k // 2)."""
  w = torch.from_numpy(np.asarray(kernel)).permute(3, 2, 0, 1)
  return F.conv2d(x, w, torch.from_numpy(np.asarray(bias)), stride=stride,
                  padding=w.shape[-1] // 2)


def _torch_retinanet(params, feats, num_convs, num_classes, num_anchors=9):
  """MMDetection v1's FPN (start_level 1, add_extra_convs on the input, ReLU before P7) and
  RetinaHead, NCHW, with the weights of the flax ``params``."""
  f = params['fpn']
  inputs = [torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2) for x in feats]
  lat = [_torch_conv(x, f[f'lateral{i}']['kernel'], f[f'lateral{i}']['bias'])
         for i, x in enumerate(inputs)]
  for i in range(len(lat) - 1, 0, -1):
    lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2, mode='nearest')
  outs = [_torch_conv(x, f[f'output{i}']['kernel'], f[f'output{i}']['bias'])
          for i, x in enumerate(lat)]
  outs.append(_torch_conv(inputs[-1], f['p6']['kernel'], f['p6']['bias'], stride=2))
  outs.append(_torch_conv(F.relu(outs[-1]), f['p7']['kernel'], f['p7']['bias'], stride=2))
  cls, box = [], []
  for p in outs:
    c = b = p
    for i in range(num_convs):
      c = F.relu(_torch_conv(c, params[f'cls_conv{i}']['kernel'], params[f'cls_conv{i}']['bias']))
      b = F.relu(_torch_conv(b, params[f'box_conv{i}']['kernel'], params[f'box_conv{i}']['bias']))
    c = _torch_conv(c, params['cls_out']['kernel'], params['cls_out']['bias'])
    b = _torch_conv(b, params['box_out']['kernel'], params['box_out']['bias'])
    n = p.shape[0]
    # anchor_head.py: cls_score.permute(1, 2, 0).reshape(-1, cls_out_channels) per image
    cls.append(c.permute(0, 2, 3, 1).reshape(n, -1, num_classes))
    box.append(b.permute(0, 2, 3, 1).reshape(n, -1, 4))
  return torch.cat(cls, 1).numpy(), torch.cat(box, 1).numpy()


def test_retinanet_head_equals_mmdetections_in_torch():
  """Same weights, same feature maps (strides 8/16/32 of a 64x96 image): the flax head's class
  logits and box deltas equal the torch version's, level order P3..P7, anchors row-major.  Odd
  sizes for P6/P7 (2x3 -> 1x2 -> 1x1) exercise the stride-2 convs' padding."""
  rng = np.random.default_rng(0)
  feats = {'stage2': rng.normal(size=(2, 8, 12, 6)).astype(np.float32),
           'stage4': rng.normal(size=(2, 4, 6, 10)).astype(np.float32),
           'stage6': rng.normal(size=(2, 2, 3, 12)).astype(np.float32)}
  head = RetinaNetHead(num_classes=3, channels=8, num_convs=2)
  shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), feats))
  variables = random_like(shapes, seed=1)
  # Larger kernels than the init's 0.01 so that every layer matters in the comparison.
  variables = jax.tree.map(lambda v: v * 20 if v.ndim == 4 else v + 0.1, variables)
  out = head.apply(variables, feats)
  cls, box = _torch_retinanet(variables['params'], [feats[k] for k in head.in_features], 2, 3)
  sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
  assert out['cls'].shape == (2, 9 * sum(h * w for h, w in sizes), 3) == cls.shape
  # float32 convs over up to 9 * 8 inputs, a few layers deep: agreement to ~1e-5 relative.
  np.testing.assert_allclose(out['cls'], cls, rtol=1e-4, atol=1e-4 * np.abs(cls).max())
  np.testing.assert_allclose(out['box'], box, rtol=1e-4, atol=1e-4 * np.abs(box).max())


def test_upsample_nearest_equals_torch():
  x = np.arange(2 * 3 * 5 * 2, dtype=np.float32).reshape(2, 3, 5, 2)
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=2,
                       mode='nearest').permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(upsample_nearest_2x(jnp.asarray(x), (6, 10)), want)


def test_random_init_is_mmdetections():
  """MMDetection v1's init_weights as drawn by random_like (what the loops use): FPN convs
  xavier-uniform (bound sqrt(6 / (9 (C_in + C_out))) for 3x3, std = bound / sqrt(3)), head convs
  normal(0, 0.01^2), every bias 0 but the classifier's, -log(99) (prior 0.01)."""
  c = det_coco_retinanet.get_config()
  net = build.task_network(c, build.space(c).task_arch(arch_lib.mobilenet_v2()))
  v = random_like(variable_shapes(net, (1, 64, 64, 3)), seed=0)['params']['head']
  np.testing.assert_allclose(v['cls_out']['bias'], -math.log(99), rtol=1e-6)
  assert 1 / (1 + math.exp(-prior_bias())) == pytest.approx(0.01)
  assert not np.any(v['box_out']['bias']) and not np.any(v['fpn']['p6']['bias'])
  for name in ('cls_conv0', 'box_conv3', 'cls_out', 'box_out'):
    assert np.std(v[name]['kernel']) == pytest.approx(0.01, rel=0.02), name
  k = v['fpn']['output0']['kernel']                       # 3x3, 256 -> 256
  bound = math.sqrt(6 / (9 * (256 + 256)))
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.99 * bound
  assert np.std(k) == pytest.approx(bound / math.sqrt(3), rel=0.02)
  lat = v['fpn']['lateral2']['kernel']                    # 1x1, 320 -> 256
  assert np.abs(lat).max() <= math.sqrt(6 / (320 + 256))


def test_mobilenet_v2_retinanet_is_tab4s_size():
  """MobileNetV2 + RetinaNet at 800x1088 as the COCO config builds it: Tab. 4's 11.49M Params and
  133.05B MAdds within 0.5% (conv biases counted, as the authors' counter)."""
  c = det_coco_retinanet.get_config()
  net = build.task_network(c, build.space(c).task_arch(arch_lib.mobilenet_v2()))
  got = cost_lib.count(net, None, (1, 800, 1088, 3))
  assert abs(got.params / 11.49e6 - 1) < 5e-3 and abs(got.madds / 133.05e9 - 1) < 5e-3, got
  assert (got.params, got.madds) == (11_488_244, 133_053_449_976)   # the figures the README states


def test_coco_config_is_the_papers_recipe():
  """Paper Sec. 4.2.1: search 14 epochs, batch 16, SGD 0.02 with 500 warm-up iterations from
  0.02/3, x0.1 at epochs 8 and 11, wd 1e-4; alphas Adam 3e-4, wd 1e-3; lambda 0.08; arch steps from
  epoch 8 on half of train.  Adaptation 12 epochs, batch 32, lr 0.05, wd 5e-5, same warm-up and
  steps.  The detection space at output stride 32 without the 1280 conv."""
  c = det_coco_retinanet.get_config()
  s, a = c.search, c.adapt
  assert (s.epochs, s.warmup_epochs, s.batch_size, s.lam, s.a_lr, s.a_weight_decay) == (
      14, 8, 16, 0.08, 3e-4, 1e-3)
  assert (s.w_lr, s.w_lr_start, s.w_lr_warmup_steps, s.w_lr_schedule, tuple(s.w_lr_steps),
          s.w_weight_decay, s.w_momentum) == (0.02, 0.02 / 3, 500, 'multistep', (8, 11), 1e-4, 0.9)
  assert c.data.arch_fraction == 0.5
  per_epoch = 117_266 // 32
  assert (a.batch_size, a.steps, a.lr, a.warmup_steps, a.warmup_start_lr, tuple(a.lr_steps),
          a.weight_decay) == (32, 12 * per_epoch, 0.05, 500, 0.05 / 3,
                              (8 * per_epoch, 11 * per_epoch), 5e-5)
  space = build.space(c)
  assert space.skeleton().output_stride == 32 and space.last_channels is None
  assert [len(st.candidates) for st in space.stages] == [1, 4, 4, 4, 4, 4, 1]
  # The FPN reads the 32-, 96- and 320-channel stages (strides 8, 16, 32).
  arch = space.task_arch(arch_lib.mobilenet_v2())
  idx = [int(k[len('stage'):]) for k in c.head.in_features]
  assert [arch.stages[i].c_out for i in idx] == [32, 96, 320]
  assert [arch.stage_output_strides()[i] for i in idx] == [8, 16, 32]


def test_search_lr_warmup_in_iterations():
  """``search.w_lr_warmup_steps`` (the detection recipe's 500 iterations) replaces the warm-up
  in epochs: the lr climbs linearly from 0.02/3 to 0.02 over 500 steps, then x0.1 at epochs 8, 11."""
  from fna_jax.train import search, search_loop
  sc = det_coco_retinanet.get_config().search
  sched = search_loop.schedule_from_config(sc, steps_per_epoch=1000)
  assert sched.lr_warmup_steps == 500 and sched.lr_milestones == (8000, 11000)
  _, lr = search.weight_optimizer(sched, lr=sc.w_lr, lr_start=sc.w_lr_start,
                                  lr_schedule='multistep')
  np.testing.assert_allclose([lr(0), lr(250), lr(500), lr(7999), lr(8000), lr(11000)],
                             [0.02 / 3, (0.02 / 3 + 0.02) / 2, 0.02, 0.02, 0.002, 0.0002],
                             rtol=1e-5)


def test_demo_head_anchors_match_the_network():
  """The demo's network gives as many anchors as the task's generator for its canvas."""
  c = det_demo.get_config()
  task = build.task(c)
  net = build.task_network(c, build.space(c).task_arch(arch_lib.mobilenet_v2()))
  hw = task.input_size('adapt')
  out = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0),
                                                    jnp.zeros((1, *hw, 3)))[0])
  anchors, per_level = task.anchors(hw)
  assert out['cls'].shape == (1, anchors.shape[0], c.data.num_classes)
  assert sum(per_level) == anchors.shape[0]


def test_search_benchmark_takes_the_detection_config():
  """``scripts/benchmark.py --bench=search --config=configs/det_coco_retinanet.py``: the size
  sets the canvas and the rescale, the classes the head, and the random batch has real boxes
  (x1 < x2, y1 < y2, inside the image) so that the loss sees positives."""
  from fna_jax.bench import search as search_bench
  c = search_bench.configure(det_coco_retinanet.get_config(), batch=2, size=96, num_classes=7,
                             head_channels=16, max_layers=(1,))
  task = build.task(c)
  assert task.input_size('search') == (96, 96) and tuple(c.data.scale) == (96, 96)
  assert c.data.num_classes == 7 and c.head.channels == 16
  batch = search_bench.random_batch(task.batch_shapes(2, 'search'), c.data.num_classes)
  b = batch['boxes']
  assert b.shape == (2, c.data.max_boxes, 4)
  assert np.all(b[..., 2] > b[..., 0]) and np.all(b[..., 3] > b[..., 1])
  assert b.min() >= 0 and b[..., 0::2].max() <= 95 and b[..., 1::2].max() <= 95
  assert batch['labels'].min() >= 0 and batch['labels'].max() < 7


def test_det_demo_variants_are_tab11s_rows():
  """``configs/det_demo.py:<variant>``: the paper's Tab. 11 rows set the inits of both stages."""
  assert (det_demo.get_config().search.init, det_demo.get_config().adapt.init) == (
      'remap', 'supernet')
  c = det_demo.get_config('rand_both')
  assert (c.search.init, c.adapt.init) == ('random', 'random')
  assert det_demo.get_config('fna').adapt.init == 'seed'
  with pytest.raises(ValueError, match='unknown demo variant'):
    det_demo.get_config('nope')

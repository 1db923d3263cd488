"""The one place a config becomes objects: task, datasets, search space, head, convolutions, seed,
mesh.

Every choice a config makes by name goes through a small registry (name -> constructor) here, so
adding a task, a dataset, a head or a search space means registering it, not editing a loop::

    from fna_jax import build
    build.register_dataset('my_data', lambda config, split: MySource(split, config.data.root))
    build.register_head('my_head', lambda config, conv, output_stride: MyHead(
        config.data.num_classes, conv=conv))
    build.register_task('my_task', MyTask)        # a fna_jax.tasks.base.Task subclass

Registries: :data:`TASKS` (``config.task``), :data:`DATASETS` (``config.data.name``),
:data:`HEADS` (``config.head.name``, ``config.adapt.head``), :data:`SPACES`
(``config.space.name``).  Constructors take the whole config (datasets also the split,
``'train'`` or ``'val'``; heads also the ``conv`` module that fixes the convolution
implementation, :func:`conv`, and the output stride of the body they sit on).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ml_collections

from fna_jax import arch as arch_lib
from fna_jax import ops, pretrain, seeds, spaces
from fna_jax.models import Backbone
from fna_jax.models.supernet import Supernet
from fna_jax.runtime import checkpoint, checks, loop
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.tasks.base import Task
from fna_jax.tasks.det import DetectionTask, RetinaNetHead
from fna_jax.tasks.det.coco import COCOSource
from fna_jax.tasks.det.demo_data import DemoDetection
from fna_jax.tasks.pose import PoseTask, SimpleBaselineHead
from fna_jax.tasks.pose.demo_data import DemoPose
from fna_jax.tasks.pose.mpii import MPIISource
from fna_jax.tasks.seg import DeepLabV3Head, DeepLabV3PlusHead, SegmentationTask
from fna_jax.tasks.seg.cityscapes import CityscapesSource
from fna_jax.tasks.seg.demo_data import DemoSegmentation

SPLITS = ('train', 'val')


# --------------------------------------------------------------------------- registries
def _demo(source_cls):
  """A generated demo set: ``source_cls(split, size, data.image_size, seed=data.data_seed)`` with
  ``data.num_train`` or ``data.num_val`` examples."""
  def make(config, split: str):
    d = config.data
    return source_cls(split, d.num_train if split == 'train' else d.num_val, d.image_size,
                      seed=d.data_seed)
  return make


def _cityscapes(config, split: str):
  return CityscapesSource('train' if split == 'train' else 'validation',
                          config.data.data_dir or None)


def _mpii(config, split: str):
  return MPIISource('train' if split == 'train' else 'valid', config.data.data_dir or None)


def _coco(config, split: str):
  return COCOSource('train' if split == 'train' else 'val', config.data.data_dir or None)


def deeplab_rates(rates, output_stride: int) -> tuple[int, ...]:
  """ASPP rates for a body at ``output_stride`` from ``rates`` given at output stride 16.

  DeepLab's convention (Chen et al. 2017, kept by the paper's Tab. 2 and the authors' release):
  the rates scale with the feature resolution, 6/12/18 at output stride 16 -> 12/24/36 at 8.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'DeepLab heads run at output stride 8, 16 or 32, got {output_stride}')
  scaled = tuple(int(r) * 16 / output_stride for r in rates)
  if any(r < 1 or r != int(r) for r in scaled):
    raise ValueError(f'head.rates {tuple(rates)} (at output stride 16) give no integer rates at '
                     f'output stride {output_stride}: {scaled}')
  return tuple(int(r) for r in scaled)


def _deeplab_kwargs(config, conv, output_stride):
  h = config.head
  return dict(num_classes=config.data.num_classes, channels=h.channels,
              rates=deeplab_rates(h.rates, output_stride), dropout=h.dropout, conv=conv)


def _mobilenet_v2_space(config) -> spaces.SearchSpace:
  s = config.space
  kw = {'ops': tuple(s.ops)} if s.ops else {}
  space = spaces.mobilenet_v2_space(s.task, **kw)
  return spaces.limit_depth(space, tuple(s.max_layers)) if s.max_layers else space


def _simple_baseline(config, conv, output_stride):
  """SimpleBaseline's head (paper Sec. 4.3): ``head.num_deconv`` 2x transposed convs of
  ``head.channels`` (``head.kernel`` x ``head.kernel``) -> 1x1 to ``data.num_joints``."""
  h = config.head
  return SimpleBaselineHead(num_joints=config.data.num_joints, channels=h.channels,
                            num_deconv=h.num_deconv, kernel=h.kernel, conv=conv)


def _retinanet(config, conv, output_stride):
  """RetinaNet's FPN + heads (paper Sec. 4.2.1) for ``data.num_classes`` classes on the body
  features ``head.in_features``; 9 anchors per position (3 scales x 3 ratios)."""
  del output_stride  # the FPN reads stages at strides 8, 16 and 32 whatever the body's last
  h = config.head
  return RetinaNetHead(num_classes=config.data.num_classes, channels=h.channels,
                       num_convs=h.num_convs,
                       num_anchors=h.scales_per_octave * len(h.ratios),
                       in_features=tuple(h.in_features), conv=conv)


TASKS: dict[str, Callable[[Any], Task]] = {'seg': SegmentationTask, 'pose': PoseTask,
                                           'det': DetectionTask}
DATASETS: dict[str, Callable[[Any, str], Any]] = {
    'demo': _demo(DemoSegmentation), 'cityscapes': _cityscapes, 'pose_demo': _demo(DemoPose),
    'mpii': _mpii, 'det_demo': _demo(DemoDetection), 'coco': _coco}
def _deeplab_plus_kwargs(config, conv, output_stride):
  return dict(_deeplab_kwargs(config, conv, output_stride), low_level=config.head.low_level,
              align_corners=config.head.get('align_corners', True))


HEADS: dict[str, Callable[[Any, Any, int], Any]] = {
    'deeplabv3': lambda config, conv, os_: DeepLabV3Head(**_deeplab_kwargs(config, conv, os_)),
    # The paper's DeepLabv3+ (Tab. 2: regular 3x3 convs in the ASPP and the decoder) ...
    'deeplabv3+': lambda config, conv, os_: DeepLabV3PlusHead(
        **_deeplab_plus_kwargs(config, conv, os_)),
    # ... and a light one with depthwise-separable convs there (the embedded demo's head).
    'deeplabv3+_light': lambda config, conv, os_: DeepLabV3PlusHead(
        **_deeplab_plus_kwargs(config, conv, os_), separable=True),
    # SimpleBaseline's deconvolution head (pose, paper Sec. 4.3).
    'simple_baseline': _simple_baseline,
    # RetinaNet's FPN and heads (detection, paper Sec. 4.2).
    'retinanet': _retinanet}
SPACES: dict[str, Callable[[Any], spaces.SearchSpace]] = {'mobilenet_v2': _mobilenet_v2_space}


def _register(table: dict, what: str, name: str, constructor: Callable) -> None:
  if name in table and table[name] is not constructor:
    raise ValueError(f'a {what} named {name!r} is already registered')
  table[name] = constructor


def register_task(name: str, constructor: Callable[[Any], Task]) -> None:
  """``config.task == name`` builds ``constructor(config)`` (a :class:`Task`)."""
  _register(TASKS, 'task', name, constructor)


def register_dataset(name: str, constructor: Callable[[Any, str], Any]) -> None:
  """``config.data.name == name`` reads ``constructor(config, split)``: a random-access source."""
  _register(DATASETS, 'dataset', name, constructor)


def register_head(name: str, constructor: Callable[[Any, Any, int], Any]) -> None:
  """A head named ``name`` is ``constructor(config, conv, output_stride)`` (a linen module);
  ``output_stride`` is that of the body it reads (e.g. 16 or 8 for segmentation)."""
  _register(HEADS, 'head', name, constructor)


def register_space(name: str, constructor: Callable[[Any], spaces.SearchSpace]) -> None:
  """``config.space.name == name`` searches ``constructor(config)``."""
  _register(SPACES, 'search space', name, constructor)


def _lookup(table: dict, what: str, key: str, name: str):
  if name not in table:
    raise ValueError(f'unknown {key} {name!r}; registered {what}s: {sorted(table)}')
  return table[name]


# --------------------------------------------------------------------------- objects
def task(config) -> Task:
  """The :class:`~fna_jax.tasks.base.Task` of ``config.task``."""
  return _lookup(TASKS, 'task', 'task', config.task)(config)


def dataset(config, split: str):
  """The random-access source of ``config.data.name``, split ``'train'`` or ``'val'``."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  return _lookup(DATASETS, 'dataset', 'data.name', config.data.name)(config, split)


def train_size(config, train_source) -> int:
  """How many training examples a run uses: all, or the first ``data.num_train`` (-1: all)."""
  n = config.data.num_train
  return len(train_source) if n in (-1, None) else min(len(train_source), n)


def space(config) -> spaces.SearchSpace:
  """The search space of ``config.space`` (``ops`` and ``max_layers`` narrow it when set)."""
  return _lookup(SPACES, 'search space', 'space.name', config.space.name)(config)


def conv(config, stage: str | None = None):
  """The convolution module every network of ``config`` is built with (:mod:`fna_jax.ops`).

  ``conv_impl`` (``''``: the backend's default); for ``stage='search'``, ``search.conv_impl``
  overrides it for the supernet.
  """
  impl = (config.search.conv_impl if stage == 'search' else '') or config.conv_impl
  return ops.conv_module(impl or None)


def head(config, output_stride: int, name: str | None = None, conv_module=None):
  """The head ``name`` (default ``config.head.name``) for ``config``'s task and data, on a body
  of output stride ``output_stride``."""
  name = name or config.head.name
  return _lookup(HEADS, 'head', 'head.name', name)(config, conv_module or conv(config),
                                                  output_stride)


def search_network(config, search_space: spaces.SearchSpace):
  """The network searched over: ``Supernet(search_space)`` + ``config.head.name``;
  ``config.search.remat`` rematerialises the mixed layers' branches in the single-path weight
  step (less memory, same results) and ``config.search.mixed_op`` chooses how the relaxed mixed
  op is computed (``'naive'``, ``'fused'`` or ``'fused_padded'``, the same numbers):
  :class:`~fna_jax.models.supernet.MixedLayer`."""
  c = conv(config, 'search')
  os_ = search_space.skeleton().output_stride
  body = Supernet(search_space, c, remat=config.search.remat,
                  relaxed_impl=config.search.mixed_op,
                  scan_layers=config.search.get('scan_layers', False))
  return task(config).network(body, head(config, os_, conv_module=c))


def task_network(config, arch: arch_lib.Arch, *, head_name: str | None = None,
                 frozen_bn: bool = False):
  """The task network of ``arch``: ``Backbone(arch)`` + head ``head_name`` (default
  ``config.head.name``) for ``arch``'s output stride; ``frozen_bn`` keeps the backbone's
  BatchNorm statistics fixed."""
  c = conv(config)
  return task(config).network(Backbone(arch, c), head(config, arch.output_stride, head_name, c),
                              frozen_bn=frozen_bn)


def mesh(devices=None):
  """A ``('data',)`` mesh over every device of every process (:mod:`fna_jax.runtime.mesh`)."""
  return mesh_lib.make_mesh(devices)


def setup_runtime(config) -> None:
  """``jax.distributed`` when ``distributed.num_processes > 1``; the compilation cache."""
  loop.setup_runtime(config.distributed, config.xla_cache_dir or None)


def seed(config, mesh_, log=print) -> tuple[arch_lib.Arch, dict]:
  """The seed network: the converted checkpoint ``seed_net.checkpoint``, else (the demo) a short
  pretraining of ``seed_net.arch`` on embedded images (``seed_net.pretrain.steps > 0``), cached
  under ``seed_net.cache_dir``."""
  s = config.seed_net
  if s.checkpoint:
    arch, variables = seeds.load_seed(s.checkpoint)
    log(f'seed: {arch.name or "network"} from {s.checkpoint}')
    return arch, variables
  if s.pretrain.steps <= 0:
    raise FileNotFoundError(
        'seed_net.checkpoint is empty: convert the ImageNet seed first, e.g. '
        '`python -m weights_convert --arch mobilenet_v2 --src mobilenet_v2-b0353104.pth '
        '--dst seeds/mobilenet_v2` (the .pth from torchvision), then pass '
        '--config.seed_net.checkpoint=seeds/mobilenet_v2')
  return pretrain.pretrain_demo_seed(arch_lib.seed(s.arch), s.pretrain.to_dict(),
                                     os.path.expanduser(s.cache_dir), mesh=mesh_, log=log)


# --------------------------------------------------------------------------- saved networks
# ``config.data`` keys that fix a head's outputs (segmentation/detection classes, pose joints).
OUTPUT_KEYS = ('num_classes', 'num_joints')


def network_meta(config, arch: arch_lib.Arch, head_name: str) -> dict:
  """What :func:`load_network` needs to rebuild a task network (stored with its weights)."""
  return {'task': config.task, 'arch': arch.to_dict(), 'head': head_name,
          'head_config': {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in config.head.to_dict().items()},
          'outputs': {k: config.data[k] for k in OUTPUT_KEYS if k in config.data}}


def load_network(model_dir: str, config):
  """``(module, variables, meta)`` of a network saved by parameter adaptation.

  The module is rebuilt from the stored task, architecture, head settings and outputs (number of
  classes or joints); ``config`` supplies the rest (e.g. ``conv_impl``).
  """
  variables, meta = checkpoint.load_variables(model_dir)
  if 'arch' not in meta:
    raise checks.ModelMismatchError(
        f'{model_dir} holds no fine-tuned network (its record has {sorted(meta)}, not an '
        "architecture; a search's supernet/?): pass the work directory of a parameter "
        'adaptation (or its model/)')
  c = ml_collections.ConfigDict(config.to_dict())
  c.task = meta.get('task', 'seg')
  if c.task == 'seg':
    # A network saved before ``head.align_corners`` existed was trained with half-pixel upsampling.
    c.head.update({'align_corners': False})
  c.head.update({k: tuple(v) if isinstance(v, list) else v
                 for k, v in meta['head_config'].items()})
  # Networks saved before ``outputs`` existed were segmentation networks with ``num_classes``.
  c.data.update(meta.get('outputs') or {'num_classes': meta['num_classes']})
  net = task_network(c, arch_lib.Arch.from_dict(meta['arch']), head_name=meta['head'])
  return net, variables, meta

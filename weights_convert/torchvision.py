"""torchvision ImageNet weights -> fna_jax variables.

``convert(state_dict, 'mobilenet_v2')`` (or ``'resnet18'``, ``'resnet34'``, ``'resnet50'``, or an
:class:`~fna_jax.arch.Arch` with the same real layers plus ``skip`` layers, which own nothing and
consume no torch block) returns
``{'params': ..., 'batch_stats': ...}`` with exactly the tree of
``fna_jax.models.build(arch).init(...)``.

The name mapping is a small table per family, derived from the architecture
(``arch.layers()``), so one function serves every depth.  Each row (:class:`Entry`) ties one
torch module to one flax module:

* MobileNetV2 (``mbconv``): ``features.0.0``/``features.0.1`` stem conv/BN; the ``n``-th block
  (1-based, over all stages) is ``features.n``: with expansion 1 ``conv.0.0``/``conv.0.1``
  depthwise, ``conv.1``/``conv.2`` project; otherwise ``conv.0.0``/``conv.0.1`` expand,
  ``conv.1.0``/``conv.1.1`` depthwise, ``conv.2``/``conv.3`` project; then
  ``features.{n+1}.0``/``.1`` the last 1x1 conv/BN and ``classifier.1`` the Linear.
* ResNet: ``conv1``/``bn1`` stem; the ``n``-th real block (0-based) of stage ``i`` is
  ``layer{i+1}.{n}`` with
  ``conv1..3``/``bn1..3`` and ``downsample.0``/``downsample.1``; ``fc`` the Linear.

Array layouts: conv ``(O, I/g, kh, kw)`` -> HWIO ``(kh, kw, I/g, O)``; Linear ``(O, I)`` -> Dense
kernel ``(I, O)``; BN ``weight, bias, running_mean, running_var`` -> params ``scale, bias`` and
batch_stats ``mean, var`` (``num_batches_tracked`` is ignored).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Mapping

import numpy as np

from fna_jax import arch as arch_lib

CONV, BN, DENSE = 'conv', 'bn', 'dense'
_BN_FIELDS = (('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
              ('running_mean', 'batch_stats', 'mean'), ('running_var', 'batch_stats', 'var'))
_BN_IGNORED = 'num_batches_tracked'


class ConversionError(ValueError):
  """A state dict that does not fit the architecture (missing, unexpected or mis-shaped keys)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One torch module <-> one flax module.

  Attributes:
    torch: torch module name, e.g. ``'features.3.conv.1.0'`` (its parameters append ``.weight``,
      ``.bias``, ...).
    path: flax module path, e.g. ``('backbone', 'stage1', 'layer1', 'dw_conv')``.
    kind: ``'conv'``, ``'bn'`` or ``'dense'``.
    shape: torch shape of the module's ``weight``: conv ``(O, I/g, k, k)``, BN ``(C,)``, Linear
      ``(O, I)``.
  """
  torch: str
  path: tuple[str, ...]
  kind: str
  shape: tuple[int, ...]

  def torch_params(self) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """``{torch key: (torch shape, collection, flax leaf name)}`` of this module."""
    if self.kind == CONV:
      return {f'{self.torch}.weight': (self.shape, 'params', 'kernel')}
    if self.kind == DENSE:
      return {f'{self.torch}.weight': (self.shape, 'params', 'kernel'),
              f'{self.torch}.bias': (self.shape[:1], 'params', 'bias')}
    return {f'{self.torch}.{t}': (self.shape, coll, leaf) for t, coll, leaf in _BN_FIELDS}


def _conv(torch: str, path, c_out: int, c_in: int, k: int, groups: int = 1) -> Entry:
  return Entry(torch, tuple(path), CONV, (c_out, c_in // groups, k, k))


def _bn(torch: str, path, c: int) -> Entry:
  return Entry(torch, tuple(path), BN, (c,))


def _real_layers(arch: arch_lib.Arch):
  """Yields ``(i, j, n, op, c_in, c_out, stride)`` of real layers; ``n`` counts them per stage."""
  counts = {}
  for i, j, name, c_in, c_out, stride, _ in arch.layers():
    op = arch_lib.parse_op(name)
    if op.is_skip:
      continue
    n = counts.get(i, 0)
    counts[i] = n + 1
    yield i, j, n, op, c_in, c_out, stride


def block_modules(arch: arch_lib.Arch | str) -> dict[tuple[str, ...], str]:
  """``{flax block path: torch block module name}`` for every non-skip layer of ``arch``.

  E.g. ``('backbone', 'stage1', 'layer0') -> 'features.2'`` (MobileNetV2) or ``'layer2.0'``
  (ResNet).  Useful for comparing activations block by block.
  """
  arch = _as_arch(arch)
  out, n_global = {}, 0
  for i, j, n, _, _, _, _ in _real_layers(arch):
    n_global += 1
    torch = f'features.{n_global}' if arch.family == arch_lib.MBCONV else f'layer{i + 1}.{n}'
    out[('backbone', f'stage{i}', f'layer{j}')] = torch
  return out


def _mbconv_table(arch: arch_lib.Arch, num_classes: int) -> list[Entry]:
  """torchvision MobileNetV2 names for an MBConv architecture."""
  s = arch.stem
  rows = [_conv('features.0.0', ('backbone', 'stem_conv'), s.channels, 3, s.kernel),
          _bn('features.0.1', ('backbone', 'stem_bn'), s.channels)]
  blocks = block_modules(arch)
  for i, j, _, op, c_in, c_out, _ in _real_layers(arch):
    p = ('backbone', f'stage{i}', f'layer{j}')
    t = blocks[p] + '.conv'
    hidden = c_in * op.expansion
    seq = 0
    if op.expansion != 1:
      rows += [_conv(f'{t}.0.0', p + ('expand_conv',), hidden, c_in, 1),
               _bn(f'{t}.0.1', p + ('expand_bn',), hidden)]
      seq = 1
    rows += [_conv(f'{t}.{seq}.0', p + ('dw_conv',), hidden, hidden, op.kernel, groups=hidden),
             _bn(f'{t}.{seq}.1', p + ('dw_bn',), hidden),
             _conv(f'{t}.{seq + 1}', p + ('project_conv',), c_out, hidden, 1),
             _bn(f'{t}.{seq + 2}', p + ('project_bn',), c_out)]
  c = arch.stages[-1].c_out
  if arch.last_channels:
    last = f'features.{len(blocks) + 1}'
    rows += [_conv(f'{last}.0', ('backbone', 'last_conv'), arch.last_channels, c, 1),
             _bn(f'{last}.1', ('backbone', 'last_bn'), arch.last_channels)]
    c = arch.last_channels
  rows.append(Entry('classifier.1', ('classifier',), DENSE, (num_classes, c)))
  return rows


def _resnet_table(arch: arch_lib.Arch, num_classes: int) -> list[Entry]:
  """torchvision ResNet names for a basic-block or bottleneck architecture."""
  s = arch.stem
  rows = [_conv('conv1', ('backbone', 'stem_conv'), s.channels, 3, s.kernel),
          _bn('bn1', ('backbone', 'stem_bn'), s.channels)]
  blocks = block_modules(arch)
  for i, j, _, op, c_in, c_out, stride in _real_layers(arch):
    p = ('backbone', f'stage{i}', f'layer{j}')
    t = blocks[p]
    if arch.family == arch_lib.RESNET_BASIC:
      rows += [_conv(f'{t}.conv1', p + ('conv1',), c_out, c_in, op.kernel, op.groups),
               _bn(f'{t}.bn1', p + ('bn1',), c_out),
               _conv(f'{t}.conv2', p + ('conv2',), c_out, c_out, 3),
               _bn(f'{t}.bn2', p + ('bn2',), c_out)]
    else:
      width = c_out // arch_lib.BOTTLENECK_EXPANSION
      rows += [_conv(f'{t}.conv1', p + ('conv1',), width, c_in, 1),
               _bn(f'{t}.bn1', p + ('bn1',), width),
               _conv(f'{t}.conv2', p + ('conv2',), width, width, op.kernel, op.groups),
               _bn(f'{t}.bn2', p + ('bn2',), width),
               _conv(f'{t}.conv3', p + ('conv3',), c_out, width, 1),
               _bn(f'{t}.bn3', p + ('bn3',), c_out)]
    if stride != 1 or c_in != c_out:
      rows += [_conv(f'{t}.downsample.0', p + ('downsample_conv',), c_out, c_in, 1),
               _bn(f'{t}.downsample.1', p + ('downsample_bn',), c_out)]
  rows.append(Entry('fc', ('classifier',), DENSE, (num_classes, arch.stages[-1].c_out)))
  return rows


def _as_arch(arch: arch_lib.Arch | str) -> arch_lib.Arch:
  return arch_lib.seed(arch) if isinstance(arch, str) else arch


def table(arch: arch_lib.Arch | str, num_classes: int = 1000) -> list[Entry]:
  """The torch <-> flax module table of ``arch`` (a seed name or an Arch), in network order."""
  arch = _as_arch(arch)
  if arch.family == arch_lib.MBCONV:
    return _mbconv_table(arch, num_classes)
  return _resnet_table(arch, num_classes)


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _classes_in(state_dict: Mapping[str, Any], rows: list[Entry]) -> int:
  """Rows of the classifier weight; 1000 when it is absent (the missing key is reported later)."""
  key = f'{rows[-1].torch}.weight'
  return int(np.shape(state_dict[key])[0]) if key in state_dict else 1000


def convert(state_dict: Mapping[str, Any], arch: arch_lib.Arch | str,
            num_classes: int | None = 1000) -> dict[str, Any]:
  """Converts a torchvision state dict to fna_jax variables.

  Args:
    state_dict: ``{name: torch.Tensor or numpy array}``, as ``model.state_dict()`` gives.
    arch: ``'mobilenet_v2'``, ``'resnet18'``, ``'resnet34'``, ``'resnet50'`` or an Arch of those
      families (its skips own nothing and consume no torch block).
    num_classes: classifier outputs; ``None`` takes them from the state dict.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays, the tree of
    ``fna_jax.models.build(arch, num_classes).init(...)``.

  Raises:
    ConversionError (a ValueError): naming the missing keys (with their flax paths), else the
      unexpected keys (the first 10 of either, and their count), else the first tensor whose
      shape differs (its key, flax path, actual and expected torch shapes).
  """
  arch = _as_arch(arch)
  label = arch.name or arch.family
  state_dict = dict(state_dict)
  if num_classes is None:
    num_classes = _classes_in(state_dict, table(arch, 1))
  rows = table(arch, num_classes)
  wanted = {}  # torch key -> (entry, torch shape, collection, leaf)
  for e in rows:
    for key, (shape, coll, leaf) in e.torch_params().items():
      wanted[key] = (e, shape, coll, leaf)
  ignorable = {f'{e.torch}.{_BN_IGNORED}' for e in rows if e.kind == BN}

  missing = [k for k in wanted if k not in state_dict]
  unexpected = [k for k in state_dict if k not in wanted and k not in ignorable]
  if missing:
    shown = ', '.join(f'{k!r} (-> {"/".join(wanted[k][0].path)}/{wanted[k][3]})'
                      for k in missing[:10])
    more = f' and {len(missing) - 10} more' if len(missing) > 10 else ''
    extra = ''
    if unexpected:
      extra = (f'; it also has {len(unexpected)} key(s) that {label} does not use (e.g. '
               f'{", ".join(repr(k) for k in unexpected[:3])}): is it the state dict of another '
               'network?')
    raise ConversionError(
        f'{label}: the state dict lacks {len(missing)} key(s): {shown}{more}{extra}')
  if unexpected:
    shown = ', '.join(repr(k) for k in unexpected[:10])
    more = f' and {len(unexpected) - 10} more' if len(unexpected) > 10 else ''
    raise ConversionError(f'{label}: unexpected key(s) in the state dict: {shown}{more}')

  out: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, (e, shape, coll, leaf) in wanted.items():
    value = _to_numpy(state_dict[key])
    if tuple(value.shape) != tuple(shape):
      raise ConversionError(f'{label}: {key!r} (-> {"/".join(e.path)}/{leaf}) has shape '
                            f'{tuple(value.shape)}, expected {tuple(shape)}')
    value = value.astype(np.float32)
    if e.kind == CONV:
      value = value.transpose(2, 3, 1, 0)  # (O, I/g, kh, kw) -> (kh, kw, I/g, O)
    elif e.kind == DENSE and leaf == 'kernel':
      value = value.T  # (O, I) -> (I, O)
    _set(out[coll], e.path + (leaf,), np.ascontiguousarray(value))
  return out


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside common checkpoint wrappers."""
  for _ in range(4):
    if not isinstance(obj, Mapping):
      break
    for wrapper in ('state_dict', 'model', 'model_state_dict', 'net'):
      if wrapper in obj and isinstance(obj[wrapper], Mapping):
        obj = obj[wrapper]
        break
    else:
      break
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a state dict (a mapping of names to tensors), '
                          f'got {type(obj).__name__}')
  # Weights saved from nn.DataParallel / DistributedDataParallel carry a 'module.' prefix.
  if obj and all(isinstance(k, str) and k.startswith('module.') for k in obj):
    obj = {k[len('module.'):]: v for k, v in obj.items()}
  return obj


def load_torchvision_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a torchvision ``.pth`` file (``torch.load(..., weights_only=True)``) to a state dict.

  Unwraps ``{'state_dict': ...}``, ``{'model': ...}`` (and ``'model_state_dict'``, ``'net'``) and a
  DataParallel ``module.`` prefix.  Needs torch.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ConversionError: the file holds no state dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no torchvision checkpoint at {os.path.abspath(path)}')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs torch (pip install torch)') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln for ln in lines if 'Unsupported global' in ln), lines[0] if lines else '')
    raise ConversionError(
        f'{path}: not a plain state dict (torch.load(weights_only=True) refused it: {why}). '
        'If it holds a pickled model, save its weights instead: '
        'torch.save(model.state_dict(), path)') from None
  return dict(_unwrap(obj, path))


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of scalars in ``variables['params']``."""
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.size(x) for x in jax.tree.leaves(variables['params'])))


def torchvision_model(arch: arch_lib.Arch | str, state_dict: Mapping[str, Any] | None = None,
                      num_classes: int = 1000):
  """The torchvision model of a seed architecture in eval mode, optionally loaded (strictly).

  Needs torch and torchvision.

  Raises:
    ConversionError: ``arch`` is not one of torchvision's seed networks.
  """
  arch = _as_arch(arch)
  if arch.name not in arch_lib.SEEDS or arch != arch_lib.seed(arch.name):
    raise ConversionError(f'torchvision has no model for architecture {arch.name!r}; '
                          f'expected one of the unmodified seeds {sorted(arch_lib.SEEDS)}')
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  model = getattr(torchvision.models, arch.name)(weights=None, num_classes=num_classes)
  if state_dict is not None:
    model.load_state_dict({k: torch.as_tensor(_to_numpy(v)) for k, v in state_dict.items()},
                          strict=True)
  return model.eval()


def logit_parity(arch: arch_lib.Arch | str, state_dict: Mapping[str, Any], variables: Any, *,
                 batch: int = 2, size: int = 224, impl: str | None = None,
                 seed: int = 0) -> tuple[float, float]:
  """Runs one random batch through torchvision and fna_jax (both in eval mode).

  Args:
    arch: a seed name or its Arch.
    state_dict: the torchvision weights.
    variables: the fna_jax variables to test (e.g. ``convert(state_dict, arch)``).
    batch, size: the input is ``(batch, 3, size, size)`` standard normal (NCHW for torch, NHWC
      for flax).
    impl: fna_jax conv implementation (``'cpu'``, ``'xla'``, default per backend).
    seed: numpy seed of the input.

  Returns:
    ``(max_abs_error, max_abs_torch_logit)`` over all logits, float32 with matmuls at 'highest'
    precision.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from fna_jax import models, ops  # pylint: disable=g-import-not-at-top
  arch = _as_arch(arch)
  num_classes = int(np.shape(variables['params']['classifier']['bias'])[0])
  model = torchvision_model(arch, state_dict, num_classes)
  x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x)).numpy()
  net = models.build(arch, num_classes, conv=ops.conv_module(impl))
  with jax.default_matmul_precision('highest'):
    got = jax.jit(lambda v, y: net.apply(v, y, train=False))(variables, x.transpose(0, 2, 3, 1))
  got = np.asarray(got)
  return float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))

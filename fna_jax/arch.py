"""Architectures as data.

An :class:`Arch` describes the body of a network: a stem, then stages of layers, each layer named
by one op string.  It is immutable, hashable, JSON-serialisable, and it is the single description
that the models, the remapping, the cost counting and the search's derivation all consume.

Op names
--------
* MBConv family (MobileNetV2 and the FNA++ search space): ``k{kernel}_e{expansion}``, e.g. ``k5_e6``
  (5x5 depthwise conv, expansion ratio 6), and ``skip`` (identity; owns no parameters).
* ResNet family: ``k{kernel}g{groups}``, e.g. ``k3g1`` (plain 3x3) or ``k5g2`` (5x5, 2 groups): the
  searched conv of a block (first conv of a basic block, middle conv of a bottleneck), and ``skip``.

A stage's first layer carries its stride and its channel change (``c_in -> c_out``); the other
layers map ``c_out -> c_out`` with stride 1.  The first layer can never be ``skip``.  In a derived
architecture, real layers come first and skips last (see :meth:`Arch.skips_last`).

The release notation of the authors' code (github.com/JaminFong/FNA) is one line per stage,
``[[C_in, C_out], [op, ...], stride]``, joined by ``|`` and newlines.  It has no dilation: strides
are written as before output-stride conversion (see :meth:`Arch.to_release_string`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any

MBCONV = 'mbconv'
RESNET_BASIC = 'resnet_basic'
RESNET_BOTTLENECK = 'resnet_bottleneck'
FAMILIES = (MBCONV, RESNET_BASIC, RESNET_BOTTLENECK)
SKIP = 'skip'
BOTTLENECK_EXPANSION = 4  # torchvision's Bottleneck: width = c_out // 4

_MBCONV_RE = re.compile(r'^k(\d+)_e(\d+)$')
_RESNET_RE = re.compile(r'^k(\d+)g(\d+)$')


class ArchError(ValueError):
  """An architecture (or op name) that cannot describe a network."""


@dataclasses.dataclass(frozen=True)
class Op:
  """A parsed op name.

  Attributes:
    name: the op string, e.g. ``'k5_e6'``, ``'k5g2'`` or ``'skip'``.
    kind: ``'mbconv'``, ``'resnet'`` or ``'skip'``.
    kernel: spatial kernel size of the op's searched conv (0 for skip).
    expansion: MBConv expansion ratio (1 for ResNet ops, 0 for skip).
    groups: groups of the searched conv (1 for MBConv's depthwise-separable ops, 0 for skip).
  """
  name: str
  kind: str
  kernel: int = 0
  expansion: int = 0
  groups: int = 0

  @property
  def is_skip(self) -> bool:
    return self.kind == SKIP


def parse_op(name: str) -> Op:
  """Parses an op string; raises :class:`ArchError` on anything unknown."""
  if name == SKIP:
    return Op(name, SKIP)
  m = _MBCONV_RE.match(name)
  if m:
    k, e = int(m.group(1)), int(m.group(2))
    if k % 2 == 0 or e < 1:
      raise ArchError(f'op {name!r}: kernel must be odd and expansion >= 1')
    return Op(name, MBCONV, kernel=k, expansion=e, groups=1)
  m = _RESNET_RE.match(name)
  if m:
    k, g = int(m.group(1)), int(m.group(2))
    if k % 2 == 0 or g < 1:
      raise ArchError(f'op {name!r}: kernel must be odd and groups >= 1')
    return Op(name, 'resnet', kernel=k, expansion=1, groups=g)
  raise ArchError(
      f'unknown op {name!r}: expected k<kernel>_e<expansion> (MBConv), k<kernel>g<groups> '
      f"(ResNet) or 'skip'")


def op_kind(family: str) -> str:
  """The kind of op a family's layers take: ``'mbconv'`` or ``'resnet'``."""
  return MBCONV if family == MBCONV else 'resnet'


@dataclasses.dataclass(frozen=True)
class Stem:
  """The layers before the first stage.

  MobileNetV2: 3x3 conv stride 2 -> BN -> ReLU6.  ResNet: 7x7 conv stride 2 -> BN -> ReLU ->
  3x3 max-pool stride 2.
  """
  channels: int
  kernel: int = 3
  stride: int = 2
  max_pool: bool = False

  @property
  def total_stride(self) -> int:
    return self.stride * (2 if self.max_pool else 1)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: ``len(ops)`` layers; the first maps ``c_in -> c_out`` with ``stride``.

  ``dilation`` is the dilation of every layer's searched (spatial) conv in the stage; it is set by
  :meth:`Arch.with_output_stride` when a stride is traded for dilation.
  """
  c_in: int
  c_out: int
  ops: tuple[str, ...]
  stride: int = 1
  dilation: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'ops', tuple(self.ops))

  @property
  def depth(self) -> int:
    """Number of layers that own parameters (non-skip)."""
    return sum(1 for o in self.ops if o != SKIP)

  def layer_io(self, j: int) -> tuple[int, int, int]:
    """``(c_in, c_out, stride)`` of layer ``j``."""
    if j == 0:
      return self.c_in, self.c_out, self.stride
    return self.c_out, self.c_out, 1


@dataclasses.dataclass(frozen=True)
class Arch:
  """A network body: stem, stages and (for MBConv networks) the final 1x1 conv width.

  Attributes:
    family: one of ``'mbconv'``, ``'resnet_basic'``, ``'resnet_bottleneck'``.
    stem: the stem.
    stages: the stages, in order.
    last_channels: width of the final 1x1 conv + BN + ReLU6 of MBConv classifiers (1280 for
      MobileNetV2); ``None`` for none (ResNets, or MBConv bodies used without it).
    name: a label, informational only (ignored by ``==`` and hashing).
  """
  family: str
  stem: Stem
  stages: tuple[Stage, ...]
  last_channels: int | None = None
  name: str = dataclasses.field(default='', compare=False)

  def __post_init__(self):
    object.__setattr__(self, 'stages', tuple(self.stages))
    self.validate()

  # ---------------------------------------------------------------- validation
  def validate(self) -> None:
    """Raises :class:`ArchError` naming the stage and layer of the first problem."""
    if self.family not in FAMILIES:
      raise ArchError(f'unknown family {self.family!r}; expected one of {FAMILIES}')
    if not self.stages:
      raise ArchError('an architecture needs at least one stage')
    kind = op_kind(self.family)
    prev_out = self.stem.channels
    for i, st in enumerate(self.stages):
      where = f'stage {i}'
      if st.c_in != prev_out:
        raise ArchError(f'{where}: c_in={st.c_in} but the previous '
                        f'{"stage" if i else "stem"} outputs {prev_out} channels')
      if st.stride not in (1, 2):
        raise ArchError(f'{where}: stride must be 1 or 2, got {st.stride}')
      if st.dilation < 1:
        raise ArchError(f'{where}: dilation must be >= 1, got {st.dilation}')
      if not st.ops:
        raise ArchError(f'{where}: a stage needs at least one layer')
      for j, name in enumerate(st.ops):
        try:
          op = parse_op(name)
        except ArchError as e:
          raise ArchError(f'{where}, layer {j}: {e}') from None
        if op.is_skip:
          if j == 0:
            raise ArchError(f'{where}, layer 0: the first layer of a stage changes stride/width '
                            'and cannot be skip')
          continue
        if op.kind != kind:
          raise ArchError(f'{where}, layer {j}: op {name!r} does not belong to family '
                          f'{self.family!r}')
        c_in, c_out, _ = st.layer_io(j)
        if self.family == RESNET_BOTTLENECK:
          if c_out % BOTTLENECK_EXPANSION:
            raise ArchError(f'{where}: bottleneck c_out={c_out} is not a multiple of '
                            f'{BOTTLENECK_EXPANSION}')
          width = c_out // BOTTLENECK_EXPANSION
          if width % op.groups:
            raise ArchError(f'{where}, layer {j}: {op.groups} groups do not divide width {width}')
        elif kind == 'resnet' and (c_in % op.groups or c_out % op.groups):
          raise ArchError(f'{where}, layer {j}: {op.groups} groups do not divide channels '
                          f'{c_in}->{c_out}')
      prev_out = st.c_out
    if self.last_channels is not None and self.last_channels < 1:
      raise ArchError(f'last_channels must be positive, got {self.last_channels}')

  # ---------------------------------------------------------------- properties
  @property
  def out_channels(self) -> int:
    """Channels of the body's final feature map (after the last 1x1 conv if any)."""
    return self.last_channels or self.stages[-1].c_out

  @property
  def output_stride(self) -> int:
    """Ratio of input to final feature-map resolution."""
    s = self.stem.total_stride
    for st in self.stages:
      s *= st.stride
    return s

  def stage_output_strides(self) -> list[int]:
    """Output stride after each stage."""
    out, s = [], self.stem.total_stride
    for st in self.stages:
      s *= st.stride
      out.append(s)
    return out

  def layers(self):
    """Yields ``(stage_index, layer_index, op_name, c_in, c_out, stride, dilation)``."""
    for i, st in enumerate(self.stages):
      for j, name in enumerate(st.ops):
        c_in, c_out, stride = st.layer_io(j)
        yield i, j, name, c_in, c_out, stride, st.dilation

  # ---------------------------------------------------------------- transforms
  def replace(self, **kw) -> 'Arch':
    return dataclasses.replace(self, **kw)

  def with_ops(self, ops_per_stage) -> 'Arch':
    """The same channels and strides with new op lists (one sequence per stage)."""
    ops_per_stage = list(ops_per_stage)
    if len(ops_per_stage) != len(self.stages):
      raise ArchError(f'{len(ops_per_stage)} op lists for {len(self.stages)} stages')
    return self.replace(stages=tuple(
        dataclasses.replace(st, ops=tuple(ops)) for st, ops in zip(self.stages, ops_per_stage)))

  def skips_last(self) -> 'Arch':
    """Moves each stage's skips after its real layers (the derived-architecture convention)."""
    return self.with_ops([[o for o in st.ops if o != SKIP] + [o for o in st.ops if o == SKIP]
                          for st in self.stages])

  def base_strides(self) -> tuple[int, ...]:
    """Each stage's stride before any stride was traded for dilation.

    :meth:`with_output_stride` runs a stage whose stride 2 was traded with stride 1 and twice the
    previous stage's dilation, so the stride before conversion is recovered from the dilations: a
    stage whose dilation doubled relative to the previous stage (the stem counts as dilation 1)
    had stride 2.  Raises :class:`ArchError` for dilations that no such trade produces (a ratio
    other than 1 or 2, or a doubling on a stage that still has stride 2).
    """
    out, prev = [], 1
    for i, st in enumerate(self.stages):
      ratio, rest = divmod(st.dilation, prev)
      if rest or ratio not in (1, 2) or (ratio == 2 and st.stride != 1):
        raise ArchError(f'stage {i}: dilation {st.dilation} after dilation {prev} with stride '
                        f'{st.stride} is not a stride traded for dilation')
      out.append(st.stride * ratio)
      prev = st.dilation
    return tuple(out)

  def undilated(self) -> 'Arch':
    """The architecture before output-stride conversion: :meth:`base_strides`, dilation 1."""
    return self.replace(stages=tuple(
        dataclasses.replace(st, stride=s, dilation=1)
        for st, s in zip(self.stages, self.base_strides())))

  def with_output_stride(self, output_stride: int | None) -> 'Arch':
    """Trades strides for dilation so that the body's output stride is ``output_stride``.

    Once the running stride has reached ``output_stride``, a later stage with stride 2 runs with
    stride 1 and doubles the dilation of its own and every later stage's spatial convs (paper
    Sec. 4.1.1, output stride 16: MobileNetV2 runs its 160 and 320 stages with dilation 2; Tab. 2's
    output stride 8, DeepLabv3+: the 64 and 96 stages with dilation 2, the 160 and 320 stages with
    dilation 4).  The conversion starts from the strides before any earlier conversion
    (:meth:`undilated`), so an architecture already converted to output stride 16 and one that
    never was give the same network at output stride 8 (or back at 32).  ``None`` leaves the
    architecture unchanged.
    """
    if output_stride is None:
      return self
    running, dilation, stages = self.stem.total_stride, 1, []
    if output_stride < running or output_stride & (output_stride - 1):
      raise ArchError(f'output stride {output_stride} must be a power of two >= the stem stride '
                      f'{running}')
    for st in self.undilated().stages:
      stride = st.stride
      if running * stride > output_stride:
        dilation *= stride
        stride = 1
      running *= stride
      stages.append(dataclasses.replace(st, stride=stride, dilation=dilation))
    return self.replace(stages=tuple(stages))

  # ---------------------------------------------------------------- JSON
  def to_dict(self) -> dict[str, Any]:
    return {
        'name': self.name,
        'family': self.family,
        'stem': dataclasses.asdict(self.stem),
        'stages': [{'c_in': s.c_in, 'c_out': s.c_out, 'stride': s.stride,
                    'dilation': s.dilation, 'ops': list(s.ops)} for s in self.stages],
        'last_channels': self.last_channels,
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'Arch':
    try:
      return cls(family=d['family'], stem=Stem(**d['stem']),
                 stages=tuple(Stage(c_in=s['c_in'], c_out=s['c_out'], ops=tuple(s['ops']),
                                    stride=s.get('stride', 1), dilation=s.get('dilation', 1))
                              for s in d['stages']),
                 last_channels=d.get('last_channels'), name=d.get('name', ''))
    except (KeyError, TypeError) as e:
      raise ArchError(f'not an architecture dict: {e!r}') from None

  def to_json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_json(cls, text: str) -> 'Arch':
    return cls.from_dict(json.loads(text))

  # ---------------------------------------------------------------- release notation
  def to_release_string(self) -> str:
    """The authors' notation: ``[[C_in, C_out], [ops], stride]`` per stage, ``|`` + newline.

    The notation has no dilation; as in the authors' release, each stage is written with its
    stride before output-stride conversion (:meth:`base_strides`, recovered from the dilations),
    so a searched segmentation architecture (paper Sec. 4.1.1, output stride 16) is written with
    the 160 stage's stride 2.  ``Arch.from_release_string(text).with_output_stride(os)`` rebuilds
    the network at output stride ``os``.
    """
    if self.family != MBCONV:
      raise ArchError('the release notation describes MBConv architectures only')
    return '|\n'.join(f'[[{s.c_in}, {s.c_out}], {list(s.ops)!r}, {stride}]'
                      for s, stride in zip(self.stages, self.base_strides()))

  @classmethod
  def from_release_string(cls, text: str, *, stem_channels: int | None = None,
                          last_channels: int | None = 1280, name: str = '') -> 'Arch':
    """Parses the release notation into an MBConv architecture.

    The stem width defaults to the first stage's ``C_in`` (32 for MobileNetV2-like nets) with a
    3x3 stride-2 conv; ``last_channels`` defaults to MobileNetV2's 1280.  The strides are those
    before output-stride conversion (no dilation): apply :meth:`with_output_stride` for the
    network a task runs (output stride 16 for the segmentation space, paper Sec. 4.1.1).
    """
    stages = []
    for i, chunk in enumerate(p for p in text.replace('\n', '').split('|') if p.strip()):
      try:
        (c_in, c_out), ops, stride = ast.literal_eval(chunk.strip())
        stages.append(Stage(int(c_in), int(c_out), tuple(str(o) for o in ops), int(stride)))
      except (ValueError, SyntaxError, TypeError) as e:
        raise ArchError(f'stage {i}: cannot parse {chunk.strip()!r} as '
                        f'[[C_in, C_out], [ops], stride]: {e}') from None
    if not stages:
      raise ArchError('empty release string')
    stem = Stem(channels=stem_channels or stages[0].c_in, kernel=3, stride=2)
    return cls(MBCONV, stem, tuple(stages), last_channels=last_channels, name=name)


# -------------------------------------------------------------------- constructors
def mobilenet_v2() -> Arch:
  """torchvision's MobileNetV2 (width 1.0): stage depths 1,2,3,4,3,3,1 after the stem."""
  cfg = [  # (expansion, c_out, n, stride), torchvision's inverted_residual_setting
      (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
  stages, c_in = [], 32
  for e, c, n, s in cfg:
    stages.append(Stage(c_in, c, tuple([f'k3_e{e}'] * n), s))
    c_in = c
  return Arch(MBCONV, Stem(32, 3, 2), tuple(stages), last_channels=1280, name='mobilenet_v2')


def _resnet(family: str, depths, name: str) -> Arch:
  widths = (64, 128, 256, 512)
  mult = BOTTLENECK_EXPANSION if family == RESNET_BOTTLENECK else 1
  stages, c_in = [], 64
  for i, (w, n) in enumerate(zip(widths, depths)):
    stages.append(Stage(c_in, w * mult, tuple(['k3g1'] * n), 1 if i == 0 else 2))
    c_in = w * mult
  return Arch(family, Stem(64, 7, 2, max_pool=True), tuple(stages), None, name=name)


def resnet18() -> Arch:
  return _resnet(RESNET_BASIC, (2, 2, 2, 2), 'resnet18')


def resnet34() -> Arch:
  return _resnet(RESNET_BASIC, (3, 4, 6, 3), 'resnet34')


def resnet50() -> Arch:
  return _resnet(RESNET_BOTTLENECK, (3, 4, 6, 3), 'resnet50')


SEEDS = {'mobilenet_v2': mobilenet_v2, 'resnet18': resnet18, 'resnet34': resnet34,
         'resnet50': resnet50}


def seed(name: str) -> Arch:
  """The architecture of a named seed network (``mobilenet_v2``, ``resnet18/34/50``)."""
  try:
    return SEEDS[name]()
  except KeyError:
    raise ArchError(f'unknown seed {name!r}; known: {sorted(SEEDS)}') from None


def load(path_or_name: str) -> Arch:
  """An architecture from a seed name, a JSON file or a file in the release notation."""
  if path_or_name in SEEDS:
    return seed(path_or_name)
  try:
    with open(path_or_name) as f:
      text = f.read()
  except OSError as e:
    raise ArchError(f'{path_or_name!r} is neither a seed name ({sorted(SEEDS)}) nor a readable '
                    f'file: {e}') from None
  if text.lstrip().startswith('{'):
    return Arch.from_json(text)
  return Arch.from_release_string(text)

"""Search spaces as data (paper Sec. 3.2.1, Tab. 1).

A :class:`SearchSpace` is an architecture skeleton whose every layer lists its candidate ops.  A
layer with one candidate is fixed (MobileNetV2's ``k3_e1`` block); the others are *searched*.  The
first layer of a stage changes stride/width and never offers ``skip``.

``space.derive(choices)`` turns one choice per searched layer into an :class:`~fna_jax.arch.Arch`
(skips moved last), which is what the search outputs and what the models, the remapping and the
counting consume.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from fna_jax import arch as arch_lib
from fna_jax.arch import SKIP, Arch, ArchError, Stage, Stem

MBCONV_OPS = ('k3_e3', 'k3_e6', 'k5_e3', 'k5_e6', 'k7_e3', 'k7_e6')
# Paper Tab. 1: (c_out, max layers seg, det, pose); strides as the seed's before output-stride
# conversion: 1, 2, 2, 2, 1, 2, 1.  The first row is the fixed k3_e1 block.
_MBV2_TABLE = (
    (16, 1, 1, 1, 1), (24, 4, 4, 4, 2), (32, 4, 4, 4, 2), (64, 6, 4, 4, 2),
    (96, 6, 4, 4, 1), (160, 4, 4, 4, 2), (320, 1, 1, 1, 1))
TASKS = ('seg', 'det', 'pose')


@dataclasses.dataclass(frozen=True)
class SpaceStage:
  """A stage of a search space: ``candidates[j]`` are the ops layer ``j`` may take."""
  c_in: int
  c_out: int
  candidates: tuple[tuple[str, ...], ...]
  stride: int = 1
  dilation: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'candidates', tuple(tuple(c) for c in self.candidates))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """Stem, stages of candidate lists, optional last 1x1 conv (see :class:`~fna_jax.arch.Arch`)."""
  family: str
  stem: Stem
  stages: tuple[SpaceStage, ...]
  last_channels: int | None = None
  name: str = dataclasses.field(default='', compare=False)

  def __post_init__(self):
    object.__setattr__(self, 'stages', tuple(self.stages))
    for i, st in enumerate(self.stages):
      for j, cands in enumerate(st.candidates):
        where = f'stage {i}, layer {j}'
        if not cands:
          raise ArchError(f'{where}: no candidate ops')
        if len(set(cands)) != len(cands):
          raise ArchError(f'{where}: duplicate candidates {cands}')
        if j == 0 and SKIP in cands:
          raise ArchError(f'{where}: the first layer of a stage cannot offer skip')
        for name in cands:
          try:
            op = arch_lib.parse_op(name)
          except ArchError as e:
            raise ArchError(f'{where}: {e}') from None
          if not op.is_skip and op.kind != arch_lib.op_kind(self.family):
            raise ArchError(f'{where}: op {name!r} does not belong to family {self.family!r}')
    self.skeleton()  # validates channels, strides and groups like any Arch

  def _arch_with(self, op_at) -> Arch:
    stages = tuple(Stage(st.c_in, st.c_out, tuple(op_at(i, j) for j in range(len(st.candidates))),
                         st.stride, st.dilation) for i, st in enumerate(self.stages))
    return Arch(self.family, self.stem, stages, self.last_channels, self.name)

  # ------------------------------------------------------------------ layers
  def searched_layers(self) -> list[tuple[int, int]]:
    """``(stage, layer)`` of every layer with more than one candidate, in network order."""
    return [(i, j) for i, st in enumerate(self.stages) for j, c in enumerate(st.candidates)
            if len(c) > 1]

  def layer_name(self, i: int, j: int) -> str:
    return f'stage{i}/layer{j}'

  def candidates(self, i: int, j: int) -> tuple[str, ...]:
    return self.stages[i].candidates[j]

  @property
  def num_searched(self) -> int:
    return len(self.searched_layers())

  @property
  def max_candidates(self) -> int:
    return max(len(self.candidates(i, j)) for i, j in self.searched_layers())

  def skeleton(self) -> Arch:
    """The deepest architecture of the space (each layer's first non-skip candidate)."""
    return self._arch_with(lambda i, j: next(o for o in self.candidates(i, j) if o != SKIP))

  # ------------------------------------------------------------------ derivation
  def derive(self, choices: Sequence[int | str]) -> Arch:
    """The architecture of one choice per searched layer (an index or an op name).

    Skips move to the end of their stage, as FNA++ derives ``Arch_t``.
    """
    layers = self.searched_layers()
    if len(choices) != len(layers):
      raise ArchError(f'{len(choices)} choices for {len(layers)} searched layers')
    chosen = {}
    for (i, j), c in zip(layers, choices):
      cands = self.candidates(i, j)
      if isinstance(c, str):
        if c not in cands:
          raise ArchError(f'{self.layer_name(i, j)}: {c!r} is not a candidate ({cands})')
        chosen[i, j] = c
      else:
        if not 0 <= int(c) < len(cands):
          raise ArchError(f'{self.layer_name(i, j)}: choice {int(c)} out of range '
                          f'[0, {len(cands)})')
        chosen[i, j] = cands[int(c)]
    return self._arch_with(lambda i, j: chosen.get((i, j), self.candidates(i, j)[0])
                           ).skips_last()

  def with_output_stride(self, output_stride: int | None) -> 'SearchSpace':
    """Trades strides for dilations exactly as :meth:`Arch.with_output_stride`."""
    converted = self.skeleton().with_output_stride(output_stride)
    return dataclasses.replace(self, stages=tuple(
        dataclasses.replace(st, stride=a.stride, dilation=a.dilation)
        for st, a in zip(self.stages, converted.stages)))

  def task_arch(self, arch: Arch, output_stride: int | None = None) -> Arch:
    """``arch`` (any architecture of this family) as this space's task network runs it.

    * Output stride: ``output_stride``, default the space's (16 for segmentation); another one
      is reached by :meth:`Arch.with_output_stride`, which starts from the strides before any
      conversion, so a stride-32 seed and a derived output-stride-16 architecture convert alike.
      Dilation changes neither Params nor MAdds; only the feature resolution the head sees.
    * The last 1x1 conv: :attr:`last_channels` (``None`` for segmentation: DeepLab heads read
      the last stage's 320 channels, so MobileNetV2's 1280-channel conv is not in the network).
    """
    target = output_stride or self.skeleton().output_stride
    if arch.output_stride != target:
      arch = arch.with_output_stride(target)
    return arch.replace(last_channels=self.last_channels)

  # ------------------------------------------------------------------ JSON
  def to_dict(self) -> dict[str, Any]:
    return {'name': self.name, 'family': self.family, 'stem': dataclasses.asdict(self.stem),
            'last_channels': self.last_channels,
            'stages': [{'c_in': s.c_in, 'c_out': s.c_out, 'stride': s.stride,
                        'dilation': s.dilation, 'candidates': [list(c) for c in s.candidates]}
                       for s in self.stages]}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'SearchSpace':
    return cls(d['family'], Stem(**d['stem']),
               tuple(SpaceStage(s['c_in'], s['c_out'], s['candidates'], s['stride'],
                                s['dilation']) for s in d['stages']),
               d.get('last_channels'), d.get('name', ''))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)


def mobilenet_v2_space(task: str = 'seg', *, ssdlite: bool = False,
                       ops: Sequence[str] = MBCONV_OPS) -> SearchSpace:
  """The MobileNetV2-based FNA++ space of paper Tab. 1 for ``task`` in ``('seg', 'det', 'pose')``.

  Stages after the fixed ``k3_e1`` block are searched: layer 0 among ``ops``, later layers among
  ``ops + ('skip',)``.  For segmentation the space runs at output stride 16 (the 160 and 320 stages
  with stride 1 and dilation 2) and has no last 1x1 conv (DeepLabv3 reads the 320-channel output).
  Detection and pose keep output stride 32.  ``ssdlite=True`` restricts the 160 stage's first layer
  to expansion-6 ops and keeps the 1280-channel last conv (SSDLite's heads read both).
  """
  if task not in TASKS:
    raise ValueError(f'unknown task {task!r}; expected one of {TASKS}')
  col = 1 + TASKS.index(task)
  ops = tuple(ops)
  stages, c_in = [], 32
  for row in _MBV2_TABLE:
    c_out, n, stride = row[0], row[col], row[4]
    if c_out == 16:
      cands = (('k3_e1',),)
    else:
      first = ops
      if ssdlite and c_out == 160:
        first = tuple(o for o in ops if arch_lib.parse_op(o).expansion == 6)
      cands = (first,) + tuple(ops + (SKIP,) for _ in range(n - 1))
    stages.append(SpaceStage(c_in, c_out, cands, stride))
    c_in = c_out
  space = SearchSpace(arch_lib.MBCONV, Stem(32, 3, 2), tuple(stages),
                      last_channels=1280 if ssdlite else None,
                      name=f'mobilenet_v2_{task}' + ('_ssdlite' if ssdlite else ''))
  return space.with_output_stride(16 if task == 'seg' else None)


def limit_depth(space: SearchSpace, max_layers: Sequence[int]) -> SearchSpace:
  """The same space with at most ``max_layers[i]`` layers in stage ``i`` (a smaller search)."""
  if len(max_layers) != len(space.stages):
    raise ArchError(f'{len(max_layers)} depth limits for {len(space.stages)} stages')
  stages = []
  for i, (st, n) in enumerate(zip(space.stages, max_layers)):
    if n < 1:
      raise ArchError(f'stage {i}: max_layers must be >= 1, got {n}')
    stages.append(dataclasses.replace(st, candidates=st.candidates[:n]))
  return dataclasses.replace(space, stages=tuple(stages))

"""Throughput and memory benchmarks of fna_jax on the local backend.

Sections (``--bench``, comma-separated; ``all`` runs every one):

* ``seed`` (default; alias ``train``): the MobileNetV2 ImageNet classifier's train step per conv
  implementation (``--impls``), with ``--torch`` also torchvision's: :mod:`fna_jax.bench.seed`.
* ``search``: the FNA++ search steps on the search network of ``--config`` (default
  ``configs/seg_cityscapes.py``; any task's config, e.g. ``configs/det_coco_retinanet.py``;
  ``--batch``, ``--size``, ``--seg_classes`` (the classes of a seg or det config),
  ``--head_channels``, ``--max_layers`` override it): :mod:`fna_jax.bench.search`.

What each figure means is in :mod:`fna_jax.bench.measure` (img/s, interleaved rounds, cpu
ms/step, the allocator), :mod:`fna_jax.bench.memory` (peak RSS, XLA buffers) and the section
modules.  The machine may be shared: compare ratios measured in the same run.

Examples::

  python scripts/benchmark.py --bench=seed --torch --rounds=3 --steps=5
  python scripts/benchmark.py --bench=search                    # ~20+ min on 2 cores
  python scripts/benchmark.py --bench=search --size=65 --batch=2 --max_layers=1   # quick check
  python scripts/benchmark.py --bench=search --config=configs/det_coco_retinanet.py --size=256 \
      --seg_classes=80 --batch=2 --max_layers=1 --nosearch_rss   # RetinaNet's search steps
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

from configs import seg_cityscapes
from fna_jax import cli, ops
from fna_jax.bench import measure
from fna_jax.bench import search as search_bench
from fna_jax.bench import seed as seed_bench

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'search: the config whose search network is measured (default '
    'configs/seg_cityscapes.py); --size/--batch/... below override it.', lock_config=False)
_BENCH = flags.DEFINE_list(
    'bench', ['seed'], 'Sections to run (comma-separated): seed (alias train), search, or all.')
_IMPLS = flags.DEFINE_list('impls', ['cpu', 'xla'], 'fna_jax conv implementations to time.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per step.')
_SIZE = flags.DEFINE_integer('size', 321, 'Image height and width.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per subject per round.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Rounds; each round times every subject in turn, so that all subjects see the '
    "same machine load (the machine is shared); figures are over all rounds' steps.")
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_TORCH = flags.DEFINE_bool('torch', False, "Also time torchvision's mobilenet_v2 train step.")
_HUGEPAGE_MALLOC = flags.DEFINE_bool(
    'hugepage_malloc', True,
    'Linux/glibc: re-run this script with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (malloc asks for '
    'transparent huge pages) unless already set.  XLA:CPU and torch allocate their large buffers '
    'afresh every step; with 4 KiB pages the page faults cost about as much as the compute (both '
    'frameworks ran ~1.5x faster with it here).  --nohugepage_malloc measures without.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0,
                                      'torch.set_num_threads; 0 means the number of cores.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'seed: classifier outputs.')
_LR = flags.DEFINE_float('lr', 0.01, 'seed: SGD learning rate (momentum 0.9).')
_MAX_LAYERS = flags.DEFINE_list(
    'max_layers', [], 'search: at most this many layers per stage of the seg space, one value '
    'for every stage or one per stage (default: full depth, paper Tab. 1).')
_SEG_CLASSES = flags.DEFINE_integer('seg_classes', 19,
                                    'search: classes of a segmentation or detection config.')
_HEAD_CHANNELS = flags.DEFINE_integer('head_channels', 256, 'search: DeepLabv3 head channels.')
_COMPILE_STEPS = flags.DEFINE_integer(
    'compile_steps', 20, 'search: untimed calls of each step before timing (new paths each call); '
    'the compilations they trigger are counted.')
_SEED_PATH = flags.DEFINE_integer('path_seed', 0, 'search: RNG seed of the sampled path P.')
_SEARCH_RSS = flags.DEFINE_bool(
    'search_rss', True, 'search: time the steps in a fresh process, then measure the peak RSS of '
    'each step kind alone in a fresh process (executables from the persistent compilation cache '
    'the timing process filled).  --nosearch_rss: everything in this process, no RSS figures.')
_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', '', 'search: persistent compilation cache directory (default: a '
    'temporary one, removed at the end).  Reusing one skips compilation in later runs.  (Not named '
    '--xla_*: JAX hashes --xla* command-line arguments into its cache keys.)')


def _plan() -> measure.TimingPlan:
  return measure.TimingPlan(_WARMUP.value, _ROUNDS.value, _STEPS.value)


def bench_seed() -> None:
  seed_bench.run(_IMPLS.value, batch=_BATCH.value, size=_SIZE.value,
                 num_classes=_NUM_CLASSES.value, lr=_LR.value, plan=_plan(),
                 with_torch=_TORCH.value, torch_threads=_TORCH_THREADS.value)


def bench_search() -> None:
  config = search_bench.configure(
      _CONFIG.value or seg_cityscapes.get_config(), batch=_BATCH.value, size=_SIZE.value,
      num_classes=_SEG_CLASSES.value, head_channels=_HEAD_CHANNELS.value,
      max_layers=_MAX_LAYERS.value)
  p = _plan()
  opts = search_bench.Options(compile_steps=_COMPILE_STEPS.value, path_seed=_SEED_PATH.value,
                              warmup=p.warmup, rounds=p.rounds, steps=p.steps)
  search_bench.run(config, opts, rss=_SEARCH_RSS.value, cache_dir=_CACHE_DIR.value)


BENCHES = {'seed': bench_seed, 'search': bench_search}
BENCH_ALIASES = {'train': 'seed'}  # --bench=train: the seed's train step


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  names = []
  for b in _BENCH.value:
    for name in (list(BENCHES) if b == 'all' else [BENCH_ALIASES.get(b, b)]):
      if name not in BENCHES:
        raise app.UsageError(f'--bench: unknown section {b!r}; known: {sorted(BENCHES)}, '
                             f'{sorted(BENCH_ALIASES)} and all')
      if name not in names:
        names.append(name)
  bad = [i for i in _IMPLS.value if i not in ops.IMPLS]
  if bad:
    raise app.UsageError(f'--impls: unknown conv impl(s) {bad}; known: {ops.IMPLS}')
  if _HUGEPAGE_MALLOC.value:
    cli.reexec_with_hugepage_malloc()
  for name in names:
    BENCHES[name]()


if __name__ == '__main__':
  cli.run(main, hugepage_malloc=False)  # main re-executes unless --nohugepage_malloc

"""The command-line scripts run as subprocesses, as a user runs them.

Happy paths (``slow``): the whole FNA++ pipeline of paper Sec. 3 (architecture adaptation, then
parameter adaptation, then evaluation) through ``scripts/fna.py`` and stage by stage through
``scripts/search.py``, ``scripts/adapt.py`` and ``scripts/evaluate.py``; the Tab. 13 remapping
ablation through ``scripts/ablation.py``; a Tab. 13 variant of ``configs/demo.py`` through
``scripts/fna.py``.  The config is ``configs/demo.py`` made tiny by command-line overrides only
(:data:`TINY`): 32x32 images, one searched layer, a few steps.  Each script runs once per module;
the tests share its outputs through module-scoped fixtures, and every run shares one XLA
compilation cache and one cached seed pretraining.

Error paths (default set, no compilation): each script exits non-zero with one
``<script>: error: ...`` line that names the problem, without a Python traceback.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import demo as demo_config
from fna_jax import arch as arch_lib
from fna_jax.arch import SKIP
from fna_jax import build
from fna_jax.data import demo
from fna_jax.models.init import random_like, variable_shapes
from fna_jax.runtime.checkpoint import load_variables, save_variables
from fna_jax.tasks.seg import cityscapes, demo_data, visualize
from fna_jax.train import ablation
from fna_jax.train.ablation import ROWS
from fna_jax.train.adapt_loop import build_network

REPO = Path(__file__).resolve().parents[1]
DEMO = 'configs/demo.py'
CITYSCAPES = 'configs/seg_cityscapes.py'
RUN_TIMEOUT_S = 1200
ERROR_TIMEOUT_S = 300

# configs/demo.py made tiny on the command line.  One searched layer (stage 2, layer 1: k3_e3 or
# skip), 40 training images (32 weight / 8 arch at arch_fraction 0.2) -> 4 search steps per
# epoch, 2 epochs of which 1 is warm-up; 3 fine-tuning steps; 6 validation images.
TINY = {
    'data.num_train': 40, 'data.num_val': 6, 'data.image_size': 32, 'data.crop_size': 32,
    'space.max_layers': (1, 1, 2, 1, 1, 1, 1), 'space.ops': ('k3_e3',), 'head.channels': 16,
    'search.epochs': 2, 'search.warmup_epochs': 1, 'search.w_lr_warmup_epochs': 1,
    'search.batch_size': 8, 'search.random_candidates': 2,
    'adapt.steps': 3, 'adapt.warmup_steps': 1, 'adapt.bn_recalib_steps': 1,
    'adapt.batch_size': 8, 'adapt.crop_size': 32,
    'eval.batch_size': 8, 'cost_input_size': (32, 32),
    'seed_net.pretrain.steps': 2, 'seed_net.pretrain.batch_size': 8,
    'seed_net.pretrain.image_size': 32, 'seed_net.pretrain.num_examples': 16,
}
NUM_VISUALIZE = demo_config.get_config().eval.num_visualize  # 4 PNGs (of 6 val images)


def override_args(values: dict) -> list[str]:
  """``--config.a.b=v`` arguments (tuples as ``v1,v2``, the syntax ml_collections parses)."""
  fmt = lambda v: ','.join(map(str, v)) if isinstance(v, tuple) else str(v)
  return [f'--config.{k}={fmt(v)}' for k, v in values.items()]


def tiny_config(variant=None, **extra):
  """The config the scripts see with :data:`TINY` (and ``extra``) on their command line."""
  c = demo_config.get_config(variant)
  for key, value in {**TINY, **extra}.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def script_env(home: Path) -> dict:
  """CPU, one device (conftest's 8 simulated devices are for this process), a private HOME:
  the XLA compilation cache is ``$HOME/.cache/fna_jax/xla``."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', HOME=str(home))
  env.pop('XLA_FLAGS', None)
  return env


def run_script(name: str, *args, env: dict, timeout=RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, f'scripts/{name}', *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert proc.returncode == 0, (f'rc {proc.returncode}\n{proc.stdout[-3000:]}\n'
                                f'{proc.stderr[-5000:]}')
  return proc


def read_json(path) -> dict:
  return json.loads(Path(path).read_text())


def release_fields(arch: arch_lib.Arch) -> list:
  """Channels, ops, stride and dilation of each stage (not the last 1x1 conv)."""
  return [(st.c_in, st.c_out, st.ops, st.stride, st.dilation) for st in arch.stages]


def from_release(text: str, like: arch_lib.Arch) -> arch_lib.Arch:
  """The release notation (strides before the output-stride conversion) converted as ``like``."""
  return arch_lib.Arch.from_release_string(text).with_output_stride(like.output_stride)


def param_count(variables) -> int:
  """Scalars of ``variables['params']``, counted from the saved arrays themselves."""
  return sum(int(np.size(x)) for x in jax.tree.leaves(variables['params']))


# =========================================================================== happy paths (slow)
@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """HOME (with the XLA cache) and the seed cache shared by every run of this module."""
  base = tmp_path_factory.mktemp('scripts')
  env = script_env(base / 'home')
  return env, [*override_args(TINY), f'--config.seed_net.cache_dir={base / "seeds"}'], base


@pytest.fixture(scope='module')
def fna_run(shared):
  env, tiny, base = shared
  workdir = base / 'fna'
  proc = check_ok(run_script('fna.py', f'--config={DEMO}', f'--workdir={workdir}', *tiny,
                             env=env))
  return workdir, proc


@pytest.fixture(scope='module')
def stage_runs(shared):
  """search.py, then adapt.py on its directory, then evaluate.py on the adaptation's."""
  env, tiny, base = shared
  search_dir, adapt_dir = base / 'stages' / 'search', base / 'stages' / 'adapt'
  procs = {
      'search': check_ok(run_script('search.py', f'--config={DEMO}', f'--workdir={search_dir}',
                                    *tiny, env=env)),
      'adapt': check_ok(run_script('adapt.py', f'--config={DEMO}', f'--search_dir={search_dir}',
                                   *tiny, env=env)),  # default workdir: <search_dir>/../adapt
      'evaluate': check_ok(run_script('evaluate.py', f'--config={DEMO}',
                                      f'--model_dir={adapt_dir}', *tiny,
                                      f'--config.eval.num_visualize={TINY["data.num_val"]}',
                                      env=env)),
  }
  return search_dir, adapt_dir, procs


@pytest.fixture(scope='module')
def ablation_run(shared):
  env, tiny, base = shared
  workdir = base / 'ablation'
  proc = check_ok(run_script('ablation.py', f'--config={DEMO}', f'--workdir={workdir}',
                             '--rows=1,4', *tiny, env=env))
  return workdir, proc


@pytest.fixture(scope='module')
def variant_run(shared):
  env, tiny, base = shared
  workdir = base / 'rand_both'
  proc = check_ok(run_script('fna.py', f'--config={DEMO}:rand_both', f'--workdir={workdir}',
                             *tiny, env=env))
  return workdir, proc


def check_report(workdir: Path, search_dir: Path | None = None) -> dict:
  """report.json/report.md of ``scripts/fna.py`` against the stages' own outputs."""
  search_dir = search_dir or workdir / 'search'
  adapt_dir = workdir / 'adapt'
  report = read_json(workdir / 'report.json')
  ev = read_json(adapt_dir / 'eval' / 'eval.json')
  adapt = read_json(adapt_dir / 'summary.json')
  assert 0.0 <= report['miou'] <= 1.0
  assert report['miou'] == ev['miou'] and report['num_eval_images'] == TINY['data.num_val']
  # The reported architecture is the search's, in the release notation.
  arch = arch_lib.Arch.from_json((search_dir / 'arch.json').read_text())
  assert release_fields(from_release(report['arch'], arch)) == release_fields(arch)
  # Params: the scalars of the saved fine-tuned weights; MAdds: one figure in every file.
  variables, _ = load_variables(adapt_dir / 'model')
  assert report['params'] == param_count(variables) > 0
  assert report['madds'] > 0
  assert report['madds'] == adapt['madds'] == ev['madds']
  assert report['cost_input_size'] == list(TINY['cost_input_size'])
  md = (workdir / 'report.md').read_text()
  assert f'{100 * report["miou"]:.2f}% mIoU' in md and report['metric'] == 'miou'
  assert report['arch'] in md
  pngs = sorted(p.name for p in (adapt_dir / 'eval' / 'predictions').glob('*.png'))
  assert pngs == [f'{i:03d}.png' for i in range(NUM_VISUALIZE)]
  assert Path(report['dirs']['search']) == search_dir.resolve()
  return report


@pytest.mark.slow
def test_fna_end_to_end_writes_a_report(fna_run):
  workdir, proc = fna_run
  report = check_report(workdir)
  row = ablation.VARIANTS['fna++']
  assert (report['search_init'], report['adapt_init']) == (row.search_init, row.adapt_init)
  for stage in ('== search ->', '== parameter adaptation (supernet) ->', '== evaluation ->'):
    assert stage in proc.stdout


@pytest.mark.slow
def test_fna_rerun_skips_finished_stages(fna_run, shared):
  env, tiny, _ = shared
  workdir, _ = fna_run
  outputs = [workdir / 'search' / 'summary.json', workdir / 'adapt' / 'model',
             workdir / 'adapt' / 'summary.json', workdir / 'adapt' / 'eval' / 'eval.json']
  before = {p: p.stat().st_mtime_ns for p in outputs}
  report = (workdir / 'report.json').read_text()
  proc = check_ok(run_script('fna.py', f'--config={DEMO}', f'--workdir={workdir}', *tiny,
                             env=env))
  for stage in ('search', 'parameter adaptation', 'evaluation'):
    assert f'== {stage}: done before' in proc.stdout, proc.stdout[-3000:]
  assert not re.search(r'^(search|adapt) step ', proc.stdout, re.M)  # no training step ran
  assert {p: p.stat().st_mtime_ns for p in outputs} == before
  assert (workdir / 'report.json').read_text() == report


@pytest.mark.slow
def test_search_stage_outputs(stage_runs):
  search_dir, _, procs = stage_runs
  config = tiny_config()
  space = build.space(config)
  arch = arch_lib.Arch.from_json((search_dir / 'arch.json').read_text())
  assert release_fields(from_release((search_dir / 'arch.txt').read_text(), arch)) == (
      release_fields(arch))
  summary = read_json(search_dir / 'summary.json')
  assert len(summary['choices']) == space.num_searched == 1
  assert space.derive(summary['choices']) == arch
  assert summary['params'] > 0 and summary['madds'] > 0
  assert summary['cost_input_size'] == list(TINY['cost_input_size'])
  # The searched supernet: a record of the space and weights for every candidate of it.
  sup_vars, meta = load_variables(search_dir / 'supernet')
  assert meta['space'] == space.to_dict()
  assert param_count(sup_vars) > summary['params']  # the supernet holds more than one path
  assert 'derived architecture (release notation)' in procs['search'].stdout


@pytest.mark.slow
def test_adapt_stage_outputs(stage_runs):
  search_dir, adapt_dir, procs = stage_runs
  search_summary = read_json(search_dir / 'summary.json')
  summary = read_json(adapt_dir / 'summary.json')
  assert summary['init'] == 'supernet' and summary['steps'] == TINY['adapt.steps']
  assert Path(summary['search_dir']) == search_dir.resolve()
  arch = arch_lib.Arch.from_json((search_dir / 'arch.json').read_text())
  assert arch_lib.Arch.from_json((adapt_dir / 'arch.json').read_text()) == arch
  model, variables, meta = build.load_network(str(adapt_dir / 'model'), tiny_config())
  assert arch_lib.Arch.from_dict(meta['arch']) == arch
  assert meta['outputs'] == {'num_classes': demo.NUM_CLASSES}
  assert summary['params'] == param_count(variables)
  # The search counted the same network (the demo searches and fine-tunes with DeepLabv3+).
  assert (summary['params'], summary['madds']) == (search_summary['params'],
                                                   search_summary['madds'])
  assert 'remapped from the searched supernet' in procs['adapt'].stdout
  assert f'adapt step {TINY["adapt.steps"]}/{TINY["adapt.steps"]}' in procs['adapt'].stdout


@pytest.mark.slow
def test_evaluate_stage_outputs_match_an_independent_evaluation(stage_runs):
  """eval.json, iou.txt and the PNGs against predictions made here from the saved network."""
  _, adapt_dir, _ = stage_runs
  out = adapt_dir / 'eval'  # the default: <model_dir>/eval
  ev = read_json(out / 'eval.json')
  assert ev['mode'] == 'whole' and ev['num_images'] == TINY['data.num_val']
  assert 0.0 <= ev['miou'] <= 1.0

  # The script's prediction of every validation image, read back from predictions/NNN.png
  # (input | ground truth | prediction; the stage run shows all of them).
  size, n, k = TINY['data.image_size'], TINY['data.num_val'], demo.NUM_CLASSES
  val = demo_data.DemoSegmentation('val', n, size, seed=demo_config.get_config().data.data_seed)
  examples = [val[i] for i in range(n)]
  labels = np.stack([e['label'] for e in examples]).astype(np.int64)
  pngs = sorted((out / 'predictions').glob('*.png'))
  assert [p.name for p in pngs] == [f'{i:03d}.png' for i in range(n)]
  palette = visualize.demo_palette().astype(np.int64)

  def decode(panel):  # colours -> classes; every pixel must be exactly a palette colour
    dist = np.abs(panel[..., None, :].astype(np.int64) - palette).sum(-1)
    assert np.all(dist.min(-1) == 0)
    return dist.argmin(-1)

  shown = []
  for i, p in enumerate(pngs):
    rgb = np.asarray(Image.open(p).convert('RGB'))
    assert rgb.shape == (size, 3 * size, 3)
    valid = labels[i] != 255  # ignored pixels are drawn black
    np.testing.assert_array_equal(decode(rgb[:, size:2 * size][valid]), labels[i][valid])
    shown.append(decode(rgb[:, 2 * size:]))
  shown = np.stack(shown)

  # eval.json from those predictions: confusion matrix and IoU = TP / (TP + FP + FN) in numpy
  # (float64 on both sides: equal up to rounding).
  counted = labels != 255
  cm = np.bincount(labels[counted] * k + shown[counted], minlength=k * k).reshape(k, k)
  tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
  iou = [tp[c] / union[c] if union[c] else None for c in range(k)]
  got = [ev['iou'][name] for name in demo.CLASS_NAMES]
  assert [g is None for g in got] == [i is None for i in iou]
  defined = [i for i in iou if i is not None]
  np.testing.assert_allclose([g for g in got if g is not None], defined, rtol=1e-12)
  np.testing.assert_allclose(ev['miou'], np.mean(defined), rtol=1e-12)
  np.testing.assert_allclose(ev['pixel_accuracy'], np.trace(cm) / cm.sum(), rtol=1e-12)

  # ... and those predictions are the saved network's: its forward here, on the images
  # ImageNet-normalised by hand.  Here it runs op by op, in the script under jit on another
  # batch (8, padded), so a pixel whose two best logits nearly tie may come out differently;
  # allow 0.2% of the pixels (a wrong network, image or colour differs in far more).
  model, variables, _ = build.load_network(str(adapt_dir / 'model'), tiny_config())
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  images = np.stack([(e['image'] / 255.0 - mean) / std for e in examples]).astype(np.float32)
  preds = np.asarray(jax.numpy.argmax(model.apply(variables, images, False), -1))
  assert np.mean(preds == shown) >= 0.998

  table = (out / 'iou.txt').read_text()
  for name, v in zip(demo.CLASS_NAMES, iou):
    assert re.search(rf'^{name}\s+{"n/a" if v is None else f"{100 * v:.2f}"}$', table, re.M), name
  assert re.search(rf'^mIoU\s+{100 * np.mean(defined):.2f}\b', table, re.M), table


@pytest.mark.slow
def test_ablation_rows_share_one_search(ablation_run):
  workdir, proc = ablation_run
  results = read_json(workdir / 'ablation.json')
  assert list(results) == ['1', '4']
  search_dir = workdir / 'search_remap'
  assert not (workdir / 'search_random').exists()
  assert proc.stdout.count('== search ->') == 1  # row 1 searched ...
  assert f'== search: done before ({search_dir})' in proc.stdout  # ... and row 4 reused it
  md = (workdir / 'ablation.md').read_text()
  for row in (1, 4):
    search_init, adapt_init, name = ROWS[row].search_init, ROWS[row].adapt_init, ROWS[row].method
    r = results[str(row)]
    report = check_report(workdir / f'row{row}', search_dir)
    assert r['method'] == name
    assert (r['search_init'], r['adapt_init']) == (search_init, adapt_init)
    assert {k: r[k] for k in report} == report
    assert read_json(workdir / f'row{row}' / 'adapt' / 'summary.json')['init'] == adapt_init
    assert f'| ({row}) | {name} |' in md
    assert f'| {r["metric_text"]} |' in md and r['metric'] == 'miou'
  assert results['1']['arch'] == results['4']['arch']
  assert 'remapped from the searched supernet' in proc.stdout
  assert 'adapt: random initialisation' in proc.stdout
  # Same search, data, seed and steps: only the initialisation differs between the two rows,
  # so their fine-tuned backbones differ if and only if row 4 did not start from the supernet.
  row1, _ = load_variables(workdir / 'row1' / 'adapt' / 'model')
  row4, _ = load_variables(workdir / 'row4' / 'adapt' / 'model')
  distance = sum(float(np.abs(a - b).sum()) for a, b in zip(
      jax.tree.leaves(row1['params']['backbone']), jax.tree.leaves(row4['params']['backbone'])))
  assert distance > 0


@pytest.mark.slow
def test_demo_variant_rand_both(variant_run):
  """Tab. 13 row 5: neither the supernet nor the derived network starts from the seed."""
  workdir, proc = variant_run
  report = check_report(workdir)
  assert (report['search_init'], report['adapt_init']) == ('random', 'random')
  assert 'supernet: random initialisation' in proc.stdout
  assert 'adapt: random initialisation' in proc.stdout
  assert 'seed:' not in proc.stdout  # no seed was needed at all


# =========================================================================== error paths
@pytest.fixture
def env(tmp_path):
  return script_env(tmp_path / 'home')


def check_error(proc: subprocess.CompletedProcess, script: str, *fragments: str) -> str:
  """Non-zero exit, one ``<script>: error:`` line naming ``fragments``, no traceback."""
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-5000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith(f'{script}: error: ')]
  assert len(lines) == 1, proc.stderr[-5000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


SCRIPT_ARGS = {  # what each script needs besides --config
    'search.py': ['--workdir={tmp}/w'], 'fna.py': ['--workdir={tmp}/w'],
    'ablation.py': ['--workdir={tmp}/w'], 'adapt.py': ['--search_dir={tmp}/s'],
    'evaluate.py': ['--model_dir={tmp}/m'], 'count_cost.py': ['--arch=mobilenet_v2'],
}


@pytest.mark.parametrize('script', sorted(SCRIPT_ARGS))
def test_unknown_config_key(script, env, tmp_path):
  args = [a.format(tmp=tmp_path) for a in SCRIPT_ARGS[script]]
  proc = run_script(script, f'--config={DEMO}', *args, '--config.search.no_such_key=1', env=env,
                    timeout=ERROR_TIMEOUT_S)
  check_error(proc, script, '--config.search.no_such_key=1', "'no_such_key'")
  assert not (tmp_path / 'w').exists()


def test_misspelt_config_key_suggests_the_key(env, tmp_path):
  proc = run_script('search.py', f'--config={DEMO}', f'--workdir={tmp_path}/w',
                    '--config.data.num_trian=3', env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'search.py', 'num_trian', 'Did you mean "num_train"')


def test_unknown_demo_variant(env, tmp_path):
  proc = run_script('fna.py', f'--config={DEMO}:nope', f'--workdir={tmp_path}/w', env=env,
                    timeout=ERROR_TIMEOUT_S)
  line = check_error(proc, 'fna.py', "'nope'")
  for variant in ablation.VARIANTS:  # the message lists what exists
    assert f"'{variant}'" in line
  assert not (tmp_path / 'w').exists()


def test_missing_config_file(env, tmp_path):
  proc = run_script('fna.py', '--config=configs/nope.py', f'--workdir={tmp_path}/w', env=env,
                    timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'fna.py', '--config')
  assert 'configs/nope.py' in proc.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('script', ['search.py', 'fna.py'])
@pytest.mark.parametrize('with_seed', [False, True], ids=['no_seed', 'seed_given'])
def test_cityscapes_not_prepared(script, with_seed, env, tmp_path):
  """No Cityscapes under data_dir: the message names the folder TFDS reads and the zips."""
  data_dir = tmp_path / 'no_data'
  args = [f'--config={CITYSCAPES}', f'--config.data.data_dir={data_dir}',
          f'--workdir={tmp_path}/w']
  if with_seed:
    args.append(f'--config.seed_net.checkpoint={tmp_path}/seeds/mobilenet_v2')
  proc = run_script(script, *args, env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, script, 'Cityscapes is not prepared',
              str(data_dir / 'cityscapes' / 'semantic_segmentation' / cityscapes.VERSION))
  for zip_name in cityscapes.ZIP_FILES:  # and how to get them (the lines after the error)
    assert zip_name in proc.stderr
  assert f'python -m fna_jax.tasks.seg.cityscapes --prepare --manual_dir M --data_dir {data_dir}' \
      in proc.stderr


def tiny_arch(with_layer: bool) -> arch_lib.Arch:
  """The tiny space's network with its one searched layer kept (k3_e3) or skipped."""
  return build.space(tiny_config()).derive(['k3_e3' if with_layer else SKIP])


def write_search_dir(path: Path, arch_text: str, choices) -> Path:
  """What read_search needs of a finished search: arch.json and summary.json."""
  path.mkdir(parents=True)
  (path / 'arch.json').write_text(arch_text)
  (path / 'summary.json').write_text(json.dumps({'choices': choices}))
  return path


@pytest.mark.parametrize('contents', ['garbage', 'truncated', 'no_stages'])
def test_corrupt_arch_json(contents, env, tmp_path):
  good = tiny_arch(True).to_json()
  text = {'garbage': 'not json\n', 'truncated': good[:len(good) // 2],
          'no_stages': json.dumps({k: v for k, v in json.loads(good).items()
                                   if k != 'stages'})}[contents]
  search_dir = write_search_dir(tmp_path / 'search', text, ['k3_e3'])
  proc = run_script('adapt.py', f'--config={DEMO}', f'--search_dir={search_dir}',
                    f'--workdir={tmp_path}/adapt', *override_args(TINY), env=env,
                    timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'adapt.py', f'{search_dir / "arch.json"}: cannot read the derived '
              'architecture')
  # count_cost.py on the same file.
  proc = run_script('count_cost.py', f'--config={DEMO}', f'--arch={search_dir / "arch.json"}',
                    env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'count_cost.py', 'cannot read an architecture', str(search_dir))


@pytest.mark.parametrize('state', ['empty', 'interrupted'])
def test_adapt_on_a_search_that_did_not_finish(state, env, tmp_path):
  search_dir = tmp_path / 'search'
  (search_dir / ('checkpoints/4' if state == 'interrupted' else '')).mkdir(parents=True)
  if state == 'interrupted':  # a kill after a checkpoint: no arch.json/summary.json yet
    (search_dir / 'alphas.npz').write_bytes(b'')
  proc = run_script('adapt.py', f'--config={DEMO}', f'--search_dir={search_dir}',
                    f'--workdir={tmp_path}/adapt', env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'adapt.py', f'{search_dir} is not a finished search run',
              str(search_dir / 'arch.json'), 'scripts/search.py')


def test_adapt_from_a_missing_seed_checkpoint(env, tmp_path):
  """adapt.init=seed (FNA, Tab. 13 row 2) with a seed checkpoint that is not there."""
  arch = tiny_arch(True)
  search_dir = write_search_dir(tmp_path / 'search', arch.to_json(), ['k3_e3'])
  seed = tmp_path / 'seeds' / 'mobilenet_v2'
  proc = run_script('adapt.py', f'--config={DEMO}', f'--search_dir={search_dir}',
                    f'--workdir={tmp_path}/adapt', *override_args(TINY),
                    '--config.adapt.init=seed', f'--config.seed_net.checkpoint={seed}', env=env,
                    timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'adapt.py', f'no seed checkpoint at {seed}',
              'python -m weights_convert --arch mobilenet_v2')


def save_model(path: Path, variables_of: arch_lib.Arch, meta_of: arch_lib.Arch, config) -> Path:
  """A model directory as run_adapt writes it, with the variables of one network (random) and
  the record of another."""
  shapes = variable_shapes(build_network(variables_of, config), (1, 32, 32, 3), train=False)
  save_variables(str(path), random_like(shapes, 0), build.network_meta(config, meta_of, config.adapt.head))
  return path


@pytest.mark.parametrize('where', ['empty_dir', 'search_dir', 'missing_dir'])
def test_evaluate_without_a_model(where, env, tmp_path):
  model_dir = tmp_path / 'run'
  if where == 'empty_dir':
    model_dir.mkdir()
  elif where == 'search_dir':  # a search's directory: a supernet/, no model/
    write_search_dir(model_dir, tiny_arch(True).to_json(), ['k3_e3'])
    (model_dir / 'supernet').mkdir()
  proc = run_script('evaluate.py', f'--config={DEMO}', f'--model_dir={model_dir}',
                    f'--out_dir={tmp_path}/eval', env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'evaluate.py', f'no saved network at {model_dir}')
  assert not (tmp_path / 'eval').exists()


def test_evaluate_a_supernet(env, tmp_path):
  """--model_dir at a search's supernet/: weights, but no network architecture to rebuild."""
  sup = tmp_path / 'search' / 'supernet'
  space = build.space(tiny_config())
  save_variables(str(sup), {'params': {'w': np.zeros(3, np.float32)},
                            'batch_stats': {'m': np.zeros(3, np.float32)}},
                 {'space': space.to_dict(), 'num_classes': 6})
  proc = run_script('evaluate.py', f'--config={DEMO}', f'--model_dir={sup}',
                    f'--out_dir={tmp_path}/eval', env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'evaluate.py', f'{sup} holds no fine-tuned network', 'parameter adaptation')


def first_mismatch(expected, got) -> str:
  """The first path (sorted key tuples) that is missing, unexpected or of another shape."""
  flat = lambda t: {tuple(str(getattr(k, 'key', k)) for k in p): np.shape(x)
                    for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  e, g = flat(expected), flat(got)
  bad = sorted(k for k in set(e) | set(g) if e.get(k) != g.get(k))
  return '/'.join(bad[0])


def test_evaluate_a_model_of_another_architecture(env, tmp_path):
  """Weights of the network without the searched layer, recorded as the one with it."""
  config = tiny_config()
  with_layer, without = tiny_arch(True), tiny_arch(False)
  model_dir = save_model(tmp_path / 'adapt' / 'model', without, with_layer, config)
  expected = variable_shapes(build_network(with_layer, config), (1, 32, 32, 3), train=False)
  saved, _ = load_variables(str(model_dir))
  path = first_mismatch(expected, saved)
  assert 'stage2' in path  # the comparison is about the one layer the networks differ in
  proc = run_script('evaluate.py', f'--config={DEMO}', f'--model_dir={tmp_path / "adapt"}',
                    *override_args(TINY), env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'evaluate.py', 'does not match the model', f"parameter '{path}'")
  assert not (tmp_path / 'adapt' / 'eval').exists()


def test_evaluate_a_model_of_another_number_of_classes(env, tmp_path):
  """A demo network (6 classes) evaluated with the Cityscapes config (19 classes)."""
  config = tiny_config()
  arch = tiny_arch(True)
  model_dir = save_model(tmp_path / 'adapt' / 'model', arch, arch, config)
  proc = run_script('evaluate.py', f'--config={CITYSCAPES}', f'--model_dir={model_dir}',
                    f'--config.data.data_dir={tmp_path}/no_data', env=env,
                    timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'evaluate.py', f'{model_dir} predicts num_classes={demo.NUM_CLASSES}',
              f'has num_classes={cityscapes.NUM_CLASSES}')


def test_ablation_unknown_row(env, tmp_path):
  proc = run_script('ablation.py', f'--config={DEMO}', f'--workdir={tmp_path}/w', '--rows=1,9',
                    env=env, timeout=ERROR_TIMEOUT_S)
  check_error(proc, 'ablation.py', '--rows: no row 9', ','.join(map(str, sorted(ROWS))))
  assert not (tmp_path / 'w' / 'row1').exists()  # checked before row 1 ran

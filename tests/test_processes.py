"""Runs in other processes: a real SIGTERM to ``scripts/search.py`` and a 2-process (multi-host) run.

* ``scripts/search.py`` on the demo at the size of ``tests/test_search_loop.py``'s tiny config,
  stopped by SIGTERM after its first checkpoint past warm-up, exits 0 with a checkpoint; the
  same command then finishes with the architecture and alpha history of an uninterrupted run.
* Two CPU processes of 2 devices each, joined by ``jax.distributed.initialize`` (through
  ``fna_jax.runtime.loop.setup_runtime``), run weight and arch steps of a tiny supernet on a 4-device
  global mesh from process-local halves of each batch (``put_batch``) and end where one process
  with 4 devices ends (``tests/_multiprocess_worker.py`` is the per-process script).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import _multiprocess_worker as worker
from fna_jax.runtime import mesh as mesh_lib

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ SIGTERM and resume
# configs/demo.py plus the two keys it lacks (a locked config takes no new keys from the command
# line); everything else is set by command-line overrides, as a user would.
TINY_CONFIG = '''
from configs import demo


def get_config():
  c = demo.get_config()
  c.space.ops = ('k3_e3', 'k5_e3')
  c.xla_cache_dir = {cache!r}
  return c
'''
OVERRIDES = ('--config.data.num_train=80', '--config.data.image_size=32',
             '--config.data.crop_size=32', '--config.space.max_layers=1,1,2,1,1,1,1',
             '--config.head.channels=16', '--config.search.init=random',
             '--config.search.epochs=3', '--config.search.warmup_epochs=1',
             '--config.search.batch_size=8', '--config.cost_input_size=32,32',
             '--config.log_every=2', '--config.checkpoint_every=3')
# 80 examples, 20% held out -> 64 weight examples / batch 8 = 8 steps per epoch.
WARMUP_STEPS, TOTAL_STEPS = 8, 24
RUN_TIMEOUT_S = 900


def _env(tmp_path: Path, local_devices: int | None = None) -> dict:
  """CPU only, a private HOME; one device unless ``local_devices`` is given."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', HOME=str(tmp_path / 'home'))
  env.pop('XLA_FLAGS', None)  # conftest's 8 simulated devices are for this process only
  if local_devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
  return env


def _search_cmd(config: Path, workdir: Path) -> list[str]:
  return [sys.executable, 'scripts/search.py', f'--config={config}', f'--workdir={workdir}',
          *OVERRIDES]


def _run_search(config: Path, workdir: Path, env: dict) -> subprocess.CompletedProcess:
  r = subprocess.run(_search_cmd(config, workdir), cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=RUN_TIMEOUT_S)
  assert r.returncode == 0, f'rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
  return r


def _checkpoint_steps(workdir: Path) -> list[int]:
  """Steps of the finished checkpoints (orbax renames ``<step>.orbax-checkpoint-tmp-*`` at the end)."""
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _logged_steps(stdout: str) -> list[int]:
  return [int(s) for s in re.findall(rf'^search step (\d+)/{TOTAL_STEPS}\b', stdout, re.M)]


@pytest.mark.slow
def test_sigterm_then_rerun_ends_like_an_uninterrupted_run(tmp_path):
  config = tmp_path / 'tiny.py'
  config.write_text(TINY_CONFIG.format(cache=str(tmp_path / 'xla_cache')))
  env = _env(tmp_path)

  full = tmp_path / 'full'
  r = _run_search(config, full, env)
  assert _logged_steps(r.stdout)[-1] == TOTAL_STEPS  # the overrides took effect

  killed = tmp_path / 'killed'
  out, err = tmp_path / 'killed.stdout', tmp_path / 'killed.stderr'
  with open(out, 'w') as fo, open(err, 'w') as fe:
    proc = subprocess.Popen(_search_cmd(config, killed), cwd=REPO, env=env, stdout=fo, stderr=fe)
    try:
      deadline = time.monotonic() + RUN_TIMEOUT_S
      # Stop after warm-up, so the arch optimiser's state and the alpha history must survive.
      while not [s for s in _checkpoint_steps(killed) if s > WARMUP_STEPS]:
        assert proc.poll() is None, f'ended (rc {proc.returncode}) before the checkpoint to ' \
                                    f'wait for:\n{out.read_text()[-3000:]}\n{err.read_text()[-3000:]}'
        assert time.monotonic() < deadline, 'no checkpoint past warm-up in time'
        time.sleep(0.05)
      proc.send_signal(signal.SIGTERM)
      rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  stdout, stderr = out.read_text(), err.read_text()
  assert rc == 0, f'rc {rc}\n{stdout[-3000:]}\n{stderr[-3000:]}'
  assert f'received signal {int(signal.SIGTERM)}: checkpointing and stopping' in stderr
  m = re.search(r'^stopped at step (\d+); rerun the same command to resume$', stdout, re.M)
  assert m, stdout[-3000:]
  stopped = int(m.group(1))
  assert WARMUP_STEPS < stopped < TOTAL_STEPS, stopped  # a stop mid-search, not at its end
  assert _checkpoint_steps(killed)[-1] == stopped
  assert not (killed / 'arch.json').exists()

  r = _run_search(config, killed, env)
  assert f'at step {stopped}' in r.stdout and 'resumed from' in r.stdout, r.stdout[-3000:]
  assert min(_logged_steps(r.stdout)) > stopped  # it went on, not from the start

  assert json.loads((killed / 'arch.json').read_text()) == json.loads(
      (full / 'arch.json').read_text())
  a, b = np.load(killed / 'alphas.npz'), np.load(full / 'alphas.npz')
  np.testing.assert_array_equal(a['steps'], b['steps'])
  np.testing.assert_array_equal(a['steps'], np.arange(2, TOTAL_STEPS + 1, 2))
  np.testing.assert_allclose(a['probs'], b['probs'], atol=1e-6)
  assert not np.allclose(b['probs'][0], b['probs'][-1])  # alphas moved: the check has teeth


# ------------------------------------------------------------------ two processes
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _norm(arrays) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in arrays)))


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 4, reason='the reference needs 4 (simulated) devices')
def test_two_processes_match_one_process(tmp_path):
  port, n = _free_port(), 2
  env = _env(tmp_path, local_devices=2)
  outs = [tmp_path / f'process{i}.npz' for i in range(n)]
  logs = [tmp_path / f'process{i}.log' for i in range(n)]
  procs = []
  try:
    for i in range(n):
      with open(logs[i], 'w') as f:
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(worker.__file__)), str(i), str(n), str(port), str(outs[i]),
             str(tmp_path / 'xla_cache')], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    rcs = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert rcs == [0] * n, '\n'.join(f'process {i} rc {rc}:\n{logs[i].read_text()[-3000:]}'
                                   for i, rc in enumerate(rcs))
  got = [dict(np.load(o)) for o in outs]
  for i, g in enumerate(got):  # process index, processes, local devices, global devices
    np.testing.assert_array_equal(g.pop('info'), [i, n, 2, 4])
  # The replicated state is one value: every process holds the same copy.
  assert got[0].keys() == got[1].keys()
  for k in got[0]:
    np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)

  ref = worker.run_steps(mesh_lib.make_mesh(jax.devices()[:4]))
  multi = got[0]
  assert multi.keys() == ref.keys()
  np.testing.assert_array_equal(multi['paths'], ref['paths'])
  np.testing.assert_allclose(multi['losses'], ref['losses'], rtol=1e-5)
  # Cross-process all-reduces sum in another order than in-process ones, so ask for agreement
  # relative to how far the steps moved each tree (measured ~1e-5); a sharding bug (a batch half
  # seen twice, per-process BatchNorm statistics) is of the order of the movement itself.
  space, _, variables = worker.tiny_setup()
  start = {'alphas': np.asarray(worker.sn.init_alphas(jax.random.key(2), space))}
  for c in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables[c]):
      start[c + jax.tree_util.keystr(path, simple=True, separator='/')] = leaf
  assert set(start) == set(ref) - {'paths', 'losses'}
  for name in ('params', 'batch_stats', 'alphas'):
    keys = [k for k in ref if k.startswith(name)]
    diff = _norm(multi[k] - ref[k] for k in keys)
    moved = _norm(ref[k] - start[k] for k in keys)
    assert moved > 0 and diff <= 1e-4 * moved, (name, diff, moved)

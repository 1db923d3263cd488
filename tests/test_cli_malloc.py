"""Every script runs with the faster allocator setting on Linux (``fna_jax.cli.run``).

A script started without ``glibc.malloc.hugetlb`` in ``GLIBC_TUNABLES`` re-executes itself with
it (XLA:CPU's per-step buffers then come from transparent huge pages); a setting the user gave is
kept.  The script here is a stand-in that prints the environment it ends up running with.
"""

import os
import subprocess
import sys

import pytest

from fna_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = '''
import os
from absl import flags
from fna_jax import cli

_B = flags.DEFINE_string('b', '', 'a flag, to see that the command line survives')

def main(argv):
  print('GLIBC_TUNABLES=' + os.environ.get('GLIBC_TUNABLES', '<unset>'))
  print('argv=' + ' '.join(argv[1:]) + ' b=' + _B.value)

if __name__ == '__main__':
  cli.run(main)
'''


def _run(tmp_path, tunables, *args):
  path = tmp_path / 'stand_in.py'
  path.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  if tunables is not None:
    env['GLIBC_TUNABLES'] = tunables
  proc = subprocess.run([sys.executable, str(path), *args], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc tunables: Linux only')
@pytest.mark.parametrize('given,expected', [
    (None, 'glibc.malloc.hugetlb=1'),
    ('glibc.malloc.arena_max=2', 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'),
    ('glibc.malloc.hugetlb=0', 'glibc.malloc.hugetlb=0'),   # the user's choice is kept
])
def test_scripts_rerun_with_hugepage_malloc(tmp_path, given, expected):
  lines = _run(tmp_path, given, 'a', '--b=c')
  assert lines == [f'GLIBC_TUNABLES={expected}', 'argv=a b=c']


def test_hugepage_malloc_env():
  if not sys.platform.startswith('linux'):
    assert cli.hugepage_malloc_env({}) is None
    return
  assert cli.hugepage_malloc_env({'A': '1'}) == {'A': '1', 'GLIBC_TUNABLES': cli.HUGEPAGE_TUNABLE}
  assert cli.hugepage_malloc_env({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=2'}) is None


@pytest.mark.parametrize('script', ['search', 'adapt', 'evaluate', 'fna', 'ablation'])
def test_training_and_evaluation_scripts_use_the_setting(script):
  """They start through ``cli.run(main)`` with its default (the re-execution above)."""
  with open(os.path.join(ROOT, 'scripts', f'{script}.py')) as f:
    text = f.read()
  assert '  cli.run(main)\n' in text and 'hugepage_malloc=False' not in text

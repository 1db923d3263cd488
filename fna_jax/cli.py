"""What ``scripts/*.py`` share: user errors as one clean line instead of a Python traceback, and
the faster allocator setting on Linux.

``run(main)`` replaces ``absl.app.run(main)``.  On Linux with glibc it first re-executes the script
with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (:func:`reexec_with_hugepage_malloc`): XLA:CPU
allocates its large buffers afresh every step, and with 4 KiB pages the page faults cost about as
much as the compute (a MobileNetV2 train step at 321x321 ran 1.5x faster with it on a 2-core
machine, as fast as torchvision's).  A ``glibc.malloc.hugetlb`` value already in
``GLIBC_TUNABLES`` is kept (``glibc.malloc.hugetlb=0`` turns the setting off).  A mistake on the command line or in what it points
at (an unknown ``--config.*`` key, an unknown config variant, a missing dataset, seed or model, a
search directory that is not a finished search, an unreadable architecture, a checkpoint of
another network) ends the script with exit status 1 and ``<script>: error: <what is wrong>`` on
stderr.  Anything else (a bug) still raises with its traceback.
"""

from __future__ import annotations

import os
import re
import sys

import ml_collections
from absl import app, flags

HUGEPAGE_TUNABLE = 'glibc.malloc.hugetlb=1'
_EXCEPTION_LINE = re.compile(r'^[A-Za-z_][\w.]*(Error|Exception): ')


def _prog(argv) -> str:
  return os.path.basename(argv[0]) if argv else 'script'


def _last_exception(text: str) -> str:
  """The final ``SomeError: message`` of a formatted traceback in ``text`` (with what follows)."""
  lines = text.rstrip().splitlines()
  for i in range(len(lines) - 1, -1, -1):
    if _EXCEPTION_LINE.match(lines[i].strip()):
      return ' '.join(l.strip() for l in lines[i:] if l.strip())
  return lines[-1].strip() if lines else text


def parse_flags(argv: list[str]) -> list[str]:
  """``absl.app``'s flag parsing, with config errors reported without a traceback.

  * An override of a key the config does not have (``--config.search.no_such_key=1``):
    ml_collections raises ``AttributeError``/``KeyError`` from the flag parser, which absl lets
    through as a traceback.
  * An error raised by the config file's ``get_config`` (``--config=configs/demo.py:nope``):
    ml_collections embeds the formatted traceback in the flag error; only its last exception
    line is kept.
  * A config file that cannot be loaded: ml_collections defers the error to the first use of
    the config; it is raised here instead.
  """
  prog = _prog(argv)
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    key_error = e if isinstance(e, KeyError) else e.__context__
    detail = key_error.args[0] if isinstance(key_error, KeyError) and key_error.args else str(e)
    detail = str(detail).replace('\n', '; ')
    missing = re.match(r"^'([^']+)'", detail)  # KeyError('name'), maybe with "Did you mean"
    if not missing:
      sys.exit(f'{prog}: error: a --config override does not fit the config: {detail}')
    flag = next((a for a in argv[1:] if re.match(r'^--?config\.', a)
                 and missing.group(1) in a.split('=', 1)[0].split('.')), '--config.*')
    sys.exit(f'{prog}: error: {flag}: the config has no such key {detail}')
  except flags.Error as e:
    message = str(e)
    if 'Traceback (most recent call last)' in message:
      head = message.split('Error whilst parsing config file', 1)[0].strip().rstrip(':')
      message = f'{head}: {_last_exception(message)}'
    sys.exit(f'{prog}: error: {message}\nPass --helpshort or --helpfull to see help on flags.')
  # A config file that cannot be loaded is reported by ml_collections only when the config is
  # first used (mid-run, with a traceback); report it now.
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    try:
      config.to_dict()
    except OSError as e:
      sys.exit(f'{prog}: error: --config: {e}')
  return rest


def user_error_types() -> tuple[type[BaseException], ...]:
  """Exceptions that describe a user's mistake (reported as one line, no traceback).

  Missing files (dataset, seed checkpoint, saved network, finished search), unreadable
  architectures and checkpoints that do not fit the network they claim.  Classes are looked up
  among loaded modules only: an exception can only be raised once its module is imported.
  """
  types: list[type[BaseException]] = [FileNotFoundError]
  for module, name in (('fna_jax.arch', 'ArchError'),
                       ('fna_jax.runtime.checks', 'ModelMismatchError')):
    if module in sys.modules:
      types.append(getattr(sys.modules[module], name))
  return tuple(types)


def hugepage_malloc_env(environ) -> dict | None:
  """``environ`` with :data:`HUGEPAGE_TUNABLE` added to ``GLIBC_TUNABLES``; ``None`` when it
  needs no change (a ``glibc.malloc.hugetlb`` setting is there) or the platform is not Linux."""
  if not sys.platform.startswith('linux'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return None
  return dict(environ, GLIBC_TUNABLES=':'.join(t for t in (tunables, HUGEPAGE_TUNABLE) if t))


def reexec_with_hugepage_malloc() -> None:
  """Linux/glibc: re-executes this process (same command line) with ``GLIBC_TUNABLES`` asking
  malloc for transparent huge pages, unless ``GLIBC_TUNABLES`` already has a
  ``glibc.malloc.hugetlb`` setting (then returns).  Child processes inherit the setting."""
  env = hugepage_malloc_env(os.environ)
  if env is None or not sys.argv or not os.path.isfile(sys.argv[0]):
    return  # nothing to do, or no script to run again (python -c, an interactive session)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.argv, env)


def run(main, hugepage_malloc: bool = True) -> None:
  """``absl.app.run(main)`` with :func:`parse_flags` and user errors as ``<prog>: error: ...``;
  first :func:`reexec_with_hugepage_malloc` unless ``hugepage_malloc=False``."""
  if hugepage_malloc:
    reexec_with_hugepage_malloc()

  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, user_error_types()):
        sys.exit(f'{_prog(argv)}: error: {e}')
      raise

  app.run(wrapped, flags_parser=parse_flags)

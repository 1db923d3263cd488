"""The package's imports form no cycle, function-level imports included.

Every ``import``/``from ... import`` statement anywhere in a module of ``fna_jax`` (at the top, in a
function, in a class) is an edge from that module to the module it names (``from pkg import name``
counts ``pkg.name`` when that is a module, else ``pkg``).  Edges are collapsed to two levels:
modules (``fna_jax.train.search_loop``) and subpackages (``fna_jax.train``); neither graph may have
a cycle.  A package's ``__init__`` is the package itself.
"""

from __future__ import annotations

import ast
import os

import fna_jax

ROOT = os.path.dirname(os.path.abspath(fna_jax.__file__))


def _modules() -> dict[str, str]:
  """``{dotted module name: file path}`` of every module under fna_jax/."""
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))[:-3]
        name = rel.replace(os.sep, '.')
        out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = os.path.join(
            dirpath, f)
  return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
  is_pkg = path.endswith('__init__.py')
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative import
        base = name.split('.')
        base = base[:len(base) - node.level + (1 if is_pkg else 0)]
        mod = '.'.join(base + ([node.module] if node.module else []))
      else:
        mod = node.module or ''
      targets = [f'{mod}.{a.name}' if f'{mod}.{a.name}' in modules else mod for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in modules:  # `import fna_jax.x.y` where y is an attribute
        t = t.rpartition('.')[0]
      if t and t != name:
        found.add(t)
  return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as a list of nodes, or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        c = visit(m)
        if c:
          return c
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      c = visit(n)
      if c:
        return c
  return None


def _graph(level) -> dict[str, set[str]]:
  modules = _modules()
  graph: dict[str, set[str]] = {}
  for name, path in modules.items():
    src = level(name)
    for dst in _imports(name, path, modules):
      if level(dst) != src:
        graph.setdefault(src, set()).add(level(dst))
  return graph


def _module_level(name: str) -> str:
  return name


def _package_level(name: str) -> str:
  """``fna_jax.train.search_loop`` -> ``fna_jax.train``; top-level modules stay themselves."""
  parts = name.split('.')
  return '.'.join(parts[:2])


def test_parser_sees_function_level_imports(tmp_path):
  path = tmp_path / 'mod.py'
  path.write_text('import os\n\ndef f():\n  from fna_jax.train import search\n'
                  '  import fna_jax.build\n')
  assert _imports('fna_jax.x', str(path), _modules()) == {'fna_jax.train.search', 'fna_jax.build'}
  assert 'fna_jax.build' in _graph(_module_level)['fna_jax.train.search_loop']


def test_no_cycle_between_modules():
  assert _cycle(_graph(_module_level)) is None, ' -> '.join(_cycle(_graph(_module_level)))


def test_no_cycle_between_subpackages():
  graph = _graph(_package_level)
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def test_cycle_detection_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None

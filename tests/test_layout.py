"""The package's layout: no module in `jaxrnn.cells` but the registry imports a cell's module.

A cell module is one that defines ``KIND`` (what it declares to the registry); shared math
lives in the private modules beside them, which import no cell either.
"""

import ast
import pathlib

import pytest

import jaxrnn.cells

CELLS_DIR = pathlib.Path(jaxrnn.cells.__file__).parent
MODULES = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(CELLS_DIR.glob("*.py"))}


def _defines_kind(tree: ast.Module) -> bool:
  for node in tree.body:
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    if any(isinstance(t, ast.Name) and t.id == "KIND" for t in targets):
      return True
  return False


CELL_MODULES = sorted(name for name, tree in MODULES.items() if _defines_kind(tree))


def _imported_modules(tree: ast.Module) -> set[str]:
  """The names of the `jaxrnn.cells` modules a module imports, in any import form."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[:2] == ["jaxrnn", "cells"] and len(parts) > 2:
          found.add(parts[2])
    elif isinstance(node, ast.ImportFrom):
      if node.level == 0:
        module = node.module or ""
      elif node.level == 1:  # relative to jaxrnn.cells
        module = "jaxrnn.cells" + (f".{node.module}" if node.module else "")
      else:
        continue
      parts = module.split(".")
      if parts[:2] != ["jaxrnn", "cells"]:
        continue
      if len(parts) > 2:
        found.add(parts[2])
      else:  # from jaxrnn.cells import a, b: each may be a module
        found.update(alias.name for alias in node.names)
  return found


def test_the_registry_sees_every_cell_module():
  assert CELL_MODULES == sorted(m.__name__.rsplit(".", 1)[1] for m in jaxrnn.cells._MODULES)


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"__init__"}))
def test_no_module_imports_a_cell_module(name):
  cells_imported = _imported_modules(MODULES[name]) & set(CELL_MODULES)
  assert not cells_imported, (
    f"jaxrnn/cells/{name}.py imports the cell module(s) {sorted(cells_imported)}: move the "
    "shared code into a private module of jaxrnn/cells (e.g. _gates, _layer_norm, _backward)."
  )


def test_the_check_sees_an_import_of_a_cell():
  tree = ast.parse(
    "from jaxrnn.cells.lstm import LSTMCarry\nfrom jaxrnn.cells import base, gru\n"
    "import jaxrnn.cells.mgu\nfrom .slstm import x\nfrom . import elman\n"
  )
  assert _imported_modules(tree) & set(CELL_MODULES) == {"lstm", "gru", "mgu", "slstm", "elman"}


def _time_loops(tree: ast.Module) -> list[str]:
  """The ``lax.scan`` / ``lax.fori_loop`` / ``lax.while_loop`` calls in a module."""
  loops = ("scan", "fori_loop", "while_loop", "associative_scan")
  return [
    ast.unparse(node.func)
    for node in ast.walk(tree)
    if isinstance(node, ast.Call)
    and isinstance(node.func, ast.Attribute)
    and node.func.attr in loops
    and ast.unparse(node.func.value) in ("lax", "jax.lax")
  ]


@pytest.mark.parametrize("name", CELL_MODULES)
def test_no_cell_module_loops_over_time_itself(name):
  # The forward is the cell's update looped by `kernel.forward`, the backward the shared
  # `_backward.reverse_loop`, the linear cells' recurrence `linear_scan`'s: one loop each.
  assert _time_loops(MODULES[name]) == []


def test_the_loop_check_sees_a_loop():
  tree = ast.parse("from jax import lax\ndef f(c, xs):\n  return lax.scan(g, c, xs)\n")
  assert _time_loops(tree) == ["lax.scan"]

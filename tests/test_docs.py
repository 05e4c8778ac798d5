"""The documentation site (docs/, mkdocs.yml) and the README kept true by the suite.

The pages' ``>>>`` blocks run as doctests (pytest's ``--doctest-glob=*.md`` over docs/ and
README.md); `make docs` and `make test` build the site with ``mkdocs build --strict``. These
tests check what neither does: every registered cell has its section, every page is in the
navigation, a code block that is not a doctest at least compiles, the README stays a front
door, and the strict build fails on a broken link.
"""

import re
from pathlib import Path

import pytest

import jaxrnn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def pages() -> list[Path]:
  return sorted(DOCS.glob("*.md"))


def test_every_registered_cell_has_a_section_on_the_cells_page():
  text = (DOCS / "cells.md").read_text()
  sections = re.findall(r"^## `(\w+)`$", text, re.M)
  missing = [k for k in jaxrnn.cells.KINDS if k not in sections]
  assert not missing, f"docs/cells.md has no '## `kind`' section for {missing}"
  assert sections == list(jaxrnn.cells.KINDS)  # in the registry's order, none extra


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
  config = (ROOT / "mkdocs.yml").read_text()
  nav = re.findall(r":\s*([\w-]+\.md)\s*$", config, re.M)
  assert sorted(nav) == sorted(p.name for p in pages())


@pytest.mark.parametrize("page", [p.name for p in pages()] + ["../README.md"])
def test_python_blocks_are_doctests_or_compile(page):
  text = (DOCS / page).read_text()
  for language, body in FENCE.findall(text):
    if language != "python":
      continue
    if body.lstrip().startswith(">>>"):
      continue  # run by pytest's doctest collection
    compile(body, f"{page} (a block that is shown, not run)", "exec")  # syntax at least


def test_readme_is_a_front_door():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 250
  first_block = text.split("\n    ", 1)[1]  # the first indented block: the set-up commands
  assert first_block.startswith("make run") and "make test" in first_block.split("\n")[1]
  assert text.index("make run") < text.index("```python")
  for link in re.findall(r"\]\((docs/[^)#]+)", text):
    assert (ROOT / link).exists(), link


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
  """The real mkdocs.yml's validation settings, on two tiny pages: a link to a page that
  does not exist aborts the strict build; the same pages without it build."""
  from mkdocs.commands.build import build
  from mkdocs.config import load_config
  from mkdocs.exceptions import Abort

  docs = tmp_path / "docs"
  docs.mkdir()
  (docs / "index.md").write_text("# Home\n\nSee [the other page](other.md).\n")
  (docs / "other.md").write_text("# Other\n")

  def build_site():
    config = load_config(
      str(ROOT / "mkdocs.yml"),
      docs_dir=str(docs),
      site_dir=str(tmp_path / "site"),
      nav=["index.md", "other.md"],
      plugins=["search"],
      hooks=[],
      markdown_extensions=["tables"],
      extra_javascript=[],
    )
    build(config)

  build_site()
  (docs / "index.md").write_text("# Home\n\nSee [a page that is not there](missing.md).\n")
  with pytest.raises(Abort, match="warnings in strict mode"):
    build_site()

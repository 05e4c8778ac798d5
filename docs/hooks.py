"""Build hooks for the documentation site (mkdocs.yml: ``hooks`` and the griffe extension).

* The committed figures under ``results/`` join the site, so a page links them as
  ``../results/NAME/NAME.png``: the path that works on GitHub, from ``docs/``, too.
* jaxrnn's docstrings write their doctests under ``Example:``, which griffe's Google
  parser reads as an admonition of prose; they are read as ``Examples:`` (code) instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
  """Adds every committed figure of ``results/`` to the site, at ``results/...``."""
  for png in sorted((ROOT / "results").rglob("*.png")):
    uri = png.relative_to(ROOT).as_posix()
    files.append(File(uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
  return files


def on_page_markdown(markdown, page, config, files):
  """``../results/`` (the path from docs/ on GitHub) is ``results/`` in the site."""
  return markdown.replace("](../results/", "](results/")


class ExamplesSection(griffe.Extension):
  """``Example:`` in a docstring is read as ``Examples:``: its doctest renders as code."""

  def on_object(self, *, obj, **kwargs):
    if obj.docstring is not None:
      obj.docstring.value = re.sub(
        r"^(\s*)Example:\s*$", r"\1Examples:", obj.docstring.value, flags=re.M
      )

"""Writes an artifact's files so that a reader finds the old artifact or the new one, whole.

The standard library only (a test's child process loads this file by path, without jax).
Every new file gets a name of its own (``<stem>.<id>.<ext>``, created exclusively, never
over an existing file) and is flushed to disk; then the manifest, written as
``manifest.json.<id>.tmp``, replaces the old one in one atomic `os.replace`; only then are
the files the old manifest listed removed. A kill at any moment leaves the old manifest
with all its files, or the new one with all of its: at worst some unlisted files of the
save that did not finish, which `load` never reads. A write that fails (a full disk, a
file size limit) removes what it wrote and the directories it created, then raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import stat
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

Content = bytes | Callable[[BinaryIO], None]


def _missing_dirs(root: pathlib.Path) -> list[pathlib.Path]:
  """``root`` and the ancestors of it that do not exist yet, outermost first."""
  missing = []
  while not os.path.lexists(root) and root != root.parent:
    missing.append(root)
    root = root.parent
  return missing[::-1]


def _fsync_dir(root: pathlib.Path) -> None:
  """Makes the directory's entries (a rename, a new file) durable, where the OS allows it."""
  with contextlib.suppress(OSError):
    fd = os.open(root, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def _write_new(path: pathlib.Path, content: Content) -> tuple[str, int]:
  """Creates ``path`` (it must not exist), writes and syncs it; its sha256 and size."""
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
  fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o644)
  try:  # from here on, the file is this call's: removed if anything fails
    with os.fdopen(fd, "wb") as f:
      if isinstance(content, bytes | bytearray | memoryview):
        f.write(content)
      else:
        content(f)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    with contextlib.suppress(OSError):
      path.unlink()
    raise
  digest, size = hashlib.sha256(), 0
  with open(path, "rb") as f:  # what landed on disk, read back
    while chunk := f.read(1 << 20):
      digest.update(chunk)
      size += len(chunk)
  return digest.hexdigest(), size


def remove_listed(root: pathlib.Path, names: Iterable[str]) -> None:
  """Removes the plain files ``names`` directly in ``root`` (an old manifest's): none other."""
  for name in names:
    path = root / name
    if os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
      continue
    with contextlib.suppress(OSError):
      if stat.S_ISREG(os.lstat(path).st_mode):
        path.unlink()


def write_artifact(
  root: pathlib.Path,
  contents: dict[str, Content],
  manifest: Callable[[dict[str, tuple[str, int]]], dict[str, Any]],
  token: str,
  *,
  manifest_name: str = "manifest.json",
  old: Iterable[str] = (),
) -> dict[str, Any]:
  """Writes ``contents`` by name, then the manifest, then removes the ``old`` files.

  Args:
    root: the artifact directory; it and its missing parents are created.
    contents: file name -> bytes, or a function that writes the file.
    manifest: ``{name: (sha256, size)}`` of the files written -> the manifest.
    token: this save's id, in the temporary manifest's name.
    manifest_name: the manifest's name.
    old: the files the manifest being replaced lists, removed once it is.

  Returns:
    The manifest, as written.
  """
  created = _missing_dirs(root)
  written: list[pathlib.Path] = []
  try:
    root.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, content in contents.items():
      info[name] = _write_new(root / name, content)
      written.append(root / name)
    out = manifest(info)
    tmp = root / f"{manifest_name}.{token}.tmp"
    _write_new(tmp, (json.dumps(out, indent=2) + "\n").encode("utf-8"))
    written.append(tmp)
    _fsync_dir(root)  # the new files are in the directory before the manifest names them
    os.replace(tmp, root / manifest_name)
  except BaseException:
    for path in written:
      with contextlib.suppress(OSError):
        path.unlink()
    for directory in reversed(created):
      with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty: never what another process put there meanwhile
    raise
  _fsync_dir(root)
  remove_listed(root, [n for n in old if n not in contents])
  return out

"""What `jaxrnn.testing`'s checks compare with: the data a check runs on (`Case`), the
reference loop of a cell's own ``step``, and the comparison that names the first difference."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells.base import Cell, PyTree


class CellCheckError(AssertionError):
  """The first difference `check_cell` found.

  Attributes:
    check: which check (a key of `CHECKS`).
    step: the time step where it was found, or None.
    leaf: the leaf's path (``"ys"``, ``"carry.h"``, ``"grad params.w_hh"``), or None.
    got, want: the two values (None where the check compares no values).
  """

  def __init__(self, check, message, *, step=None, leaf=None, got=None, want=None):
    super().__init__(f"check_cell[{check}]: {message}")
    self.check, self.step, self.leaf, self.got, self.want = check, step, leaf, got, want


class Case(NamedTuple):
  """The data every check runs on: params, inputs ``(B, T, I)``, a random initial carry,
  lengths ``(B,)`` (one T, one 0), resets ``(B, T)`` (one at t = 0), tolerances."""

  cell: Cell
  params: PyTree
  xs: jax.Array
  carry: PyTree
  lengths: np.ndarray
  resets: np.ndarray
  rtol: float
  atol: float


def make_case(cell, input_size, *, batch=3, length=6, seed=0, rtol=1e-5, atol=1e-6) -> Case:
  """A `Case` for ``cell``: ``batch`` rows of ``length`` steps, drawn from ``seed``."""
  if not isinstance(cell, Cell):
    raise ValueError(f"cell is a {type(cell).__name__}; expected a jaxrnn.Cell.")
  if batch < 3 or length < 4:
    raise ValueError(f"batch={batch}, length={length}: expected batch >= 3 and length >= 4.")
  k_p, k_x, k_c = jax.random.split(jax.random.key(seed), 3)
  params = cell.init(k_p, input_size)
  xs = jax.random.normal(k_x, (batch, length, input_size), float_dtype(params))
  carry = _randomized(k_c, cell.initial_carry(params, (batch,)))
  lengths = np.resize(np.array([length, 0, length - 2], np.int32), batch)
  resets = np.zeros((batch, length), bool)
  resets[0, length // 2] = True
  resets[2, [0, 2]] = True
  return Case(cell, params, xs, carry, lengths, resets, rtol, atol)


def float_dtype(params: PyTree) -> Any:
  floats = [a.dtype for a in jax.tree.leaves(params) if jnp.issubdtype(a.dtype, jnp.floating)]
  return floats[0] if floats else jnp.float32


def _randomized(key: jax.Array, tree: PyTree) -> PyTree:
  """Every floating or complex leaf of ``tree`` replaced by normal noise of its shape and
  dtype."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  new = [
    jax.random.normal(k, a.shape, a.dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a
    for k, a in zip(keys, leaves, strict=False)
  ]
  return jax.tree.unflatten(treedef, new)


def row(tree: PyTree, b: int) -> PyTree:
  return jax.tree.map(lambda a: a[b], tree)


def compare(check, got, want, *, rtol, atol, what, time_axis=None) -> None:
  """Raises `CellCheckError` at the first element where ``got`` and ``want`` differ.

  Elements agree where ``|got - want| <= atol + rtol * |want|`` (NaN only with NaN; for
  complex leaves, moduli). ``what`` names the tree (``"ys"``, ``"carry"``); a leaf is named
  by its path, and with ``time_axis`` the step is the index of the first difference on that
  axis.
  """
  got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
  want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
  if got_def != want_def:
    raise CellCheckError(check, f"{what} has structure {got_def}; expected {want_def}.")
  for (path, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
    leaf = what + jax.tree_util.keystr(path)
    wide = np.complex128 if np.iscomplexobj(g) or np.iscomplexobj(w) else np.float64
    g, w = np.asarray(g, wide), np.asarray(w, wide)
    if g.shape != w.shape:
      raise CellCheckError(check, f"{leaf} has shape {g.shape}; expected {w.shape}.", leaf=leaf)
    bad = ~(np.abs(g - w) <= atol + rtol * np.abs(w)) & ~(np.isnan(g) & np.isnan(w))
    if bad.any():
      _raise_difference(
        check, leaf, g, w, tuple(int(i) for i in np.argwhere(bad)[0]), time_axis, rtol, atol
      )


def _raise_difference(check, leaf, g, w, index, time_axis, rtol, atol) -> None:
  step = None if time_axis is None else int(index[time_axis])
  where = f"at index {index}" + ("" if step is None else f" (time step {step})")
  number = complex if np.iscomplexobj(g) else float
  got, want = number(g[index]), number(w[index])
  raise CellCheckError(
    check,
    f"{leaf} differs {where}: got {got!r}, want {want!r} (|difference| "
    f"{abs(got - want):.3g} > atol {atol:g} + rtol {rtol:g} * |want|).",
    step=step,
    leaf=leaf,
    got=got,
    want=want,
  )


def loop_reference(case: Case, reverse: bool, *, lengths=None, resets=None):
  """``(carry, ys)`` of the cell's jitted ``step`` looped in Python, row by row.

  Each row reads its valid part (``lengths``; all T if None), backwards if ``reverse``;
  where ``resets[b, t]`` a segment starts at t, read from the cell's initial carry, so
  in reverse the carry is reset after reading t; outputs past a row's length are 0.
  """
  cell, params, xs = case.cell, case.params, case.xs
  B, T = xs.shape[:2]
  lengths = np.full(B, T) if lengths is None else lengths
  resets = np.zeros((B, T), bool) if resets is None else resets
  step = jax.jit(cell.step)
  zero = cell.initial_carry(params, ())
  width = jax.eval_shape(cell.step, params, zero, xs[0, 0])[1]
  ys = np.zeros((B, T) + width.shape, width.dtype)
  carries = []
  for b in range(B):
    c = row(case.carry, b)
    order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
    for t in order:
      # forward, a segment starts at t; in reverse, the one read until now began at t + 1
      if (t + 1 < lengths[b] and resets[b, t + 1]) if reverse else resets[b, t]:
        c = zero
      c, ys[b, t] = step(params, c, xs[b, t])
    carries.append(c)
  return jax.tree.map(lambda *a: jnp.stack(a), *carries), ys

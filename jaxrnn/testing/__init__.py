"""`check_cell`: the contract check a user runs on a cell of their own.

A cell written on the `jaxrnn.Cell` contract works wherever a built-in one works;
`check_cell` shows it does, against independent references: `jaxrnn.scan` against a
Python loop of the cell's own ``step`` (lengths, resets, reverse), the cell's kernel
against its step loop (values and gradients, with the regularizer masks it takes),
gradients against finite differences (`jax.test_util.check_grads`, float64), streaming
against ``apply``, `rnn_layers` against the composition of its scans, an exported
artifact and a checkpoint against the model they hold, and the dtype policy. The
library's own tests run every registered kind (`jaxrnn.cells.KINDS`) through the same
checks (``tests/test_registry.py``). It imports no test framework.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jaxrnn.cells.base import Cell
from jaxrnn.testing.checks import (
  check_checkpoint,
  check_dtype,
  check_export,
  check_gradients,
  check_kernel,
  check_layers,
  check_padding,
  check_scan,
  check_step,
  check_stream,
)
from jaxrnn.testing.reference import Case, CellCheckError, make_case

__all__ = ["CellCheckError", "check_cell"]


CHECKS: dict[str, Callable[[Case], str]] = {
  "step": check_step,
  "scan": check_scan,
  "kernel": check_kernel,
  "gradients": check_gradients,
  "padding": check_padding,
  "stream": check_stream,
  "layers": check_layers,
  "dtype": check_dtype,
  "export": check_export,
  "checkpoint": check_checkpoint,
}
"""Every check `check_cell` runs, in order, by name."""


def check_cell(
  cell: Cell,
  input_size: int,
  *,
  rtol: float = 1e-5,
  atol: float = 1e-6,
  checks: Sequence[str] | None = None,
  batch: int = 3,
  length: int = 6,
  seed: int = 0,
) -> dict[str, str]:
  """Runs the cell contract on ``cell``, a user's included; raises at the first difference.

  Each check compares against an independent reference (see `CHECKS`): ``step`` (jit,
  vmap, one row), ``scan`` (against a Python loop of ``step``, with lengths including 0
  and T, resets, forward and reverse), ``kernel`` (the default path against
  ``impl="step"``, values and gradients), ``gradients`` (against finite differences in
  float64), ``padding`` (NaN and inf past the lengths against zero padding), ``stream``,
  ``layers`` (a stacked bidirectional `rnn_layers`), ``dtype``, ``export`` and
  ``checkpoint`` (skipped, and said so, without orbax-checkpoint).

  Args:
    cell: a `Cell`.
    input_size: the input feature size ``I`` to initialise it with.
    rtol, atol: values agree where ``|got - want| <= atol + rtol * |want|`` (gradients:
      ``atol`` times the largest magnitude of the leaf's reference, if above 1).
    checks: names from `CHECKS` to run; None runs them all.
    batch, length: the inputs' ``(batch, length, input_size)``; at least 3 and 4.
    seed: the seed of the params, inputs and initial carry.

  Returns:
    ``{check: "passed" or "skipped: <why>"}`` in the order run.

  Raises:
    CellCheckError: an `AssertionError` naming the check, the time step and leaf where
      the first difference is, and the two values.
    ValueError: an unknown check name or a bad size.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> from jaxrnn.testing import check_cell
    >>> report = check_cell(jaxrnn.gru(4), input_size=3, checks=["step", "scan"])
    >>> report
    {'step': 'passed', 'scan': 'passed'}
  """
  names = tuple(CHECKS) if checks is None else tuple(checks)
  unknown = [n for n in names if n not in CHECKS]
  if unknown:
    raise ValueError(
      f"checks={list(names)!r}: unknown {unknown}; expected names from {tuple(CHECKS)}."
    )
  case = make_case(cell, input_size, batch=batch, length=length, seed=seed, rtol=rtol, atol=atol)
  return {name: CHECKS[name](case) for name in names}

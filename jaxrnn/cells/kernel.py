"""What every whole-sequence kernel shares: masking, the scan drivers, the VJP scaffolding.

`jaxrnn.scan` runs a cell over time with `jax.lax.scan`. Differentiating that
loop with JAX's generic rules puts every weight-gradient product inside the
backward loop: at each step ``dW_hh += h_{t-1}^T dz_t`` and ``dW_ih += x_t^T dz_t``,
matmuls with the batch (often 1 to 64) as their inner dimension, plus
``dx_t = dz_t W_ih^T``. A cell's kernel (`sequence_kernel`) keeps only what must
be sequential inside the backward loop (``dh_{t-1} = dz_t W_hh^T`` and the gate
algebra) and stacks the gate gradients; the weight and input gradients are then
one large matmul each over all ``T * batch`` rows, which runs near the machine's
matmul peak. The forward pass is the cell's own update function (the one its
``step`` calls), looped by `forward`, which also saves what the update already
computed, so nothing is recomputed and nothing is written twice.

Contract (what `jaxrnn.scan` calls): ``sequence(params, carry, xs, mask, reverse,
unroll) -> (carry, ys)`` with ``xs`` ``(T, N, I)``, carry leaves ``(N, F)`` and
``mask`` a boolean ``(T, N)`` or None; the same values as `step_loop` over the
cell's ``step`` (tested against it and, through it, against PyTorch). Being
`jax.custom_vjp` functions, kernels support reverse-mode autodiff (any order),
`jit` and `vmap`, but not forward mode (`jax.jvp`, `jax.jacfwd`): for that, call
`jaxrnn.scan` with ``impl="step"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

# update(params, carry, x) -> (carry, y, saved): one step; `saved` is what the backward needs.
Update = Callable[[Any, Any, jax.Array], tuple[Any, jax.Array, Any]]
# backward(params, xs, mask, saved, cotangents, reverse, unroll) -> (grads, d_carry, d_xs).
Backward = Callable[..., tuple[Any, Any, jax.Array]]


def where_valid(m: jax.Array | None, new: jax.Array, old: jax.Array) -> jax.Array:
  """``new`` where the row is valid (``m`` of the batch's shape), else ``old``."""
  if m is None:
    return new
  return jnp.where(jnp.reshape(m, m.shape + (1,) * (new.ndim - m.ndim)), new, old)


def zeros_where_invalid(m: jax.Array | None, x: jax.Array) -> jax.Array:
  return where_valid(m, x, jnp.zeros_like(x))


def transposed(w: jax.Array) -> jax.Array:
  """``w.T`` as an array of its own, laid out once before a backward loop.

  Written as ``dz @ w.T`` inside the loop, the transpose stays part of every step's
  dot on XLA:CPU. Materialising it once (the optimisation barrier keeps XLA from
  folding it back into the dot) measured, as the median of per-round time ratios over
  interleaved rounds, 0.57x the forward+backward time for the LSTM at B=1, T=512,
  H=128, and 0.97x at B=32 and B=64; 0.98-1.0x for the GRU.
  """
  return lax.optimization_barrier(w.T)


def rows(a: jax.Array) -> jax.Array:
  """``(T, N, F)`` as ``(T * N, F)`` for the hoisted weight-gradient matmuls."""
  return a.reshape(-1, a.shape[-1])


def step_loop(step, params, carry, xs, mask, reverse, unroll):
  """`jax.lax.scan` of a cell's ``step`` with `jaxrnn.scan`'s masking.

  Args:
    step: ``step(params, carry, x) -> (carry, y)``.
    params: the cell's params.
    carry: leaves ``(*batch, F)``.
    xs: ``(T, *batch, I)``.
    mask: boolean ``(T, *batch)`` or None: where False, the carry is kept and
      the output is zero.
    reverse, unroll: passed to `jax.lax.scan`.

  Returns:
    ``(carry, ys)`` with ``ys`` ``(T, *batch, O)``.
  """

  def body(c, inputs):
    x, m = inputs
    new_c, y = step(params, c, x)
    new_c = jax.tree.map(functools.partial(where_valid, m), new_c, c)
    return new_c, jax.tree.map(functools.partial(zeros_where_invalid, m), y)

  return lax.scan(body, carry, (xs, mask), reverse=reverse, unroll=unroll)


def forward(update: Update, params, carry, xs, mask, reverse, unroll, save):
  """The kernel's forward loop: `step_loop`'s values from ``update``, and what it saved.

  Returns:
    ``(carry, ys, saved)``; with ``save``, ``saved`` is ``(previous carries,
    update's saved values)`` stacked over time, else None.
  """

  def body(c, inputs):
    x, m = inputs
    new, y, extra = update(params, c, x)
    new = jax.tree.map(functools.partial(where_valid, m), new, c)
    return new, (zeros_where_invalid(m, y), (c, extra) if save else None)

  carry, (ys, saved) = lax.scan(body, carry, (xs, mask), reverse=reverse, unroll=unroll)
  return carry, ys, saved


def sequence_kernel(update: Update, backward: Backward) -> Callable[..., tuple[Any, jax.Array]]:
  """A cell's whole-sequence kernel: `forward` over ``update`` with ``backward`` as its VJP.

  Args:
    update: ``update(params, carry, x) -> (carry, y, saved)``, the cell's one step.
    backward: ``backward(params, xs, mask, saved, (d_carry, d_ys), reverse, unroll)
      -> (d_params, d_carry0, d_xs)``, the hand-written VJP of the whole loop.

  Returns:
    ``sequence(params, carry, xs, mask, reverse, unroll) -> (carry, ys)``, a
    `jax.custom_vjp` function (see the module docstring).
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
  def sequence(params, carry, xs, mask, reverse, unroll):
    carry, ys, _ = forward(update, params, carry, xs, mask, reverse, unroll, save=False)
    return carry, ys

  def fwd(params, carry, xs, mask, reverse, unroll):
    carry, ys, saved = forward(update, params, carry, xs, mask, reverse, unroll, save=True)
    return (carry, ys), (params, xs, mask, saved)

  def bwd(reverse, unroll, residuals, cotangents):
    params, xs, mask, saved = residuals
    d_params, d_carry, d_xs = backward(params, xs, mask, saved, cotangents, reverse, unroll)
    return d_params, d_carry, d_xs, None

  sequence.defvjp(fwd, bwd)
  sequence.fwd, sequence.bwd = fwd, bwd  # for timing the parts (`make bench`'s breakdown)
  return sequence


def with_policy(kernel, compute_dtype: Any, step):
  """``kernel`` where the params' dtype is the compute dtype, else `step_loop` over ``step``.

  The kernels compute in one dtype throughout; a cell whose ``compute_dtype``
  differs from its params' dtype (mixed precision: the carry stays in the params'
  dtype between steps) runs its step loop instead, which gives the same values.
  """

  def sequence(params, carry, xs, mask, reverse, unroll):
    dt = jax.tree.leaves(params)[0].dtype
    if compute_dtype is not None and jnp.dtype(compute_dtype) != dt:
      return step_loop(step, params, carry, xs, mask, reverse, unroll)
    if xs.dtype != dt and jnp.issubdtype(xs.dtype, jnp.floating):
      xs = xs.astype(dt)
    return kernel(params, carry, xs, mask, reverse, unroll)

  return sequence

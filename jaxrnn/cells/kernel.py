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
unroll, resets=None, reset_carry=None, noise=None) -> (carry, ys)`` with ``xs`` ``(T, N, I)``,
carry leaves ``(N, F)``, ``mask`` a boolean ``(T, N)`` or None (where False the
carry is frozen and the output is zero) and ``resets`` a boolean ``(T, N)`` or None
(where True the carry is replaced by ``reset_carry``, leaves ``(N, F)``, before the
step reads its input, in the order the loop runs: `jaxrnn.scan` has already shifted
it for ``reverse`` and masked it) and ``noise`` a `Noise` of regularizer masks or None
(only passed to kernels marked ``takes_noise``); the same values as `step_loop` over the cell's
``step`` (tested against it and, through it, against PyTorch). Being
`jax.custom_vjp` functions, kernels support reverse-mode autodiff (any order),
`jit` and `vmap`, but not forward mode (`jax.jvp`, `jax.jacfwd`): for that, call
`jaxrnn.scan` with ``impl="step"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# update(params, carry, x[, h_mask]) -> (carry, y, saved): one step; `saved` is what the
# backward needs; `h_mask` (given only with recurrent dropout) multiplies the h that enters
# the recurrent product.
Update = Callable[..., tuple[Any, jax.Array, Any]]
# backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise)
#   -> (grads, d_carry, d_xs, d_reset_carry).
Backward = Callable[..., tuple[Any, Any, jax.Array]]


class Noise(NamedTuple):
  """The regularizer masks that act inside the recurrence (`jaxrnn.regularizers` draws them).

  Attributes:
    h_mask: ``(*batch, H)`` or None: recurrent dropout's mask, already scaled by
      ``1 / (1 - rate)``, multiplying the hidden state ``h`` where it enters the
      recurrent product, the same at every step.
    keep: None, or a tree like the carry whose leaves are ``(T, *batch, F)``
      zoneout weights or None (a leaf that is not zoned): the carry after step ``t``
      is ``keep_t * old + (1 - keep_t) * new`` (0 or 1 in training, the rate at
      evaluation), and the step's output is the zoned ``h``.
  """

  h_mask: jax.Array | None = None
  keep: Any = None


def hidden(carry: Any) -> jax.Array:
  """The hidden state ``h`` of a carry: ``carry.h``, or the carry itself if it is an array."""
  if hasattr(carry, "h"):
    return carry.h
  if isinstance(carry, jax.Array | jax.core.Tracer):
    return carry
  raise ValueError(
    f"the carry is a {type(carry).__name__} with no field 'h'; recurrent dropout and zoneout "
    "need the hidden state as carry.h (or the carry itself as an array)."
  )


def with_hidden(carry: Any, h: jax.Array) -> Any:
  """``carry`` with its hidden state (see `hidden`) replaced by ``h``."""
  return carry._replace(h=h) if hasattr(carry, "h") else h


def _is_none(a: Any) -> bool:
  return a is None


def zone(keep: Any, old: Any, new: Any) -> Any:
  """Zoneout: ``keep * old + (1 - keep) * new`` leaf by leaf; a None weight keeps ``new``."""
  if keep is None:
    return new
  blend = lambda k, o, n: n if k is None else k * o + (1.0 - k) * n  # noqa: E731
  return jax.tree.map(blend, keep, old, new, is_leaf=_is_none)


def zone_split(keep: Any, ct: Any) -> tuple[Any, Any]:
  """The cotangent of a zoned carry as ``(to the cell's own new carry, straight to the old)``."""
  if keep is None:
    return ct, None
  to_new = jax.tree.map(lambda k, a: a if k is None else (1.0 - k) * a, keep, ct, is_leaf=_is_none)
  to_old = jax.tree.map(lambda k, a: None if k is None else k * a, keep, ct, is_leaf=_is_none)
  return to_new, to_old


def add_zoned(carry_ct: Any, to_old: Any) -> Any:
  """``carry_ct`` plus `zone_split`'s straight-through part (None leaves add nothing)."""
  if to_old is None:
    return carry_ct
  return jax.tree.map(lambda k, a: a if k is None else a + k, to_old, carry_ct, is_leaf=_is_none)


def noisy_step(step, masked_step, params, carry, x, h_mask, keep):
  """One step of ``step`` with recurrent dropout and zoneout (see `Noise`).

  The recurrent mask goes through ``masked_step(params, carry, x, h_mask)`` when the
  cell has one (a cell whose ``h`` also enters outside its recurrent product, as
  the GRU's), else it multiplies ``carry.h`` before ``step``, which is the same
  wherever ``h`` enters only the recurrent product.
  """
  if h_mask is None:
    new, y = step(params, carry, x)
  elif masked_step is not None:
    new, y = masked_step(params, carry, x, h_mask)
  else:
    new, y = step(params, with_hidden(carry, hidden(carry) * h_mask), x)
  if keep is not None:
    new = zone(keep, carry, new)
    y = hidden(new).astype(y.dtype)  # the zoned h, in the output's (the compute) dtype
  return new, y


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


def params_dtype(params: Any) -> Any:
  """The dtype of a cell's params: that of their first floating leaf."""
  for leaf in jax.tree.leaves(params):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.dtype
  raise ValueError("params hold no floating-point array; expected a cell's weights.")


def reset(r: jax.Array | None, carry: Any, reset_carry: Any) -> Any:
  """``reset_carry`` in the rows where ``r`` is True (a new segment starts), else ``carry``."""
  if r is None:
    return carry
  return jax.tree.map(lambda c, c0: where_valid(r, c0, c), carry, reset_carry)


def restart(r: jax.Array | None, carry: Any, initial: Any) -> Any:
  """`reset` from an unbatched initial carry (``initial_carry(params, ())``), broadcast to
  ``carry``'s batch (symbolic batch sizes too): what stream's and export's steps restart from."""
  if r is None:
    return carry
  return reset(r, carry, jax.tree.map(lambda c, c0: jnp.broadcast_to(c0, c.shape), carry, initial))


def reset_split(r: jax.Array | None, ct: Any) -> tuple[Any, Any]:
  """The cotangent of a step's incoming carry, split at resets.

  Returns:
    ``(to_previous_step, to_reset_carry)``: where ``r`` is True the carry came from
    ``reset_carry``, so its cotangent goes there and none to the step before.
  """
  if r is None:
    return ct, None
  return (
    jax.tree.map(lambda a: where_valid(r, jnp.zeros_like(a), a), ct),
    jax.tree.map(functools.partial(zeros_where_invalid, r), ct),
  )


def reset_total(to_reset: Any) -> Any:
  """`reset_split`'s per-step cotangents of ``reset_carry``, summed over time."""
  return None if to_reset is None else jax.tree.map(lambda a: jnp.sum(a, axis=0), to_reset)


def rows(a: jax.Array) -> jax.Array:
  """``(T, N, F)`` as ``(T * N, F)`` for the hoisted weight-gradient matmuls."""
  return a.reshape(-1, a.shape[-1])


def step_loop(
  step,
  params,
  carry,
  xs,
  mask,
  reverse,
  unroll,
  resets=None,
  reset_carry=None,
  noise=None,
  masked_step=None,
  return_carries=False,
):
  """`jax.lax.scan` of a cell's ``step`` with `jaxrnn.scan`'s masking, resets and noise.

  Args:
    step: ``step(params, carry, x) -> (carry, y)``.
    params: the cell's params.
    carry: leaves ``(*batch, F)``.
    xs: ``(T, *batch, I)``.
    mask: boolean ``(T, *batch)`` or None: where False, the carry is kept and
      the output is zero.
    reverse, unroll: passed to `jax.lax.scan`.
    resets: boolean ``(T, *batch)`` or None: where True, the carry is
      ``reset_carry`` before the step (see the module docstring).
    reset_carry: leaves ``(*batch, F)``, or None without resets.
    noise: a `Noise` or None.
    masked_step: the cell's ``masked_step`` or None (see `noisy_step`).
    return_carries: also output the carry after every step.

  Returns:
    ``(carry, ys)`` with ``ys`` ``(T, *batch, O)``; with ``return_carries``, ``ys`` is
    ``(ys, carries)``, the carries' leaves ``(T, *batch, F)``.
  """
  noise = Noise() if noise is None else noise

  def body(c, inputs):
    x, m, r, k = inputs
    c = reset(r, c, reset_carry)
    new_c, y = noisy_step(step, masked_step, params, c, x, noise.h_mask, k)
    new_c = jax.tree.map(functools.partial(where_valid, m), new_c, c)
    y = jax.tree.map(functools.partial(zeros_where_invalid, m), y)
    return new_c, ((y, new_c) if return_carries else y)

  inputs = (xs, mask, resets, noise.keep)
  return lax.scan(body, carry, inputs, reverse=reverse, unroll=unroll)


def forward(
  update: Update, params, carry, xs, mask, reverse, unroll, resets, reset_carry, noise, save
):
  """The kernel's forward loop: `step_loop`'s values from ``update``, and what it saved.

  Returns:
    ``(carry, ys, saved)``; with ``save``, ``saved`` is ``(incoming carries (after
    any reset, before any mask), update's saved values)`` stacked over time, else None.
  """
  noise = Noise() if noise is None else noise

  def body(c, inputs):
    x, m, r, k = inputs
    c = reset(r, c, reset_carry)
    if noise.h_mask is None:
      new, y, extra = update(params, c, x)
    else:
      new, y, extra = update(params, c, x, noise.h_mask)
    if k is not None:
      new = zone(k, c, new)
      y = hidden(new)
    new = jax.tree.map(functools.partial(where_valid, m), new, c)
    return new, (zeros_where_invalid(m, y), (c, extra) if save else None)

  inputs = (xs, mask, resets, noise.keep)
  carry, (ys, saved) = lax.scan(body, carry, inputs, reverse=reverse, unroll=unroll)
  return carry, ys, saved


def sequence_kernel(update: Update, backward: Backward) -> Callable[..., tuple[Any, jax.Array]]:
  """A cell's whole-sequence kernel: `forward` over ``update`` with ``backward`` as its VJP.

  Args:
    update: ``update(params, carry, x) -> (carry, y, saved)``, the cell's one step.
    backward: ``backward(params, xs, mask, resets, saved, (d_carry, d_ys), reverse,
      unroll, noise) -> (d_params, d_carry0, d_xs, d_reset_carry)``, the hand-written VJP
      of the whole loop. The library's cells run their step's local VJP through the one
      shared reverse loop, `jaxrnn.cells._backward.reverse_loop`, which applies lengths,
      resets (`reset_split`, `reset_total`), recurrent dropout and zoneout (`zone_split`,
      `add_zoned`).

  Returns:
    ``sequence(params, carry, xs, mask, reverse, unroll, resets=None,
    reset_carry=None, noise=None) -> (carry, ys)``, a `jax.custom_vjp` function
    (see the module docstring), marked ``takes_noise``.
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
  def sequence(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None, noise=None):
    args = (params, carry, xs, mask, reverse, unroll, resets, reset_carry, noise)
    carry, ys, _ = forward(update, *args, save=False)
    return carry, ys

  def fwd(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None, noise=None):
    args = (params, carry, xs, mask, reverse, unroll, resets, reset_carry, noise)
    carry, ys, saved = forward(update, *args, save=True)
    return (carry, ys), (params, xs, mask, resets, saved, noise)

  def bwd(reverse, unroll, residuals, cotangents):
    params, xs, mask, resets, saved, noise = residuals
    noise = Noise() if noise is None else noise
    grads = backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise)
    d_params, d_carry, d_xs, d_reset_carry = grads
    return d_params, d_carry, d_xs, None, None, d_reset_carry, None

  sequence.defvjp(fwd, bwd)
  sequence.fwd, sequence.bwd = fwd, bwd  # for timing the parts (`make bench`'s breakdown)
  sequence.takes_noise = True
  return sequence


def with_policy(kernel, compute_dtype: Any, step, masked_step=None, carry_dtype_of=None):
  """``kernel`` where the params' dtype is the compute dtype and the carry's, else `step_loop`.

  The hand-written kernels compute in one dtype throughout; a cell whose ``compute_dtype``
  or carry dtype (``carry_dtype_of(params)``, `jaxrnn.cells.builtin.resolved_carry_dtype`:
  float32 for bfloat16 params by default; None: the params' dtype) differs from its
  params' dtype runs its step loop instead, which gives the same values. A kernel marked
  ``mixed_precision = True`` (the linear recurrences', which cast their coefficients up to
  the carry's dtype) also runs with another carry dtype. A carry of another dtype than the
  resolved one (a user's) always gets the step loop, which casts it at every step as
  ``step`` does.
  """
  takes_noise = getattr(kernel, "takes_noise", False)
  mixed = getattr(kernel, "mixed_precision", False)

  def sequence(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None, noise=None):
    dt = params_dtype(params)
    args = (params, carry, xs, mask, reverse, unroll, resets, reset_carry)
    wanted = dt if carry_dtype_of is None else carry_dtype_of(params)
    carry_dts = {jnp.finfo(leaf.dtype).dtype for leaf in jax.tree.leaves(carry)}
    other_carry = carry_dts != {wanted} or (wanted != dt and not mixed)
    if (compute_dtype is not None and jnp.dtype(compute_dtype) != dt) or other_carry:
      return step_loop(step, *args, noise, masked_step)
    if xs.dtype != dt and jnp.issubdtype(xs.dtype, jnp.floating):
      args = (params, carry, xs.astype(dt)) + args[3:]
    return kernel(*args, noise) if noise is not None else kernel(*args)

  sequence.takes_noise = takes_noise
  return sequence

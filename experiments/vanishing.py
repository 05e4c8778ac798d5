"""Vanishing gradients at init: ||dh_T/dh_{T-k}|| for tanh RNNs, ||dc_T/dc_{T-k}|| for LSTMs.

The seed document's claim is that plain RNNs lose long-range information through
vanishing gradients while LSTMs keep it. This measures it directly, with no
training: the Jacobian of the state at time T with respect to the state k steps
earlier, along a random input sequence, for k = 1..T.

Tanh RNN (`jaxrnn.elman`, PyTorch's uniform init) with the recurrent matrix
rescaled so that its largest singular value is lambda in {0.5, 0.9, 1.0, 1.5, 3.0}.
Pascanu, Mikolov and Bengio (2013, "On the difficulty of training recurrent
neural networks", section 2.1) bound each factor dh_t/dh_{t-1} = diag(tanh')
W_hh^T by lambda_1 * gamma with gamma = 1 for tanh, so
||dh_T/dh_{T-k}||_2 <= lambda^k in the operator 2-norm. PASS if every
measurement is at most the bound (up to float32 rounding, a relative 1e-4).

LSTM (`jaxrnn.lstm`, forget bias 0, 1, 3 added at init): the derivative of the
cell state c_T with respect to c_{T-k} through the whole (h, c) recurrence,
i.e. the c-block of the product of the full state Jacobians. The forget gate
starts near sigmoid(b_f), so the memory decays roughly like sigmoid(b_f)^k.
PASS if forget bias 1 decays slower than forget bias 0: its norm is larger at
every lag and its fitted per-step decay factor is larger.

Per-step Jacobians come from `jax.jacfwd` over the state; their product is
accumulated in log-scale (renormalised each step) so that 0.5^200 does not
underflow float32, and is checked against `jax.jacrev` of the k-step rollout.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from experiments import harness

NAME = "vanishing"
LAMBDAS = (0.5, 0.9, 1.0, 1.5, 3.0)
FORGET_BIASES = (0.0, 1.0, 3.0)
TO_LOG10 = 1.0 / math.log(10.0)


def _log_norms(jacobians: jax.Array, rows: slice, cols: slice) -> jax.Array:
  """``log ||(J_T ... J_{T-k+1})[rows, cols]||_2`` for k = 1..T, from ``J`` of shape (T, n, n)."""
  n = jacobians.shape[-1]

  def body(acc, jac):
    prod, log_scale = acc
    prod = prod @ jac
    scale = jnp.max(jnp.abs(prod))
    prod = prod / scale
    log_scale = log_scale + jnp.log(scale)
    block_norm = jnp.linalg.norm(prod[rows, cols], ord=2)
    return (prod, log_scale), jnp.log(block_norm) + log_scale

  init = (jnp.eye(n, dtype=jacobians.dtype), jnp.zeros((), jacobians.dtype))
  _, logs = jax.lax.scan(body, init, jacobians[::-1])
  return logs


def _state_fns(cell, params):
  """``step(state, x) -> state`` on a flat state vector, and its ``(rows, cols)`` block."""
  if cell.name == "lstm":
    hidden = params.w_hh.shape[0]

    def step(s, x):
      carry, _ = cell.step(params, jaxrnn.LSTMCarry(s[:hidden], s[hidden:]), x)
      return jnp.concatenate([carry.h, carry.c])

    return step, 2 * hidden, slice(hidden, None)  # d c_T / d c_{T-k}

  hidden = params.w_hh.shape[0]

  def step(s, x):
    return cell.step(params, jaxrnn.HiddenCarry(s), x)[0].h

  return step, hidden, slice(None)  # d h_T / d h_{T-k}


def measure(cell, params, xs):
  """Log-norms (natural log) for k = 1..T along one input sequence ``xs`` (T, I)."""
  step, n, block = _state_fns(cell, params)

  def scan_step(s, x):
    new = step(s, x)
    return new, s  # the state *before* each step: where its Jacobian is taken

  _, before = jax.lax.scan(scan_step, jnp.zeros((n,), xs.dtype), xs)
  jacobians = jax.vmap(jax.jacfwd(step))(before, xs)  # (T, n, n): d s_t / d s_{t-1}
  return _log_norms(jacobians, block, block), before


def direct_log_norm(cell, params, xs, before, k):
  """``log ||d s_T / d s_{T-k}||`` by `jax.jacrev` of the k-step rollout (a check)."""
  step, _, block = _state_fns(cell, params)
  T = xs.shape[0]

  def rollout(s):
    return jax.lax.scan(lambda s, x: (step(s, x), None), s, xs[T - k :])[0]

  jac = jax.jacrev(rollout)(before[T - k])
  return float(jnp.log(jnp.linalg.norm(jac[block, block], ord=2)))


def rescale(params, lam):
  sigma = jnp.linalg.norm(params.w_hh, ord=2)
  return params._replace(w_hh=params.w_hh * (lam / sigma))


def _chain_rule_error(cell, params, xs, before, log10, length) -> float:
  """|log10 norm at lag k| of the chain-rule product minus `jax.jacrev`'s, k = min(10, T)."""
  k = min(10, length)
  direct = direct_log_norm(cell, params, xs[0], before[0], k) * TO_LOG10
  return abs(direct - float(log10[0, k - 1]))


def tanh_norms(args, measure_all, xs, key) -> tuple[dict, float]:
  """Per lambda: the measured log10 norms beside the bound; and the chain-rule check's error."""
  lags = np.arange(1, args.length + 1)
  tanh, chain_err = {}, 0.0
  cell = jaxrnn.elman(args.hidden)
  for lam in LAMBDAS:
    params = rescale(cell.init(jax.random.fold_in(key, int(lam * 1000)), args.input_size), lam)
    logs, before = measure_all(cell, params, xs)
    log10 = np.asarray(logs, np.float64) * TO_LOG10  # (trials, T)
    bound = lags * math.log10(lam)
    excess = log10 - bound[None, :]  # log10(measured / bound) <= 0 if the bound holds
    if lam == 1.0:  # one independent check of the chain-rule product per cell family
      chain_err = _chain_rule_error(cell, params, xs, before, log10, args.length)
    tanh[str(lam)] = {
      "log10_norm_mean": log10.mean(0).tolist(),
      "log10_bound": bound.tolist(),
      "max_log10_measured_over_bound": float(excess.max()),
      "log10_norm_at_T": float(log10[:, -1].mean()),
    }
  return tanh, chain_err


def lstm_norms(args, measure_all, xs, key) -> tuple[dict, float]:
  """Per forget bias: the log10 norms of dc_T/dc_{T-k}, their fitted per-step decay."""
  lags = np.arange(1, args.length + 1)
  lstm, chain_err = {}, 0.0
  cell = jaxrnn.lstm(args.hidden)  # its step does not depend on forget_bias: init adds it
  for fb in FORGET_BIASES:
    init = jaxrnn.lstm(args.hidden, forget_bias=fb).init
    params = init(jax.random.fold_in(key, int(fb * 1000)), args.input_size)
    logs, before = measure_all(cell, params, xs)
    log10 = np.asarray(logs, np.float64) * TO_LOG10
    if fb == 1.0:
      chain_err = _chain_rule_error(cell, params, xs, before, log10, args.length)
    slope = float(np.polyfit(lags, log10.mean(0), 1)[0])
    lstm[str(fb)] = {
      "log10_norm_mean": log10.mean(0).tolist(),
      "log10_norm_min_over_trials": log10.min(0).tolist(),
      "log10_norm_max_over_trials": log10.max(0).tolist(),
      "fitted_decay_per_step": 10.0**slope,
      "sigmoid_forget_bias": 1.0 / (1.0 + math.exp(-fb)),
      "log10_norm_at_T": float(log10[:, -1].mean()),
    }
  return lstm, chain_err


def run(args) -> dict:
  k_x, k_rnn, k_lstm = jax.random.split(jax.random.key(args.seed), 3)
  xs = jax.random.normal(k_x, (args.trials, args.length, args.input_size))
  # cells are static arguments: one compilation per cell family, parameters are traced
  measure_all = jax.jit(jax.vmap(measure, in_axes=(None, None, 0)), static_argnums=0)
  tanh, tanh_err = tanh_norms(args, measure_all, xs, k_rnn)
  lstm, lstm_err = lstm_norms(args, measure_all, xs, k_lstm)
  results = {
    "tanh": tanh,
    "lstm": lstm,
    "lags": list(range(1, args.length + 1)),
    "chain_rule_vs_jacrev_max_abs_log10_diff": max(tanh_err, lstm_err),
  }
  report(results, args)
  return results


def checks(results, args) -> list[dict]:
  """The Pascanu et al. bound for the tanh RNNs; forget bias 1 decaying slower than 0."""
  worst_ratio = max(r["max_log10_measured_over_bound"] for r in results["tanh"].values())
  lstm = results["lstm"]
  per_step = {fb: lstm[str(fb)]["fitted_decay_per_step"] for fb in (0.0, 1.0)}
  b1 = np.asarray(lstm["1.0"]["log10_norm_min_over_trials"])
  b0 = np.asarray(lstm["0.0"]["log10_norm_max_over_trials"])
  return [
    harness.check(
      "tanh RNN: max over lambda, trials, k of ||dh_T/dh_{T-k}|| / lambda^k",
      10.0**worst_ratio,
      1.0,
      "Pascanu, Mikolov & Bengio 2013, sec. 2.1 (bound (lambda_1 gamma)^k, gamma=1 for tanh)",
      worst_ratio <= math.log10(1.0 + 1e-4),
      "every measurement <= lambda^k (operator 2-norm), up to relative 1e-4",
    ),
    harness.check(
      "LSTM per-step decay of ||dc_T/dc_{T-k}||: forget bias 1 (ours) vs 0 (reference)",
      per_step[1.0],
      per_step[0.0],
      "Gers et al. 2000; Jozefowicz et al. 2015 (forget bias 1)",
      bool(np.all(b1 > b0)) and per_step[1.0] > per_step[0.0],
      "bias 1 norm > bias 0 norm at every lag k=1..T (every trial) and a larger decay factor",
    ),
  ]


def report(results, args) -> None:
  tanh, lstm = results["tanh"], results["lstm"]
  print(
    f"Vanishing gradients at init: T={args.length}, H={args.hidden}, {args.trials} input "
    f"sequences x ~ N(0, 1)^{args.input_size}."
  )
  print(f"  {'tanh RNN, lambda':<22}{'log10 ||dh_T/dh_0||':>22}{'log10 bound':>14}")
  for lam in LAMBDAS:
    r = tanh[str(lam)]
    print(f"  {lam:<22}{r['log10_norm_at_T']:>22.2f}{r['log10_bound'][-1]:>14.2f}")
  print(f"  {'LSTM, forget bias':<22}{'log10 ||dc_T/dc_0||':>22}{'per step':>14}{'sigmoid(b)':>12}")
  for fb in FORGET_BIASES:
    r = lstm[str(fb)]
    print(
      f"  {fb:<22}{r['log10_norm_at_T']:>22.2f}{r['fitted_decay_per_step']:>14.3f}"
      f"{r['sigmoid_forget_bias']:>12.3f}"
    )
  err = results["chain_rule_vs_jacrev_max_abs_log10_diff"]
  print(f"  chain-rule product vs jax.jacrev of the rollout: max |diff| {err:.1e} (log10)")


def figure(plt, results, args):
  lags = np.asarray(results["lags"])
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, lam in enumerate(LAMBDAS):
    r = results["tanh"][str(lam)]
    color = f"C{i}"
    ax1.semilogy(lags, 10.0 ** np.asarray(r["log10_norm_mean"]), color=color, label=f"λ={lam}")
    ax1.semilogy(lags, 10.0 ** np.asarray(r["log10_bound"]), color=color, ls=":", lw=1)
  lowest = min(min(r["log10_norm_mean"]) for r in results["tanh"].values())
  ax1.set_ylim(10.0 ** (lowest - 2), 1e12)
  ax1.set_title("tanh RNN: ||∂h_T/∂h_{T−k}||₂ (dotted: bound λ^k)")
  ax1.set_xlabel("lag k")
  ax1.legend(fontsize=8)
  for i, fb in enumerate(FORGET_BIASES):
    r = results["lstm"][str(fb)]
    color = f"C{i}"
    ax2.semilogy(lags, 10.0 ** np.asarray(r["log10_norm_mean"]), color=color, label=f"b_f={fb}")
    ax2.semilogy(lags, r["sigmoid_forget_bias"] ** lags, color=color, ls=":", lw=1)
  ax2.set_title("LSTM: ||∂c_T/∂c_{T−k}||₂ (dotted: sigmoid(b_f)^k)")
  ax2.set_xlabel("lag k")
  ax2.legend(fontsize=8)
  fig.suptitle(f"Gradient norms at initialisation, T={args.length}, H={args.hidden}")
  return fig


QUICK = dict(length=40, hidden=16, trials=2)
FLAGS = {
  "length": harness.flag(200, "T"),
  "hidden": harness.flag(64, "H"),
  "input_size": harness.flag(1, "I (inputs x ~ N(0, 1))"),
  "trials": harness.flag(8, "input sequences per setting"),
}
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()

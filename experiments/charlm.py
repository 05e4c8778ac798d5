"""A character-level LSTM language model of the Python standard library's own source.

Corpus: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` of the
running interpreter (``site-packages`` and the ``test``/``tests``/``idlelib``
directories left out), read as UTF-8 bytes (a 256-symbol alphabet). Files are
split into train and test by a hash of their relative path (``--test-percent``
of the files go to test), so no file is in both; then the first
``--train-chars`` / ``--test-chars`` bytes of each side are used, files in
sorted order. The corpus therefore depends on the Python version, which the
JSON records along with its sizes.

Model: byte embedding -> LSTM -> linear readout to 256 logits, trained with
truncated BPTT (`jaxrnn.train.make_tbptt_step`): the training text is cut into
``--batch`` parallel streams, read in windows of ``--window`` bytes with the
carry passed on and the gradient stopped between windows, Adam with clipping 1.
Reported: bits per character on the test text (the carry runs through it
unbroken), beside the unigram model of the training text (add-one smoothed),
and a sample generated at temperature 0.8. PASS if the LSTM's test bits per
character are lower than the unigram model's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from experiments import harness, training

NAME = "charlm"
VOCAB = 256
SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}


def corpus(train_chars, test_chars, test_percent):
  """``(train, test, info)``: uint8 arrays of the stdlib's source, split by file."""
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
  files.sort()
  parts = {"train": [], "test": []}
  sizes = {"train": 0, "test": 0}
  limit = {"train": train_chars, "test": test_chars}
  counts = {"train": 0, "test": 0}
  for path in files:
    rel = os.path.relpath(path, root)
    side = (
      "test" if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100 < test_percent else "train"
    )
    if sizes[side] >= limit[side]:
      if all(sizes[s] >= limit[s] for s in sizes):
        break
      continue
    with open(path, "rb") as f:
      data = f.read()
    parts[side].append(data)
    sizes[side] += len(data)
    counts[side] += 1
  train_text = np.frombuffer(b"".join(parts["train"]), np.uint8)[:train_chars]
  test_text = np.frombuffer(b"".join(parts["test"]), np.uint8)[:test_chars]
  info = {
    "stdlib": root,
    "train_files": counts["train"],
    "test_files": counts["test"],
    "train_chars": int(train_text.size),
    "test_chars": int(test_text.size),
  }
  return train_text, test_text, info


def unigram_bits(train_text, test_text):
  counts = np.bincount(train_text, minlength=VOCAB).astype(np.float64) + 1.0
  p = counts / counts.sum()
  return float(-np.mean(np.log2(p[test_text])))


def make_model(hidden, embed):
  cell = jaxrnn.lstm(hidden)

  def init(key):
    k_e, k_c, k_o = jax.random.split(key, 3)
    return {
      "embed": jax.random.normal(k_e, (VOCAB, embed)) / math.sqrt(embed),
      "rnn": cell.init(k_c, embed),
      "w": jax.random.normal(k_o, (hidden, VOCAB)) / math.sqrt(hidden),
      "b": jnp.zeros((VOCAB,)),
    }

  def apply(params, carry, tokens):
    carry, hs = jaxrnn.scan(cell, params["rnn"], params["embed"][tokens], carry)
    return carry, hs @ params["w"] + params["b"][None, None, :]

  return cell, init, apply


def streams(text, batch, length):
  """``text`` cut into ``batch`` parallel streams of ``length`` (+1 for the shifted target)."""
  n = (text.size - 1) // batch
  if n < length:
    raise ValueError(f"text of {text.size} bytes is too short for batch={batch} x {length}.")
  starts = np.arange(batch) * n
  return np.stack([text[s : s + n + 1] for s in starts]), n


def train_lm(args, train_text, info, model):
  """TBPTT through `training.fit`: ``--steps`` steps of ``--windows-per-step`` windows."""
  cell, init, apply = model
  opt = optax.adam(args.lr)

  def loss_fn(params, carry, batch):
    carry, logits = apply(params, carry, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    return jnp.mean(loss), carry

  chunk = args.window * args.windows_per_step
  data, n = streams(train_text, args.batch, chunk)
  chunks_per_epoch = n // chunk
  tbptt = training.make_tbptt_step(loss_fn, opt, window=args.window, max_grad_norm=1.0)

  def step_fn(state, batch):  # fit's step: the state is (TrainState, carry)
    train_state, carry = state
    start = batch["start"]
    reset = start == 0  # a new epoch starts the streams from the beginning: zero carry
    carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)
    train_state, carry, metrics = tbptt(train_state, carry, {"x": batch["x"], "y": batch["y"]})
    return (train_state, carry), {k: jnp.mean(v) for k, v in metrics.items()}

  def batch_fn(i):
    j = i % chunks_per_epoch
    window = data[:, j * chunk : j * chunk + chunk + 1]
    return {"x": window[:, :-1], "y": window[:, 1:], "start": np.int32(j)}

  params = init(jax.random.key(args.seed))
  carry = cell.initial_carry(params["rnn"], (args.batch,))
  config = dict(vars(args), **info)
  config.pop("no_progress", None)
  state, _ = training.fit(
    jax.jit(step_fn),
    (training.TrainState.create(params, opt), carry),
    batch_fn,
    args,
    NAME,
    "lstm",
    config,
    steps=args.steps,
    model=cell,
    batch_size=args.batch * chunk,
    logs=50,
    desc="charlm",
  )
  return state.params


def test_bits(args, test_text, model, params) -> float:
  """Bits per character on the test text; the carry runs through each test stream unbroken."""
  cell, _, apply = model
  test_data, test_n = streams(test_text, args.test_batch, args.window)
  windows = test_n // args.window
  xs = test_data[:, : windows * args.window].reshape(args.test_batch, windows, args.window)
  ys = test_data[:, 1 : windows * args.window + 1].reshape(args.test_batch, windows, args.window)

  @jax.jit
  def test_loss(params, xs, ys):
    def body(carry, w):
      x, y = w
      carry, logits = apply(params, carry, x)
      return carry, jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    carry0 = cell.initial_carry(params["rnn"], (args.test_batch,))
    _, sums = jax.lax.scan(body, carry0, (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1)))
    return jnp.sum(sums) / ys.size

  return float(test_loss(params, xs, ys)) / math.log(2.0)


def run(args) -> dict:
  train_text, test_text, info = corpus(args.train_chars, args.test_chars, args.test_percent)
  model = make_model(args.hidden, args.embed)
  params = train_lm(args, train_text, info, model)
  bpc = test_bits(args, test_text, model, params)
  unigram = unigram_bits(train_text, test_text)
  cell, _, apply = model
  sample = generate(apply, cell, params, "def ", args.sample_chars, 0.8, args.seed)
  print(
    f"Character LSTM on the stdlib's source ({info['train_files']} train files, "
    f"{info['train_chars']:,} bytes; {info['test_files']} test files, {info['test_chars']:,} "
    f"bytes): H={args.hidden}, TBPTT window {args.window}, batch {args.batch}, "
    f"{args.steps * args.windows_per_step} updates."
  )
  print(f"  test bits/char: LSTM {bpc:.3f}, unigram {unigram:.3f}")
  print("  sample (temperature 0.8):")
  print("    " + sample.replace("\n", "\n    "))
  return {
    "test_bits_per_char": bpc,
    "unigram_bits_per_char": unigram,
    "corpus": info,
    "train_bytes_seen": args.steps * args.batch * args.window * args.windows_per_step,
    "sample": sample,
  }


def checks(results, args) -> list[dict]:
  """The LSTM's test bits per character below the unigram model's."""
  bpc, unigram, info = (
    results[k] for k in ("test_bits_per_char", "unigram_bits_per_char", "corpus")
  )
  return [
    harness.check(
      "charlm: test bits per character, LSTM (ours) vs unigram (reference)",
      bpc,
      unigram,
      "unigram model of the training text, same run",
      bpc < unigram,
      "LSTM bits/char < unigram bits/char",
      f"{info['train_chars']:,} train / {info['test_chars']:,} test bytes from "
      f"{info['train_files']} / {info['test_files']} files",
    )
  ]


def generate(apply, cell, params, prompt, length, temperature, seed):
  """Samples ``length`` bytes after ``prompt``; returns prompt + sample, decoded."""
  tokens = jnp.asarray(np.frombuffer(prompt.encode(), np.uint8)[None, :])
  carry = cell.initial_carry(params["rnn"], (1,))
  carry, logits = apply(params, carry, tokens)

  @jax.jit
  def sample(carry, last_logits, key):
    def body(c, k):
      carry, logits = c
      tok = jax.random.categorical(k, logits / temperature, axis=-1)  # (1,)
      carry, logits = apply(params, carry, tok[:, None])
      return (carry, logits[:, -1]), tok[0]

    keys = jax.random.split(key, length)
    _, toks = jax.lax.scan(body, (carry, last_logits), keys)
    return toks

  toks = sample(carry, logits[:, -1], jax.random.key(seed + 12345))
  out = bytes(np.asarray(toks, np.uint8).tolist())
  return prompt + out.decode("utf-8", errors="replace")


def figure(plt, results, args):
  """The training loss in bits per character (from the metrics file) beside the unigram's."""
  path = harness.metrics_path(args, NAME, "lstm")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if r.get("split") == "train"]
  fig, ax = harness.axes(
    plt, (6, 3.8), "fit step", "bits per character", "Character LSTM on the Python stdlib"
  )
  ax.plot([r["step"] for r in rows], [r["loss"] / math.log(2.0) for r in rows], label="train")
  ax.axhline(results["unigram_bits_per_char"], color="gray", ls=":", label="unigram (test)")
  ax.legend(fontsize=8)
  return fig


FLAGS = {
  "hidden": harness.flag(128, "LSTM H"),
  "embed": harness.flag(64, "byte embedding size"),
  "batch": harness.flag(32, "parallel training streams"),
  "window": harness.flag(100, "TBPTT window (bytes)"),
  "windows_per_step": harness.flag(4, "TBPTT updates per fit step"),
  "steps": harness.flag(500, "fit steps"),
  "lr": harness.flag(2e-3, "Adam learning rate"),
  "train_chars": harness.flag(4_000_000, "training bytes"),
  "test_chars": harness.flag(200_000, "test bytes"),
  "test_percent": harness.flag(10, "share of files for test"),
  "test_batch": harness.flag(20, "parallel test streams"),
  "sample_chars": harness.flag(400, "bytes sampled after the prompt"),
}
QUICK = dict(hidden=32, embed=16, batch=8, window=50, windows_per_step=2, steps=20)
QUICK.update(train_chars=100_000, test_chars=10_000, sample_chars=80, lr=1e-2)
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()

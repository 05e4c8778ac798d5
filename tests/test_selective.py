"""The Mamba tasks experiment (issue 26): its data against plain-Python constructions, its
accuracy against NumPy, and a quick run's JSON (complete, finite)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import selective


@pytest.fixture(autouse=True)
def _standard_promotion():
  # optax.adam computes decay ** count (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    yield


def test_copying_batch_is_the_papers_layout():
  length, tokens = 20, 5
  batch = selective.copying_batch(jax.random.key(0), 64, length, tokens)
  inputs, targets, recall = (np.asarray(a) for a in batch)
  assert inputs.shape == targets.shape == recall.shape == (64, length + tokens)
  for row, target, scored in zip(inputs.tolist(), targets.tolist(), recall.tolist(), strict=True):
    data = [t for t in row[:length] if t != selective.NOISE]  # the data tokens, in order
    assert data == target[length:] and all(1 <= t <= selective.VOCAB - 2 for t in data)
    assert row[length:] == [selective.MARKER] * tokens
    assert scored == [False] * length + [True] * tokens
  # positions are spread over the whole region, values over all 14 data tokens
  assert (inputs[:, :length] != 0).any(axis=0).all()
  assert set(targets[:, length:].ravel().tolist()) == set(range(1, selective.VOCAB - 1))


def test_induction_batch_target_follows_the_first_special_token():
  length = 12
  batch = selective.induction_batch(jax.random.key(1), 200, length)
  inputs, targets, recall = (np.asarray(a) for a in batch)
  assert inputs.shape == targets.shape == recall.shape == (200, length)
  assert recall[:, -1].all() and not recall[:, :-1].any()
  for row, target in zip(inputs.tolist(), targets[:, -1].tolist(), strict=True):
    specials = [i for i, t in enumerate(row) if t == selective.SPECIAL]
    assert len(specials) == 2 and specials[1] == length - 1 and specials[0] < length - 2
    assert row[specials[0] + 1] == target != selective.SPECIAL


def test_loss_and_accuracy_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 9, selective.VOCAB)).astype(np.float32)
  targets = rng.integers(0, selective.VOCAB, size=(6, 9))
  recall = rng.random((6, 9)) < 0.3
  loss, acc = selective.loss_and_accuracy(
    lambda p, x: p, jnp.asarray(logits), None, jnp.asarray(targets), jnp.asarray(recall)
  )
  scored, labels = logits[recall].astype(np.float64), targets[recall]  # the recall steps only
  logp = scored - np.log(np.exp(scored).sum(-1, keepdims=True))
  want = -np.mean(logp[np.arange(len(labels)), labels])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(acc) == pytest.approx(np.mean(scored.argmax(-1) == labels), abs=1e-6)


def test_selective_quick(tmp_path):
  rec = selective.main(["--quick", "--out", str(tmp_path), "--no-progress", "--no-checkpoints"])
  on_disk = json.loads((tmp_path / "selective" / "selective.json").read_text())
  assert on_disk["experiment"] == "selective" and on_disk["quick"] is True
  assert on_disk["passed"] == rec["passed"] and on_disk["checks"]
  assert all(
    {"name", "ours", "reference", "source", "pass", "rule"} <= set(c) for c in on_disk["checks"]
  )
  res = on_disk["results"]
  args = on_disk["flags"]
  lengths = [str(m * args["induction_length"]) for m in args["test_multiples"]]
  for kind in args["cells"]:
    copy, ind = res["copying"][kind], res["induction"][kind]
    assert len(copy["test"]) == len(copy["validation"]) == args["seeds"]
    assert sorted(ind["by_length"], key=int) == lengths
    accs = copy["test"] + copy["validation"] + ind["validation"]
    accs += [a for r in ind["by_length"].values() for a in r["test"]]
    assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in accs)
  assert res["paper"]["copying"]["Mamba + S6"] == 0.998
  for png in ("selective_copying.png", "induction_heads.png"):
    assert (tmp_path / "selective" / png).stat().st_size > 0


def test_selective_is_a_spec_whose_quick_sizes_are_its_flags():
  from experiments import all as run_all
  from experiments import harness

  spec = selective.SPEC
  assert spec.name == selective.NAME == "selective" and selective.main == spec.main
  assert "selective" in run_all.EXPERIMENTS
  full, quick = harness.parse(spec, []), harness.parse(spec, ["--quick"])
  for dest, value in spec.quick.items():
    assert hasattr(full, dest) and getattr(quick, dest) == value
  assert full.cells == list(selective.CELLS) and full.seeds == 3 and full.selective == "mamba"
  assert max(full.test_multiples) >= 16  # tested at 16x the training length at least

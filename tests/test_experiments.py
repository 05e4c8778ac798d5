"""Every experiment in --quick mode: it runs, writes its JSON, and the numbers in it make sense.

Quick runs are tiny, so the PASS/FAIL verdicts of the training experiments are
not asserted (they are results, not smoke tests); what is asserted are numbers
that hold at any size: the vanishing-gradient bound, baselines computed in the
same run that match the literature, ranges, shapes and determinism.
"""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import adding, charlm, copy, default, digits, harness, sunspots, ucr, vanishing
from experiments import all as run_all

EXPERIMENTS = (vanishing, adding, copy, sunspots, digits, charlm, ucr, default)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _standard_promotion():
  # optax.adam computes decay ** count (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    yield


def _run(module, tmp_path, *extra):
  record = module.main(["--quick", "--out", str(tmp_path), "--no-progress", *extra])
  name = module.NAME
  with open(tmp_path / name / f"{name}.json") as f:
    on_disk = json.load(f)
  assert on_disk["experiment"] == name and on_disk["quick"] is True
  assert on_disk["checks"] and all(
    {"name", "ours", "reference", "source", "pass", "rule"} <= set(c) for c in on_disk["checks"]
  )
  assert on_disk["passed"] == record["passed"]
  return on_disk


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.NAME)
def test_every_experiment_is_a_spec_whose_quick_sizes_are_its_flags(module, capsys):
  spec = module.SPEC
  assert spec.name == module.NAME and module.main == spec.main
  full, quick = harness.parse(spec, []), harness.parse(spec, ["--quick", "--seed", "3"])
  assert quick.quick and quick.seed == 3 and not full.quick
  for dest, value in spec.quick.items():
    assert hasattr(full, dest) and getattr(quick, dest) == value
  with pytest.raises(SystemExit):
    harness.parse(spec, ["--help"])
  assert "--quick" in capsys.readouterr().out


def test_harness_table_and_flags():
  lines = harness.md_table(("norm", "n"), [("||x||", 1234), ("y", 0.5)], align="lr")
  assert lines == ["| norm | n |", "|---|---:|", "| \\|\\|x\\|\\| | 1,234 |", "| y | 0.5 |"]
  p = harness.parser("x", None, {"lengths": [1, 2], "lr": 0.1, "flag": False})
  args = p.parse_args(["--lengths", "3", "4", "--lr", "0.5", "--flag"])
  assert args.lengths == [3, 4] and args.lr == 0.5 and args.flag is True


def test_vanishing_obeys_the_bound(tmp_path):
  rec = _run(vanishing, tmp_path)
  res = rec["results"]
  assert len(res["lags"]) == 40
  lags = np.asarray(res["lags"])
  for lam in vanishing.LAMBDAS:
    r = res["tanh"][str(lam)]
    measured, bound = np.asarray(r["log10_norm_mean"]), np.asarray(r["log10_bound"])
    np.testing.assert_allclose(bound, lags * math.log10(lam), rtol=1e-9)
    assert np.all(measured <= bound + 1e-4)  # Pascanu et al.: ||dh_T/dh_{T-k}|| <= lambda^k
    assert r["max_log10_measured_over_bound"] <= math.log10(1 + 1e-4)
  # contracting maps shrink the gradient by many orders of magnitude
  assert res["tanh"]["0.5"]["log10_norm_at_T"] < -10
  lstm = res["lstm"]
  assert lstm["1.0"]["fitted_decay_per_step"] > lstm["0.0"]["fitted_decay_per_step"]
  assert lstm["3.0"]["log10_norm_at_T"] > lstm["1.0"]["log10_norm_at_T"]
  assert np.all(
    np.asarray(lstm["1.0"]["log10_norm_mean"]) > np.asarray(lstm["0.0"]["log10_norm_mean"])
  )
  assert res["chain_rule_vs_jacrev_max_abs_log10_diff"] < 1e-3
  assert rec["passed"] is True  # a theorem and a monotone effect: they hold at any size


def test_adding_quick(tmp_path):
  rec = _run(adding, tmp_path, "--no-checkpoints")
  res = rec["results"]
  for cell in ("tanh", "lstm"):
    assert 0.0 < res["modern"]["20"][cell] < 3.0
  a = res["hs97"]
  assert a["reference_sequences"] == 74_000 and a["length"] == 20
  assert 0 <= a["test_wrong"] <= 2560 and math.isfinite(a["test_mse"])
  assert a["sequences_to_stop"] is None or a["sequences_to_stop"] % a["batch"] == 0
  assert len(rec["checks"]) == 2


def test_adding_data_generators():
  xs, ys = adding.make_batch(jax.random.key(0), 16, 30)
  assert xs.shape == (16, 30, 2)
  np.testing.assert_array_equal(np.asarray(xs[..., 1]).sum(1), 2.0)
  np.testing.assert_allclose(ys, np.sum(np.asarray(xs[..., 0] * xs[..., 1]), 1), rtol=1e-6)
  xs, lengths, target = adding.hs97_batch(jax.random.key(1), 64, 100)
  xs, lengths, target = map(np.asarray, (xs, lengths, target))
  assert xs.shape == (64, 110, 2) and np.all((lengths >= 100) & (lengths <= 110))
  for x, n, t in zip(xs, lengths, target, strict=True):
    marked = np.flatnonzero(x[:, 1] == 1.0)
    assert len(marked) == 2 and marked[0] < 10 and marked[1] < 50
    assert np.all(np.abs(x[:n, 0]) <= 1.0) and np.all(x[n:] == 0)
    ends = [i for i in (0, n - 1) if i not in marked]
    assert np.all(x[ends, 1] == -1.0)
    assert t == pytest.approx(0.5 + x[marked, 0].sum() / 4.0)


def test_copy_quick(tmp_path):
  rec = _run(copy, tmp_path, "--no-checkpoints")
  res = rec["results"]
  assert res["baselines"]["10"] == pytest.approx(10 * math.log(8) / 30)
  for cell in ("tanh", "lstm"):
    r = res["table"]["10"][cell]
    assert 0.0 < r["ratio"] < 20.0 and 0.0 <= r["recall_accuracy"] <= 1.0
    assert r["ratio"] == pytest.approx(r["loss"] / res["baselines"]["10"])
  inputs, targets = copy.make_batch(jax.random.key(0), 4, 10)
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  assert inputs.shape == targets.shape == (4, 30)
  np.testing.assert_array_equal(targets[:, -10:], inputs[:, :10])
  assert np.all(inputs[:, 19] == copy.DELIM) and np.all(targets[:, :20] == 0)


def test_sunspots_quick(tmp_path):
  rec = _run(sunspots, tmp_path, "--no-checkpoints")
  res = rec["results"]
  assert res["n_test"] == 35 and res["n_train"] == 221 - 12
  ar = res["ar9"]
  assert 8.0 < ar["rmse"] < 30.0 and len(ar["params"]) == 10
  assert ar["arv"] == pytest.approx(ar["rmse"] ** 2 / res["arv_sigma2_1700_1979"])
  for name in ("lstm", "gru"):
    assert 0.0 < res[name]["rmse"] < 100.0


def test_digits_quick_and_resume_from_checkpoint(tmp_path):
  rec = _run(digits, tmp_path)
  res = rec["results"]
  assert res["n_train"] == 898 and res["n_test"] == 899
  assert res["svc_accuracy"] > 0.95  # scikit-learn's own example: 0.97
  assert 0.2 < res["lstm_accuracy"] <= 1.0
  assert np.sum(res["lstm_confusion"]) == 899
  # a second run with the same flags restores the finished run: the same numbers
  again = _run(digits, tmp_path)
  assert again["results"]["lstm_accuracy"] == res["lstm_accuracy"]
  assert list((tmp_path / "digits" / "checkpoints").iterdir())


def test_charlm_quick(tmp_path):
  rec = _run(charlm, tmp_path, "--no-checkpoints")
  res = rec["results"]
  assert res["corpus"]["train_chars"] == 100_000 and res["corpus"]["test_chars"] == 10_000
  assert res["corpus"]["train_files"] > 0 and res["corpus"]["test_files"] > 0
  assert 3.0 < res["unigram_bits_per_char"] < 7.0
  assert 0.0 < res["test_bits_per_char"] < 9.0
  assert res["sample"].startswith("def ") and len(res["sample"]) > 4


def test_ucr_quick(tmp_path):
  rec = _run(ucr, tmp_path, "--no-checkpoints")
  res = rec["results"]
  assert res["GunPoint"]["n_train"] == 50 and res["GunPoint"]["n_test"] == 150
  assert res["ItalyPowerDemand"]["n_test"] == 1029
  for r in res.values():  # our 1-NN baseline reproduces the archive's published errors
    assert r["one_nn_euclidean_error"] == pytest.approx(
      r["published_one_nn_euclidean_error"], abs=0.001
    )
    assert 0.0 <= r["lstm_error"] <= 1.0


def test_default_quick_leaves_a_fresh_checkout_clean(tmp_path, monkeypatch):
  # `make run` in a checkout: a git repo with the project's .gitignore, the default --out
  subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
  shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
  monkeypatch.chdir(tmp_path)
  rec = default.main(["--quick", "--no-progress", "--no-checkpoints"])
  assert json.loads(Path(harness.RUNS, "default", "default.json").read_text()) == rec
  status = subprocess.run(
    ["git", "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True
  )
  assert status.stdout == "?? .gitignore\n"  # everything the run wrote is ignored
  assert [c["name"][:12] for c in rec["checks"]] == ["tanh RNN: ma", "LSTM per-ste", "adding (b), "]
  assert rec["checks"][0]["pass"] and rec["checks"][1]["pass"]
  assert 0.0 < rec["results"]["adding"]["lstm"] < 3.0


def test_quick_runs_refuse_the_committed_results():
  for out in (harness.RESULTS, os.path.join(harness.RESULTS, "x")):
    with pytest.raises(ValueError, match="not into the committed results/"):
      harness.parse(vanishing.SPEC, ["--quick", "--out", out])
    with pytest.raises(ValueError, match="not into the committed results/"):
      run_all.main(["--quick", "--out", out])
  assert harness.parse(vanishing.SPEC, ["--out", harness.RESULTS]).out == harness.RESULTS
  assert harness.parse(vanishing.SPEC, []).out == harness.RUNS


def test_progress_bars_are_quiet_off_a_terminal():
  # pytest captures stderr, so it is not a terminal: tqdm's disable=None turns the bar off
  assert harness.progress(3, "x", disable=False).disable is True
  assert list(harness.progress(3, "x", disable=True)) == [0, 1, 2]


def test_readme_links_are_committed_files():
  readme = (ROOT / "README.md").read_text()
  links = re.findall(r"\]\(([^)#:]+)\)", readme)
  assert "results/vanishing/vanishing.png" in links
  tracked = subprocess.run(
    ["git", "ls-files", "--error-unmatch", *links], cwd=ROOT, capture_output=True, text=True
  )
  assert tracked.returncode == 0, tracked.stderr


def test_all_writes_the_summary(tmp_path, monkeypatch):
  fake = {
    "quick": False,
    "seconds": 1.0,
    "checks": [
      {"name": "a", "ours": 0.5, "reference": 1.0, "source": "S", "pass": True, "rule": "r"},
      {"name": "b", "ours": 2, "reference": 1, "source": "T", "pass": False, "rule": "r"},
    ],
  }
  records = {"vanishing": fake, "copy": {"error": "RuntimeError: boom", "seconds": 0.1}}
  summary, table = run_all.summarize(records, str(tmp_path))
  assert summary["passed"] == 1 and summary["failed"] == 2
  md = (tmp_path / "summary.md").read_text()
  assert "| vanishing | a | 0.5 | 1 | S | PASS |" in md
  assert "| vanishing | b | 2 | 1 | T | FAIL |" in md
  assert "copy: error" in md and md == table
  assert json.loads((tmp_path / "summary.json").read_text())["checks"][0]["ours"] == 0.5

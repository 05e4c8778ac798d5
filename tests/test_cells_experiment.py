"""The all-cells table on the adding problem (experiments/cells.py), a quick run."""

import jax
import pytest

from experiments import cells


@pytest.fixture(autouse=True)
def _standard_promotion():
  # optax.adam computes decay ** count (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    yield


def test_cells_quick(tmp_path):
  flags = ["--quick", "--out", str(tmp_path), "--no-progress", "--no-checkpoints"]
  rec = cells.main(flags)
  rows = {r["cell"]: r for r in rec["results"]["rows"]}
  assert set(rows) == {"tanh", "lstm"}
  assert rows["lstm"]["params"] == 2 * 32 + 8 * 32 + 32  # w_ih, w_hh, b at I=2, H=8
  assert rows["tanh"]["params"] == 2 * 8 + 8 * 8 + 8
  assert rows["lstm"]["vs_lstm"] == 1.0 and rows["lstm"]["vs_lstm_range"] == [1.0, 1.0]
  for r in rows.values():
    assert 0.0 < r["ratio"] < 3.0 and r["ratio"] == pytest.approx(6 * r["test_mse"])
  assert len(rec["checks"]) == 1  # the seed's claim, LSTM vs tanh RNN
  md = (tmp_path / "cells" / "cells.md").read_text()
  assert md.splitlines() == rec["results"]["table"] and "| lstm |" in md

"""The packing experiment: packed rows with resets train exactly as padded rows (a quick run)."""

import json

import jax
import numpy as np
import pytest

from experiments import harness, packing


@pytest.fixture(autouse=True)
def _standard_promotion():
  # optax.adam computes decay ** count (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    yield


def test_pack_lays_out_every_sequence_once_after_a_reset():
  seqs = packing.make_sequences(0, 20, 2, 10)
  rows = packing.pack([len(s) for s in seqs], 10)
  assert sorted(i for row in rows for i in row) == list(range(20))
  b = packing.lay_out(seqs, rows, len(rows) + 1, 10)  # one spare row
  assert b["lengths"][-1] == 0 and b["lengths"].max() <= 10
  assert b["lengths"].sum() == sum(len(s) for s in seqs) and b["resets"].sum() == 20
  for r, row in enumerate(rows):
    starts = np.flatnonzero(b["resets"][r])
    for s, i in zip(starts, row, strict=True):
      e = s + len(seqs[i])
      np.testing.assert_array_equal(b["xs"][r, s:e, 0], seqs[i])
      np.testing.assert_allclose(b["ys"][r, e - 1], seqs[i].mean(), rtol=1e-5)
    assert not b["xs"][r, b["lengths"][r] :].any()


def test_both_layouts_hold_the_same_sequences_each_step():
  args = harness.parse(packing.SPEC, ["--quick"])
  padded, packed = packing.batches(args)
  assert len(padded) == len(packed) == args.steps
  for a, b in zip(padded, packed, strict=True):
    assert a["xs"].shape[0] == args.batch and b["xs"].shape[0] % args.row_multiple == 0
    assert a["lengths"].sum() == b["lengths"].sum()
    values = [
      np.sort(x["xs"][..., 0][np.arange(x["xs"].shape[1]) < x["lengths"][:, None]]) for x in (a, b)
    ]
    np.testing.assert_array_equal(*values)


def test_packing_quick(tmp_path):
  rec = packing.main(["--quick", "--out", str(tmp_path), "--no-progress", "--no-checkpoints"])
  res = rec["results"]
  np.testing.assert_allclose(res["losses_packed"], res["losses_padded"], rtol=1e-5)
  assert rec["checks"][0]["pass"] and res["max_relative_difference"] <= 1e-5
  assert res["losses_padded"][-1] < res["losses_padded"][0]  # it trains
  assert res["ideal_speedup"] == res["timed_rows_padded"] / res["timed_rows_packed"] > 1
  assert res["packed_steps"] == sum(res["rows_per_step"]) * 24 < res["padded_steps"]
  on_disk = json.loads((tmp_path / "packing" / "packing.json").read_text())
  assert on_disk["quick"] is True and len(on_disk["checks"]) == 2

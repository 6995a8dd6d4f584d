"""benchmarks/bench_signature.py end to end on a tiny case: every field there and sane.

Three child processes (affjax with empty compilation and converted-weights caches,
affjax with both warm, the reference), resnet18 at 32 px, batch 8, scores only:
18-33 s on the 2-core dev machine, most of it process start, torch import and compiles.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from optional import requires_torch
from parity_helpers import SIGNATURE_TOL

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_signature", ROOT / "benchmarks" / "bench_signature.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_signature"] = mod
    spec.loader.exec_module(mod)
    return mod


@requires_torch
def test_tiny_run_writes_every_field(tmp_path):
    bench = _bench_module()
    out = tmp_path / "sig.json"
    # float64 reference: the parity baseline, so |delta| is the two frameworks' float32
    # forwards only (the float32 reference alone moves by ~1e-3 at n = 8 < d).
    argv = "--model resnet18 --batch 8 --size 32 --metrics scores --reps 1"
    argv = [*argv.split(), "--reference-dtype", "float64", "--out", str(out)]
    bench.main(argv)
    (row,) = json.loads(out.read_text())["rows"]
    runs = row["runs"]
    assert sorted(runs) == ["affjax_cached", "affjax_cold", "reference"]
    for tag, run in runs.items():
        assert "error" not in run, (tag, run.get("error"))
        for key in ("import_s", "load_s", "first_s", "cold_s"):
            assert run[key] > 0, (tag, key)
        assert run["cold_s"] == pytest.approx(run["import_s"] + run["load_s"] + run["first_s"])
        assert run["peak_rss_bytes"] > 100 * 2**20, tag  # jax or torch alone is more than that
    cold, cached, ref = runs["affjax_cold"], runs["affjax_cached"], runs["reference"]
    for run in (cold, cached):  # the first call split at its forward's end
        assert 0 < run["first_scores_s"] < run["first_s"]
        assert run["first_forward_s"] + run["first_scores_s"] == pytest.approx(run["first_s"])
    assert "first_scores_s" not in ref
    assert ref["forward_s"] > 0 and cold["forward_s"] > 0 and cold["warm_s"] > 0
    assert cold["compile_s"] == pytest.approx(cold["first_s"] - cold["warm_s"])
    # Compiles were counted; no kernel compiled more than once per width bucket; the
    # forward went into the cache and came back from it; no warm call recompiled.
    named = cold["compiles_first"]["by_name"]
    assert cold["compiles_first"]["count"] >= len(named) >= 1
    assert all(
        v["count"] <= len(row.get("width_buckets", row["widths"])) for v in named.values()
    ), named
    assert cold["persistent_cache"]["writes"] >= 1 and cached["persistent_cache"]["hits"] >= 1
    assert cold["compiles_later"]["count"] == 0
    # The weights too: converted and stored by the first child, read without torch by the second.
    assert (cold["weights_cache_hit"], cached["weights_cache_hit"]) == (False, True)
    assert cold["torch_imported"] and not cached["torch_imported"]
    # resnet18's 17 ReLU calls, the same on both sides, at widths 64...512
    assert row["num_calls"] == 17
    assert row["delta"]["calls_matched"] == row["delta"]["calls_reference"] == 17
    assert row["widths"] == [64, 128, 256, 512]
    # Measured 6.7e-8 (two frameworks' float32 forwards; parity tests: 1.5e-7 worst).
    assert row["delta"]["max_abs_delta"]["aff_score"]["max_abs"] <= SIGNATURE_TOL["aff_score"]
    for key in ("ratio_cold", "ratio_cold_cached", "ratio_warm", "signature_over_forward"):
        assert 0 < row[key] < float("inf"), key

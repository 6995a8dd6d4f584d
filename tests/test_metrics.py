"""Side metrics against the PyTorch reference (float64) and scikit-learn."""

import jax
import numpy as np
import pytest
from optional import HAVE_TORCH_EXTRA, requires_torch

from affjax import metrics

if HAVE_TORCH_EXTRA:
    import torch
    from sklearn.linear_model import LinearRegression

    from converters import reference


def _data(n, d, seed, ill=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if ill:  # near-collinear columns: exercises the rank cutoff of the fit
        x[:, 1] = x[:, 0] + 1e-9 * rng.normal(size=n)
    return x, np.maximum(x + 0.3, 0) + 0.01 * rng.normal(size=(n, d))


@requires_torch
@pytest.mark.parametrize(
    "n,d,ill", [(100, 10, False), (64, 64, False), (50, 80, False), (128, 32, True)]
)
def test_metrics_match_reference(n, d, ill):
    x, y = _data(n, d, n + d, ill)
    with jax.enable_x64(True):
        got = {
            "cka": float(metrics.cka(x, y)),
            "norm": float(metrics.norm_diff(x, y)),
            "r2": float(metrics.r2(x, y)),
        }
    f64 = torch.float64
    assert got["cka"] == pytest.approx(reference.linear_cka(x, y, dtype=f64), rel=1e-10)
    assert got["norm"] == pytest.approx(reference.norm_diff(x, y, dtype=f64), rel=1e-12)
    assert got["r2"] == pytest.approx(LinearRegression().fit(x, y).score(x, y), abs=1e-8)
    assert got["r2"] == pytest.approx(reference.r2_score(x, y, dtype=f64), abs=1e-8)


@requires_torch
@pytest.mark.parametrize("d", [1, 7, 64])
def test_entropy_matches_torch_histc(d):
    x = np.random.default_rng(d).normal(size=(40, d)).astype(np.float32)
    x[3] = 0.25  # constant row: histc widens the range to [v - 1, v + 1]
    assert float(metrics.entropy(x)) == pytest.approx(reference.entropy_batch(x), abs=1e-5)


def test_entropy_closed_forms():
    d = 16
    spaced = np.linspace(0, 1, d, dtype=np.float32)[None]  # one value per bin
    assert float(metrics.entropy(spaced)) == pytest.approx(2 * np.log(d), abs=1e-5)
    assert float(metrics.entropy(np.full((1, d), 3.0, np.float32))) == pytest.approx(np.log(d))


@requires_torch
def test_sparsity_counts_small_entries():
    t = np.array([0.0, 1e-3, -1e-3, 2e-3, -5.0, 1e-4, 0.5, 1.0], np.float32).reshape(2, 2, 2)
    assert float(metrics.sparsity(t)) == pytest.approx(4 / 8)
    assert float(metrics.sparsity(t)) == pytest.approx(reference.sparsity(torch.from_numpy(t)))


def test_cka_identities():
    x, y = _data(60, 5, 0)
    with jax.enable_x64(True):
        assert float(metrics.cka(x, x)) == pytest.approx(1.0, abs=1e-12)
        assert float(metrics.cka(3 * x + 1, y)) == pytest.approx(float(metrics.cka(x, y)))


def test_r2_constant_output_conventions():
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.ones((30, 2))
    with jax.enable_x64(True):
        assert float(metrics.r2(x, y)) == 1.0  # constant output, perfectly predicted


def _with_singular_values(s, n, seed):
    """``[n, len(s)]`` inputs whose centred matrix has exactly the singular values ``s``
    (orthonormal factors, the left one orthogonal to the ones vector), plus an offset."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, len(s)))
    u, _ = np.linalg.qr(a - a.mean(0))
    v, _ = np.linalg.qr(rng.normal(size=(len(s), len(s))))
    return (u * np.asarray(s)) @ v.T + 5.0


@pytest.mark.parametrize(
    "s,clearance",
    [
        ([2.0, 0.5, 3e-6, 0.0], 1.5),  # 3e-6 against the cutoff 1e-6 * 2: 1.5x above it
        ([2.0, 0.5, 3e-3, 0.0], 1500.0),
        ([2.0, 0.5, 1e-9, 1e-3], 500.0),  # 1e-9 is 2000x below, 1e-3 500x above
    ],
)
def test_r2_clearance_is_the_distance_of_the_singular_values_from_the_cutoff(s, clearance):
    # Closed form: min_i max(s_i / c, c / s_i), c = R2_RCOND * s_max; the exact 0 is
    # infinitely far. float64: the s_i carry ~1e-16 * s_max, 1e-10 of 3e-6.
    x = _with_singular_values(s, 40, 1)
    y = np.maximum(x, 5.0)
    with jax.enable_x64(True):
        r2, got = metrics.r2_with_clearance(x, y)
        assert float(got) == pytest.approx(clearance, rel=1e-8)
        assert float(r2) == float(metrics.r2(x, y))


def test_r2_is_ill_posed_when_round_off_decides_the_rank(monkeypatch):
    # Float32 features, as captured: a singular value at the cutoff (1e-6 of the
    # largest; float32 rounding moves it by ~1e-7 of the largest) leaves r2 to
    # round-off, so it is NaN and named in ill_posed; a clear one (1e-2) is scored
    # and equals numpy's least squares. Every other metric is scored in both.
    import importlib

    from affjax.capture import Call

    signature_lib = importlib.import_module("affjax.signature")
    calls = []
    for name, small in (("near", 1e-6), ("clear", 1e-2)):
        x = np.float32(_with_singular_values([3.0, 1.0, 0.5, small], 48, 2))
        y = np.float32(np.maximum(x - 5.0, 0.0) + np.random.default_rng(4).normal(size=x.shape))
        calls.append(Call(name, 0, "ReLU", False, (), x, y, None, None, 0.0, 0.0))
    records = signature_lib.score_calls(calls, metrics=("aff_score", "cka_score", "r2_score"))
    near, clear = records
    assert np.isnan(near["r2_score"]) and near["ill_posed"] == "r2_score"
    assert np.isfinite(near["aff_score"]) and np.isfinite(near["cka_score"])
    assert clear["ill_posed"] == ""
    want = _r2_lstsq(calls[1].x.astype(np.float64), calls[1].y.astype(np.float64))
    assert clear["r2_score"] == pytest.approx(want, abs=1e-12)  # float64 both: round-off


def _r2_lstsq(x, y):
    """R^2 of the least-squares fit with intercept, averaged over outputs (numpy lstsq)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    coef, *_ = np.linalg.lstsq(xc, yc, rcond=None)
    return float(np.mean(1.0 - ((yc - xc @ coef) ** 2).sum(0) / (yc**2).sum(0)))


def test_one_score_kernel_per_bucket_with_r2_where_it_is_well_posed(monkeypatch):
    # n = 48: d = 40 and d = 47 share the width bucket 48; r2 is well-posed at
    # d = 40 (n > d + 1) and not at d = 47. One kernel scores both, r2 for the first
    # is computed, the second's is NaN and named in ill_posed. Counted on the plain
    # jax.jit path (stored traces: tests/test_traces.py counts their files).
    import importlib

    from affjax import traces
    from affjax.capture import Call

    monkeypatch.setattr(traces, "directory", lambda: None)

    signature_lib = importlib.import_module("affjax.signature")

    calls = []
    for d in (40, 47):
        x, y = _data(48, d, d)
        assert signature_lib._bucket(d) == 48
        calls.append(Call(f"d{d}", 0, "ReLU", False, (), np.float32(x), np.float32(y),
                          None, None, 0.0, 0.0))  # fmt: skip
    before = signature_lib._score_group._cache_size()
    records = signature_lib.score_calls(calls, metrics=("aff_score", "r2_score"))
    assert signature_lib._score_group._cache_size() == before + 1
    want = _r2_lstsq(calls[0].x.astype(np.float64), calls[0].y.astype(np.float64))
    # float64 on both sides, well-conditioned x: measured |diff| 0 (round-off ~1e-16).
    assert records[0]["r2_score"] == pytest.approx(want, abs=1e-13)
    assert records[0]["ill_posed"] == ""
    assert np.isnan(records[1]["r2_score"]) and records[1]["ill_posed"] == "r2_score"
    assert np.isfinite(records[1]["aff_score"])


def test_scoring_threads_give_one_threads_records_and_compile_each_kernel_once(
    monkeypatch, tmp_path
):
    # Three width buckets (8, 32, 48), two calls each, scored by two threads: every
    # record equals the one-thread run's to the bit, and each bucket's kernel was
    # exported and compiled once (its first call runs before the others of its
    # bucket; two threads missing the same stored trace would each compile it).
    import importlib

    from affjax import traces
    from affjax.capture import Call

    monkeypatch.setattr(traces, "directory", lambda: tmp_path / "traces")
    signature_lib = importlib.import_module("affjax.signature")
    calls = []
    for i, d in enumerate((8, 24, 40, 8, 30, 33)):
        x, y = _data(37, d, i)  # n = 37: shapes no other test compiles
        calls.append(Call(f"c{i}", 0, "ReLU", False, (), np.float32(x), np.float32(y),
                          None, None, 0.0, 0.0))  # fmt: skip
    assert len({signature_lib._bucket(c.x.shape[1]) for c in calls}) == 3
    metrics_ = ("aff_score", "aff_score_corrected", "cka_score", "r2_score")
    compiled, listening = [], [True]

    def on_compile(event, secs, **kwargs):
        if listening[0] and event == "/jax/core/compile/backend_compile_duration":
            compiled.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(on_compile)
    monkeypatch.setenv("AFFJAX_SCORE_WORKERS", "2")
    try:
        threaded = signature_lib.score_calls(calls, metrics=metrics_)
    finally:
        listening[0] = False
    # The scores are finished in numpy on the host (signature._finish_on_host): no kernel.
    assert sorted(compiled) == ["jit(_score_group)"] * 3, compiled
    assert len(list((tmp_path / "traces").iterdir())) == 3
    monkeypatch.setenv("AFFJAX_SCORE_WORKERS", "1")
    single = signature_lib.score_calls(calls, metrics=metrics_)
    assert [r["layer"] for r in threaded] == [f"c{i}" for i in range(6)]
    for a, b in zip(threaded, single, strict=True):
        assert all(np.isfinite(a[m]) or m in a["ill_posed"] for m in metrics_)
        np.testing.assert_equal(a, b)  # the same executables and inputs: equal to the bit

    monkeypatch.setenv("AFFJAX_SCORE_WORKERS", "two")
    with pytest.raises(signature_lib.SignatureError, match="AFFJAX_SCORE_WORKERS='two'"):
        signature_lib.score_calls(calls, metrics=metrics_)


def test_kernels_prepared_beside_the_forward_give_the_same_records(monkeypatch, tmp_path, caplog):
    # With AFFJAX_PREPARE_KERNELS=on (the default on accelerators), every score
    # kernel is compiled once, by the threads that prepare them while the forward
    # runs, none later by the scoring; the records equal the plain run's to the
    # bit; a failing preparation only logs.
    import importlib
    import threading

    import flax.linen as nn

    from affjax import signature, traces
    from affjax.models import layers

    class Widths(nn.Module):
        # Six calls in five width buckets: 8, 32 (24, 30), 48, 64, 128 (80).
        @nn.compact
        def __call__(self, x):
            for d in (8, 24, 40, 30, 64, 80):
                x = layers.Activation("ReLU", torch_layout="same")(nn.Dense(d)(x))
            return x

    signature_lib = importlib.import_module("affjax.signature")
    monkeypatch.setattr(traces, "directory", lambda: tmp_path / "traces")
    model = Widths()
    x = np.random.default_rng(0).normal(size=(29, 5)).astype(np.float32)  # n = 29: new shapes
    variables = model.init(jax.random.key(0), x)
    metrics_ = ("aff_score", "aff_score_corrected", "cka_score", "r2_score")
    compiled, listening = [], [True]

    def on_compile(event, secs, **kwargs):
        name = str(kwargs.get("fun_name"))
        if listening[0] and event == "/jax/core/compile/backend_compile_duration":
            if "_group" in name:  # any score-group kernel
                compiled.append((name, threading.current_thread().name.split("_")[0]))

    jax.monitoring.register_event_duration_secs_listener(on_compile)
    monkeypatch.setenv("AFFJAX_PREPARE_KERNELS", "on")
    try:
        ahead = signature(model, variables, x, metrics=metrics_).records()
    finally:
        listening[0] = False
    kernels = [("jit(_score_group)", "affjax-kernels")] * 5
    assert sorted(compiled) == kernels, compiled
    monkeypatch.setenv("AFFJAX_PREPARE_KERNELS", "off")
    plain = signature(model, variables, x, metrics=metrics_).records()
    assert [r["d"] for r in plain] == [8, 24, 40, 30, 64, 80]
    assert all(r["status"] == "ok" and np.isfinite(r["aff_score"]) for r in plain)
    np.testing.assert_equal(ahead, plain)

    def broken(*args):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(signature_lib, "_prepare_kernels", broken)
    monkeypatch.setenv("AFFJAX_PREPARE_KERNELS", "on")
    with caplog.at_level("INFO", logger="affjax.signature"):
        np.testing.assert_equal(signature(model, variables, x, metrics=metrics_).records(), plain)
    assert "not prepared ahead (RuntimeError: no compiler today)" in caplog.text
    monkeypatch.setenv("AFFJAX_PREPARE_KERNELS", "sometimes")
    with pytest.raises(signature_lib.SignatureError, match="AFFJAX_PREPARE_KERNELS='sometimes'"):
        signature(model, variables, x, metrics=metrics_)

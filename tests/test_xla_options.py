"""affjax's XLA options: CPU only, only what this jaxlib knows, never over the user's
XLA_FLAGS, applied at the top level of each jit and nowhere else."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import xla_options


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("AFFJAX_CPU_OPTIONS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)


def _compiles_with(options: dict) -> bool:
    try:
        jax.jit(lambda v: v * 2, compiler_options=options).lower(1.0).compile()
    except Exception:
        return False
    return True


def test_cpu_options_when_this_jaxlib_knows_them(clean_env):
    expected = xla_options.CPU_OPTIONS if _compiles_with(xla_options.CPU_OPTIONS) else {}
    assert xla_options.compiler_options("cpu") == expected
    # The probe says no to an option XLA does not have, rather than failing later.
    assert not xla_options._supported((("xla_cpu_no_such_option", "1"),))


@pytest.mark.parametrize("backend", ["gpu", "tpu", "cuda", "rocm"])
def test_no_options_off_the_cpu(clean_env, backend):
    assert xla_options.compiler_options(backend) == {}


def test_user_settings_win(monkeypatch, clean_env):
    monkeypatch.setenv("AFFJAX_CPU_OPTIONS", "off")
    assert xla_options.compiler_options("cpu") == {}
    monkeypatch.setenv("AFFJAX_CPU_OPTIONS", " No ")  # any on/off spelling, any case
    assert xla_options.compiler_options("cpu") == {}
    monkeypatch.setenv("AFFJAX_CPU_OPTIONS", "on")
    expected = xla_options.CPU_OPTIONS if _compiles_with(xla_options.CPU_OPTIONS) else {}
    assert xla_options.compiler_options("cpu") == expected
    monkeypatch.setenv("AFFJAX_CPU_OPTIONS", "fast")  # not a guess: an error that says what to do
    with pytest.raises(ValueError, match="AFFJAX_CPU_OPTIONS='fast' is neither on nor off"):
        xla_options.compiler_options("cpu")
    monkeypatch.delenv("AFFJAX_CPU_OPTIONS")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert xla_options.compiler_options("cpu") == {}


class _ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        return nn.Dense(4)(x.mean(axis=(1, 2)))


def test_jit_gives_the_plain_jit_result_and_nests(clean_env):
    module = _ConvNet()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3)), jnp.float32)
    variables = module.init(jax.random.key(0), x)

    def apply(v, images):
        with jax.default_matmul_precision("highest"):
            return module.apply(v, images)

    ours = xla_options.jit(apply)
    plain = jax.jit(apply)(variables, x)
    got = ours(variables, x)
    # Other conv kernels, the same float32 products: measured |diff| / max|logit| 1.7e-7
    # on this net; 1e-5 is 58x.
    scale = float(jnp.max(jnp.abs(plain)))
    assert float(jnp.max(jnp.abs(got - plain))) <= 1e-5 * scale
    # Options only at the top level: inside another trace it is a plain nested jit
    # (JAX refuses compiler options there).
    nested = jax.jit(lambda v, i: ours(v, i) + 1.0)(variables, x)
    np.testing.assert_allclose(np.asarray(nested), np.asarray(got) + 1.0, rtol=1e-6, atol=1e-6)
    jaxpr = jax.make_jaxpr(ours)(variables, x)
    assert any(e.primitive.name in ("pjit", "jit") for e in jaxpr.jaxpr.eqns)
    # The jitted function's own API is there.
    assert ours.lower(variables, x).compile() is not None
    ours.clear_cache()
    if xla_options.compiler_options():
        assert ours._get() is not ours._nested


def test_nested_call_traces_once(clean_env):
    traces = []

    def double(v):
        traces.append(1)
        return v * 2

    ours = xla_options.jit(double)
    out = jax.jit(lambda v: ours(v) + 1)(jnp.ones(3))
    np.testing.assert_array_equal(np.asarray(out), 3.0)
    assert len(traces) == 1  # the refused top-level attempt traced nothing


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_signature_scores_with_single_threaded_host_blas(clean_env, monkeypatch):
    # OpenBLAS threads spinning next to XLA's made a d = 128 call 2-4x slower on
    # 2 cores (xla_options docstring). Inside score_calls every BLAS is limited to
    # one thread, seen from the host solver that runs there; outside, the
    # user's setting is back.
    from threadpoolctl import threadpool_limits

    from affjax.capture import Call
    from affjax.signature import score_calls
    from affjax.solvers import host

    if jax.default_backend() != "cpu":
        pytest.skip("the limit applies when scoring on the CPU")
    # The host solver's scipy brings its own OpenBLAS: loaded now, ``before`` counts it
    # (run alone, the test saw a second BLAS appear inside score_calls).
    import scipy.optimize  # noqa: F401

    seen = []
    match = host.match_points
    monkeypatch.setattr(
        host, "match_points", lambda t, y: seen.append(_blas_threads()) or match(t, y)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3))
    call = Call("a_ReLU", 0, "ReLU", False, ("a",), x, np.maximum(x, 0), None, None, 0.0, 0.0)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        (rec,) = score_calls([call], metrics=("aff_score",))
        assert _blas_threads() == before
    assert np.isfinite(rec["aff_score"])
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert before and set(before) == {2}


def test_host_blas_left_alone_when_tuning_is_off(monkeypatch):
    monkeypatch.setenv("AFFJAX_CPU_OPTIONS", "off")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        with xla_options.scoring_threads("cpu"):
            assert set(_blas_threads()) == {2}
        with xla_options.scoring_threads("gpu"):
            assert set(_blas_threads()) == {2}

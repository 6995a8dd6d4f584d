"""Host assignment solver: scipy's optimum, under jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from affjax.solvers import assignment, host


def _optimum(c):
    r, k = linear_sum_assignment(c)
    return c[r, k].sum()


@pytest.mark.parametrize("kind", ["uniform", "sqdist", "ties", "duplicates"])
def test_host_total_is_optimal(kind):
    rng = np.random.default_rng(0)
    n = 60
    if kind == "uniform":
        c = rng.uniform(size=(n, n))
    elif kind == "sqdist":
        a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        c = ((a[:, None] - b[None]) ** 2).sum(-1)
    elif kind == "ties":
        c = rng.integers(0, 3, size=(n, n)).astype(float)
    else:
        a = np.repeat(rng.normal(size=(n // 4, 2)), 4, axis=0)
        c = ((a[:, None] - a[None]) ** 2).sum(-1)
    with jax.enable_x64(True):
        perm, total = jax.jit(host.host_assignment)(jnp.asarray(c))
        perm, total = np.asarray(perm), float(total)
    assert sorted(perm) == list(range(n))
    assert total == pytest.approx(c[np.arange(n), perm].sum(), rel=1e-15)
    assert total == pytest.approx(_optimum(c), rel=1e-9)


def test_host_vmap_equals_loop():
    c = np.random.default_rng(1).uniform(size=(5, 30, 30))
    with jax.enable_x64(True):
        perms, totals = jax.vmap(host.host_assignment)(jnp.asarray(c))
        loop = [host.host_assignment(jnp.asarray(ci)) for ci in c]
    for (p, t), pv, tv in zip(loop, perms, totals, strict=True):
        np.testing.assert_array_equal(p, pv)
        assert float(t) == float(tv)


def test_non_finite_cost_gives_nan_total():
    c = np.ones((4, 4))
    c[1, 2] = np.nan
    with jax.enable_x64(True):
        _, total = host.host_assignment(jnp.asarray(c))
    assert np.isnan(float(total))


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown solver"):
        assignment.resolve_solver("hungarian")


def test_solver_import_waits_for_a_signature_and_can_run_in_a_thread():
    # `import affjax` leaves scipy.optimize (0.5 s) out; prefetch imports it in a
    # thread, and a matching made meanwhile waits for it and is still optimal.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, threading
        import numpy as np
        import affjax
        from affjax.solvers import host
        assert "scipy.optimize" not in sys.modules, "imported with affjax"
        host.prefetch()
        cost = np.random.default_rng(0).random((30, 30))
        perm = host._assign(cost)  # may run while the thread imports
        for t in threading.enumerate():
            if t.name == "affjax-import-scipy":
                t.join()
        assert "scipy.optimize" in sys.modules
        from scipy.optimize import linear_sum_assignment
        rows, cols = linear_sum_assignment(cost)
        assert cost[np.arange(30), perm].sum() == cost[rows, cols].sum()
        host.prefetch()  # imported: no thread
        assert not any(t.name == "affjax-import-scipy" for t in threading.enumerate())
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

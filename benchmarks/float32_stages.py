"""Where float32 loses digits in the score: stage by stage against float64, per captured call.

Reads ``/tmp/float32_calls/*.npz`` (benchmarks/capture_float32_calls.py). For each
call: the score in float32 and float64 from the same float32 activations, the
relative error of each float32 stage, and hybrid scores in which one stage is
taken from float64 (rounded to float32) and the rest computed in float32.

    python benchmarks/float32_stages.py /tmp/float32_calls/resnet18_n256_s64.npz
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from affjax import precision as precision_lib
from affjax import score as score_lib
from affjax.math import covariance, matrix_square_root


@jax.jit
def _front(x, y):
    with precision_lib.matmul_scope("highest"):
        n, d = x.shape
        mx, my = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
        xc, yc = x - mx, y - my
        sx, sy = covariance.empirical(xc), covariance.empirical(yc)
        return mx, my, xc, yc, sx, sy


@jax.jit
def _bures(sx, sy):
    with precision_lib.matmul_scope("highest"):
        return matrix_square_root.bures_map(sx, sy)


@jax.jit
def _bures_factored(xc, yc):
    with precision_lib.matmul_scope("highest"):
        n = xc.shape[0]
        scale, floor = 1.0 / (n - 1), covariance.RIDGE
        r_x = covariance.triangular_factor(xc, scale, floor)
        r_y = covariance.triangular_factor(yc, scale, floor)
        return matrix_square_root.bures_map_factored(r_x, r_y)


@jax.jit
def _map(xc, a):
    with precision_lib.matmul_scope("highest"):
        return xc @ a


def _perm(tc, yc):
    t, y = np.asarray(tc, np.float64), np.asarray(yc, np.float64)
    c = (t * t).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * t @ y.T
    return linear_sum_assignment(c)[1]


def _score(tc, yc, tr, dt):
    perm = _perm(tc, yc)
    w2 = jnp.sum((jnp.asarray(tc, dt) - jnp.asarray(yc, dt)[perm]) ** 2) / tc.shape[0]
    return float(1 - jnp.sqrt(w2 / (2 * jnp.asarray(tr, dt)))), float(w2), perm


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def study(x32, y32):
    n, d = x32.shape
    out = {"n": n, "d": d}
    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(x32, jnp.float64), jnp.asarray(y32, jnp.float64)
        kernel = score_lib.affinity(x64, y64, solver="host")
        out["score64"] = float(kernel.score)
        mx, my, xc, yc, sx, sy = _front(x64, y64)
        a = _bures(sx, sy)
        tc = _map(xc, a)
        tr = jnp.trace(sy)
        f64 = {k: np.asarray(v) for k, v in dict(xc=xc, yc=yc, sx=sx, sy=sy, a=a, tc=tc).items()}
        f64["tr"] = float(tr)
        s64, w64, p64 = _score(tc, yc, tr, jnp.float64)
        out["w2_64"] = w64
        out["kappa_x"] = float(np.linalg.cond(f64["sx"]))
    kernel32 = score_lib.affinity(jnp.asarray(x32), jnp.asarray(y32), solver="host")
    out["err"] = abs(float(kernel32.score) - out["score64"])
    f32 = jnp.float32
    mx, my, xc, yc, sx, sy = _front(jnp.asarray(x32), jnp.asarray(y32))
    out["xc"] = rel(xc, f64["xc"])
    out["sx"] = rel(sx, f64["sx"])
    out["sy"] = rel(sy, f64["sy"])
    a = _bures(sx, sy)
    out["a"] = rel(a, f64["a"])
    with jax.enable_x64(True):
        # residual of the float32 map against the float64 covariances
        a64 = np.asarray(a, np.float64)
        out["resid"] = rel(a64 @ f64["sx"] @ a64, f64["sy"])
        out["resid64"] = rel(f64["a"] @ f64["sx"] @ f64["a"], f64["sy"])
    tc = _map(xc, a)
    out["tc"] = rel(tc, f64["tc"])
    tr = jnp.trace(sy)
    out["tr"] = abs(float(tr) / f64["tr"] - 1)
    s32, w32, p32 = _score(tc, yc, tr, f32)
    out["pub"] = abs(s32 - out["score64"])
    out["perm_same"] = bool(np.all(p32 == p64))
    out["w2"] = abs(w32 / out["w2_64"] - 1)
    # hybrids: one stage exact (float64 rounded to float32), the rest float32
    a_exact = jnp.asarray(f64["a"], f32)
    out["h_exact_a"] = abs(_score(_map(xc, a_exact), yc, tr, f32)[0] - out["score64"])
    with jax.enable_x64(True):
        a_of32 = _bures(jnp.asarray(sx, jnp.float64), jnp.asarray(sy, jnp.float64))
    a_of32 = jnp.asarray(a_of32, f32)
    out["h_bures64"] = abs(_score(_map(xc, a_of32), yc, tr, f32)[0] - out["score64"])
    a_cov64 = _bures(jnp.asarray(f64["sx"], f32), jnp.asarray(f64["sy"], f32))
    out["h_cov64"] = abs(_score(_map(xc, a_cov64), yc, tr, f32)[0] - out["score64"])
    out["h_tc64"] = abs(_score(jnp.asarray(f64["tc"], f32), yc, tr, f32)[0] - out["score64"])
    # the float32 path the score now takes: the map from triangular factors, by SVD
    a_fact = _bures_factored(xc, yc)
    out["a_fact"] = rel(a_fact, f64["a"])
    out["fact"] = abs(_score(_map(xc, a_fact), yc, tr, f32)[0] - out["score64"])
    return out


COLS = (
    "n d err pub xc sx sy a resid resid64 tc tr w2 perm_same "
    "h_exact_a h_bures64 h_cov64 h_tc64 a_fact fact kappa_x score64"
).split()


def main(paths):
    for path in paths:
        data = np.load(path)
        keys = data["keys"]
        print(path)
        print(" ".join(f"{c:>9}" for c in ["key"] + COLS))
        errs, pubs = [], []
        for i, k in enumerate(keys):
            o = study(data[f"x{i}"], data[f"y{i}"])
            errs.append(o["err"])
            pubs.append(o["pub"])
            print(
                f"{k[-9:]:>9} "
                + " ".join(
                    f"{o[c]:9.2e}" if isinstance(o[c], float) else f"{o[c]!s:>9}" for c in COLS
                ),
                flush=True,
            )
        print(f"now: max {max(errs):.2e} median {np.median(errs):.2e}")
        print(f"published form: max {max(pubs):.2e} median {np.median(pubs):.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""The non-linearity signature: the affinity score of every activation call.

capture (Flax ``sow``, chunked forward) -> reduce (in-graph) -> group calls by
shape -> one ``vmap``-ed, jitted scoring function per group -> a tidy table.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax import metrics as metrics_lib
from affjax import precision as precision_lib
from affjax import reports
from affjax.capture import Call, capture
from affjax.score import _score
from affjax.solvers import assignment

__all__ = ["METRICS", "REDUCTIONS", "Signature", "SignatureError", "score_calls", "signature"]

#: Per-call metrics, named as in the reference's output.
METRICS = (
    "aff_score",
    "aff_score_corrected",
    "cka_score",
    "ent_before",
    "ent_after",
    "sparsity_before",
    "sparsity_after",
    "norm_diff",
    "r2_score",
)
REDUCTIONS = ("reference", "channels")

# Largest stack of [n, n] cost matrices scored in one vmapped call (memory).
_MAX_GROUP_BYTES = 2 << 30


class SignatureError(ValueError):
    """A signature that cannot be computed as asked (bad input or bad layers)."""


def _bucket(d: int) -> int:
    """Width a call of width ``d`` is zero-padded to, so nearby widths share a compile.

    Two buckets per octave above 64 (at most 50 % padding, usually far less);
    widths of powers of two and multiples of 64 below 128 are kept as they are.
    DenseNet-121's 31 distinct widths (64...1024 by 32) fall into 8 buckets.
    """
    if d <= 64:
        return d if d in (1, 2, 4, 8, 16, 32) else -(-d // 16) * 16
    step = max(64, 1 << (d.bit_length() - 2))
    return -(-d // step) * step


@functools.partial(jax.jit, static_argnames=("wanted", "solver", "rtol"))
def _score_group(xs, ys, xs32, ys32, dims, *, wanted: tuple[str, ...], solver: str, rtol: float):
    """All requested metrics for a stack of zero-padded calls ``[L, n, d]``, vmapped over L."""

    def one(x, y, x32, y32, dim):
        out = {}
        score = functools.partial(_score, solver=solver, rtol=rtol, dim=dim)
        if "aff_score" in wanted:
            r = score(x, y, shrinkage=False)
            out.update(
                aff_score=r.score,
                w2=r.w2,
                gap=r.gap,
                degenerate=r.degenerate,
                finite=r.finite,
                converged=r.converged,
            )
        if "aff_score_corrected" in wanted:
            r = score(x, y, shrinkage=True)
            out.update(
                aff_score_corrected=r.score, finite=r.finite, converged_corrected=r.converged
            )
        if "cka_score" in wanted:
            out["cka_score"] = metrics_lib.cka(x, y)
        # The reference bins float32 features; same arithmetic, same bins.
        if "ent_before" in wanted:
            out["ent_before"] = metrics_lib.entropy(x32, dim)
        if "ent_after" in wanted:
            out["ent_after"] = metrics_lib.entropy(y32, dim)
        if "norm_diff" in wanted:
            out["norm_diff"] = metrics_lib.norm_diff(x, y)
        if "r2_score" in wanted:
            out["r2_score"] = metrics_lib.r2(x, y, dim=dim)
        if "finite" not in out:
            out["finite"] = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
        return out

    return jax.vmap(one)(xs, ys, xs32, ys32, dims)


def _status(rec: dict) -> str:
    if not rec.get("finite", True):
        return "nonfinite"
    if not (rec.get("converged", True) and rec.get("converged_corrected", True)):
        return "unconverged"
    return "ok"


def score_calls(
    calls: Sequence[Call],
    *,
    reduce: str = "reference",
    metrics: Sequence[str] = METRICS,
    solver: str = "auto",
    precision: str = "auto",
    rtol: float = 1e-6,
) -> list[dict]:
    """Scores captured calls; calls of equal ``[n, d]`` are scored together with ``vmap``."""
    if reduce not in REDUCTIONS:
        raise SignatureError(f"unknown reduce {reduce!r}; choose one of {REDUCTIONS}")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise SignatureError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    solver = assignment.resolve_solver(solver)
    dtype = precision_lib.dtype_of(precision)

    def features(c: Call):
        if reduce == "channels" and c.x_channels is not None:
            return c.x_channels, c.y_channels
        return c.x, c.y

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    # Calls sharing their arrays (one ReLU6 call under its Hardtanh and ReLU6 keys)
    # are scored once.
    first: dict[tuple[int, int], int] = {}
    alias: dict[int, int] = {}
    for i, c in enumerate(calls):
        fx, fy = features(c)
        same = first.setdefault((id(fx), id(fy)), i)
        if same != i:
            alias[i] = same
            continue
        n, d = fx.shape
        groups[(n, _bucket(d))].append(i)

    wanted = tuple(m for m in METRICS if m in metrics)
    results: list[dict] = [{} for _ in calls]
    # vmap pays on accelerators; on the CPU it only adds compiles (eigh and the
    # host solver loop over the stack anyway), so score one call at a time there.
    stack = 1 if jax.default_backend() == "cpu" else 16
    for (n, width), idx in groups.items():
        if n < 2:
            raise SignatureError(f"need at least 2 images to score, got {n}")
        per_call = max(n * n, n * width, width * width) * 8 * 4
        step = max(1, min(stack, _MAX_GROUP_BYTES // per_call))
        for start in range(0, len(idx), step):
            chunk = idx[start : start + step]
            padded = chunk + [chunk[0]] * (step - len(chunk))  # one shape per bucket
            x32 = np.zeros((step, n, width), np.float32)
            y32 = np.zeros((step, n, width), np.float32)
            dims = np.zeros(step, np.int32)
            for j, i in enumerate(padded):
                fx, fy = features(calls[i])
                x32[j, :, : fx.shape[1]], y32[j, :, : fy.shape[1]] = fx, fy
                dims[j] = fx.shape[1]
            with precision_lib.scope(precision):
                out = _score_group(
                    jnp.asarray(x32, dtype),
                    jnp.asarray(y32, dtype),
                    jnp.asarray(x32),
                    jnp.asarray(y32),
                    jnp.asarray(dims),
                    wanted=wanted,
                    solver=solver,
                    rtol=rtol,
                )
                out = jax.device_get(out)
            for j, i in enumerate(chunk):
                results[i] = {k: v[j].item() for k, v in out.items()}
    for i, same in alias.items():
        results[i] = results[same]

    records = []
    for order, (c, r) in enumerate(zip(calls, results, strict=True)):
        x, _ = features(c)
        rec = {
            "index": order,
            "layer": c.key,
            "call": c.call,
            "kind": c.kind,
            "functional": c.functional,
            "n": int(x.shape[0]),
            "d": int(x.shape[1]),
        }
        for m in wanted:
            if m == "sparsity_before":
                rec[m] = c.sparsity_x
            elif m == "sparsity_after":
                rec[m] = c.sparsity_y
            else:
                rec[m] = float(r[m])
        for extra in ("w2", "gap"):
            if extra in r:
                rec[extra] = float(r[extra])
        if "degenerate" in r:
            rec["degenerate"] = bool(r["degenerate"])
        rec["status"] = _status(r)
        records.append(rec)
    return records


@dataclass
class Signature:
    """Per-call metrics of one model on one batch (or several)."""

    _records: list[dict]
    meta: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        """One dict per activation call, in execution order."""
        return [dict(r) for r in self._records]

    def scores(self, metric: str = "aff_score") -> np.ndarray:
        """The signature as an array, in call order."""
        return np.array([r[metric] for r in self._records], dtype=np.float64)

    def failures(self) -> list[dict]:
        """Records whose score could not be computed (NaN with a status)."""
        return [r for r in self._records if r["status"] != "ok"]

    def check(self) -> Signature:
        """Raises :class:`SignatureError` naming every call that failed."""
        bad = self.failures()
        if bad:
            names = ", ".join(f"{r['layer']}[{r['call']}]: {r['status']}" for r in bad[:10])
            raise SignatureError(
                f"{len(bad)} activation call(s) could not be scored ({names}); "
                "non-finite activations usually mean unnormalised inputs or broken weights"
            )
        return self

    def to_csv(self, path) -> None:
        reports.write_csv(path, self._records)

    def to_json(self, path) -> None:
        reports.write_json(path, self._records, self.meta)

    def plot(self, path, metric: str = "aff_score", title: str | None = None) -> None:
        reports.plot_signature(
            path, self._records, metric=metric, title=title or self.meta.get("model")
        )


def signature(
    module: nn.Module,
    variables: dict,
    images,
    *,
    reduce: str = "reference",
    metrics: Sequence[str] = METRICS,
    chunk_size: int | None = None,
    solver: str = "auto",
    precision: str = "auto",
    functional: bool = False,
    rtol: float = 1e-6,
    progress: Callable[[int, int], None] | None = None,
) -> Signature:
    r"""Non-linearity signature of a Flax model on a batch of images.

    Args:
        module: a model from :func:`affjax.models.get_model` (or any module
            built with :class:`affjax.models.layers.Activation` call sites).
        variables: its variables, e.g. from ``converters.torchvision.convert``.
        images: ``[n, H, W, 3]`` float images, already preprocessed; ``n >= 2``.
        reduce: ``"reference"`` (the published torch-layout reduction) or
            ``"channels"`` (mean over every axis but batch and channel).
        metrics: subset of :data:`METRICS`.
        chunk_size: forward at most this many images at once.
        solver: assignment backend (``"auto"``, ``"host"``, ``"auction"``).
        precision: ``"auto"``, ``"float64"`` or ``"float32"`` for the scores.
        functional: also score ``torch.nn.functional`` call sites (keys
            ``"path:F.relu"``), which the reference does not see.
        rtol: duality gap the auction must certify.
        progress: ``progress(done, total)`` callback for the forward pass.

    Returns:
        :class:`Signature`; failed calls are NaN with a ``status``, never 0.
    """
    n = images.shape[0]
    if n < 2:
        raise SignatureError(f"need at least 2 images to estimate covariances, got {n}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise SignatureError(f"images must be NHWC [n, H, W, 3], got shape {images.shape}")
    calls = capture(
        module, variables, images, chunk_size=chunk_size, functional=functional, progress=progress
    )
    if not calls:
        raise SignatureError(
            "the model has no activation call sites the reference would see"
            + ("" if functional else "; pass functional=True to score F.relu-style calls")
        )
    records = score_calls(
        calls, reduce=reduce, metrics=metrics, solver=solver, precision=precision, rtol=rtol
    )
    meta = {
        "n": int(n),
        "reduce": reduce,
        "solver": assignment.resolve_solver(solver),
        "precision": precision_lib.resolve(precision),
        "functional": functional,
        "num_calls": len(records),
        "nan_policy": "failed calls are NaN with a status",
    }
    return Signature(records, meta)

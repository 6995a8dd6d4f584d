"""The non-linearity signature: the affinity score of every activation call.

capture (Flax ``sow``, chunked forward) -> reduce (in-graph) -> group calls by
shape -> one ``vmap``-ed, jitted scoring function per group -> a tidy table.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax import capture as capture_lib
from affjax import compilation_cache, reports, switches, traces, xla_options
from affjax import devices as devices_lib
from affjax import metrics as metrics_lib
from affjax import precision as precision_lib
from affjax import score as score_lib
from affjax import sites as sites_lib
from affjax.capture import Call
from affjax.solvers import assignment, host

__all__ = [
    "METRICS",
    "REDUCTIONS",
    "Signature",
    "SignatureError",
    "ill_posed_metrics",
    "score_calls",
    "signature",
]

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

log = logging.getLogger(__name__)


def ill_posed_metrics(n: int, d: int, rec: dict) -> list[str]:
    """Side metrics of a call that are undefined under its conditions (recorded as NaN).

    * ``r2_score``: least squares of ``d`` outputs on ``d`` inputs plus an
      intercept. With ``n <= d + 1`` samples the fit is exact in exact arithmetic
      and the number returned depends only on the rank cutoff and the dtype (the
      published float32 code gave 0.40 where float64 gives 0.86 on one DenseNet
      layer), so it is not comparable across tools or runs. Likewise when a
      singular value of the centred inputs lies within a factor
      :data:`~affjax.metrics.R2_CLEARANCE` of the cutoff (``rec["r2_clearance"]``,
      :func:`~affjax.metrics.r2_with_clearance`): round-off then decides which
      directions the fit keeps.
    * ``cka_score``: undefined (0 / 0) when the input or the output is constant
      over the batch.
    """
    bad = []
    if "r2_score" in rec:
        if n <= d + 1 or rec.get("r2_clearance", np.inf) < metrics_lib.R2_CLEARANCE:
            bad.append("r2_score")
    if "cka_score" in rec and not np.isfinite(rec["cka_score"]) and rec.get("finite", True):
        bad.append("cka_score")
    return bad


# Largest stack of [n, n] cost matrices scored in one vmapped call (memory).
_MAX_GROUP_BYTES = 2 << 30

#: Most score kernels run at once on the CPU (``AFFJAX_SCORE_WORKERS`` overrides).
MAX_SCORE_WORKERS = 4


def _score_workers(jobs: int) -> int:
    """Threads scoring at once on the CPU: one per core, at most :data:`MAX_SCORE_WORKERS`.

    A score kernel is mostly one single-threaded LAPACK call (``eigh``, QR, SVD)
    at a time, and one CPU device runs one program at a time per calling
    thread, so a single thread leaves the other cores idle. XLA runs programs
    called from different threads side by side: on 2 cores a DenseNet-121 call
    at n = 256, d = 512 took 78 ms per call with two threads against 120 ms
    with one. Each thread holds one call's arrays (a few MB at n = 256).
    """
    env = os.environ.get("AFFJAX_SCORE_WORKERS", "").strip()
    if env:
        try:
            wanted = int(env)
        except ValueError:
            raise SignatureError(
                f"AFFJAX_SCORE_WORKERS={env!r} is not a number of threads; unset it or give e.g. 2"
            ) from None
    else:
        wanted = min(MAX_SCORE_WORKERS, os.cpu_count() or 1)
    return max(1, min(wanted, jobs))


_FUNCTIONAL_ONLY_NOTE = (
    "empty signature: all {k} activation calls of this model are torch.nn.functional "
    "calls (F.relu), which the reference's hooks do not see; pass functional=True "
    "(CLI: --functional) to score them"
)


class SignatureError(ValueError):
    """A signature that cannot be computed as asked (bad input or bad layers)."""


def _bucket(d: int) -> int:
    """Width a call of width ``d`` is zero-padded to, so nearby widths share a compile.

    Up to 64: 1, 2, 4, 8, 16, 32 are kept, other widths round up to a multiple
    of 16 (3 -> 16, 33 -> 48). Above 64: a multiple of ``max(64, 2**(k - 2))``
    for ``2**(k - 1) <= d < 2**k``, i.e. two buckets per octave from 128 on
    (129 -> 192, 200 -> 256, 257 -> 384). The worst cases pad a lot (3 -> 16,
    65 -> 128, 129 -> 192); padding is exact (tests/test_score.py) and only
    costs flops.
    DenseNet-121's 31 distinct widths (64...1024 by 32) fall into 8 buckets.
    """
    if d <= 64:
        return d if d in (1, 2, 4, 8, 16, 32) else -(-d // 16) * 16
    step = max(64, 1 << (d.bit_length() - 2))
    return -(-d // step) * step


#: The two scores: (metric, Ledoit-Wolf shrinkage, suffix of their status fields).
_SCORES = (("aff_score", False, ""), ("aff_score_corrected", True, "_corrected"))


def _score_fields(name: str, suffix: str, r: score_lib.AffinityResult) -> dict:
    out = {
        name: r.score,
        "finite": r.finite,
        "converged" + suffix: r.converged,
        "certified" + suffix: r.certified,
    }
    if not suffix:
        out.update(w2=r.w2, gap=r.gap, degenerate=r.degenerate)
    return out


@functools.partial(jax.jit, static_argnames=("wanted", "solver", "rtol"))
def _score_group(xs, ys, xs32, ys32, dims, *, wanted: tuple[str, ...], solver: str, rtol: float):
    """All requested metrics for a stack of zero-padded calls ``[L, n, d]``, vmapped over L.

    With ``solver="host"`` the scores stop before the assignment: ``out["points"]``
    holds each score's :class:`~affjax.score.MappedPoints`, which the host matches
    and :func:`_finish_on_host` turns into scores. No callback sits inside the
    graph, so XLA can cache it on disk and its threads do not compete with the
    host BLAS while scipy runs.
    """

    def one(x, y, x32, y32, dim):
        # The side metrics' products (CKA, the R2 fit) at HIGHEST too.
        with precision_lib.matmul_scope("highest"):
            return metrics_of(x, y, x32, y32, dim)

    def metrics_of(x, y, x32, y32, dim):
        out = {"finite": jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))}
        scores = [s for s in _SCORES if s[0] in wanted]  # (metric, shrinkage, suffix)
        # Both scores share the centring and the span coordinates (one QR).
        mapped = score_lib.mapped_points_each(x, y, tuple(s for _, s, _ in scores), dim=dim)
        points = {}
        for (name, _, suffix), p in zip(scores, mapped, strict=True):
            if solver == "host":
                points[name] = p
            else:
                r = score_lib.affinity_of_points(p, solver=solver, rtol=rtol)
                out.update(_score_fields(name, suffix, r))
        if points:
            out["points"] = points
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
            out["r2_score"], out["r2_clearance"] = metrics_lib.r2_with_clearance(x, y, dim=dim)
        return out

    return jax.vmap(one)(xs, ys, xs32, ys32, dims)


def _finish_on_host(points: dict, perms: dict, rtol: float) -> dict:
    """The scores of :func:`_score_group`'s host ``points`` ``[L, n, k]`` from the host's
    matchings, in numpy: a sum of matched squared distances and a square root per call
    need no compiled kernel (one would cost a compile, or a load from the cache, per
    width bucket: about 0.2 s each on a 2-core CPU)."""
    out = {}
    for name, _, suffix in _SCORES:
        if name in points:
            r = score_lib.from_matching(points[name], perms[name], rtol=rtol)
            out.update(_score_fields(name, suffix, r))
    return out


@functools.partial(jax.jit, static_argnames=("wanted", "solver", "rtol", "mesh"))
def _score_group_sharded(xs, ys, xs32, ys32, dims, *, wanted, solver, rtol, mesh):
    """:func:`_score_group` with the stack axis L split over the mesh's ``"data"`` axis.

    Each device scores its ``L / k`` calls (``shard_map``).
    """
    body = functools.partial(_score_group, wanted=wanted, solver=solver, rtol=rtol)
    spec = jax.sharding.PartitionSpec(devices_lib.DATA)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec)(
        xs, ys, xs32, ys32, dims
    )


def _stored(name: str, jitted, args: tuple, static: dict):
    """The stored trace standing for ``jitted(*args, **static)`` (:mod:`affjax.traces`;
    a new process then neither traces nor lowers it), or ``None`` when there is none
    or ``jitted`` is not jitted (a test's wrapper)."""
    inner = getattr(jitted, "__wrapped__", None)
    if inner is None:
        return None
    return traces.exported(
        name,
        functools.partial(inner, **static),
        args,
        static=json.dumps(sorted(static.items())),
        namedtuples=(score_lib.MappedPoints,),
    )


def _stored_or_jit(name: str, jitted, args: tuple, **static):
    """``jitted(*args, **static)``, through its stored trace when there is one."""
    call = _stored(name, jitted, args, static)
    return jitted(*args, **static) if call is None else call(*args)


def _compiled(name: str, jitted, args: tuple, **static) -> None:
    """Traces (or loads), lowers and compiles what :func:`_stored_or_jit` would call on
    arguments of these shapes (``jax.ShapeDtypeStruct``), without running it. A later
    call on real arrays then finds it compiled. Nothing for a function not jitted."""
    if getattr(jitted, "__wrapped__", None) is None:
        return
    call = _stored(name, jitted, args, static)
    (jitted.lower(*args, **static) if call is None else call.lower(*args)).compile()


def _match_on_host(out: dict, rtol: float) -> dict:
    """Completes a ``solver="host"`` group: scipy matchings, then the scores."""
    points = out.pop("points", None)
    if not points:
        return out
    perms = {name: host.match_points(p.t, p.y) for name, p in points.items()}
    finished = _finish_on_host(points, perms, rtol)
    finished.pop("finite")  # the same inputs' check as out["finite"]
    out.update(finished)
    return out


#: Statuses of a call whose scores are NaN (:meth:`Signature.failures`).
FAILED = ("nonfinite", "unconverged")


def _status(rec: dict) -> str:
    """``ok`` only when every score is finite, converged and certified.

    ``uncertified``: the solver stopped with ``gap > rtol * w2`` (the auction's
    float32 floor); the score is kept, but its certificate does not reach rtol.
    """
    if not rec.get("finite", True):
        return "nonfinite"
    if not (rec.get("converged", True) and rec.get("converged_corrected", True)):
        return "unconverged"
    if not (rec.get("certified", True) and rec.get("certified_corrected", True)):
        return "uncertified"
    return "ok"


def score_calls(
    calls: Sequence[Call],
    *,
    reduce: str = "reference",
    metrics: Sequence[str] = METRICS,
    solver: str = "auto",
    dtype: str = "auto",
    rtol: float = 1e-6,
    precision: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> list[dict]:
    """Scores captured calls; calls of equal ``[n, d]`` are scored together with ``vmap``.

    With a ``mesh``, each stack of calls is split over its ``"data"`` axis
    (padded with copies to a multiple of the device count). ``precision`` is a
    deprecated alias of ``dtype``. On the CPU the host BLAS runs single-threaded
    meanwhile (:func:`affjax.xla_options.scoring_threads`).
    """
    dtype = precision_lib.dtype_argument(dtype, precision)
    with xla_options.scoring_threads():
        return _score_calls(calls, reduce, metrics, solver, dtype, rtol, mesh)


def _kernel_plan(widths: dict, wanted: tuple[str, ...], mesh) -> dict:
    """``(n, bucket) -> (calls per kernel call, metrics)`` for calls of these widths.

    ``widths``: ``(n, bucket) -> [d of each call]``. r2 is computed in a bucket
    only when one of its calls is well-posed (n > d + 1); an ill-posed r2 is
    recorded as NaN, and its SVD of the ``[n, d]`` features was a fifth of
    DenseNet-121's scoring time at n = 256. ``vmap`` pays on accelerators; on
    the CPU it only adds compiles (``eigh`` and the host solver loop over the
    stack anyway), so there a kernel scores one call at a time.
    """
    stack = 1 if jax.default_backend() == "cpu" else 16
    k = 1 if mesh is None else devices_lib.device_count(mesh)
    plan = {}
    for (n, width), ds in widths.items():
        posed = any(n > d + 1 for d in ds)
        group_wanted = wanted if posed else tuple(m for m in wanted if m != "r2_score")
        per_call = max(n * n, n * width, width * width) * 8 * 4
        step = k * max(1, min(stack, _MAX_GROUP_BYTES // per_call))  # calls per device * k
        plan[(n, width)] = (step, group_wanted)
    return plan


def _record_widths(raw, n: int, reduce: str) -> dict:
    """``(n, bucket) -> [d]`` of every ``[m, d] -> [m, d]`` record in a capture's raw
    output (the shapes :func:`affjax.capture.capture` hands ``on_shapes``).

    Functional calls a signature leaves out are counted too: at worst a kernel
    is prepared that scoring never calls, which costs host time only.
    """
    widths = defaultdict(list)

    def walk(tree):
        if isinstance(tree, Mapping):
            if "x" in tree and "y" in tree:
                x, y = tree["x"], tree["y"]
                if reduce == "channels" and "x_channels" in tree:
                    x, y = tree["x_channels"], tree["y_channels"]
                if np.ndim(x) == 2 and np.shape(x) == np.shape(y):
                    widths[(n, _bucket(np.shape(x)[1]))].append(np.shape(x)[1])
            else:
                for v in tree.values():
                    walk(v)
        elif isinstance(tree, (list, tuple)):
            for v in tree:
                walk(v)

    walk(raw)
    return dict(widths)


def _prepare_kernels(plan: dict, solver: str, dtype: str, rtol: float, device=None) -> None:
    """Compiles (or loads from the caches) the score kernels of ``plan`` without running them.

    Buckets compile side by side (:func:`_score_workers` threads; XLA compiles
    outside the GIL, and JAX compiles a kernel two threads ask for at once once).
    ``device``: the ``jax.default_device`` scoring will run under (a compile is
    for its devices).
    """

    def prepare(item):
        (n, width), (step, group_wanted) = item
        with precision_lib.scope(dtype), jax.default_device(device):
            wide = np.dtype(precision_lib.dtype_of(dtype))
            args = tuple(jax.ShapeDtypeStruct((step, n, width), dt) for dt in (wide, wide))
            args += tuple(jax.ShapeDtypeStruct((step, n, width), np.float32) for _ in range(2))
            args += (jax.ShapeDtypeStruct((step,), np.int32),)
            static = dict(wanted=group_wanted, solver=solver, rtol=rtol)
            _compiled("signature._score_group", _score_group, args, **static)

    with concurrent.futures.ThreadPoolExecutor(_score_workers(len(plan)), "affjax-kernels") as pool:
        list(pool.map(prepare, plan.items()))


def _prepare_ahead() -> bool:
    """Whether :func:`signature` prepares score kernels during the forward
    (:class:`_KernelPreparer`): by default where the forward runs on an
    accelerator; ``AFFJAX_PREPARE_KERNELS=on`` or ``off`` decides instead."""
    chosen = switches.switch("AFFJAX_PREPARE_KERNELS", None, SignatureError)
    return jax.default_backend() != "cpu" if chosen is None else chosen


class _KernelPreparer:
    """Prepares a signature's score kernels in threads while its forward pass compiles and runs.

    A signature's first scores wait on tracing, lowering and compiling (or loading
    from the caches) one kernel per width bucket, and the widths are known once
    the forward is traced. On an accelerator the host's cores idle while the
    device runs the forward, so the kernels can be ready by the time it ends.
    On a 2-core CPU they do not idle: XLA:CPU's compiles and the forward each
    keep both cores busy. There, at batch 256 with an empty cache, preparing
    ahead took the scoring after resnet18's forward from 9.3 s to 1 s, but the
    whole first call stayed within the noise (16-21 s either way;
    benchmarks/README.md), so on the CPU it is off
    (:func:`_prepare_ahead`). An optimisation only: a failure here is logged,
    and scoring then compiles what it needs as it always does.
    """

    def __init__(self, n: int, reduce: str, metrics, solver: str, dtype: str, rtol: float):
        wanted = tuple(m for m in METRICS if m in metrics)
        self._args = (n, reduce, wanted, assignment.resolve_solver(solver), dtype, rtol)
        self._device = jax.config.jax_default_device  # the caller's: contexts are per thread
        self._thread: threading.Thread | None = None

    def start(self, raw) -> None:
        """``capture``'s ``on_shapes``: starts preparing, and returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(raw,), name="affjax-kernels", daemon=True
            )
            self._thread.start()

    def _run(self, raw) -> None:
        n, reduce, wanted, solver, dtype, rtol = self._args
        try:
            plan = _kernel_plan(_record_widths(raw, n, reduce), wanted, None)
            _prepare_kernels(plan, solver, dtype, rtol, self._device)
        except Exception as err:  # noqa: BLE001 - scoring compiles what it needs anyway
            log.info("affjax: score kernels not prepared ahead (%s: %s)", type(err).__name__, err)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _score_calls(calls, reduce, metrics, solver, dtype, rtol, mesh) -> list[dict]:
    if reduce not in REDUCTIONS:
        raise SignatureError(f"unknown reduce {reduce!r}; choose one of {REDUCTIONS}")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise SignatureError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    solver = assignment.resolve_solver(solver)

    def features(c: Call):
        if reduce == "channels" and c.x_channels is not None:
            return c.x_channels, c.y_channels
        return c.x, c.y

    # Keyed by (n, width bucket): one score kernel per bucket. r2 is computed in a
    # bucket only when one of its calls is well-posed (n > d + 1); an ill-posed
    # r2 is recorded as NaN, and its SVD of the [n, d] features was a fifth of
    # DenseNet-121's scoring time at n = 256.
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    mismatched = set()
    # Calls sharing their arrays (one ReLU6 call under its Hardtanh and ReLU6 keys)
    # are scored once.
    first: dict[tuple[int, int], int] = {}
    alias: dict[int, int] = {}
    for i, c in enumerate(calls):
        fx, fy = features(c)
        if fx.shape != fy.shape:  # a site changing width (a strided block): no [n, d] -> [n, d] map
            mismatched.add(i)
            continue
        same = first.setdefault((id(fx), id(fy)), i)
        if same != i:
            alias[i] = same
            continue
        n, d = fx.shape
        groups[(n, _bucket(d))].append(i)

    wanted = tuple(m for m in METRICS if m in metrics)
    results: list[dict] = [{} for _ in calls]
    cpu = jax.default_backend() == "cpu"
    widths = {key: [features(calls[i])[0].shape[1] for i in idx] for key, idx in groups.items()}
    plan = _kernel_plan(widths, wanted, mesh)
    jobs = []  # (calls scored, stack size, n, width, metrics); inputs are built as they run
    for (n, width), idx in groups.items():
        if n < 2:
            raise SignatureError(f"need at least 2 images to score, got {n}")
        step, group_wanted = plan[(n, width)]
        for start in range(0, len(idx), step):
            jobs.append((idx[start : start + step], step, n, width, group_wanted))

    device = jax.config.jax_default_device  # the caller's, in this thread

    def run(job) -> dict:
        chunk, step, n, width, group_wanted = job
        padded = chunk + [chunk[0]] * (step - len(chunk))  # one shape per bucket
        x32 = np.zeros((step, n, width), np.float32)
        y32 = np.zeros((step, n, width), np.float32)
        dims = np.zeros(step, np.int32)
        for j, i in enumerate(padded):
            fx, fy = features(calls[i])
            x32[j, :, : fx.shape[1]], y32[j, :, : fy.shape[1]] = fx, fy
            dims[j] = fx.shape[1]
        static = dict(wanted=group_wanted, solver=solver, rtol=rtol)
        # Thread-local settings, entered by the thread that scores: the dtype's x64,
        # and the caller's jax.default_device (else a thread scores on device 0).
        with precision_lib.scope(dtype), jax.default_device(device):
            wide = np.dtype(precision_lib.dtype_of(dtype))  # jnp would compile a cast per shape
            args = (x32.astype(wide), y32.astype(wide), x32, y32, dims)
            if mesh is None:
                args = tuple(jax.device_put(args))  # (jnp.asarray compiles a copy per shape)
                out = _stored_or_jit("signature._score_group", _score_group, args, **static)
                return _match_on_host(jax.device_get(out), rtol)
            out = _score_group_sharded(*devices_lib.shard_batch(args, mesh), mesh=mesh, **static)
            return _match_on_host(devices_lib.gather(out), rtol)

    workers = _score_workers(len(jobs)) if cpu and mesh is None else 1
    if workers > 1:
        # Each bucket's first job before its others: a kernel compiles (or loads)
        # once, not in two threads at a time; different buckets' kernels load side by side.
        firsts, rest, seen = [], [], set()
        for i, (_, _, n, width, _) in enumerate(jobs):
            (rest if (n, width) in seen else firsts).append(i)
            seen.add((n, width))
        outs = [None] * len(jobs)
        with concurrent.futures.ThreadPoolExecutor(workers, "affjax-score") as pool:
            for lot in (firsts, rest):
                for i, out in zip(lot, pool.map(run, [jobs[i] for i in lot]), strict=True):
                    outs[i] = out  # the first error is raised here
    else:
        outs = [run(job) for job in jobs]
    for (chunk, *_), out in zip(jobs, outs, strict=True):
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
                rec[m] = float(r.get(m, np.nan))
        for extra in ("w2", "gap"):
            if extra in r:
                rec[extra] = float(r[extra])
        checks = {"finite": r.get("finite", True), "r2_clearance": r.get("r2_clearance", np.inf)}
        ill = ill_posed_metrics(rec["n"], rec["d"], {**rec, **checks})
        for m in ill:
            rec[m] = float("nan")
        rec["ill_posed"] = " ".join(ill)
        if "degenerate" in r:
            rec["degenerate"] = bool(r["degenerate"])
        rec["status"] = "shape_mismatch" if order in mismatched else _status(r)
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
        return [r for r in self._records if r["status"] in FAILED]

    def uncertified(self) -> list[dict]:
        """Records with a score whose certified gap is above ``rtol * w2``."""
        return [r for r in self._records if r["status"] == "uncertified"]

    def check(self) -> Signature:
        """Raises :class:`SignatureError` naming every call that failed."""
        bad = self.failures()
        if bad:
            names = ", ".join(f"{r['layer']}[{r['call']}]: {r['status']}" for r in bad[:10])
            hint = (
                "non-finite activations usually mean unnormalised inputs or broken weights"
                if any(r["status"] != "shape_mismatch" for r in bad)
                else ""
            )
            if any(r["status"] == "shape_mismatch" for r in bad):
                hint += ("; " if hint else "") + (
                    "shape_mismatch: the site's output width differs from its input's "
                    "(the affine map needs equal widths); select sites that keep the width"
                )
            raise SignatureError(f"{len(bad)} call(s) could not be scored ({names}); {hint}")
        return self

    def to_csv(self, path) -> None:
        reports.write_csv(path, self._records)

    def to_json(self, path) -> None:
        reports.write_json(path, self._records, self.meta)

    def plot(self, path, metric: str = "aff_score", title: str | None = None) -> None:
        reports.plot_signature(
            path, self._records, metric=metric, title=title or self.meta.get("model")
        )


def _is_port(module: nn.Module) -> bool:
    """A registry model (our torchvision ports), which takes NHWC images."""
    return type(module).__module__.startswith("affjax.models.")


def signature(
    module: nn.Module,
    variables: dict,
    inputs,
    *,
    reduce: str = "reference",
    metrics: Sequence[str] = METRICS,
    chunk_size: int | None = None,
    solver: str = "auto",
    dtype: str = "auto",
    functional: bool = False,
    rtol: float = 1e-6,
    progress: Callable[[int, int], None] | None = None,
    sites=None,
    feature_axis: int = -1,
    apply_kwargs: dict | None = None,
    rngs: dict | None = None,
    forward_precision: str = "highest",
    devices=None,
    mesh: jax.sharding.Mesh | None = None,
    precision: str | None = None,
) -> Signature:
    r"""Non-linearity signature of a Flax model on a batch of inputs.

    Args:
        module: any Flax linen module: a model from
            :func:`affjax.models.get_model`, or your own.
        variables: its variables, e.g. ``module.init(...)`` output or
            ``converters.torchvision.convert``; extra collections are fine.
        inputs: the first argument of ``module.apply``: ``[n, H, W, 3]``
            preprocessed images for our ports, or any pytree of arrays (tokens,
            tabular rows...) whose leading axis is the batch; ``n >= 2``.
        reduce: ``"reference"`` (the published torch-layout reduction) or
            ``"channels"`` (mean over every axis but batch and channel), for
            our Activation sites.
        metrics: subset of :data:`METRICS`.
        chunk_size: forward at most this many samples at once.
        solver: assignment backend (``"auto"``, ``"host"``, ``"auction"``).
        dtype: ``"auto"``, ``"float64"`` or ``"float32"`` for the scores
            (their matmuls always run at ``Precision.HIGHEST``).
        functional: also score ``torch.nn.functional`` call sites (keys
            ``"path:F.relu"``), which the reference does not see.
        rtol: duality gap the auction must certify.
        progress: ``progress(done, total)`` callback for the forward pass.
        sites: which calls are scored. ``None``: our call sites
            (:class:`~affjax.models.layers.Activation`, :func:`affjax.site`).
            Otherwise a predicate ``(module, method_name) -> bool`` as Flax's
            ``capture_intermediates`` takes, a class name, a path glob
            (``"*/mlp*"``), or a tuple of these (:func:`affjax.sites.selector`).
            A selected call is scored from its first positional argument to
            its output.
        feature_axis: the axis a generic site keeps when its tensors are
            reduced to ``[n, d]`` (every other non-batch axis is averaged);
            default: the last.
        apply_kwargs: keyword arguments of ``module.apply`` (``{"train": False}``).
        rngs: rngs of ``module.apply`` (``{"dropout": key}``).
        forward_precision: matmul/conv precision of the model forward:
            ``"highest"`` (default; float32 products, whatever the platform) or
            ``"default"`` (the platform's: one bfloat16 pass on TPU, TF32
            convolutions on NVIDIA GPUs; faster, see the README for what it
            costs per call).
        devices: run over several devices (:mod:`affjax.devices`): an int
            ``N`` (the first ``N`` local devices), ``"all"``, or a list of
            devices. The forward pass is split over the batch (chunks padded
            with copies of real samples to a multiple of the device count) and
            the score stacks over the calls; the result equals the one-device
            signature. ``None``: one device.
        mesh: a ``jax.sharding.Mesh`` with a ``"data"`` axis, instead of
            ``devices`` (e.g. one over every device of a TPU pod slice).
        precision: deprecated alias of ``dtype``.

    Returns:
        :class:`Signature`; failed calls are NaN with a ``status``, never 0.
        A model whose activations are all functional (GoogLeNet,
        Inception-v3) has an empty signature unless ``functional=True``, as in
        the reference; ``meta["note"]`` then says so (the forward pass that
        found the order has run; nothing is scored).
    """
    dtype = precision_lib.dtype_argument(dtype, precision)
    compilation_cache.enable_default()
    if forward_precision not in precision_lib.FORWARD_PRECISIONS:
        raise SignatureError(
            f"unknown forward_precision {forward_precision!r}; "
            f"choose one of {precision_lib.FORWARD_PRECISIONS}"
        )
    try:
        mesh = devices_lib.resolve(devices, mesh)
    except devices_lib.DeviceError as err:
        raise SignatureError(str(err)) from None
    try:
        n = capture_lib.batch_size(inputs)
    except sites_lib.SiteError as err:
        raise SignatureError(str(err)) from None
    if n < 2:
        raise SignatureError(f"need at least 2 samples to estimate covariances, got {n}")
    if _is_port(module) and sites is None:
        shape = np.shape(inputs) if not isinstance(inputs, (dict, list, tuple)) else None
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            raise SignatureError(f"images must be NHWC [n, H, W, 3], got shape {shape}")
    note = None
    records: list[dict] = []
    if assignment.resolve_solver(solver) == "host":
        host.prefetch()  # the solver's import runs beside the forward pass
    # The score kernels are traced, lowered and loaded (or compiled) beside it too.
    kernels = None
    if mesh is None and _prepare_ahead():
        kernels = _KernelPreparer(n, reduce, metrics, solver, dtype, rtol)
    try:
        calls = capture_lib.capture(
            module,
            variables,
            inputs,
            chunk_size=chunk_size,
            functional=functional,
            progress=progress,
            sites=sites,
            feature_axis=feature_axis,
            apply_kwargs=apply_kwargs,
            rngs=rngs,
            forward_precision=forward_precision,
            mesh=mesh,
            on_shapes=None if kernels is None else kernels.start,
        )
    except sites_lib.SiteError as err:
        raise SignatureError(str(err)) from None
    finally:
        if kernels is not None:
            kernels.join()  # scoring must not compile a kernel the thread is compiling
    if not calls and sites is None and not functional:
        # capture left the order it numbered in call_order's memo: no second trace
        order = capture_lib.call_order(module, inputs, apply_kwargs, rngs)
        if order and all(o[2] for o in order):
            # GoogLeNet, Inception-v3: every call is an F.relu the reference never sees.
            note = _FUNCTIONAL_ONLY_NOTE.format(k=len(order))
    if note is None:
        if not calls:
            if sites is not None:
                raise SignatureError(f"sites={sites!r} selected no call of the model")
            raise SignatureError(
                "the model has no activation call sites the reference would see"
                + ("" if functional else "; pass functional=True to score F.relu-style calls")
                + "; wrap function activations with affjax.site (act=affjax.site(nn.relu)) or "
                "choose modules with sites= (a class name, a path glob or a predicate)"
            )
        records = score_calls(
            calls,
            reduce=reduce,
            metrics=metrics,
            solver=solver,
            dtype=dtype,
            rtol=rtol,
            mesh=mesh,
        )
    meta = {
        "n": int(n),
        "reduce": reduce,
        "solver": assignment.resolve_solver(solver),
        "dtype": precision_lib.resolve(dtype),
        "forward_precision": forward_precision,
        "rtol": rtol,
        "functional": functional,
        "sites": "default" if sites is None else _describe(sites),
        "feature_axis": feature_axis,
        "num_calls": len(records),
        "devices": 1 if mesh is None else devices_lib.device_count(mesh),
        "nan_policy": "failed calls are NaN with a status",
    }
    if note:
        meta["note"] = note
    return Signature(records, meta)


def _describe(sites) -> str:
    if isinstance(sites, (tuple, list)):
        return ", ".join(_describe(s) for s in sites)
    if isinstance(sites, str):
        return sites
    return getattr(sites, "__qualname__", None) or repr(sites)

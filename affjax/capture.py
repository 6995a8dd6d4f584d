"""Capture of the calls a signature scores, through Flax.

Two paths, one output (:class:`Call` list in execution order):

* the built-in one (``sites=None``): our call sites
  (:class:`affjax.models.layers.Activation`, :func:`affjax.site`) ``sow`` their
  reduced features into the ``"affinity"`` collection; keys are the
  reference's (``f"{dotted_path}_{ClassName}"``) for Activation sites and the
  Flax path for :func:`affjax.site` ones. ``sow`` nests records by module,
  which loses the interleaving of repeated calls, so the same trace numbers
  every call in execution order (``"affinity_order"``): the model is traced
  once, not a second time to learn the order.
* the generic one (``sites=`` a predicate or shorthand, see
  :func:`affjax.sites.selector`): a Flax method interceptor (the mechanism of
  ``capture_intermediates``) records the reduced first positional argument and
  output of every selected call, in-graph, into the ``"affinity_sites"``
  collection, numbered in execution order. Any module can be a site.

Both run the model in chunks of the batch; incoming variables may hold any
collection (``module.init`` output keeps the init batch's records): the ones
capture writes are dropped before ``apply``.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax import devices as devices_lib
from affjax import precision as precision_lib
from affjax import sites as sites_lib
from affjax import traces, xla_options
from affjax.models import layers, registry

__all__ = [
    "ORDER_COLLECTION",
    "SITES_COLLECTION",
    "Call",
    "batch_size",
    "call_order",
    "capture",
    "reference_key",
    "strip_collections",
]

#: Collection the generic path's interceptor ``sow``s into.
SITES_COLLECTION = "affinity_sites"
#: Collection the built-in path numbers its calls in (execution order).
ORDER_COLLECTION = "affinity_order"
_OURS = (layers.COLLECTION, SITES_COLLECTION, ORDER_COLLECTION)


class Call(NamedTuple):
    """One activation call with what it saw (reduced to ``[n, d]``)."""

    key: str  # "layer1.0.relu_ReLU" (Activation), "path:F.relu" (functional), Flax path otherwise
    call: int  # 0.. for modules called several times
    kind: str  # torch class name (Activation), function name (site), else module class
    functional: bool
    flax_path: tuple[str, ...]
    x: np.ndarray  # [n, d] reduced input, reference reduction
    y: np.ndarray  # [n, d] reduced output
    x_channels: np.ndarray | None  # [n, c] when the channel reduction differs
    y_channels: np.ndarray | None
    sparsity_x: float  # fraction of |v| <= 1e-3 in the unreduced input
    sparsity_y: float


def reference_key(flax_path: tuple[str, ...], kind: str, functional: bool) -> str:
    """The reference's key for a call site; functional sites get a distinct form."""
    path = registry.torch_path(flax_path)
    # ':' never occurs in torch module names, so these can't collide with reference keys.
    return f"{path}:F.{kind.lower()}" if functional else f"{path}_{kind}"


def strip_collections(variables: Mapping) -> dict:
    """``variables`` without the collections capture writes (``"affinity"``, ``"affinity_sites"``).

    ``module.init`` leaves the init batch's records in ``"affinity"``; ``sow``
    would append to them and capture would read the init batch.
    """
    return {k: v for k, v in variables.items() if k not in _OURS}


def batch_size(inputs) -> int:
    """The common leading axis of every array in the ``inputs`` pytree."""
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        raise sites_lib.SiteError("inputs hold no arrays")
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [np.shape(a) for a in leaves]
        raise sites_lib.SiteError(
            f"every input array needs the same leading (batch) axis; got shapes {shapes}"
        )
    return sizes.pop()


def _to_device(a):
    # float64 host data (numpy's default) runs in float32, as the ports expect.
    if isinstance(a, jax.Array):
        return a.astype(jnp.float32) if a.dtype == jnp.float64 else a
    return jax.device_put(_to_host(a))  # jnp.asarray would compile a copy per shape


def _to_host(a) -> np.ndarray:
    # As _to_device, kept on the host: device_put then splits it over the mesh.
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype == np.float64 else a


def _split_kwargs(apply_kwargs: Mapping | None) -> tuple[tuple, dict]:
    """(hashable static items, array items): ``train=False`` is static, masks are traced."""
    static, dynamic = [], {}
    for k, v in sorted((apply_kwargs or {}).items()):
        leaves = jax.tree.leaves(v)
        if leaves and all(isinstance(a, (jax.Array, np.ndarray)) for a in leaves):
            dynamic[k] = v
            continue
        try:
            hash(v)
        except TypeError as err:
            raise sites_lib.SiteError(
                f"apply keyword {k}={v!r} is neither an array nor hashable"
            ) from err
        static.append((k, v))
    return tuple(static), dynamic


def call_order(module: nn.Module, inputs, apply_kwargs: Mapping | None = None, rngs=None):
    """Execution order of our call sites: ``[(flax_path, kind, functional, key), ...]``.

    Traced abstractly (``jax.eval_shape`` of ``init``, so no variables are
    needed) with a Flax method interceptor: ``sow`` collections are nested by
    module, which loses the interleaving of repeated calls (a ResNet block's
    single ``relu`` runs between other sites). Memoised per module, input
    structure, static ``apply`` keywords and rng names (the last 64), so a
    multi-batch run traces the model once; :func:`capture` of the same model
    leaves the order its forward numbered here, so asking after it traces
    nothing. ``inputs`` may be arrays, ``ShapeDtypeStruct``-s, or an
    image shape tuple.
    """
    if isinstance(inputs, tuple) and inputs and all(isinstance(i, int) for i in inputs):
        inputs = jax.ShapeDtypeStruct(inputs, jnp.float32)
    parts = _order_parts(inputs, apply_kwargs, rngs)
    key = _memo_key(module, *parts)
    if key is not None and key in _ORDERS:
        return list(_ORDERS[key])
    order = _trace_order(module, *parts)
    if key is not None:
        _remember(key, order)
    return list(order)


# call_order's memo: key -> order tuple, oldest first (capture fills it too).
_ORDERS: dict[tuple, tuple] = {}
_ORDERS_MAX = 64


def _order_parts(inputs, apply_kwargs, rngs) -> tuple:
    """(input treedef, batch-1 leaf structs, static keywords, rng names, dynamic keywords)."""
    struct = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
            (1, *np.shape(a)[1:]), jnp.float32 if a.dtype == np.float64 else a.dtype
        ),
        inputs,
    )
    leaves, treedef = jax.tree.flatten(struct)
    static, dynamic = _split_kwargs(apply_kwargs)
    rng_names = tuple(sorted(rngs)) if rngs else ()
    return treedef, tuple(leaves), static, rng_names, dynamic


def _memo_key(module, treedef, leaves, static, rng_names, dynamic) -> tuple | None:
    """The memo key, or ``None`` when the order is not memoised: an unhashable module,
    or array keywords (the trace may branch on their shapes)."""
    if dynamic or not _hashable(module):
        return None
    return (module, treedef, leaves, static, rng_names)


def _remember(key: tuple, order: tuple) -> None:
    _ORDERS.pop(key, None)
    _ORDERS[key] = order
    while len(_ORDERS) > _ORDERS_MAX:
        _ORDERS.pop(next(iter(_ORDERS)))


def _trace_order(module, treedef, leaves, static, rng_names, dynamic) -> tuple:
    order = []

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, layers.Activation) and context.method_name == "__call__":
            key, kind, functional = sites_lib.site_key(mod)
            order.append((tuple(mod.path), kind, functional, key))
        return next_fun(*args, **kwargs)

    dummy = jax.tree.unflatten(treedef, leaves)
    rngs = {name: jax.random.key(0) for name in ("params", *rng_names)}
    init = functools.partial(module.init, **dict(static), **(dynamic or {}))
    with nn.intercept_methods(interceptor):
        jax.eval_shape(init, rngs, dummy)
    return tuple(order)


def _hashable(module: nn.Module) -> bool:
    try:
        hash(module)
    except TypeError:  # e.g. a list attribute (Flax's own ResNet takes stage_sizes=[2, 2, 2, 2])
        return False
    return True


# Forwards of unhashable modules, closed over the module object and reused while
# it is one of the last few seen (a training tracker scores one module every k steps).
_CLOSED: dict[tuple[int, str], tuple[nn.Module, Any]] = {}
_CLOSED_MAX = 8


def _jit(fn, module: nn.Module, static: tuple[str, ...]):
    """``fn`` jitted with ``module`` static: jit's own cache when the module hashes,
    else one closure per module object (the few most recent ones are kept)."""
    if _hashable(module):
        return functools.partial(fn, module)
    key = (id(module), fn.__name__)
    hit = _CLOSED.get(key)
    if hit is not None and hit[0] is module:  # the entry keeps it alive: ids can't be reused
        return hit[1]
    jitted = xla_options.jit(functools.partial(fn.__wrapped__, module), static_argnames=static)
    _CLOSED[key] = (module, jitted)
    while len(_CLOSED) > _CLOSED_MAX:
        _CLOSED.pop(next(iter(_CLOSED)))
    return jitted


@xla_options.jit(static_argnames=("module", "static_kwargs", "forward_precision"))
def _forward(
    module, variables, images, dynamic_kwargs=None, rngs=None, *, static_kwargs=(),
    forward_precision="highest",
):  # fmt: skip
    """(records, order): the ``"affinity"`` collection, and every Activation call's
    position in execution order (``"affinity_order"``, sow name ``"kind|F|key"``)."""
    counter = itertools.count()  # trace order = execution order; local to this trace

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if not (isinstance(mod, layers.Activation) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        order = next(counter)  # numbered at call start, as call_order does
        y = next_fun(*args, **kwargs)
        key, kind, functional = sites_lib.site_key(mod)
        name = _SEP.join((kind, "F" if functional else "", key))
        mod.sow(ORDER_COLLECTION, name, jnp.asarray(order, jnp.int32))
        return y

    # Traced inside the scope, so every conv and matmul carries its precision.
    with nn.intercept_methods(interceptor), precision_lib.matmul_scope(forward_precision):
        _, state = module.apply(
            variables,
            images,
            **dict(static_kwargs),
            **(dynamic_kwargs or {}),
            rngs=rngs,
            mutable=[layers.COLLECTION, ORDER_COLLECTION],
        )
    return state.get(layers.COLLECTION, {}), state.get(ORDER_COLLECTION, {})


def _order_of(tree: Mapping) -> tuple | None:
    """``call_order``'s tuple from ``_forward``'s numbered calls (host ints), or ``None``
    unless they number the calls 0..k-1 once each (a lifted transform such as
    ``nn.scan`` stacks or replays them: :func:`call_order` answers then, as it always did)."""
    entries = []
    for path, name, numbers in _walk(tree):
        kind, flags, key = name.split(_SEP, 2)
        for i in numbers:
            if np.ndim(i):
                return None
            entries.append((int(i), (path, kind, flags == "F", key)))
    entries.sort(key=lambda e: e[0])
    if [i for i, _ in entries] != list(range(len(entries))):
        return None
    return tuple(e for _, e in entries)


def _lookup(tree: dict, path: tuple[str, ...]):
    for part in path:
        tree = tree[part]
    return tree["calls"]


# --------------------------------------------------------------------------- generic sites

_SEP = "|"  # sow name: "method|kind|flags"; Flax names never hold "|"


def _check_array(v, what: str, where: str) -> None:
    if not isinstance(v, jax.Array) or v.ndim == 0:
        raise sites_lib.SiteError(
            f"selected site {where}: its {what} is {type(v).__name__}"
            + (f" of shape {v.shape}" if hasattr(v, "shape") else "")
            + ", not an array with a leading batch axis; narrow sites= to modules "
            "that map [n, ...] arrays to [n, ...] arrays"
        )


@xla_options.jit(
    static_argnames=("module", "select", "feature_axis", "static_kwargs", "forward_precision"),
)
def _forward_sites(
    module, variables, inputs, dynamic_kwargs=None, rngs=None, *, select, feature_axis,
    static_kwargs=(), forward_precision="highest",
):  # fmt: skip
    counter = itertools.count()  # trace order = execution order; local to this trace

    def interceptor(next_fun, args, kwargs, context):
        mod, method = context.module, context.method_name
        if method == "setup" or not select(mod, method):
            return next_fun(*args, **kwargs)
        order = next(counter)  # numbered at call start: a block comes before its inner sites
        y = next_fun(*args, **kwargs)
        where = sites_lib.flax_key(tuple(mod.path), method, type(mod).__name__)
        x = args[0] if args else None
        _check_array(x, "first positional argument", where)
        _check_array(y, "output", where)
        if x.shape[0] != y.shape[0]:
            raise sites_lib.SiteError(
                f"selected site {where}: input batch {x.shape[0]} != output batch {y.shape[0]}"
            )
        if isinstance(mod, layers.Activation) and method == "__call__":
            record = mod.record(x, y)  # our sites keep their own reduction
        else:
            try:
                record = sites_lib.generic_record(x, y, feature_axis)
            except sites_lib.SiteError as err:
                raise sites_lib.SiteError(f"selected site {where}: {err}") from None
        record["order"] = jnp.asarray(order, jnp.int32)
        _, kind, functional = sites_lib.site_key(mod, method)
        torch_key = isinstance(mod, layers.Activation) and not isinstance(mod, sites_lib.Site)
        flags = ("F" if functional else "") + ("T" if torch_key and method == "__call__" else "")
        mod.sow(SITES_COLLECTION, _SEP.join((method, kind, flags)), record)
        return y

    with nn.intercept_methods(interceptor), precision_lib.matmul_scope(forward_precision):
        _, state = module.apply(
            variables,
            inputs,
            **dict(static_kwargs),
            **(dynamic_kwargs or {}),
            rngs=rngs,
            mutable=[SITES_COLLECTION],
        )
    return state.get(SITES_COLLECTION, {})


def _walk(tree: Mapping, path: tuple[str, ...] = ()):
    """(flax_path, sow name, records) for every recorded site in a collection tree."""
    for name, value in tree.items():
        if isinstance(value, tuple):
            yield path, name, value
        else:
            yield from _walk(value, (*path, name))


def _chunked(fn, inputs, n: int, chunk_size: int | None, progress, mesh=None, on_shapes=None):
    """``fn(chunk)`` on the host for every chunk of ``inputs`` (pytree, batch-leading).

    With a ``mesh``, chunks are padded to a multiple of its ``"data"`` size and
    put split over it; the padded rows are sliced off the gathered results.
    ``on_shapes(out)`` gets the shapes of ``fn``'s output (``jax.eval_shape``,
    whose trace the call then reuses) before the first chunk is compiled and run.
    """
    step = n if not chunk_size else min(chunk_size, n)
    if mesh is not None:
        k = devices_lib.device_count(mesh)
        step = -(-step // k) * k
        out = []
        for start in range(0, n, step):
            chunk = jax.tree.map(lambda a, s=start: _to_host(a[s : s + step]), inputs)
            padded, m = devices_lib.pad_batch(chunk, step)  # one compiled shape
            state = devices_lib.gather(fn(devices_lib.shard_batch(padded, mesh)))
            out.append(jax.tree.map(lambda a, m=m: a[:m] if a.ndim else a, state))
            if progress is not None:
                progress(min(start + step, n), n)
        return out
    out = []
    for start in range(0, n, step):
        chunk = jax.tree.map(lambda a, s=start: _to_device(a[s : s + step]), inputs)
        m = jax.tree.leaves(chunk)[0].shape[0]
        if m < step:
            # Pad a short last chunk to the compiled shape (samples are
            # independent in eval mode) instead of compiling the forward again.
            chunk = jax.tree.map(
                lambda c, a, m=m: jnp.concatenate([c, _to_device(a[: step - m])]), chunk, inputs
            )
        if start == 0 and on_shapes is not None:
            on_shapes(jax.eval_shape(fn, chunk))
        state = fn(chunk)
        if m < step:
            state = jax.tree.map(lambda a, m=m: a[:m] if a.ndim else a, state)
        out.append(jax.device_get(state))
        if progress is not None:
            progress(min(start + step, n), n)
    return out


def _concat(recs: list[dict], field: str):
    if field not in recs[0]:
        return None
    return np.concatenate([np.asarray(r[field]) for r in recs], axis=0)


def _make_call(key, k, kind, functional, path, recs) -> Call:
    return Call(
        key=key,
        call=k,
        kind=kind,
        functional=functional,
        flax_path=path,
        x=_concat(recs, "x"),
        y=_concat(recs, "y"),
        x_channels=_concat(recs, "x_channels"),
        y_channels=_concat(recs, "y_channels"),
        sparsity_x=float(np.mean(_concat(recs, "sparsity_x"), dtype=np.float64)),
        sparsity_y=float(np.mean(_concat(recs, "sparsity_y"), dtype=np.float64)),
    )


def _capture_sites(fn, inputs, n, chunk_size, functional, progress, mesh, on_shapes):
    chunks = _chunked(fn, inputs, n, chunk_size, progress, mesh, on_shapes)
    per_chunk = [
        {(path, name, k): r for path, name, recs in _walk(c) for k, r in enumerate(recs)}
        for c in chunks
    ]
    entries = sorted(per_chunk[0], key=lambda e: int(per_chunk[0][e]["order"]))
    seen: dict[str, int] = {}
    calls = []
    for path, name, k in entries:
        method, kind, flags = name.split(_SEP)
        is_functional = "F" in flags
        if is_functional and not functional:
            continue
        if "T" in flags:
            key = reference_key(path, kind, is_functional)
        else:
            key = sites_lib.flax_key(path, method, kind)
        call = seen.get(key, 0)
        seen[key] = call + 1
        recs = [c[(path, name, k)] for c in per_chunk]
        calls.append(_make_call(key, call, kind, is_functional, path, recs))
    return calls


def capture(
    module: nn.Module,
    variables: Mapping,
    inputs,
    *,
    chunk_size: int | None = None,
    functional: bool = False,
    progress=None,
    sites: Any = None,
    feature_axis: int = -1,
    apply_kwargs: Mapping | None = None,
    rngs: Mapping | None = None,
    forward_precision: str = "highest",
    mesh: jax.sharding.Mesh | None = None,
    on_shapes: Callable[[Any], None] | None = None,
) -> list[Call]:
    """Runs ``module`` on ``inputs`` and returns every selected call in execution order.

    Args:
        module: any Flax linen module.
        variables: its variables (``params``, ``batch_stats``...); any other
            collections are allowed (the ones capture writes are dropped).
        inputs: the first argument of ``module.apply``: an array (``[n, H, W, 3]``
            images for our ports) or any pytree of arrays whose leading axis is
            the batch.
        chunk_size: forward at most this many samples at once (memory); every
            leaf is sliced; the reduced features are concatenated on the host.
        functional: also return ``torch.nn.functional`` call sites of our ports,
            which the reference does not see (keys ``"path:F.relu"``).
        progress: optional callable ``progress(done, total)`` after each chunk.
        sites: ``None`` for our call sites (built-in path), or a predicate
            ``(module, method_name) -> bool`` / shorthand (see
            :func:`affjax.sites.selector`) for the generic path.
        feature_axis: generic sites reduce ``[n, ...]`` to ``[n, d]`` by averaging
            every axis but the batch and this one (our Activation sites keep the
            reference reduction; :func:`affjax.site` sites their own axis).
        apply_kwargs: keyword arguments of ``apply`` (``train=False``...);
            hashable values are static, arrays are passed whole to every chunk.
        rngs: ``apply``'s rngs (``{"dropout": key}``), the same for every chunk.
        forward_precision: ``"highest"`` or ``"default"`` matmul/conv precision
            of the forward pass (see :func:`affjax.signature.signature`).
        mesh: run the forward split over this mesh's ``"data"`` axis
            (:mod:`affjax.devices`); variables, array keywords and rngs are
            replicated. ``None``: one device.
        on_shapes: called with the shapes of the first chunk's raw records
            (a pytree of ``jax.ShapeDtypeStruct``) before its forward is
            compiled and run; :func:`affjax.signature.signature` starts
            preparing the score kernels there, beside the forward pass. It
            should return quickly. Not called with a ``mesh``.

    Returns:
        :class:`Call` list in execution order, one per reference key: a
        ``ReLU6`` call comes twice, keyed ``..._Hardtanh`` then ``..._ReLU6``
        (torch's ``ReLU6`` subclasses ``Hardtanh`` and the reference hooks both).
    """
    n = batch_size(inputs)
    if not isinstance(inputs, jax.Array):
        inputs = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), inputs)
    variables = strip_collections(variables)
    static, dynamic = _split_kwargs(apply_kwargs)
    if mesh is not None:
        variables, dynamic, rngs = devices_lib.replicate((variables, dynamic, rngs), mesh)
    if sites is not None:
        select = sites_lib.selector(sites)
        fn = functools.partial(
            _jit(
                _forward_sites,
                module,
                ("select", "feature_axis", "static_kwargs", "forward_precision"),
            ),
            variables,
            dynamic_kwargs=dynamic,
            rngs=rngs,
            select=select,
            feature_axis=feature_axis,
            static_kwargs=static,
            forward_precision=forward_precision,
        )
        return _capture_sites(fn, inputs, n, chunk_size, functional, progress, mesh, on_shapes)
    forward = _jit(_forward, module, ("static_kwargs", "forward_precision"))
    # A zoo model's forward comes from a stored trace when there is one (affjax.traces).
    stored = None
    if mesh is None and not dynamic and rngs is None:
        described = traces.module_key(module)
        if described is not None:
            stored = functools.partial(
                _forward.__wrapped__, module, static_kwargs=static,
                forward_precision=forward_precision,
            )  # fmt: skip
            described = json.dumps(
                [described, repr(static), forward_precision, traces.describe(variables)]
            )

    def fn(chunk):
        if stored is not None:
            call = traces.exported(
                "capture._forward", stored, (variables, chunk), static=described,
                key_args=chunk, jit=xla_options.jit,
            )  # fmt: skip
            if call is not None:
                return call(variables, chunk)
        return forward(
            variables, chunk, dynamic, rngs, static_kwargs=static,
            forward_precision=forward_precision,
        )  # fmt: skip

    chunks = _chunked(fn, inputs, n, chunk_size, progress, mesh, on_shapes)
    # The numbers are trace-time constants: every chunk returns the same ones.
    order = _order_of(chunks[0][1])
    if order is None:
        order = call_order(module, inputs, apply_kwargs, rngs)
    else:
        key = _memo_key(module, *_order_parts(inputs, apply_kwargs, rngs))
        if key is not None:
            _remember(key, order)  # a later call_order (signature's) traces nothing
    chunks = [records for records, _ in chunks]
    seen: dict[tuple[str, ...], int] = {}
    calls = []
    for path, kind, is_functional, key in order:
        k = seen.get(path, 0)
        seen[path] = k + 1
        if is_functional and not functional:
            continue
        recs = [_lookup(c, path)[k] for c in chunks]
        call = _make_call(key, k, kind, is_functional, path, recs)
        classes = layers.reference_classes(kind)
        if is_functional or len(classes) == 1:
            calls.append(call)
            continue
        # A module the reference keys under several classes (ReLU6 is a Hardtanh)
        # gives one Call per key, sharing the same arrays.
        calls.extend(
            call._replace(key=reference_key(path, cls, False), kind=cls) for cls in classes
        )
    return calls

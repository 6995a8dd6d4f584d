"""Traced programs kept on disk (``jax.export``), so a fresh process skips tracing.

JAX's persistent compilation cache (:mod:`affjax.compilation_cache`) keeps the
compiled executables, but a new process still traces each function in Python
and lowers it to find the cache key. For a zoo model's capture forward that is
most of a cached start: DenseNet-121 at batch 256 took 3.3-3.9 s from the
function to a loaded executable with the executable cached, and 1.1 s through a
stored export (deserialise 0.06 s, lower 0.23 s, load 0.85 s).

So :func:`affjax.capture.capture` runs a zoo model's forward, and
:func:`affjax.signature.score_calls` its score kernels (for any model), through
``jax.export``: the first process exports the traced program (StableHLO, the
same program ``jax.jit`` would compile) into ``affjax-traces/`` inside the
compilation cache directory, later processes deserialise it and call it. Same
program, same executable: the records are bit for bit those of the plain path
(``tests/test_traces.py``).

A stored trace is used only when everything that shaped it is the same, all in
its key: the function, for a forward the module's class and fields (modules
of :mod:`affjax.models` only, whose fields are plain values and affjax's own
classes), the static arguments, the tree and shapes of the arguments, the
source of the whole ``affjax`` package, the versions of jax, jaxlib and flax,
the backend, and the JAX settings that change a trace (x64, default matmul
precision, dtype promotion). Other forwards (your own Flax models, sharded
runs, ``apply`` keywords or rngs) and sharded score kernels take the plain
``jax.jit`` path. The folder is
capped at :data:`MAX_BYTES` (least recently used files go first). Like the
compilation cache this is an optimisation, never an error: no cache directory,
no ``flatbuffers`` (which ``jax.export`` serialises with), a damaged or
unwritable file, or an export JAX refuses all fall back to the plain path.
``AFFJAX_TRACES=off`` turns it off alone.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from affjax import switches
from affjax.compilation_cache import package_version

__all__ = ["MAX_BYTES", "describe", "directory", "exported", "module_key"]

log = logging.getLogger(__name__)

#: Size of the traces folder beyond which the least recently used files are removed.
MAX_BYTES = 2 * 2**30

_SUFFIX = ".jaxexport"
_PACKAGE = Path(__file__).resolve().parent

# In this process: key -> the jitted call of the deserialised export.
_LOADED: dict[str, Any] = {}


def directory() -> Path | None:
    """``affjax-traces/`` in JAX's compilation cache directory; ``None`` when that cache
    is off or ``AFFJAX_TRACES`` is off."""
    if not switches.switch("AFFJAX_TRACES", True):
        return None
    where = jax.config.jax_compilation_cache_dir
    return Path(where) / "affjax-traces" if where else None


@functools.cache
def _code_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _ours(obj) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] in ("affjax", "flax", "jax")


def _value_key(v) -> Any:
    """A JSON-able description of a module field, or ``None`` when it has no stable one."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, enum.Enum):
        return f"{type(v).__module__}.{type(v).__qualname__}.{v.name}" if _ours(type(v)) else None
    if isinstance(v, tuple | list):
        parts = [_value_key(p) for p in v]
        if any(p is None and q is not None for p, q in zip(parts, v, strict=True)):
            return None
        name = type(v).__qualname__ if isinstance(v, tuple) and hasattr(v, "_fields") else ""
        if name and not _ours(type(v)):
            return None
        return [name, parts]
    if isinstance(v, functools.partial):
        args = _value_key(tuple(v.args))
        kwargs = _value_key(tuple(sorted(v.keywords.items())))
        func = _value_key(v.func)
        return None if None in (args, kwargs, func) else ["partial", func, args, kwargs]
    if isinstance(v, type) or callable(v):
        name = getattr(v, "__qualname__", None)
        if name is None or "<" in name or not _ours(v):  # lambdas, locals, other packages
            return None
        return f"{v.__module__}.{name}"
    return None


def module_key(module: nn.Module) -> str | None:
    """The module's class and fields as a stable string, or ``None`` when it is not one
    of :mod:`affjax.models` or a field has no stable description."""
    cls = type(module)
    if not cls.__module__.startswith("affjax.models"):
        return None
    fields = {}
    for f in dataclasses.fields(module):
        if f.name in ("parent", "name"):
            continue
        v = getattr(module, f.name)
        key = _value_key(v)
        if key is None and v is not None:
            return None
        fields[f.name] = key
    return json.dumps([f"{cls.__module__}.{cls.__qualname__}", fields], sort_keys=True)


def describe(args) -> str:
    """The tree, shapes and dtypes of ``args`` as a string (part of a trace's key)."""
    leaves, tree = jax.tree.flatten(args)
    return json.dumps([str(tree), [(np.shape(a), str(jax.numpy.result_type(a))) for a in leaves]])


@functools.cache
def _versions() -> tuple:
    # Read once: importlib.metadata parses each package's METADATA (2-3 ms a call),
    # which on DenseNet-121's 240 score calls was 1.7 s of a 9 s warm scoring.
    return tuple(package_version(p) for p in ("jax", "jaxlib", "flax"))


def _key(name: str, static: str, args) -> str:
    parts = {
        "name": name,
        "static": static,
        "args": describe(args),
        "code": _code_hash(),
        "versions": list(_versions()),
        "backend": jax.default_backend(),
        "x64": str(jax.dtypes.canonicalize_dtype(np.float64)),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "promotion": str(jax.config.jax_numpy_dtype_promotion),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _load(path: Path):
    from jax import export

    try:
        exp = export.deserialize(bytearray(path.read_bytes()))
    except FileNotFoundError:
        return None
    except Exception as err:  # damaged or from another jax: export again
        log.info("affjax trace %s unreadable (%s); exporting again", path.name, err)
        return None
    try:
        os.utime(path)  # least recently used goes first
    except OSError:
        pass
    return exp


def _store(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except Exception as err:  # unwritable folder, full disk: the trace is only an optimisation
        log.info("affjax trace %s not written (%s)", path.name, err)
        return
    _evict(path.parent, keep=path)


def _evict(where: Path, keep: Path) -> None:
    try:
        files = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in where.glob(f"*{_SUFFIX}"))
    except OSError:
        return
    total = sum(size for _, size, _ in files)
    for _, size, p in files:
        if total <= MAX_BYTES:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            total -= size


_NAMEDTUPLES: set[type] = set()


def _serializable(namedtuples, export) -> None:
    """Lets ``jax.export`` write these NamedTuple classes in argument and result trees."""
    for cls in namedtuples:
        if cls not in _NAMEDTUPLES:
            try:
                export.register_namedtuple_serialization(
                    cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}"
                )
            except ValueError:  # registered already (by the user, or a reloaded module)
                pass
            _NAMEDTUPLES.add(cls)


def exported(
    name: str, fn, args: tuple, *, static: str, key_args=None, jit=jax.jit, namedtuples=()
):
    """``jit(exported.call)`` standing for ``jax.jit(fn)`` on ``args``, or ``None``.

    ``fn`` is a pure function of ``args`` (arrays and pytrees of arrays) whose
    trace is fully described by ``name``, ``static`` (a stable string of
    everything else it closes over) and the shapes of ``key_args`` (default
    ``args``; a caller that put :func:`describe` of some arguments into
    ``static`` once leaves them out here). The export is read from
    :func:`directory` or made now and written there. ``None`` when traces are
    off or unavailable: the caller then runs its plain jitted function.
    ``namedtuples``: NamedTuple classes in the argument or result trees. The
    returned function is named after the last part of ``name`` (compile logs
    and profiles show ``jit(_forward)``, as for the plain function).
    """
    where = directory()
    if where is None:
        return None
    key = _key(name, static, args if key_args is None else key_args)
    call = _LOADED.get(key)
    if call is not None:
        return call
    try:
        from jax import export
    except ImportError:
        return None
    _serializable(namedtuples, export)
    path = where / f"{key}{_SUFFIX}"
    exp = _load(path)
    if exp is None:
        try:
            exp = export.export(jax.jit(fn))(*args)
            data = exp.serialize()  # flatbuffers missing, or an output tree it can't write
        except Exception as err:
            log.info("affjax trace %s not exported (%s); using jax.jit", name, err)
            return None
        _store(path, data)

    def run(*a):
        return exp.call(*a)

    run.__name__ = run.__qualname__ = name.rsplit(".", 1)[-1]
    call = jit(run)
    _LOADED[key] = call
    return call

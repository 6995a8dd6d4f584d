"""Converted weights on disk: a torchvision model is converted once, then loaded without torch.

:func:`load` is :func:`converters.torchvision.load` with a cache in front of it.
A miss converts (importing torch and torchvision) and writes the Flax variables
and the model's provenance (``info``) to ``~/.cache/affjax/weights``
(``$XDG_CACHE_HOME/affjax/weights``); a hit reads them back in a fraction of a
second and never imports torch or torchvision. ``AFFJAX_WEIGHTS_CACHE_DIR``
moves the cache and ``AFFJAX_WEIGHTS_CACHE_DIR=off`` turns it off. The cache
is an optimisation, never an error: an unwritable directory or an unreadable
entry means converting again (and overwriting the bad entry).

An entry is used only when everything that could change its variables is
equal (:func:`_key`): the model name; the weights (``"random"`` and its seed, a
weights name as given, or the sha256 of a state_dict file's contents, which
a hit reuses while the file is unchanged, :func:`_weights_digest`); the
versions of torch, torchvision and flax; and a hash of the conversion and model
code (``affjax/models``, this package's converter, ``affjax/checkpoint.py``).
One entry per model and weights (name, seed or file) is kept: writing a new one
removes the entry it replaces, and the least recently used entries beyond
:data:`MAX_BYTES` (10 GiB) in all.

This module imports neither torch nor torchvision; a miss imports them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax

from affjax import checkpoint, compilation_cache, models, reports

__all__ = ["FORMAT", "Converted", "default_dir", "load"]

#: Version of an entry's key and layout; bump when the conversion changes what it stores.
FORMAT = 2
_SUFFIX = ".variables"  # checkpoint's "raw" layout (FORMAT 1 wrote msgpack, ".msgpack")
_OLD_SUFFIXES = (".msgpack",)  # earlier formats' entries: replaced and evicted like ours
_DIGEST_SUFFIX = ".sha256"  # a state_dict file's hash and the stat it was taken at
#: A file changed less than this long before it was hashed may change again without its
#: ctime moving (file systems with coarse clocks tick every 1-2 s): its hash is not reused.
_RACY_NS = 2 * 10**9
#: Entries beyond this total size are removed when one is written, least recently used
#: (written or hit) first; the one just written stays.
MAX_BYTES = 10 * 2**30

_PACKAGE = Path(__file__).resolve().parent
# The code a conversion's output depends on, hashed into every key.
_CODE = (
    Path(models.__file__).resolve().parent,
    _PACKAGE / "torchvision.py",
    _PACKAGE / "weights.py",
    Path(checkpoint.__file__).resolve(),
)


class Converted(NamedTuple):
    """A converted model: :class:`converters.torchvision.Loaded` less the torch objects."""

    name: str
    module: nn.Module
    variables: dict
    info: dict  # provenance: weights (enum members by their full name), acc@1/acc@5, params, depth
    cached: bool  # read from the cache (no torch imported for it)


def default_dir() -> Path | None:
    """``$AFFJAX_WEIGHTS_CACHE_DIR``, else ``$XDG_CACHE_HOME/affjax/weights``; ``None``: off."""
    return compilation_cache.user_dir("AFFJAX_WEIGHTS_CACHE_DIR", "weights")


_version = compilation_cache.package_version  # a name of its own: tests stand in other versions


@functools.cache
def _code_hash() -> str:
    h = hashlib.sha256()
    for where in _CODE:
        for path in sorted(where.glob("*.py")) if where.is_dir() else [where]:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    # ~30 ms for resnet18's 45 MB on the 2-core dev machine: cheap next to a conversion.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _stat_signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _weights_digest(path: Path, memo: Path | None) -> str:
    """sha256 of a state_dict file, reused from the ``memo`` file while the file is unchanged.

    Hashing alexnet's 244 MB took 0.30 s of a 0.43 s hit. As git's index does, the memo
    holds the file's device, inode, size, mtime and ctime with the hash. Writing the
    file, renaming another onto its path, ``touch`` or ``cp -p`` all set its ctime to
    now, which no user tool can set back, so another file's hash is never reused. A
    file hashed less than :data:`_RACY_NS` after its last change is hashed again (a
    coarse file-system clock could give the next change the same ctime). An
    unreadable or unwritable memo only means hashing.
    """
    st = path.stat()
    signature = _stat_signature(st)
    if memo is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            seen = json.loads(memo.read_text())
            changed = max(st.st_mtime_ns, st.st_ctime_ns)
            if seen["stat"] == signature and seen["hashed_ns"] - changed >= _RACY_NS:
                return str(seen["sha256"])
    hashed_ns = time.time_ns()  # before reading: a change while hashing is then "racy"
    digest = _file_sha256(path)
    if memo is not None:
        with contextlib.suppress(OSError), reports.atomic_write(memo) as f:
            json.dump({"stat": signature, "hashed_ns": hashed_ns, "sha256": digest}, f)
    return digest


def _is_path(weights: str) -> bool:
    # The test converters.torchvision.load applies to tell a file from a weights name.
    return os.path.sep in weights or weights.endswith((".pt", ".pth")) or Path(weights).exists()


def _key(name: str, weights: str, seed: int, where: Path | None = None) -> tuple[dict, dict] | None:
    """``(slot, key)``: the slot names the model and weights (one entry each), the key
    everything the entry's contents depend on. ``None``: not cacheable (a missing file,
    whose error the conversion reports). ``where``: the cache folder, which keeps a state
    dict file's hash (:func:`_weights_digest`)."""
    if weights == "random":
        slot = {"model": name, "weights": "random", "seed": int(seed)}
    elif _is_path(weights):
        path = Path(weights)
        if not path.is_file():
            return None
        slot = {"model": name, "weights_file": str(path.resolve())}
    else:
        # A name (DEFAULT, IMAGENET1K_V1): which file it means is fixed by the
        # torchvision version, so resolving it (which imports torchvision) is not needed.
        slot = {"model": name, "weights": weights}
    key = {
        "format": FORMAT,
        **slot,
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "flax": _version("flax"),
        "code": _code_hash(),
    }
    if "weights_file" in slot:
        memo = None if where is None else where / (_slot_prefix(slot) + _DIGEST_SUFFIX)
        key["weights_sha256"] = _weights_digest(Path(weights), memo)
    return slot, key


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _slot_prefix(slot: dict) -> str:
    return f"{slot['model']}-{_digest(slot)[:12]}"


def _entry(where: Path, slot: dict, key: dict) -> Path:
    return where / f"{_slot_prefix(slot)}-{_digest(key)[:16]}{_SUFFIX}"


def _entry_slot(entry: Path) -> str:
    """:func:`_slot_prefix` of an entry's file name."""
    return entry.name.rsplit("-", 1)[0]


def _read(path: Path, key: dict):
    """``(module, variables, info)`` of a matching entry, else ``None`` (absent, foreign,
    corrupt or another key's)."""
    if not path.is_file():
        return None
    try:
        name, module, variables, meta = checkpoint.load_variables(path)
    except Exception:  # noqa: BLE001 - any unreadable entry is converted again and overwritten
        return None
    if name != key["model"] or meta.get("key") != key or not isinstance(meta.get("info"), dict):
        return None
    # jax arrays, as a conversion returns (device_put: jnp.asarray would compile a copy
    # per array, 0.27 s on resnet18).
    return module, jax.device_put(variables), meta["info"]


def _store(path: Path, key: dict, loaded) -> None:
    config = checkpoint.module_config(loaded.module)
    rebuilt = models.get_model(loaded.name, num_classes=loaded.module.num_classes, **config)
    if rebuilt != loaded.module:
        return  # a setting the file cannot hold (not a scalar): never a wrong hit
    meta = {"key": key, "info": loaded.info}
    try:
        checkpoint.save_variables(
            path, loaded.name, loaded.module, loaded.variables, meta=meta, layout="raw"
        )
    except OSError:
        return  # unwritable or full: the cache is an optimisation
    prefix = _entry_slot(path) + "-"
    for old in _entries(path.parent, prefix):
        if old != path:  # the entry this one replaces (changed file, versions or code)
            with contextlib.suppress(OSError):
                old.unlink()
    _evict(path.parent, keep=path)


def _entries(where: Path, prefix: str = "") -> list[Path]:
    return [p for s in (_SUFFIX, *_OLD_SUFFIXES) for p in where.glob(f"{prefix}*{s}")]


def _evict(where: Path, keep: Path) -> None:
    """Least recently used entries out until the rest fit in :data:`MAX_BYTES`."""
    entries = []
    for entry in _entries(where):
        with contextlib.suppress(OSError):
            stat = entry.stat()
            entries.append((stat.st_mtime_ns, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= MAX_BYTES:
            break
        if entry != keep:
            with contextlib.suppress(OSError):
                entry.unlink()
                total -= size
            with contextlib.suppress(OSError):  # its weights file's hash, if it had one
                entry.with_name(_entry_slot(entry) + _DIGEST_SUFFIX).unlink()


def load(
    name: str,
    weights: str = "DEFAULT",
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Converted:
    """A supported torchvision model's Flax module and variables, converted at most once.

    Args:
        name: torchvision name (``affjax models`` lists them).
        weights: as :func:`converters.torchvision.load`: ``"DEFAULT"``, an enum
            member name, ``"random"`` or a path to a saved ``state_dict``.
        seed: seed for ``"random"``.
        cache_dir: the cache's directory; default :func:`default_dir` (``None``
            when ``AFFJAX_WEIGHTS_CACHE_DIR=off``: convert every time).

    Returns:
        :class:`Converted`, with the same name, module, variables and info as
        :func:`converters.torchvision.load` (whose ``torch_model`` is not kept:
        call that function for it).

    Raises:
        registry.UnknownModelError: unsupported name.
        WeightsError: on a miss, weights unavailable (offline download, missing file).
    """
    models.registry.get(name)  # unknown names fail first, as in the conversion
    where = Path(cache_dir).expanduser() if cache_dir is not None else default_dir()
    keyed = _key(name, weights, seed, where) if where is not None else None
    path = None
    if keyed is not None:
        slot, key = keyed
        path = _entry(where, slot, key)
        hit = _read(path, key)
        if hit is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # used now: the last to be evicted
            module, variables, info = hit
            if "weights_file" in slot:
                info = {**info, "weights": weights}  # as given, as a conversion records it
            return Converted(name, module, variables, info, cached=True)

    from converters import torchvision as tv  # imports torch and torchvision

    loaded = tv.load(name, weights, seed=seed)
    if path is not None:
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError:
            path = None
    if path is not None:
        _store(path, key, loaded)
    return Converted(loaded.name, loaded.module, loaded.variables, loaded.info, cached=False)

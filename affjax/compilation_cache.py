"""JAX's persistent compilation cache, on by default.

Compiling a model's forward pass and the score kernels takes about as long as a
signature on CPU (resnet18 at batch 256: ~6 s of ~12 s). With the cache, a second
process loads the executables from disk instead. The command line and the first
:func:`affjax.signature` call of a process turn it on (:func:`enable_default`) in
``~/.cache/affjax/jax``; ``AFFJAX_CACHE_DIR`` overrides the place and
``AFFJAX_CACHE_DIR=off`` disables it. A cache directory you configured yourself
(``jax.config.update("jax_compilation_cache_dir", ...)``) is left alone.
Importing affjax never changes JAX's configuration.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

from affjax import switches

__all__ = ["default_dir", "enable", "enable_default"]


def user_dir(variable: str, leaf: str) -> Path | None:
    """An affjax cache folder: ``$variable`` when set (``None`` for ``off``, ``0``,
    ``none``, ``false`` or empty), else ``$XDG_CACHE_HOME/affjax/<leaf>``
    (``~/.cache/affjax/<leaf>``)."""
    env = os.environ.get(variable)
    if env is not None:
        return None if env.strip().lower() in ("", *switches.OFF) else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "affjax" / leaf


def package_version(package: str) -> str | None:
    """The installed version of ``package`` (part of cache keys), ``None`` when absent."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def default_dir() -> Path | None:
    """``$AFFJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/affjax/jax`` (``~/.cache/affjax/jax``)."""
    return user_dir("AFFJAX_CACHE_DIR", "jax")


def enable(path: str | os.PathLike | None = None, min_compile_seconds: float = 0.0) -> Path | None:
    """Turns on JAX's persistent compilation cache in ``path`` (default: :func:`default_dir`).

    Only compilations longer than ``min_compile_seconds`` are written, so the
    many tiny kernels do not fill the disk. Returns the directory, or ``None``
    when disabled or not writable (a cache is an optimisation, never an error).
    """
    where = Path(path).expanduser() if path is not None else default_dir()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if jax.config.jax_compilation_cache_dir != str(where):
        jax.config.update("jax_compilation_cache_dir", str(where))
        # JAX decides once per process, at its first compile, whether the cache is
        # used; a process that compiled before this call would otherwise never use it.
        _jax_cache.reset_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where


_defaulted = False


def enable_default() -> Path | None:
    """:func:`enable` once per process, unless a cache directory is already configured.

    Called by the CLI and by :func:`affjax.signature`. Returns the directory in
    use, or ``None`` when the cache is off.
    """
    global _defaulted
    configured = jax.config.jax_compilation_cache_dir
    if _defaulted or configured:
        return Path(configured) if configured else None
    _defaulted = True
    return enable()

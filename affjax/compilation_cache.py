"""JAX's persistent compilation cache, on for the ``affjax`` command.

Compiling a model's forward pass and the score kernels takes longer than a
signature on CPU (resnet18 at batch 256: ~6 s of ~12 s). With the cache, a second
process loads the executables from disk instead. The command line turns it on
(``AFFJAX_CACHE_DIR`` overrides the place, ``AFFJAX_CACHE_DIR=off`` disables it);
library users call :func:`enable` themselves, since it is JAX's global setting
and importing affjax never changes JAX's configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["default_dir", "enable"]

_OFF = ("", "0", "off", "none", "false")


def default_dir() -> Path | None:
    """``$AFFJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/affjax/jax`` (``~/.cache/affjax/jax``)."""
    env = os.environ.get("AFFJAX_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "affjax" / "jax"


def enable(path: str | os.PathLike | None = None, min_compile_seconds: float = 0.5) -> Path | None:
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
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where

"""Device meshes and sharding for signatures on many devices.

A signature runs data-parallel over a :class:`jax.sharding.Mesh` with one
``"data"`` axis:

* the forward pass: every chunk of the batch is padded to a multiple of the
  device count (with copies of real samples; the copies' rows are sliced off
  afterwards) and put with ``NamedSharding(mesh, P("data"))``; the variables
  are replicated. ``jit`` follows the input shardings, so the forward runs
  sharded; the reduced features come back to the host gathered.
* the scores: the ``[L, n, d]`` stack of calls of one width bucket is split
  over the ``"data"`` axis (``shard_map``), each device scoring its ``L / k``
  calls, so the host solver (scipy via ``pure_callback``) runs once per shard.

Many hosts (a TPU pod slice): ``jax.distributed.initialize()`` first, then
every process loads its own :func:`process_slice` of the batch and
:func:`gather_slices` assembles the whole batch on every process before
:func:`affjax.signature` runs over a mesh of all global devices
(``benchmarks/tpu_pod_signature.py``).

``signature`` uses this module; this module never imports ``signature``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA",
    "DeviceError",
    "data_sharding",
    "device_count",
    "gather",
    "gather_slices",
    "mesh_for",
    "pad_batch",
    "process_slice",
    "replicate",
    "resolve",
    "shard_batch",
    "unpad_slices",
]

#: The mesh axis the batch (and the stack of scored calls) is split over.
DATA = "data"


class DeviceError(ValueError):
    """A device request that cannot be met (too many devices, a mesh without "data")."""


def mesh_for(devices: Any = None) -> Mesh:
    """A 1-D mesh with axis ``"data"``.

    Args:
        devices: ``None`` (one device, the default one), an int ``N`` (the
            first ``N`` local devices), ``"all"`` (every device of every
            process: ``jax.devices()``), or a list of ``jax.Device``.
    """
    if devices is None:
        chosen = jax.local_devices()[:1]
    elif isinstance(devices, str):
        if devices != "all":
            raise DeviceError(f"devices={devices!r}: give None, an int, 'all' or a device list")
        chosen = jax.devices()
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        local = jax.local_devices()
        if not 1 <= devices <= len(local):
            raise DeviceError(
                f"devices={devices}: {len(local)} local {local[0].platform} device(s) available"
                " (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)"
            )
        chosen = local[:devices]
    elif (
        isinstance(devices, Sequence)
        and devices
        and all(isinstance(d, jax.Device) for d in devices)
    ):
        chosen = list(devices)
    else:
        raise DeviceError(f"devices={devices!r}: give None, an int, 'all' or a device list")
    return Mesh(np.asarray(chosen, dtype=object), (DATA,))


def resolve(devices: Any = None, mesh: Mesh | None = None) -> Mesh | None:
    """The mesh a signature runs on: ``None`` (unsharded) when neither is given."""
    if mesh is not None:
        if devices is not None:
            raise DeviceError("give devices= or mesh=, not both")
        if DATA not in mesh.axis_names:
            raise DeviceError(f"the mesh needs an axis named {DATA!r}; it has {mesh.axis_names}")
        return mesh
    return None if devices is None else mesh_for(devices)


def device_count(mesh: Mesh) -> int:
    """How many ways the batch is split: the size of the ``"data"`` axis."""
    return int(mesh.shape[DATA])


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch-leading arrays split over ``"data"`` (replicated over any other axis)."""
    return NamedSharding(mesh, P(DATA))


def pad_batch(tree, multiple: int):
    """``(padded, m)``: every leaf's leading axis padded from ``m`` to a multiple.

    The padding repeats real samples (cyclically), so every padded row is a
    valid input; slice ``[:m]`` off the results.
    """
    m = jax.tree.leaves(tree)[0].shape[0]
    total = -(-m // multiple) * multiple
    if total == m:
        return tree, m
    idx = np.arange(total) % m
    return jax.tree.map(lambda a: a[idx], tree), m


def shard_batch(tree, mesh: Mesh):
    """``jax.device_put`` of batch-leading leaves, split over ``"data"``.

    The leading axis must divide by :func:`device_count` (see :func:`pad_batch`).
    """
    return _put(tree, data_sharding(mesh))


def replicate(tree, mesh: Mesh):
    """``jax.device_put`` of every leaf, whole on every device of the mesh."""
    return _put(tree, NamedSharding(mesh, P()))


def _put(tree, sharding: NamedSharding):
    if sharding.is_fully_addressable:  # one process
        return jax.device_put(tree, sharding)
    # Many processes: each builds the shards of its own devices from its host
    # copy (every process holds the same values, see gather_slices).
    return jax.tree.map(
        lambda a: jax.make_array_from_callback(
            np.shape(a), sharding, lambda index, a=a: np.asarray(a[index])
        ),
        tree,
    )


def gather(tree):
    """Host numpy copies of (possibly sharded) arrays.

    Fully addressable arrays (one process) come back with ``jax.device_get``;
    arrays spread over several processes are all-gathered first, so every
    process gets the whole value.
    """
    leaves = jax.tree.leaves(tree)
    if all(getattr(a, "is_fully_addressable", True) for a in leaves):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def process_slice(n: int, process_index: int | None = None, process_count: int | None = None):
    """The contiguous ``slice`` of a batch of ``n`` samples that one process loads.

    Sizes differ by at most one (the first ``n % process_count`` processes take
    one more), the slices cover ``range(n)`` in order without overlap, so
    concatenating them in process order gives the batch back. Defaults: this
    process (``jax.process_index()``, ``jax.process_count()``).
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count < 1 or not 0 <= index < count:
        raise DeviceError(f"process {index} of {count} does not exist")
    if n < 0:
        raise DeviceError(f"batch size {n} < 0")
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def gather_slices(local, n: int):
    """The whole batch on every process from each process's :func:`process_slice`.

    ``local`` is this process's slice (a pytree of batch-leading arrays). The
    slices are padded to equal length for the all-gather and unpadded after,
    so the result is the batch of ``n`` in order.
    """
    count = jax.process_count()
    if count == 1:
        return jax.tree.map(np.asarray, local)
    from jax.experimental import multihost_utils

    longest = -(-n // count)
    padded = jax.tree.map(
        lambda a: np.concatenate([a, np.repeat(a[:1], longest - a.shape[0], 0)]), local
    )
    stacked = multihost_utils.process_allgather(padded)  # [count, longest, ...]
    return jax.tree.map(lambda a: unpad_slices(a, n), stacked)


def unpad_slices(stacked: np.ndarray, n: int) -> np.ndarray:
    """``[count, longest, ...]`` equal-length per-process slices -> the ``[n, ...]`` batch."""
    count = stacked.shape[0]
    parts = [
        stacked[i, : process_slice(n, i, count).stop - process_slice(n, i, count).start]
        for i in range(count)
    ]
    return np.concatenate(parts)

"""A signature on a TPU pod slice: one process per host, ``jax.distributed``.

Start the same command on every host of the slice, e.g.::

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \\
      "cd affjax && python benchmarks/tpu_pod_signature.py \\
         --variables r18.msgpack --images batch.npy --out results"

The pattern (affjax/devices.py):

1. ``jax.distributed.initialize()`` before any other JAX call (on Cloud TPU it
   finds the coordinator itself; elsewhere pass ``coordinator_address``,
   ``num_processes`` and ``process_id``).
2. Each process reads only its own rows, ``devices.process_slice(n)``.
3. ``devices.gather_slices`` all-gathers the rows, so every process holds the
   batch (the I/O is split; the batch itself is small next to the model).
4. ``signature(..., mesh=devices.mesh_for("all"))``: the forward runs split over
   every chip of the slice, the score stacks too; the reduced features and the
   scores come back to every process; process 0 writes the outputs.

Without ``--distributed`` it runs in one process over its local devices, e.g.
on CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu
python benchmarks/tpu_pod_signature.py --model resnet18 --random 10 --size 32``.
The multi-process path has not yet been run on a pod (no pod was available);
the per-process slicing is tested on CPU (tests/test_devices.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
    p.add_argument("--variables", help="converted variables (`affjax convert`)")
    p.add_argument("--model", default="resnet18", help="without --variables: a random init")
    p.add_argument("--images", help=".npy of NHWC float32 images")
    p.add_argument("--random", type=int, default=0, help="without --images: N random images")
    p.add_argument("--size", type=int, default=224, help="random image size")
    p.add_argument("--batch-size", type=int, default=None, help="default: every image")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--out", default="results")
    args = p.parse_args()

    if args.distributed:
        jax.distributed.initialize()

    from affjax import devices, signature
    from affjax.models import get_model

    if args.variables:
        from affjax.checkpoint import load_variables

        name, module, variables, _ = load_variables(args.variables)
    else:
        name, module = args.model, get_model(args.model)
        shape = (1, args.size, args.size, 3)
        variables = module.init(jax.random.key(0), np.zeros(shape, np.float32))

    if args.images:
        images = np.load(args.images, mmap_mode="r")  # nothing is read yet
    else:
        rng = np.random.default_rng(0)  # the same on every process
        images = rng.standard_normal((args.random, args.size, args.size, 3), np.float32)
    n = args.batch_size or images.shape[0]
    rows = devices.process_slice(n)  # this process's rows
    local = np.asarray(images[rows])
    batch = devices.gather_slices(local, n)

    mesh = devices.mesh_for("all")
    t0 = time.perf_counter()
    sig = signature(module, variables, batch, mesh=mesh, chunk_size=args.chunk_size)
    seconds = time.perf_counter() - t0
    if jax.process_index() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{name}_pod_{n}"
        sig.meta.update(processes=jax.process_count(), seconds=seconds)
        sig.to_csv(stem.with_suffix(".csv"))
        sig.to_json(stem.with_suffix(".json"))
        print(
            f"{name}: {len(sig.records())} calls, batch {n} over {devices.device_count(mesh)} "
            f"devices in {jax.process_count()} process(es), {seconds:.1f} s -> {stem}.csv"
        )
    print(f"process {jax.process_index()}: rows {rows.start}:{rows.stop}")


if __name__ == "__main__":
    main()

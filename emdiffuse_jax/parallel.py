"""All device-mesh and sharding code: mesh from config, state/batch shardings, multi-host set-up.

The mesh has two axes, ``data`` and ``fsdp``. Both split the batch (the fsdp axis is ZeRO-3 style data
parallelism); large parameters and their optimizer moments are additionally split over ``fsdp``, small
ones are replicated. Axis types are given explicitly as ``Auto`` so XLA inserts the parameter all-gathers
inside the UNet (Explicit axes would require every convolution to state its output sharding).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")

def _launched_as_multiprocess() -> bool:
    """Whether a launcher announced several processes: a coordinator address, a TPU pod slice with several
    workers, or a SLURM job with several tasks."""
    env = os.environ
    if any(env.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Calls ``jax.distributed.initialize`` when this is (or is declared to be) a multi-process run.

    mode: "auto" initialises only when a launcher announced several processes; "always" forces it; "never"
    skips it. Must run before any other JAX call. Returns True if initialised here. In "auto" mode a
    failure is logged and the run continues as a single process.
    """
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"distributed mode must be 'auto', 'always' or 'never', got {mode!r}")
    if mode == "never" or (mode == "auto" and not _launched_as_multiprocess()):
        return False
    try:
        jax.distributed.initialize()
    except (RuntimeError, ValueError) as err:
        if mode == "always":
            raise
        logging.warning("jax.distributed.initialize failed (%s); continuing as a single process.", err)
        return False
    logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """Resolves (data, fsdp) where at most one entry is -1 ("all remaining devices")."""
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of mesh data/fsdp may be -1")
    if data == -1 or fsdp == -1:
        known = fsdp if data == -1 else data
        if known <= 0 or num_devices % known:
            raise ValueError(f"mesh axis size {known} does not divide the {num_devices} devices")
        data, fsdp = (num_devices // known, known) if data == -1 else (known, num_devices // known)
    if data <= 0 or fsdp <= 0 or data * fsdp != num_devices:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} must multiply to the {num_devices} devices "
                         "(use -1 for 'all remaining devices')")
    return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over ``devices`` (default: all global devices), Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over both mesh axes."""
    return NamedSharding(mesh, P(DATA_AXES))


def leaf_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Partition spec of one array: replicated when small, else its largest fsdp-divisible dim on fsdp.

    Ties prefer the last dimension (the output channels of an HWIO convolution kernel).
    """
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp_size == 0 and d >= fsdp_size]
    if not candidates:
        return P()
    _, axis = max(candidates)
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return P(*spec)


def state_sharding(mesh: Mesh, tree: Any, min_size: int = 2 ** 16) -> Any:
    """NamedSharding for every leaf of ``tree`` (arrays or ShapeDtypeStructs) by the size rule."""
    fsdp_size = mesh.shape["fsdp"]

    def one(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, leaf_spec(shape, fsdp_size, min_size))

    return jax.tree.map(one, tree)


def with_sharding(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the given shardings (the abstract target of an exact restore)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_tree, shardings)


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-process batch, checking that the global batch splits evenly over devices and processes."""
    ndev = mesh.devices.size
    if global_batch % ndev:
        raise ValueError(f"global batch {global_batch} is not divisible by the {ndev} devices of the mesh; "
                         f"choose a multiple of {ndev}")
    return global_batch // jax.process_count()


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles per-process numpy batches into global arrays (each process passes only its rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def replicated_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The same host data on every device (every process must pass identical arrays)."""
    sharding = replicated(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def jit_train_step(step_fn: Any, mesh: Mesh, state_shardings: Any) -> Any:
    """jit of ``step_fn(state, batch, key)`` with the state donated and the batch split over the mesh."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))

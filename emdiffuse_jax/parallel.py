"""All device-mesh and sharding code: mesh from config, state/batch shardings, multi-host set-up.

The mesh has two axes, ``data`` and ``fsdp``. Both split the batch (the fsdp axis is ZeRO-3 style data
parallelism); large parameters and their optimizer moments are additionally split over ``fsdp``, small
ones are replicated. Axis types are given explicitly as ``Auto`` so XLA inserts the parameter all-gathers
inside the UNet (Explicit axes would require every convolution to state its output sharding).

Multi-process runs (TPU pods, GPU clusters, several processes on one machine) run the same program in
every process. Every value that enters a jitted function with a mesh-wide sharding is built here, either
inside ``jit`` (random keys) or with ``jax.make_array_from_process_local_data`` (batches, host arrays):
``jax.device_put`` onto a sharding that spans other processes' devices is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)

# What jax.distributed.initialize reads besides its arguments, and what launchers set to announce several
# processes. The JAX_* names are ours for num_processes / process_id (JAX itself reads only the address).
_ADDRESS_ENV, _COUNT_ENV, _INDEX_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def _launched_as_multiprocess(num_processes: int | None) -> bool:
    """Whether a launcher announced several processes: more than one process given (flag or
    JAX_NUM_PROCESSES), a coordinator address, a TPU pod slice with several workers, or a SLURM job with
    several tasks."""
    env = os.environ
    if (num_processes or 1) > 1 or env.get(_ADDRESS_ENV):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def maybe_initialize_distributed(mode: str = "auto", *, coordinator_address: str | None = None,
                                 num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Calls ``jax.distributed.initialize`` when this is (or is declared to be) a multi-process run.

    mode: "auto" initialises when a launcher announced several processes (see _launched_as_multiprocess);
    "always" forces it; "never" skips it. coordinator_address ("host:port" of process 0), num_processes and
    process_id default to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; whatever stays
    unset JAX detects from the cluster (TPU pods, SLURM, Open MPI). Must run before any other JAX call.
    Returns True if initialised here.

    A failed initialisation is always an error once several processes were announced: continuing alone
    would make every worker train its own model into the same workdir and corrupt the checkpoints.
    """
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"distributed mode must be 'auto', 'always' or 'never', got {mode!r}")
    coordinator_address = coordinator_address or os.environ.get(_ADDRESS_ENV) or None
    num_processes = num_processes if num_processes is not None else _env_int(_COUNT_ENV)
    process_id = process_id if process_id is not None else _env_int(_INDEX_ENV)
    if mode == "never" or (mode == "auto" and not _launched_as_multiprocess(num_processes)):
        return False
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    except Exception as err:   # JAX raises RuntimeError, ValueError, TypeError or XlaRuntimeError here
        raise RuntimeError(
            f"jax.distributed.initialize failed (mode {mode!r}, coordinator {coordinator_address!r}, "
            f"num_processes {num_processes}, process_id {process_id}): {err}. Every worker stops, since "
            "workers continuing alone would overwrite each other's checkpoints. Give --coordinator_address "
            "(host:port of process 0), --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID), or run a single process with --config.distributed=never."
        ) from err
    log.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def fingerprint(value: Any) -> str:
    """A stable hash of a JSON-able value (the run settings every process must agree on)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _flat(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_processes_agree(settings: dict) -> None:
    """Raises ValueError in every process when the processes were started with different ``settings``
    (config and workdir): the error names the differing keys and the processes that differ from process 0.
    A no-op in a single process. Every process must call it (it is a collective)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(bytes.fromhex(fingerprint(settings))[:8], np.uint32)   # 2 words
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if not differ:
        return
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    size = int(np.max(multihost_utils.process_allgather(np.int32(len(encoded)))))
    mine = np.zeros(size, np.uint8)
    mine[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    first = bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine))).rstrip(b"\0")
    theirs, ours = _flat(json.loads(first)), _flat(json.loads(encoded))
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    detail = (f"here (process {jax.process_index()}): " + ", ".join(
        f"{k}={ours.get(k)!r} vs {theirs.get(k)!r} on process 0" for k in keys[:8])) if keys else \
        "this process agrees with process 0"
    raise ValueError(
        f"processes {differ} were started with a different config or workdir than process 0 ({detail}). "
        "Every worker must run the same command with the same --config overrides and --workdir.")


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


def make_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None, dcn_data: int = 1) -> Mesh:
    """A ("data", "fsdp") mesh over ``devices`` (default: all global devices), Auto axis types.

    Devices are placed by ``jax.make_mesh`` (the order the runtime prefers: rings on the TPU torus).
    dcn_data > 1 (multi-slice pods, several GPU hosts) splits the data axis into dcn_data groups joined by
    the slower data-centre network (``mesh_utils.create_hybrid_device_mesh``): each group is one slice
    (devices sharing ``slice_index``) or, where the devices span a single slice, ``len(devices) / dcn_data``
    devices of consecutive processes. Only the data axis crosses the slow network (its gradient all-reduce once per step); the
    fsdp axis, which all-gathers parameters inside every layer, stays within a group.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, len(devices))
    axis_types = (AxisType.Auto, AxisType.Auto)
    if dcn_data == 1:
        return jax.make_mesh(shape, DATA_AXES, axis_types=axis_types, devices=devices)
    if dcn_data < 1 or shape[0] % dcn_data:
        raise ValueError(f"mesh.dcn_data={dcn_data} must be >= 1 and divide the data axis ({shape[0]}); "
                         f"the mesh is data={shape[0]} x fsdp={shape[1]}")
    from jax.experimental import mesh_utils

    # Slices where the devices span several (multi-slice TPU); else processes (CPU and GPU report one slice).
    by_slice = len({getattr(d, "slice_index", None) for d in devices} - {None}) > 1
    try:
        grid = mesh_utils.create_hybrid_device_mesh((shape[0] // dcn_data, shape[1]), (dcn_data, 1), devices,
                                                    process_is_granule=not by_slice)
    except ValueError as err:
        raise ValueError(f"mesh.dcn_data={dcn_data} does not fit the {len(devices)} devices in "
                         f"{'slices' if by_slice else 'processes'}: {err}") from err
    return Mesh(grid, DATA_AXES, axis_types=axis_types)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over both mesh axes."""
    return NamedSharding(mesh, P(DATA_AXES))


def global_keys(seed: int, count: int, mesh: Mesh) -> tuple[jax.Array, ...]:
    """``count`` independent random keys derived from ``seed``, replicated over the whole mesh.

    Built inside ``jit`` so that every process holds its part of the same global array (a host key cannot
    be placed on other processes' devices)."""
    make = jax.jit(lambda: tuple(jax.random.fold_in(jax.random.key(seed), i) for i in range(count)),
                   out_shardings=replicated(mesh))
    return make()


def host_to_global(tree: Any, shardings: Any) -> Any:
    """Global arrays with ``shardings`` from host arrays that every process holds in full (e.g. loaded
    weights); each process places only its own shards."""
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x), np.shape(x)),
                        tree, shardings)


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


def process_row_blocks(sharding: NamedSharding, global_batch: int) -> list[tuple[int, int]]:
    """The rows [start, stop) of a ``global_batch`` that this process's devices hold under ``sharding``,
    ascending. A contiguous run of device blocks becomes one block when it is aligned to its own length
    (then it is block start // length of global_batch // length equal blocks, as data sources count).

    Rows are assigned by the mesh (whichever devices the runtime placed where), and global row r is
    always example r of the batch, so the global batch is the same for any number of processes.
    """
    ndev = sharding.mesh.devices.size
    if global_batch % ndev:
        raise ValueError(f"global batch {global_batch} is not divisible by the {ndev} devices of the mesh; "
                         f"choose a multiple of {ndev}")
    per_device = global_batch // ndev
    indices = sharding.addressable_devices_indices_map((global_batch,)).values()
    starts = sorted({idx[0].start or 0 for idx in indices})
    runs: list[list[int]] = []
    for start in starts:
        if runs and runs[-1][-1] + per_device == start:
            runs[-1].append(start)
        else:
            runs.append([start])
    blocks = []
    for run in runs:
        length = len(run) * per_device
        if run[0] % length == 0 and global_batch % length == 0:
            blocks.append((run[0], run[0] + length))
        else:
            blocks.extend((s, s + per_device) for s in run)
    return blocks


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Global arrays from this process's rows (those of process_row_blocks, concatenated in ascending
    order; every process holds as many rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def compiled_on_every_process(jitted: Any, *args) -> Any:
    """``jitted`` itself in a single process; with several processes its executable for ``args``, compiled
    ahead and returned once every process has compiled it.

    Hosts compile at different speeds; without the wait a fast process enters the program's first
    collective alone, and CPU (gloo) collectives give up after 30 s.
    """
    if jax.process_count() == 1:
        return jitted
    from jax.experimental import multihost_utils

    compiled = jitted.lower(*args).compile()
    multihost_utils.sync_global_devices("emdiffuse_jax: compiled")
    return compiled


def jit_train_step(step_fn: Any, mesh: Mesh, state_shardings: Any) -> Any:
    """jit of ``step_fn(state, batch, key)`` with the state donated and the batch split over the mesh."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


# --- multi-process prediction: work split over processes, barriers ----------------------------------------

def process_share(num_items: int, process_index: int, process_count: int) -> range:
    """Items [start, stop) of ``num_items`` that process ``process_index`` of ``process_count`` computes:
    contiguous blocks, as equal as possible, the first ``num_items % process_count`` processes one more.
    Pure: every process computes every share the same way, and together they cover each item once."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} of {process_count}: need 0 <= index < count")
    base, extra = divmod(num_items, process_count)
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (process_index < extra))


_barriers: dict[str, int] = {}


def wait_for_all_processes(name: str, timeout_s: float = 7 * 24 * 3600) -> None:
    """Returns once every process has called it with ``name`` (a no-op in a single process).

    Uses the coordination service's barrier (no device collective, so processes may arrive hours apart,
    as when one process's share of a volume takes longer); falls back to ``sync_global_devices``."""
    if jax.process_count() == 1:
        return
    count = _barriers[name] = _barriers.get(name, 0) + 1   # each call a fresh barrier id
    try:
        from jax._src import distributed

        client = distributed.global_state.client
    except (ImportError, AttributeError):
        client = None
    if client is not None:
        client.wait_at_barrier(f"emdiffuse_jax:{name}:{count}", timeout_in_ms=int(timeout_s * 1000))
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"emdiffuse_jax:{name}:{count}")

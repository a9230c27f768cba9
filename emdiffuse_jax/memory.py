"""Memory planning for sampling: how many network rows fit in one call, decided before the first call.

Why: XLA raises a catchable out-of-memory error only on GPU/TPU; on CPU the kernel kills the process
with no message and nothing saved. So the rows per call are chosen from an estimate, on every backend,
and a tile that cannot fit even one row per device is refused with a message saying what to change.

Estimate of one call with R rows per device: fixed + R x per_row bytes, where
  fixed   = the network's parameters + the sampler's whole-image state (`state_bytes`);
  per_row = the larger of (a) XLA's own figure for the compiled network
            (`jax.jit(net).lower(...).compile().memory_analysis()`: arguments, outputs, temporaries) on
            `probe_rows` rows, divided by the rows, and (b) an analytic count for the UNet
            (`unet_row_bytes`): the skip activations plus the attention score matrices, which XLA:CPU
            allocates outside the temporaries it reports (measured on the tiny network of the tests,
            128 px tiles: compiled figure 28 MB for 2 rows, real peak growth 310 MB).
On CPU all devices share the host's memory, so the limit is divided by the device count.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp

GB = 1024 ** 3

# Share of the free memory a plan may use by default: room for the runtime, I/O buffers and the OS.
DEFAULT_FRACTION = 0.8

# On CPU larger calls are no faster per tile (docs/prediction.md, speed table: 0.87 s per 256 px tile at
# batch 1, 1.07 s at batch 8), they only take memory: at most this many pixels per device per call there.
CPU_PIXELS_PER_CALL = 2 ** 18


def available_bytes(device=None) -> int:
    """Free memory of `device` (default: the first local one): host RAM available on CPU (MemAvailable),
    bytes_limit - bytes_in_use on GPU/TPU."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_limit_bytes(device=None) -> int:
    """The limit used when the user sets none: DEFAULT_FRACTION of the free memory."""
    return int(DEFAULT_FRACTION * available_bytes(device))


def limit_bytes(memory_limit_gb: float | None, device=None) -> tuple[int, str]:
    """(limit in bytes, where it comes from) for a user limit in GiB, or the machine's default."""
    if memory_limit_gb is None:
        return default_limit_bytes(device), f"{DEFAULT_FRACTION:.0%} of the free memory"
    if memory_limit_gb <= 0:
        raise ValueError(f"--memory_limit_gb must be positive, got {memory_limit_gb}")
    return int(memory_limit_gb * GB), "--memory_limit_gb"


def unet_row_bytes(unet, tile: int) -> int:
    """Analytic inference memory of one tile through the UNet: skip activations kept for the decoder and,
    at the attention level with most positions, four float32 heads x L^2 arrays (scores, shifted
    exponentials, softmax, and a copy XLA:CPU keeps; fitted to the peak RSS of launch/predict.py with the
    tiny EMDiffuse-n: 4 copies at 64 px tiles, 2.9 at 128 px, see docs/prediction.md)."""
    levels = len(unet.channel_mults)
    skips = sum((unet.res_blocks + 1) * (tile // 2 ** lv) ** 2 * unet.inner_channel * m
                for lv, m in enumerate(unet.channel_mults))
    working = 4 * tile * tile * unet.inner_channel * unet.channel_mults[0]
    sites = set(unet.attention_levels) | {2 ** (levels - 1)}
    attention = max((unet.inner_channel * unet.channel_mults[s.bit_length() - 1] // unet.num_head_channels)
                    * (tile // s) ** 4 for s in sites)
    return 4 * (skips + working + 4 * attention)


def compiled_bytes(fn: Callable, *abstract_args) -> int:
    """XLA's estimate for one call of jit(fn): arguments + outputs + temporaries (bytes, per device)."""
    stats = jax.jit(fn).lower(*abstract_args).compile().memory_analysis()
    if stats is None:
        return 0
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def network_row_bytes(net: Callable, params, tile: int, channels: int, vem: bool, unet=None,
                      probe_rows: int = 2) -> int:
    """Per-row bytes of net(params, x, gamma, slice_index) on tile x tile x channels inputs (see module doc)."""
    x = jax.ShapeDtypeStruct((probe_rows, tile, tile, channels), jnp.float32)
    gamma = jax.ShapeDtypeStruct((probe_rows,), jnp.float32)
    slice_index = jax.ShapeDtypeStruct((probe_rows,), jnp.int32) if vem else None
    compiled = compiled_bytes(lambda p, x, g, s: net(p, x, g, s), params, x, gamma, slice_index)
    compiled -= tree_bytes(params)
    analytic = 0 if unet is None else unet_row_bytes(unet, tile)
    return max(compiled // probe_rows, analytic, 1)


def tree_bytes(tree) -> int:
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def state_bytes(num_rows: int, canvas_shape, channels: int) -> int:
    """The joint sampler's whole-image state: condition, sample, noise, blend accumulator, x0 estimates
    and draws, about channels + 8 float32 canvases per row."""
    return 4 * num_rows * int(canvas_shape[0]) * int(canvas_shape[1]) * (channels + 8)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    rows_per_device: int
    per_row_bytes: int
    fixed_bytes: int
    limit_bytes: int
    num_devices: int
    shared_host: bool

    @property
    def estimated_bytes(self) -> int:
        """Estimated peak of one call over all devices that share the limit."""
        per_device = self.fixed_bytes + self.rows_per_device * self.per_row_bytes
        return per_device * (self.num_devices if self.shared_host else 1)


def plan_rows(*, per_row_bytes: int, fixed_bytes: int, limit: int, num_devices: int, max_rows_per_device: int,
              shared_host: bool, what: str, advice: str) -> MemoryPlan:
    """The most rows per device (at most max_rows_per_device) whose estimate fits `limit`.

    shared_host: the devices share one memory (CPU), so the limit is split between them. Raises
    MemoryError naming `what` (e.g. "one 256 x 256 tile") and `advice` when not even one row fits.
    """
    budget = limit // num_devices if shared_host else limit
    rows = (budget - fixed_bytes) // per_row_bytes
    if rows < 1:
        need = (fixed_bytes + per_row_bytes) * (num_devices if shared_host else 1)
        raise MemoryError(f"{what} per device needs about {need / GB:.2f} GiB on {num_devices} device(s) "
                          f"(model, image state and network activations), more than the memory limit of "
                          f"{limit / GB:.2f} GiB; {advice}")
    return MemoryPlan(int(min(rows, max_rows_per_device)), int(per_row_bytes), int(fixed_bytes), int(limit),
                      int(num_devices), bool(shared_host))

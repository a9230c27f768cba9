"""Tiled diffusion restoration of whole images and slice pairs: K samples, mean, std, no seams.

An image of any size is covered by overlapping square tiles (`data.tiling`; images smaller than a tile are
padded). Two tiling modes (see docs/prediction.md):

joint (default): MultiDiffusion (`diffusion.multidiffusion`). Every sample is one whole image; at every
  step the network runs on all its tiles and the predictions are blended before the sampler's update, so
  each sample is coherent across tile borders and the mean, std and score come from whole-image samples.
independent: every (tile, sample[, slice]) is sampled on its own and the tiles are blended afterwards:
  the per-tile mean and the per-tile (unbiased) variance are each blended with the window, the std is the
  square root of the blended variance. Stitched samples average two unrelated samples in every overlap
  band, so they are smoother there; kept for comparison.

Every sample (and in independent mode every tile sample) gets its own key derived from its indices, and
the rows per network call are planned to fit memory before the first call (`memory`), so results do not
depend on the chunk size or the number of devices. Calls that still run out of memory (an error XLA
raises on GPU/TPU only) are retried with half as many rows per device.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from emdiffuse_jax import memory, models, parallel
from emdiffuse_jax.data import degrade, tiling
from emdiffuse_jax.diffusion import multidiffusion, samplers, schedules
from emdiffuse_jax.harmonize import default_sigma, match_low_frequencies, slice_reference

log = logging.getLogger(__name__)

SAMPLERS = ("ddpm", "ddim", "dpm")
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpm": 20}


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Which sampler, how many network evaluations, and its options.

    ddpm: the reference's ancestral sampler on a linear 1e-4..0.09 schedule with `steps` steps (the
    reference's `--step`; same end points, coarser steps). ddim / dpm: `steps` noise levels of the
    1000-step test schedule, evenly spaced in log-SNR (spacing="logsnr", starting at the smallest noise
    level of `train_schedule`, the checkpoint's training schedule) or in step index ("time").
    """
    name: str = "ddpm"
    steps: int | None = None
    eta: float = 0.0
    spacing: str = "logsnr"
    clip_x0: bool = True
    schedule: tuple = tuple(schedules.TEST_SCHEDULE.items())
    train_schedule: tuple = tuple(schedules.TRAIN_SCHEDULE.items())

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {SAMPLERS}")
        if self.steps is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS[self.name])
        if self.steps < 2:
            raise ValueError(f"a sampler needs at least 2 steps, got {self.steps}")
        if self.spacing not in ("logsnr", "time"):
            raise ValueError(f"spacing must be 'logsnr' or 'time', got {self.spacing!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["schedule"] = dict(self.schedule)
        d["train_schedule"] = dict(self.train_schedule)
        return d


def noise_grid(spec: SamplerSpec) -> np.ndarray:
    """The increasing noise levels a DDIM / DPM-Solver++ spec evaluates the network at (float64)."""
    base = schedules.make_schedule(**dict(spec.schedule))
    if spec.spacing == "logsnr":
        floor = samplers.min_trained_gamma(dict(spec.train_schedule))
        return samplers.logsnr_gammas(base, spec.steps, min_gamma=floor)
    return samplers.respaced_gammas(base, spec.steps)


def make_sample_fn(spec: SamplerSpec) -> Callable:
    """sample(denoise, cond, key, slice_index) -> y0 (B, H, W, 1) for the sampler described by `spec`."""
    if spec.name == "ddpm":
        schedule = schedules.make_schedule(**{**dict(spec.schedule), "n_timestep": spec.steps})
        return lambda denoise, cond, key, slice_index: samplers.ddpm_sample(
            denoise, cond, key, schedule, slice_index=slice_index)
    gammas = noise_grid(spec)
    if spec.name == "ddim":
        return lambda denoise, cond, key, slice_index: samplers.ddim_sample(
            denoise, cond, key, gammas, eta=spec.eta, slice_index=slice_index, clip_x0=spec.clip_x0)
    return lambda denoise, cond, key, slice_index: samplers.dpm_solver_sample(
        denoise, cond, key, gammas, slice_index=slice_index, clip_x0=spec.clip_x0)


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def item_keys(key: jax.Array, *indices: np.ndarray) -> np.ndarray:
    """Raw key data (N, ...) of fold_in(...fold_in(key, i0)..., ik) for every row of the index arrays."""
    stacked = np.stack([np.asarray(i, np.uint32) for i in indices], axis=1)

    def one(ids):
        k = key
        for j in range(stacked.shape[1]):
            k = jax.random.fold_in(k, ids[j])
        return jax.random.key_data(k)

    return np.asarray(jax.jit(jax.vmap(one))(stacked))


class Restorer:
    """Samples images tile by tile with one network, in memory-planned calls split over the local devices.

    apply_fn(params, x, gamma, slice_index) is the network (as `models.make_apply_fn` returns);
    sample_fn(denoise, cond, key, slice_index) a sampler (see `make_sample_fn`). tiling: "joint" (default,
    whole-image samples, `diffusion.multidiffusion`) or "independent" (tiles sampled on their own).
    unet: the network's configuration, for the tile check (multiple of its down-sampling factor) and the
    analytic part of the memory estimate; None for other networks. default_tile: the tile used when none
    is given, normally the model's training patch size (the context the network learnt). batch_per_device:
    an upper bound on the rows per device per call (None: as many as the memory plan allows, on CPU at
    most `memory.CPU_PIXELS_PER_CALL` pixels);
    memory_limit_gb: the plan's limit (None: `memory.DEFAULT_FRACTION` of the free memory). steps: the
    sampler's network evaluations per sample, for progress lines only.
    """

    def __init__(self, apply_fn: Callable, params, sample_fn: Callable, *, tiling: str = "joint", unet=None,
                 default_tile: int = 256, batch_per_device: int | None = None, memory_limit_gb: float | None = None,
                 steps: int | None = None, devices=None):
        if tiling not in multidiffusion.TILINGS:
            raise ValueError(f"tiling must be one of {multidiffusion.TILINGS}, got {tiling!r}")
        if batch_per_device is not None and batch_per_device < 1:
            raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
        memory.limit_bytes(memory_limit_gb)  # validates the limit before any work
        self.apply_fn, self.sample_fn, self.tiling, self.steps = apply_fn, sample_fn, tiling, steps
        self.unet = None if unet is None else models.unet_config(unet)
        self.downsampling = 1 if self.unet is None else self.unet.downsampling
        self.default_tile = int(default_tile)
        self.batch_per_device = batch_per_device
        self.memory_limit_gb = memory_limit_gb
        self.devices = list(jax.local_devices() if devices is None else devices)
        self.mesh = parallel.make_mesh(devices=self.devices)
        self._rows, self._repl = parallel.batch_sharding(self.mesh), parallel.replicated(self.mesh)
        self._abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
        self.params = jax.device_put(params, self._repl)
        self._row_bytes: dict = {}
        self._programs: dict = {}
        self.last_plan: memory.MemoryPlan | None = None

    def resolve_tiling(self, tile: int | None, overlap: float | None) -> tuple[int, int]:
        """(tile, overlap in px): the defaults (training patch size, tile / 4) filled in, both checked."""
        tile = self.default_tile if tile is None else int(tile)
        overlap = tile // 4 if overlap is None else overlap
        return tile, multidiffusion.overlap_pixels(tile, overlap, self.downsampling)

    def plan(self, tile: int, channels: int, vem: bool, total_rows: int, fixed_bytes: int,
             extra_row_bytes: int = 0) -> memory.MemoryPlan:
        """The rows per device per call for `total_rows` network rows of a tile x tile condition with `channels`
        channels (the network sees them and the noisy target)."""
        key = (tile, channels, vem)
        if key not in self._row_bytes:
            net_channels = channels + 1 if self.unet is None else self.unet.in_channel  # regression: cond only
            self._row_bytes[key] = memory.network_row_bytes(self.apply_fn, self._abstract_params, tile,
                                                            net_channels, vem, self.unet)
        limit, source = memory.limit_bytes(self.memory_limit_gb, self.devices[0])
        n = len(self.devices)
        most = -(-total_rows // n)
        shared_host = self.devices[0].platform == "cpu"
        if self.batch_per_device is not None:
            most = min(most, self.batch_per_device)
        elif shared_host:
            most = min(most, max(1, memory.CPU_PIXELS_PER_CALL // (tile * tile)))
        plan = memory.plan_rows(
            per_row_bytes=self._row_bytes[key] + extra_row_bytes,
            fixed_bytes=memory.tree_bytes(self._abstract_params) + fixed_bytes, limit=limit, num_devices=n,
            max_rows_per_device=most, shared_host=shared_host,
            what=f"one {tile} x {tile} tile",
            advice=f"use a smaller --tile (a multiple of {self.downsampling}; the model was trained on "
                   f"{self.default_tile} px tiles), a smaller image or fewer --num_samples, or raise "
                   f"--memory_limit_gb if the machine has more free memory (limit from {source})")
        if plan != self.last_plan:
            log.info("memory plan: %d row(s) of %d x %d per device per call on %d device(s), about %.2f GiB of "
                     "a %.2f GiB limit (%s)", plan.rows_per_device, tile, tile, n, plan.estimated_bytes / memory.GB,
                     limit / memory.GB, source)
        self.last_plan = plan
        return plan

    def _call_with_backoff(self, rows_per_device: int, call: Callable[[int], np.ndarray], tile: int):
        """call(rows_per_device) -> result, halving the rows when XLA reports out of memory (GPU/TPU)."""
        while True:
            try:
                return call(rows_per_device), rows_per_device
            except Exception as err:  # XLA reports device OOM as a runtime error
                if not _is_out_of_memory(err):
                    raise
                if rows_per_device == 1:
                    raise MemoryError(f"one {tile} x {tile} tile per device does not fit in memory; use a smaller "
                                      "--tile or a lower --memory_limit_gb") from err
                rows_per_device //= 2
                log.warning("out of memory; retrying with %d rows per device", rows_per_device)

    def _independent_program(self, rows: int):
        if rows not in self._programs:
            apply_fn, sample_fn = self.apply_fn, self.sample_fn

            def run(params, cond, key_data, slice_index):
                def one(c, kd, s):
                    denoise = lambda x, g, si: apply_fn(params, x, g, si)  # noqa: E731
                    s1 = None if s is None else s[None]
                    return sample_fn(denoise, c[None], jax.random.wrap_key_data(kd), s1)[0, ..., 0]
                return jax.vmap(one)(cond, key_data, slice_index)

            rows_s = self._rows
            self._programs[rows] = jax.jit(run, in_shardings=(self._repl, rows_s, rows_s, rows_s),
                                           out_shardings=rows_s)
        return self._programs[rows]

    def sample(self, cond: np.ndarray, key_data: np.ndarray, slice_index: np.ndarray | None = None) -> np.ndarray:
        """Independent tiles: samples every row, cond (N, h, w, C) in [-1, 1], key_data (N, 2) -> (N, h, w)."""
        n, tile, channels = cond.shape[0], cond.shape[1], cond.shape[-1]
        plan = self.plan(tile, channels, slice_index is not None, n, 0,
                         extra_row_bytes=memory.state_bytes(1, cond.shape[1:3], channels))
        out = np.empty(cond.shape[:3], np.float32)
        rows_per_device, start = plan.rows_per_device, 0
        while start < n:
            def call(per_device):
                size = per_device * len(self.devices)
                idx = np.minimum(np.arange(start, start + size), n - 1)  # pad the last chunk by repetition
                si = None if slice_index is None else jnp.asarray(slice_index[idx], jnp.int32)
                result = self._independent_program(size)(self.params, jnp.asarray(cond[idx], jnp.float32),
                                                         jnp.asarray(key_data[idx]), si)
                return np.asarray(result)
            result, rows_per_device = self._call_with_backoff(rows_per_device, call, tile)
            real = min(rows_per_device * len(self.devices), n - start)
            out[start:start + real] = result[:real]
            start += real
        return out

    def sample_joint(self, cond: np.ndarray, key_data: np.ndarray, slice_index: np.ndarray | None,
                     grid: multidiffusion.TileGrid) -> np.ndarray:
        """Joint tiling: whole-canvas samples (B, Hc, Wc) of cond (Hc, Wc, C), one per key row (B, 2)."""
        num_rows, channels = key_data.shape[0], cond.shape[-1]
        plan = self.plan(grid.tile, channels, slice_index is not None, num_rows * grid.num_tiles,
                         memory.state_bytes(num_rows, grid.canvas_shape, channels))

        def call(per_device):
            rows_per_call = per_device * len(self.devices)
            key = ("joint", grid.canvas_shape, grid.tile, grid.overlap, channels, num_rows, rows_per_call,
                   slice_index is not None)
            if key not in self._programs:
                apply_fn, sample_fn, rows_s = self.apply_fn, self.sample_fn, self._rows

                def run(params, cond, key_data, slice_index):
                    net = lambda x, g, s: apply_fn(params, x, g, s)  # noqa: E731
                    return multidiffusion.joint_sampler(net, sample_fn, grid, num_rows, rows_per_call,
                                                        rows_s)(cond, key_data, slice_index)

                self._programs[key] = jax.jit(run, in_shardings=self._repl, out_shardings=self._repl)
            si = None if slice_index is None else jnp.asarray(slice_index, jnp.int32)
            return np.asarray(self._programs[key](self.params, jnp.asarray(cond, jnp.float32),
                                                  jnp.asarray(key_data), si))

        return self._call_with_backoff(plan.rows_per_device, call, grid.tile)[0]


def progress_line(done: int, total: int, elapsed: float, restorer: Restorer, tiles: int,
                  num_samples: int) -> str:
    """`done/total` with the work per item (tiles, samples, steps), elapsed time and the ETA of the rest."""
    steps = f" x {restorer.steps} steps" if restorer.steps else ""
    eta = elapsed / done * (total - done)
    return (f"[{done}/{total}] {tiles} tiles x {num_samples} samples{steps} ({restorer.tiling} tiling), "
            f"elapsed {elapsed:.1f} s, ETA {eta:.1f} s")


@dataclasses.dataclass
class Prediction:
    """Mean and std in model units ([-1, 1]; std of K samples, ddof=1, zero when K=1) and optional samples."""
    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray | None
    num_tiles: int
    seconds: float


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"{name}: expected one 2D image (H, W), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{name}: holds NaN or infinite values; fill or mask them first")
    return image


def _check_samples(num_samples: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples (K) must be >= 1, got {num_samples}")


def _stitch(samples: np.ndarray, reference: np.ndarray, origins, shape, window, harmonize: bool,
            keep_samples: bool):
    """Independent tiles: samples (T, K, h, w) -> stitched mean, std (and samples) of an image of `shape`.

    harmonize: each sample's low frequencies are matched to the reference tiles (T, h, w), what the
    condition implies (see `harmonize.py`), before the mean and std are taken.
    """
    if harmonize:
        samples = match_low_frequencies(samples, reference[:, None], default_sigma(samples.shape[-1]))
    k = samples.shape[1]
    mean_t = samples.mean(axis=1)
    var_t = samples.var(axis=1, ddof=1) if k > 1 else np.zeros_like(mean_t)
    mean = tiling.stitch_tiles(mean_t, origins, shape, window)
    std = np.sqrt(np.maximum(tiling.stitch_tiles(var_t, origins, shape, window), 0.0))
    stitched = None
    if keep_samples:
        stitched = np.stack([tiling.stitch_tiles(samples[:, i], origins, shape, window) for i in range(k)])
    return mean.astype(np.float32), std.astype(np.float32), stitched


def _whole_image_stats(samples: np.ndarray, reference: np.ndarray, tile: int, harmonize: bool,
                       keep_samples: bool):
    """Joint tiling: whole-image samples (K, H, W) -> mean, std (ddof=1, 0 for K=1) and optionally samples.

    harmonize: each sample's low frequencies are matched to `reference` (H, W), what the condition implies
    (see `harmonize.py`), at the scale of the tile, as in independent mode.
    """
    if harmonize:
        samples = match_low_frequencies(samples, reference[None], default_sigma(tile))
    mean = samples.mean(axis=0)
    std = samples.std(axis=0, ddof=1) if len(samples) > 1 else np.zeros_like(mean)
    return mean.astype(np.float32), std.astype(np.float32), samples if keep_samples else None


def predict_image(restorer: Restorer, image: np.ndarray, key: jax.Array, *, num_samples: int = 2,
                  tile: int | None = None, overlap: float | None = None, harmonize: bool = False,
                  keep_samples: bool = False, upscale: int = 1, name: str = "image") -> Prediction:
    """Restores one 2D image in [-1, 1] (any size): denoising (upscale=1) or 2x super-resolution (upscale=2).

    tile / overlap default to the restorer's (the model's training patch size, a quarter of it). For
    super-resolution the image is first upsampled bilinearly (half-pixel centres), as in training.
    """
    image = _check_image(image, name)
    _check_samples(num_samples)
    if upscale not in (1, 2):
        raise ValueError(f"upscale must be 1 or 2, got {upscale}")
    tile, overlap = restorer.resolve_tiling(tile, overlap)
    start = time.perf_counter()
    cond_image = degrade.upsample2_bilinear(image).astype(np.float32) if upscale == 2 else image
    grid = multidiffusion.tile_grid(cond_image.shape, tile, overlap)
    k = num_samples
    if restorer.tiling == "joint":
        canvas = tiling.pad_to(cond_image[..., None], grid.canvas_shape)
        samples = restorer.sample_joint(canvas, item_keys(key, np.arange(k)), None, grid)
        h, w = cond_image.shape
        mean, std, kept = _whole_image_stats(samples[:, :h, :w], cond_image, tile, harmonize, keep_samples)
        return Prediction(mean, std, kept, grid.num_tiles, time.perf_counter() - start)
    tiles, origins = tiling.extract_tiles(cond_image[..., None], (tile, tile), overlap)
    t = len(tiles)
    tile_ids, sample_ids = np.repeat(np.arange(t), k), np.tile(np.arange(k), t)
    rows = restorer.sample(tiles[tile_ids], item_keys(key, tile_ids, sample_ids))
    samples = rows.reshape(t, k, tile, tile)
    mean, std, stitched = _stitch(samples, tiles[..., 0], origins, cond_image.shape, grid.window(), harmonize,
                                  keep_samples)
    return Prediction(mean, std, stitched, t, time.perf_counter() - start)


def predict_between(restorer: Restorer, earlier: np.ndarray, later: np.ndarray, z_factor: int, key: jax.Array,
                    *, num_samples: int = 2, tile: int | None = None, overlap: float | None = None,
                    harmonize: bool = False, keep_samples: bool = False, name: str = "slices") -> Prediction:
    """The z_factor - 1 slices between two neighbouring slices in [-1, 1] (vEMDiffuse-i / -a).

    Condition channel order is [later, earlier] (the reference's); generated slice c (0-based, network
    slice index c) sits at depth (c + 1) / z_factor after `earlier`. Returns mean/std (z_factor-1, H, W)
    and, with keep_samples, samples (K, z_factor-1, H, W).
    """
    earlier, later = _check_image(earlier, f"{name} (earlier)"), _check_image(later, f"{name} (later)")
    if earlier.shape != later.shape:
        raise ValueError(f"{name}: slice shapes differ: {earlier.shape} vs {later.shape}")
    if z_factor < 2:
        raise ValueError(f"z_factor must be >= 2 (slices generated = z_factor - 1), got {z_factor}")
    _check_samples(num_samples)
    tile, overlap = restorer.resolve_tiling(tile, overlap)
    start = time.perf_counter()
    pair = np.stack([later, earlier], axis=-1)
    grid = multidiffusion.tile_grid(earlier.shape, tile, overlap)
    c, k = z_factor - 1, num_samples
    if restorer.tiling == "joint":
        slice_ids, sample_ids = np.repeat(np.arange(c), k), np.tile(np.arange(k), c)
        canvas = tiling.pad_to(pair, grid.canvas_shape)
        rows = restorer.sample_joint(canvas, item_keys(key, slice_ids, sample_ids), slice_ids, grid)
        h, w = earlier.shape
        rows = rows[:, :h, :w].reshape(c, k, h, w)
        stats = [_whole_image_stats(rows[j], slice_reference(earlier, later, j, z_factor), tile, harmonize,
                                    keep_samples) for j in range(c)]
        num_tiles = grid.num_tiles
    else:
        tiles, origins = tiling.extract_tiles(pair, (tile, tile), overlap)
        t = len(tiles)
        ids = np.stack(np.meshgrid(np.arange(t), np.arange(c), np.arange(k), indexing="ij"), -1).reshape(-1, 3)
        rows = restorer.sample(tiles[ids[:, 0]], item_keys(key, ids[:, 0], ids[:, 1], ids[:, 2]),
                               slice_index=ids[:, 1])
        samples = rows.reshape(t, c, k, tile, tile)
        stats = [_stitch(samples[:, j], slice_reference(tiles[..., 1], tiles[..., 0], j, z_factor), origins,
                         earlier.shape, grid.window(), harmonize, keep_samples)  # channels [later, earlier]
                 for j in range(c)]
        num_tiles = t
    means, stds, kept = zip(*stats)
    stitched = np.stack(kept, axis=1) if keep_samples else None  # (K, z-1, H, W)
    return Prediction(np.stack(means), np.stack(stds), stitched, num_tiles, time.perf_counter() - start)

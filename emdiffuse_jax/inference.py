"""Tiled diffusion restoration of whole images and slice pairs: K samples, mean, std, seamless stitching.

An image of any size is cut into overlapping tiles (`data.tiling`, images smaller than a tile are padded);
every (tile, sample[, slice]) item becomes one row of a batch; rows are sampled by one jitted, vmapped
sampler call per chunk whose rows are split over all local devices. Each row gets its own key derived
from its indices, so results do not depend on the chunk size or the number of devices. Chunks that run
out of memory are retried with half as many rows per device.

Stitching: the per-tile mean over the K samples and the per-tile (unbiased) variance are each blended
with the same raised-cosine window; the std is the square root of the blended variance. (Blending
variances, not samples, keeps the std from dipping where independent tiles overlap; it is exact inside a
tile and a weighted average of the two tiles' variances in the overlaps.) Individual stitched samples are
blends of independent tile samples and are slightly smoother in the overlaps.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from emdiffuse_jax import parallel
from emdiffuse_jax.data import degrade, tiling
from emdiffuse_jax.diffusion import samplers, schedules
from emdiffuse_jax.harmonize import default_sigma, match_low_frequencies, slice_reference

SAMPLERS = ("ddpm", "ddim", "dpm")
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpm": 20}


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Which sampler, how many network evaluations, and its options.

    ddpm: the reference's ancestral sampler on a linear 1e-4..0.09 schedule with `steps` steps (the
    reference's `--step`; same end points, coarser steps). ddim / dpm: `steps` noise levels of the
    1000-step test schedule, evenly spaced in log-SNR (spacing="logsnr") or in step index ("time").
    """
    name: str = "ddpm"
    steps: int | None = None
    eta: float = 0.0
    spacing: str = "logsnr"
    clip_x0: bool = True
    schedule: tuple = tuple(schedules.TEST_SCHEDULE.items())

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
        return d


def make_sample_fn(spec: SamplerSpec) -> Callable:
    """sample(denoise, cond, key, slice_index) -> y0 (B, H, W, 1) for the sampler described by `spec`."""
    base = dict(spec.schedule)
    if spec.name == "ddpm":
        schedule = schedules.make_schedule(**{**base, "n_timestep": spec.steps})
        return lambda denoise, cond, key, slice_index: samplers.ddpm_sample(
            denoise, cond, key, schedule, slice_index=slice_index)
    grid_fn = samplers.logsnr_gammas if spec.spacing == "logsnr" else samplers.respaced_gammas
    gammas = grid_fn(schedules.make_schedule(**base), spec.steps)
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
    """Runs a sampler over many independent rows (tiles x samples [x slices]) in device-sharded chunks.

    apply_fn(params, x, gamma, slice_index) is the network (as `models.make_apply_fn` returns);
    sample_fn(denoise, cond, key, slice_index) a sampler (see `make_sample_fn`); batch_per_device rows go
    to each local device per call and halve automatically when a call runs out of memory.
    """

    def __init__(self, apply_fn: Callable, params, sample_fn: Callable, *, batch_per_device: int = 4,
                 devices=None):
        if batch_per_device < 1:
            raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
        self.devices = list(jax.local_devices() if devices is None else devices)
        self.mesh = parallel.make_mesh(devices=self.devices)
        self.batch_per_device = int(batch_per_device)
        rows, repl = parallel.batch_sharding(self.mesh), parallel.replicated(self.mesh)
        self.params = jax.device_put(params, repl)

        def run(params, cond, key_data, slice_index):
            def one(c, kd, s):
                denoise = lambda x, g, si: apply_fn(params, x, g, si)  # noqa: E731
                s1 = None if s is None else s[None]
                return sample_fn(denoise, c[None], jax.random.wrap_key_data(kd), s1)[0, ..., 0]
            return jax.vmap(one)(cond, key_data, slice_index)

        self._run = jax.jit(run, in_shardings=(repl, rows, rows, rows), out_shardings=rows)

    def sample(self, cond: np.ndarray, key_data: np.ndarray, slice_index: np.ndarray | None = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Samples every row: cond (N, h, w, C) in [-1, 1], key_data (N, 2) -> (N, h, w) float32."""
        n = cond.shape[0]
        out = np.empty(cond.shape[:3], np.float32)
        start = 0
        while start < n:
            size = self.batch_per_device * len(self.devices)
            idx = np.minimum(np.arange(start, start + size), n - 1)  # pad the last chunk by repetition
            si = None if slice_index is None else jnp.asarray(slice_index[idx], jnp.int32)
            try:
                result = np.asarray(self._run(self.params, jnp.asarray(cond[idx], jnp.float32),
                                              jnp.asarray(key_data[idx]), si))
            except Exception as err:  # XLA reports device OOM as a runtime error
                if not _is_out_of_memory(err):
                    raise
                if self.batch_per_device == 1:
                    raise MemoryError(f"one {cond.shape[1]}x{cond.shape[2]} tile per device does not fit in "
                                      "memory; use a smaller --tile") from err
                self.batch_per_device //= 2
                logging.warning("out of memory at %d rows per call; retrying with %d rows per device",
                                size, self.batch_per_device)
                continue
            real = min(size, n - start)
            out[start:start + real] = result[:real]
            start += real
            if progress is not None:
                progress(start, n)
        return out


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
    """samples (T, K, h, w) -> stitched mean, std (and samples) of an image of `shape`.

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


def predict_image(restorer: Restorer, image: np.ndarray, key: jax.Array, *, num_samples: int = 2,
                  tile: int = 256, overlap: float = 32, harmonize: bool = False, keep_samples: bool = False,
                  upscale: int = 1, name: str = "image", progress=None) -> Prediction:
    """Restores one 2D image in [-1, 1] (any size): denoising (upscale=1) or 2x super-resolution (upscale=2).

    For super-resolution the image is first upsampled bilinearly (half-pixel centres), as in training.
    """
    image = _check_image(image, name)
    _check_samples(num_samples)
    if upscale not in (1, 2):
        raise ValueError(f"upscale must be 1 or 2, got {upscale}")
    start = time.perf_counter()
    cond_image = degrade.upsample2_bilinear(image).astype(np.float32) if upscale == 2 else image
    tiles, origins = tiling.extract_tiles(cond_image[..., None], (tile, tile), overlap)
    t, k = len(tiles), num_samples
    tile_ids, sample_ids = np.repeat(np.arange(t), k), np.tile(np.arange(k), t)
    rows = restorer.sample(tiles[tile_ids], item_keys(key, tile_ids, sample_ids), progress=progress)
    samples = rows.reshape(t, k, tile, tile)
    window = tiling.blend_window((tile, tile), overlap)
    mean, std, stitched = _stitch(samples, tiles[..., 0], origins, cond_image.shape, window, harmonize,
                                  keep_samples)
    return Prediction(mean, std, stitched, t, time.perf_counter() - start)


def predict_between(restorer: Restorer, earlier: np.ndarray, later: np.ndarray, z_factor: int, key: jax.Array,
                    *, num_samples: int = 2, tile: int = 256, overlap: float = 32, harmonize: bool = False,
                    keep_samples: bool = False, name: str = "slices", progress=None) -> Prediction:
    """The z_factor - 1 slices between two neighbouring slices in [-1, 1] (vEMDiffuse-i / -a).

    Condition channel order is [later, earlier] (the reference's); generated slice c (0-based, network
    slice index c) sits at depth (c + 1) / z_factor after `earlier`. Returns mean/std (z_factor-1, H, W).
    """
    earlier, later = _check_image(earlier, f"{name} (earlier)"), _check_image(later, f"{name} (later)")
    if earlier.shape != later.shape:
        raise ValueError(f"{name}: slice shapes differ: {earlier.shape} vs {later.shape}")
    if z_factor < 2:
        raise ValueError(f"z_factor must be >= 2 (slices generated = z_factor - 1), got {z_factor}")
    _check_samples(num_samples)
    start = time.perf_counter()
    tiles, origins = tiling.extract_tiles(np.stack([later, earlier], axis=-1), (tile, tile), overlap)
    t, c, k = len(tiles), z_factor - 1, num_samples
    grid = np.stack(np.meshgrid(np.arange(t), np.arange(c), np.arange(k), indexing="ij"), -1).reshape(-1, 3)
    rows = restorer.sample(tiles[grid[:, 0]], item_keys(key, grid[:, 0], grid[:, 1], grid[:, 2]),
                           slice_index=grid[:, 1], progress=progress)
    samples = rows.reshape(t, c, k, tile, tile)
    window = tiling.blend_window((tile, tile), overlap)
    means, stds, kept = [], [], []
    for j in range(c):
        reference = slice_reference(tiles[..., 1], tiles[..., 0], j, z_factor)   # channels [later, earlier]
        m, s, st = _stitch(samples[:, j], reference, origins, earlier.shape, window, harmonize, keep_samples)
        means.append(m), stds.append(s), kept.append(st)
    stitched = np.stack(kept, axis=1) if keep_samples else None  # (K, z-1, H, W)
    return Prediction(np.stack(means), np.stack(stds), stitched, t, time.perf_counter() - start)

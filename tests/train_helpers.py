"""Shared by the training tests: one tiny training setting and a deterministic stand-in data source.

All tests that train use ``tiny_config`` so that ``train.programs_for`` hands them the same compiled
programs (compiling the step dominates their run time on a CPU).
"""

import numpy as np

from conftest import TINY_UNET
from emdiffuse_jax.data.intensity import Intensity
from emdiffuse_jax.data.normalize import NormParams
from emdiffuse_jax.train_config import VEM_TASKS, apply_tiny, base_config


def tiny_config(task: str = "denoise"):
    """The tiny network of conftest (with dropout) on an 8-device mesh with fsdp 2; no validation."""
    config = apply_tiny(base_config(task))
    vem = task in VEM_TASKS
    config.model = dict(TINY_UNET, dropout=0.1, in_channel=3 if vem else 2, vem=vem)
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 2
    config.optim.grad_clip_norm = 1.0
    # Adam with eps 1e-8 moves a parameter by ~lr whatever its gradient's size, so gradients that are
    # exactly zero in theory (biases right before a GroupNorm) turn rounding noise into +-lr steps; a
    # larger eps keeps such parameters still and lets the tests compare runs tightly.
    config.optim.eps = 1e-4
    config.ema_decay = 0.9
    config.batch_size = 8
    config.mesh.data, config.mesh.fsdp, config.mesh.fsdp_min_size = -1, 2, 1024
    config.num_steps = 6
    config.log_every = 1
    config.checkpoint.every_steps = 2
    config.eval.every_steps = 0
    return config


class StripeSource:
    """Follows the data pipeline's contract (a pure function of seed, step and process) with cheap
    synthetic stripes: a noisy condition and its clean target, or vEM slices around a shifted pattern.
    Its data is already in [-1, 1] float32: its intensity contract is the identity on that range."""

    intensity = Intensity.shared(NormParams("minmax", -1.0, 1.0, np.dtype(np.float32).str))

    def __init__(self, task: str, patch_size: int, z_factor: int | None = None, offset: int = 0, nan_at=None):
        self.task, self.patch, self.z, self.offset, self.nan_at = task, patch_size, z_factor, offset, nan_at

    def batch(self, seed, step, process_index, process_count, global_batch):
        rng = np.random.default_rng([seed, step + self.offset])
        yy, xx = np.mgrid[0:self.patch, 0:self.patch] / self.patch
        phase = rng.uniform(0, 2 * np.pi, (global_batch, 1, 1))
        if self.task in VEM_TASKS:
            slices = [np.sin(8 * xx + phase + 0.3 * k) * np.cos(5 * yy) for k in range(self.z + 1)]
            cond, target = np.stack([slices[-1], slices[0]], -1), np.stack(slices[1:-1], -1)
        else:
            target = (np.sin(8 * xx + phase) * np.cos(5 * yy + phase))[..., None]
            cond = np.clip(target + 0.3 * rng.normal(size=target.shape), -1, 1)
        if self.nan_at is not None and step == self.nan_at:
            cond = np.full_like(cond, np.nan)
        rows = slice(process_index * global_batch // process_count,
                     (process_index + 1) * global_batch // process_count)
        return {"cond": cond[rows].astype(np.float32), "target": target[rows].astype(np.float32)}


def stripe_sources(config, intensity=None, nan_at=None):
    z = config.data.z_factor if config.task in VEM_TASKS else None
    return (StripeSource(config.task, config.data.patch_size, z, nan_at=nan_at),
            StripeSource(config.task, config.data.patch_size, z, offset=10 ** 6))

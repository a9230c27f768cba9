"""Noise schedules and the buffers derived from them (reference section 3.1).

Everything is computed in float64 with NumPy and stored as float32, as the reference does. gamma is the
cumulative product of alpha = 1 - beta (what DDPM papers call alpha-bar).
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

# The schedules every published EMDiffuse config uses.
TRAIN_SCHEDULE = dict(kind="linear", n_timestep=2000, linear_start=1e-6, linear_end=0.01)
TEST_SCHEDULE = dict(kind="linear", n_timestep=1000, linear_start=1e-4, linear_end=0.09)

KINDS = ("linear", "quad", "cosine", "warmup10", "warmup50", "const", "jsd")


def make_betas(kind: str, n_timestep: int, linear_start: float = 1e-6, linear_end: float = 0.01,
               cosine_s: float = 8e-3) -> np.ndarray:
    """beta_1..beta_N as float64."""
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be at least 1, got {n_timestep}")
    n = n_timestep
    if kind == "linear":
        return np.linspace(linear_start, linear_end, n, dtype=np.float64)
    if kind == "quad":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=np.float64) ** 2
    if kind in ("warmup10", "warmup50"):
        warmup = int(n * (0.1 if kind == "warmup10" else 0.5))
        betas = np.full(n, linear_end, dtype=np.float64)
        betas[:warmup] = np.linspace(linear_start, linear_end, warmup, dtype=np.float64)
        return betas
    if kind == "const":
        return np.full(n, linear_end, dtype=np.float64)
    if kind == "jsd":  # 1/N, 1/(N-1), ..., 1
        return 1.0 / np.linspace(n, 1, n, dtype=np.float64)
    if kind == "cosine":
        steps = np.arange(n + 1, dtype=np.float64) / n + cosine_s
        alphas_bar = np.cos(steps / (1 + cosine_s) * np.pi / 2) ** 2
        alphas_bar = alphas_bar / alphas_bar[0]
        return np.minimum(1 - alphas_bar[1:] / alphas_bar[:-1], 0.999)
    raise ValueError(f"unknown schedule kind {kind!r}; choose one of {KINDS}")


class Schedule(NamedTuple):
    """Per-step buffers of one schedule (index i = 0..N-1), float32."""

    betas: jnp.ndarray
    gammas: jnp.ndarray
    gammas_prev: jnp.ndarray
    sqrt_recip_gammas: jnp.ndarray
    sqrt_recipm1_gammas: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray

    @property
    def num_steps(self) -> int:
        return self.gammas.shape[0]


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    gammas = np.cumprod(alphas)
    gammas_prev = np.append(1.0, gammas[:-1])
    # 'jsd' ends with beta = 1, so gamma_N = 0 and 1/gamma is infinite there, as in the reference.
    with np.errstate(divide="ignore"):
        posterior_variance = betas * (1.0 - gammas_prev) / (1.0 - gammas)
        buffers = dict(
            betas=betas,
            gammas=gammas,
            gammas_prev=gammas_prev,
            sqrt_recip_gammas=np.sqrt(1.0 / gammas),
            sqrt_recipm1_gammas=np.sqrt(1.0 / gammas - 1),
            posterior_log_variance_clipped=np.log(np.maximum(posterior_variance, 1e-20)),
            posterior_mean_coef1=betas * np.sqrt(gammas_prev) / (1.0 - gammas),
            posterior_mean_coef2=(1.0 - gammas_prev) * np.sqrt(alphas) / (1.0 - gammas),
        )
    return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in buffers.items()})


def make_schedule(kind: str = "linear", n_timestep: int = 1000, linear_start: float = 1e-4,
                  linear_end: float = 0.09, cosine_s: float = 8e-3) -> Schedule:
    return schedule_from_betas(make_betas(kind, n_timestep, linear_start, linear_end, cosine_s))

"""K-sample inference: mean and pixelwise variance of independent samples (reference 3.7).

Samples are drawn with `vmap` over keys, `chunk` at a time; chunks are merged with the parallel
(Chan et al.) update of mean and sum of squared deviations, so memory holds one chunk of samples,
never all K and never any trajectory.
"""

import jax
import jax.numpy as jnp


def _merge(stats_a, stats_b):
    n_a, mean_a, m2_a = stats_a
    n_b, mean_b, m2_b = stats_b
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta ** 2 * (n_a * n_b / n)
    return n, mean, m2


def ensemble_mean_var(sample_fn, key, num_samples: int, ddof: int = 1, chunk: int | None = None):
    """(mean, var) over `num_samples` draws of `sample_fn(key)`.

    `ddof=1` (default) is the unbiased variance, as the reference's `torch.std`; with a single sample the
    variance is zero (the reference's convention for K = 1). `chunk` bounds how many samples are drawn
    at once (default: all); it must divide `num_samples`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    chunk = num_samples if chunk is None else chunk
    if chunk < 1 or num_samples % chunk:
        raise ValueError(f"chunk ({chunk}) must be a positive divisor of num_samples ({num_samples})")
    keys = jax.random.split(key, num_samples)
    keys = keys.reshape((num_samples // chunk, chunk) + keys.shape[1:])

    def chunk_stats(chunk_keys):
        samples = jax.vmap(sample_fn)(chunk_keys)
        mean = samples.mean(axis=0)
        return jnp.float32(chunk), mean, ((samples - mean) ** 2).sum(axis=0)

    stats = chunk_stats(keys[0])
    if num_samples > chunk:
        stats, _ = jax.lax.scan(lambda acc, k: (_merge(acc, chunk_stats(k)), None), stats, keys[1:])
    n, mean, m2 = stats
    if num_samples == 1:
        return mean, jnp.zeros_like(mean)
    if num_samples - ddof <= 0:
        raise ValueError(f"ddof={ddof} needs more than {ddof} samples, got {num_samples}")
    return mean, m2 / (n - ddof)

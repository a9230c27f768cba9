"""Training loss, DDPM sampler and K-sample ensemble on small networks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emdiffuse_jax.diffusion import objectives
from emdiffuse_jax.diffusion.ensemble import ensemble_mean_var
from emdiffuse_jax.diffusion.samplers import (collect_slices, ddpm_sample, expand_slices, posterior_step)
from emdiffuse_jax.diffusion.schedules import make_schedule
from emdiffuse_jax.models import make_denoise_fn

SCHEDULE = make_schedule("linear", 8, 1e-4, 0.3)


@pytest.fixture(scope="module")
def denoise(tiny_unet, tiny_params):
    return jax.jit(make_denoise_fn(tiny_unet, tiny_params))


@pytest.fixture(scope="module")
def cond():
    return jax.random.uniform(jax.random.key(7), (2, 8, 8, 1), minval=-1, maxval=1)


@pytest.fixture(scope="module")
def sample(denoise, cond):
    """The DDPM sampler on the tiny network, compiled once for the tests of this module."""
    return jax.jit(lambda key: ddpm_sample(denoise, cond, key, SCHEDULE))


def python_loop_ddpm(denoise, cond, key, schedule):
    """The reference's restoration loop written plainly, with the same key usage as the scan."""
    key_init, key_steps = jax.random.split(key)
    y = jax.random.normal(key_init, cond.shape[:-1] + (1,))
    step_keys = jax.random.split(key_steps, schedule.num_steps)
    for j, i in enumerate(range(schedule.num_steps - 1, -1, -1)):
        t = jnp.full((cond.shape[0],), i, jnp.int32)
        mean, log_var, _ = posterior_step(denoise, y, cond, t, schedule)
        noise = jax.random.normal(step_keys[j], y.shape) if i > 0 else jnp.zeros_like(y)
        y = mean + jnp.exp(0.5 * log_var) * noise
    return y


def test_scan_sampler_equals_a_python_loop(denoise, cond, sample):
    key = jax.random.key(11)
    scanned = sample(key)
    looped = python_loop_ddpm(denoise, cond, key, SCHEDULE)
    np.testing.assert_allclose(scanned, looped, atol=2e-5)
    assert scanned.shape == (2, 8, 8, 1)
    assert float(jnp.abs(scanned).max()) <= 1.0 + 1e-6  # last step returns the clamped x0


def test_same_key_same_sample_different_keys_differ(sample):
    a, b = sample(jax.random.key(1)), sample(jax.random.key(1))
    c = sample(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_adjust_moves_the_mean_toward_the_condition(cond):
    # A network predicting zero noise keeps y; with adjust the final brightness follows the condition.
    zero_noise = lambda x, g, s=None: jnp.zeros(x.shape[:-1] + (1,))  # noqa: E731
    bright = jnp.full_like(cond, 0.8)
    plain = ddpm_sample(zero_noise, bright, jax.random.key(3), SCHEDULE)
    adjusted = ddpm_sample(zero_noise, bright, jax.random.key(3), SCHEDULE, adjust=True)
    assert abs(float(adjusted.mean()) - 0.8) < abs(float(plain.mean()) - 0.8)


def test_ensemble_mean_and_variance_equal_numpy_on_the_same_samples(cond):
    # The ensemble's arithmetic does not depend on the network: a cheap analytic one keeps compilation short.
    def denoise(x, gamma, slice_index=None):
        return 0.5 * x[..., -1:] + 0.1 * x[..., :1]

    sample_fn = jax.jit(lambda k: ddpm_sample(denoise, cond, k, SCHEDULE))
    key = jax.random.key(5)
    samples = np.stack([np.asarray(sample_fn(k)) for k in jax.random.split(key, 4)])
    for ddof in (0, 1):
        mean, var = jax.jit(functools.partial(ensemble_mean_var, sample_fn, num_samples=4, ddof=ddof))(key)
        np.testing.assert_allclose(mean, samples.mean(0), atol=1e-5)
        np.testing.assert_allclose(var, samples.var(0, ddof=ddof), atol=1e-5)
    mean_c, var_c = jax.jit(functools.partial(ensemble_mean_var, sample_fn, num_samples=4, chunk=2))(key)
    np.testing.assert_allclose(mean_c, samples.mean(0), atol=1e-5)
    np.testing.assert_allclose(var_c, samples.var(0, ddof=1), atol=1e-5)


def test_ensemble_rejects_bad_sample_counts():
    with pytest.raises(ValueError, match="at least 1"):
        ensemble_mean_var(lambda k: jnp.zeros(2), jax.random.key(0), 0)
    with pytest.raises(ValueError, match="divisor"):
        ensemble_mean_var(lambda k: jnp.zeros(2), jax.random.key(0), 4, chunk=3)
    mean, var = ensemble_mean_var(lambda k: jax.random.normal(k, (3,)), jax.random.key(0), 1)
    np.testing.assert_array_equal(var, 0)


def test_vem_slices_expand_and_collect_in_reference_order():
    cond = jnp.arange(2 * 2 * 2 * 2, dtype=jnp.float32).reshape(2, 2, 2, 2)
    repeated, slice_index = expand_slices(cond, 3)
    assert repeated.shape == (6, 2, 2, 2)
    np.testing.assert_array_equal(slice_index, [0, 0, 1, 1, 2, 2])
    y = slice_index[:, None, None, None] * 10.0 + jnp.arange(6.0)[:, None, None, None] % 2
    out = collect_slices(jnp.broadcast_to(y, (6, 2, 2, 1)), 3)
    assert out.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(out[1, 0, 0], [1, 11, 21])


def test_noise_level_draws_lie_between_adjacent_levels():
    gammas = make_schedule("linear", 50, 1e-3, 0.2).gammas
    g = objectives.sample_noise_levels(jax.random.key(0), 4000, gammas)
    assert float(g.min()) >= float(gammas[-1]) and float(g.max()) <= float(gammas[0])
    assert float(g.max()) > float(gammas[1])  # the interval next to t = 1 is reachable


def test_loss_is_zero_for_an_oracle_and_positive_otherwise():
    y0 = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), minval=-1, maxval=1)
    cond = jnp.zeros_like(y0)
    gammas = make_schedule("linear", 100, 1e-4, 0.02).gammas

    def oracle(x, gamma, slice_index=None):  # recovers the noise from y_noisy and the known y0
        g = gamma[:, None, None, None]
        return (x[..., 1:] - jnp.sqrt(g) * y0) / jnp.sqrt(1 - g)

    assert float(objectives.noise_prediction_loss(oracle, y0, cond, jax.random.key(2), gammas)) < 1e-8
    zero = lambda x, g, s=None: jnp.zeros_like(x[..., :1])  # noqa: E731
    assert float(objectives.noise_prediction_loss(zero, y0, cond, jax.random.key(2), gammas)) == pytest.approx(
        1.0, abs=0.3)


def test_vem_loss_uses_one_drawn_slice_per_sample():
    targets = jnp.broadcast_to(jnp.arange(5.0), (4, 2, 2, 5)) / 5
    seen = []

    def spy(x, gamma, slice_index):
        seen.append(slice_index)
        return jnp.zeros_like(x[..., :1])

    objectives.vem_noise_prediction_loss(spy, targets, jnp.zeros((4, 2, 2, 2)), jax.random.key(0),
                                         make_schedule("linear", 10, 1e-4, 0.02).gammas)
    (slice_index,) = seen
    assert slice_index.shape == (4,) and int(slice_index.min()) >= 0 and int(slice_index.max()) <= 4

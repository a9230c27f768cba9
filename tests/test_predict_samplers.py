"""DDIM and DPM-Solver++: determinism, scan vs a float64 Python loop, convergence on an analytic denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emdiffuse_jax import inference
from emdiffuse_jax.diffusion import samplers, schedules

SPREAD = 0.3  # the toy data: x0 ~ N(cond, SPREAD^2) per pixel


def gaussian_denoise(x, gamma, slice_index):
    """Exact noise prediction E[eps | y] for x0 ~ N(cond, SPREAD^2): the optimal network of this toy."""
    cond, y = x[..., :1], x[..., 1:]
    a = jnp.sqrt(gamma)[:, None, None, None]
    b = jnp.sqrt(1.0 - gamma)[:, None, None, None]
    return b * (y - a * cond) / (a * a * SPREAD**2 + b * b)


def ode_solution(cond, y_start, gammas):
    """Exact probability-flow solution read out as E[x0 | y] at the last level (the standardised value of
    y is invariant along the flow for Gaussian data)."""
    a0, b0 = np.sqrt(gammas[0]), np.sqrt(1 - gammas[0])
    z = (y_start - a0 * cond) / np.sqrt(a0**2 * SPREAD**2 + b0**2)
    a, b = np.sqrt(gammas[-1]), np.sqrt(1 - gammas[-1])
    return cond + a * SPREAD**2 * z / np.sqrt(a**2 * SPREAD**2 + b**2)


@pytest.fixture(scope="module")
def toy():
    cond = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1), minval=-0.3, maxval=0.3)
    key = jax.random.key(0)
    y_start = np.asarray(jax.random.normal(jax.random.split(key)[0], cond.shape), np.float64)
    return cond, key, y_start, schedules.make_schedule(**schedules.TEST_SCHEDULE)


def max_err(sample, cond, y_start, gammas):
    return float(np.abs(np.asarray(sample) - ode_solution(np.asarray(cond), y_start, gammas)).max())


def test_ddim_eta0_is_deterministic_and_depends_on_the_key(toy):
    cond, key, _, sched = toy
    g = samplers.logsnr_gammas(sched, 8)
    run = jax.jit(lambda k: samplers.ddim_sample(gaussian_denoise, cond, k, g, eta=0.0))
    a, b, c = run(key), run(key), run(jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1


def test_ddim_and_dpm_converge_to_the_exact_flow_solution(toy):
    cond, key, y_start, sched = toy
    errs = {}
    for steps in (10, 50):
        g = samplers.logsnr_gammas(sched, steps)
        errs["ddim", steps] = max_err(samplers.ddim_sample(gaussian_denoise, cond, key, g, clip_x0=False),
                                      cond, y_start, g)
        errs["dpm", steps] = max_err(samplers.dpm_solver_sample(gaussian_denoise, cond, key, g, clip_x0=False),
                                     cond, y_start, g)
    assert errs["ddim", 50] < errs["ddim", 10] / 3
    assert errs["dpm", 10] < errs["ddim", 10] / 5  # second order beats first order at equal cost
    assert errs["dpm", 50] < 0.01


def ddim_reference_loop(cond, y, gammas, eta, noises):
    """Plain float64 DDIM, written independently of the sampler module."""
    cond = np.asarray(cond, np.float64)
    eps_of = lambda y, g: np.asarray(  # noqa: E731
        gaussian_denoise(np.concatenate([cond, y], -1), np.full(len(y), g), None), np.float64)
    for i in range(len(gammas) - 1):
        gt, gs = gammas[i], gammas[i + 1]
        eps = eps_of(y, gt)
        x0 = (y - np.sqrt(1 - gt) * eps) / np.sqrt(gt)
        sigma = eta * np.sqrt((1 - gs) / (1 - gt) * (1 - gt / gs))
        y = np.sqrt(gs) * x0 + np.sqrt(1 - gs - sigma**2) * eps + sigma * noises[i]
    g = gammas[-1]
    return (y - np.sqrt(1 - g) * eps_of(y, g)) / np.sqrt(g)


def test_ddim_scan_matches_a_python_loop_with_the_same_noise(toy):
    cond, key, y_start, sched = toy
    g = samplers.respaced_gammas(sched, 12)[3:]  # stay away from gamma ~ 0 for a float32/64 comparison
    _, k_steps = jax.random.split(key)
    noises = [np.asarray(jax.random.normal(k, cond.shape)) for k in jax.random.split(k_steps, len(g) - 1)]
    for eta in (0.0, 0.7):
        got = samplers.ddim_sample(gaussian_denoise, cond, key, g, eta=eta, clip_x0=False)
        want = ddim_reference_loop(cond, y_start, g, eta, noises)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


def test_dpm_scan_matches_a_python_loop(toy):
    cond, key, y_start, sched = toy
    g = samplers.logsnr_gammas(sched, 9)
    c = np.asarray(cond, np.float64)

    def x0_of(y, gam):
        eps = np.asarray(gaussian_denoise(np.concatenate([c, y], -1), np.full(len(y), gam), None), np.float64)
        return (y - np.sqrt(1 - gam) * eps) / np.sqrt(gam)

    lam = lambda gam: 0.5 * np.log(gam / (1 - gam))  # noqa: E731
    y, prev, h_prev = y_start, None, None
    for i in range(len(g) - 1):
        x0 = x0_of(y, g[i])
        h = lam(g[i + 1]) - lam(g[i])
        d = x0 if prev is None else x0 + (x0 - prev) * h / (2 * h_prev)
        y = np.sqrt((1 - g[i + 1]) / (1 - g[i])) * y - np.sqrt(g[i + 1]) * np.expm1(-h) * d
        prev, h_prev = x0, h
    want = x0_of(y, g[-1])
    got = samplers.dpm_solver_sample(gaussian_denoise, cond, key, g, clip_x0=False)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


@pytest.mark.parametrize("name, steps", [("ddpm", 200), ("ddim", 50), ("dpm", 20)])
def test_every_sampler_reproduces_the_data_distribution(toy, name, steps):
    cond, key, _, _ = toy
    sample = inference.make_sample_fn(inference.SamplerSpec(name, steps))
    out = np.asarray(jax.jit(lambda k: sample(gaussian_denoise, cond, k, None))(key))
    residual = out - np.asarray(cond)
    assert out.shape == cond.shape
    assert abs(residual.mean()) < 0.03 and abs(residual.std() - SPREAD) < 0.03


def test_clamped_samples_stay_in_range(toy):
    cond, key, _, sched = toy
    g = samplers.logsnr_gammas(sched, 6)
    for fn in (samplers.ddim_sample, samplers.dpm_solver_sample):
        out = np.asarray(fn(lambda x, gm, s: jnp.zeros_like(x[..., 1:]) - 3.0, cond, key, g))
        assert out.min() >= -1.0 and out.max() <= 1.0


def test_sampler_arguments_are_validated(toy):
    cond, key, _, sched = toy
    with pytest.raises(ValueError, match="increase"):
        samplers.ddim_sample(gaussian_denoise, cond, key, np.array([0.9, 0.1]))
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim_sample(gaussian_denoise, cond, key, np.array([0.1, 0.9]), eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        samplers.respaced_gammas(sched, 1)
    with pytest.raises(ValueError, match="sampler"):
        inference.SamplerSpec("euler")

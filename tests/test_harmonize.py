"""Per-sample brightness harmonisation: low frequencies from what the condition implies, detail kept."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emdiffuse_jax import harmonize, inference
from emdiffuse_jax.diffusion import samplers


def _smooth(h, w):
    yy, xx = np.mgrid[:h, :w]
    return (0.6 * np.sin(yy / 7.0) * np.cos(xx / 11.0)).astype(np.float32)


def test_each_sample_gets_the_references_low_frequencies_and_keeps_its_detail():
    rng = np.random.default_rng(0)
    reference = _smooth(64, 64)
    detail = 0.1 * rng.normal(size=(3, 64, 64)).astype(np.float32)
    ramp = np.linspace(-0.3, 0.3, 64, dtype=np.float32)[None, None, :]
    samples = reference + detail + np.array([0.2, -0.1, 0.05], np.float32)[:, None, None] + ramp
    out = harmonize.match_low_frequencies(samples, reference, sigma=8.0)
    # brightness offsets and the ramp are gone: the three samples now agree on their low frequencies...
    assert np.abs((out - detail) - reference).mean() < 0.02 < np.abs((samples - detail) - reference).mean()
    # ...and each keeps its own fine detail
    for k in range(3):
        assert np.corrcoef((out[k] - reference).ravel(), detail[k].ravel())[0, 1] > 0.95
    with pytest.raises(ValueError, match="sigma must be > 0"):
        harmonize.match_low_frequencies(samples, reference, 0.0)


def test_slice_reference_interpolates_linearly_in_depth():
    earlier, later = np.zeros((4, 4)), np.ones((4, 4))
    refs = [harmonize.slice_reference(earlier, later, c, z_factor=4)[0, 0] for c in range(3)]
    np.testing.assert_allclose(refs, [0.25, 0.5, 0.75])
    with pytest.raises(ValueError, match="generated slices"):
        harmonize.slice_reference(earlier, later, 3, z_factor=4)


def _copy_later_plus_random_brightness(denoise, cond, key, slice_index):
    """A stand-in sampler: the 'later' condition channel plus a random brightness offset per sample."""
    return cond[..., :1] + 0.3 * samplers.normal(key, (cond.shape[0], 1, 1, 1))  # one key or one per row


def test_harmonised_slices_follow_the_interpolated_brightness_per_sample():
    restorer = inference.Restorer(lambda p, x, g, s: x, {}, _copy_later_plus_random_brightness,
                                  batch_per_device=4)
    image = _smooth(40, 40)
    earlier, later = image, image + 0.4
    args = dict(num_samples=3, tile=32, overlap=8)
    plain = inference.predict_between(restorer, earlier, later, 4, jax.random.key(0), **args)
    fixed = inference.predict_between(restorer, earlier, later, 4, jax.random.key(0), harmonize=True, **args)
    assert plain.std.mean() > 0.1                     # samples disagree about brightness only
    np.testing.assert_allclose(fixed.std, 0.0, atol=1e-4)
    for c in range(3):                                 # slice c at depth (c + 1) / 4 between the inputs
        np.testing.assert_allclose(fixed.mean[c], image + 0.4 * (c + 1) / 4, atol=1e-4)

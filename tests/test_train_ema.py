"""The EMA warm-up: valid from the first step, the configured decay once warmed up."""

import jax.numpy as jnp
import numpy as np

from emdiffuse_jax.train_state import ema_decay_at, ema_update


def test_warm_up_follows_min_decay_and_one_plus_s_over_ten_plus_s():
    steps = jnp.arange(0, 200_000, 997)
    got = np.asarray(ema_decay_at(steps, 0.9999))
    s = np.asarray(steps, np.float64)
    np.testing.assert_allclose(got, np.minimum(0.9999, (1 + s) / (10 + s)), rtol=1e-6)
    assert float(ema_decay_at(0, 0.9999)) == np.float32(0.1) and got[-1] == np.float32(0.9999)


def test_after_100_steps_at_decay_0_9999_the_ema_tracks_the_trained_weights_not_the_initial_ones():
    init, final = np.zeros(4), np.ones(4)
    ema_warm = ema_plain = jnp.asarray(init)
    for s in range(100):   # weights moving steadily from init to final
        params = jnp.asarray(init + (s + 1) / 100 * (final - init))
        ema_warm = ema_update(ema_warm, params, ema_decay_at(s, 0.9999))
        ema_plain = ema_update(ema_plain, params, 0.9999)
    warm, plain = np.asarray(ema_warm), np.asarray(ema_plain)
    assert np.abs(warm - final).max() < np.abs(warm - init).max()      # closer to the online weights
    assert np.abs(plain - init).max() < 0.01                            # the reference's EMA: still ~init

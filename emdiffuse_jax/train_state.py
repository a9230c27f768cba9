"""The training state: a pytree of step, online parameters, EMA parameters and optimizer state.

No random keys live here: every step derives its key as fold_in(base_key, step), so a restored state
continues the exact random stream without storing keys in checkpoints.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: number of completed optimizer steps
    params: Any
    ema_params: Any
    opt_state: Any


def create_train_state(params: Any, tx: optax.GradientTransformation, ema_params: Any = None) -> TrainState:
    """Fresh state at step 0; the EMA starts as a copy of the parameters unless given."""
    ema = jax.tree.map(jnp.copy, params) if ema_params is None else ema_params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema,
                      opt_state=tx.init(params))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The EMA decay of the update after optimizer step `step` (0-based): min(decay, (1 + s) / (10 + s)).

    The warm-up keeps the EMA a mean of recent weights from the first step on: the reference's constant
    0.9999 leaves exp(-n / 10^4) of the random initial weights in it after n steps (37 % after 10,000),
    so short runs and fine-tuning predicted with a blend of half-trained and initial weights. With the
    warm-up the initial weights' share after n steps is prod (1 + s) / (10 + s) < 10^-6 by n = 100.
    """
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def ema_update(ema_params: Any, params: Any, decay: jax.Array | float) -> Any:
    """ema <- decay * ema + (1 - decay) * params (after every step, as the reference; `ema_decay_at` gives
    the warmed-up decay)."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)

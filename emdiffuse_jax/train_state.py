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


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params (the reference's update after every step, no warm-up)."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)

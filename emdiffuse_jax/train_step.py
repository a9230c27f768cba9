"""The pure training step: noise-prediction loss, Adam update, EMA update with warm-up (reference sections
3.2-3.3; the warm-up is ours, see train_state.ema_decay_at).

The random key of step s is fold_in(base_key, s), so the stream depends only on the seed and the step
count (never stored, identical after a resume). Optional bfloat16 compute: the float32 master parameters
are cast inside the loss, so gradients, Adam moments and the EMA stay float32.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from emdiffuse_jax.diffusion import objectives
from emdiffuse_jax.train_state import TrainState, ema_decay_at, ema_update


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, gammas: Any, *, vem: bool,
                    ema_decay: float, objective: str = "diffusion", residual: bool = False) -> Callable:
    """Returns ``train_step(state, batch, base_key) -> (state, metrics)``.

    apply_fn: ``apply(params, x, gamma, slice_index=None, dropout_key=None)`` of the UNet.
    gammas: the training schedule's cumulative alphas. batch: {"cond": (B,H,W,Cc), "target": (B,H,W,Ct)}
    in [-1, 1]; for vEM the target holds all z-1 intermediate slices and one is drawn per sample.
    objective: "diffusion" (noise prediction) or "regression" (the baseline: L1 of the direct prediction).
    residual: diffuse the difference to the condition's simple estimate (objectives, "residual").
    metrics: loss, grad_norm, finite (1.0 when loss and gradients are finite).
    """
    if residual and objective != "diffusion":
        raise ValueError("the residual parametrisation applies to the diffusion objective only")
    if objective not in objectives.OBJECTIVES:
        raise ValueError(f"objective must be one of {objectives.OBJECTIVES}, got {objective!r}")
    gammas = jnp.asarray(gammas, jnp.float32)

    def loss_fn(params, batch, loss_key, dropout_key):
        def denoise(x, gamma, slice_index=None):
            return apply_fn(params, x, gamma, slice_index, dropout_key=dropout_key)

        if objective == "regression":
            if vem:
                return objectives.vem_regression_loss(denoise, batch["target"], batch["cond"], loss_key)
            return objectives.regression_loss(denoise, batch["target"], batch["cond"])
        if vem:
            return objectives.vem_noise_prediction_loss(denoise, batch["target"], batch["cond"], loss_key, gammas,
                                                        residual=residual)
        return objectives.noise_prediction_loss(denoise, batch["target"], batch["cond"], loss_key, gammas,
                                                residual=residual)

    def train_step(state: TrainState, batch: dict, base_key: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        loss_key, dropout_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, loss_key, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params,
                                  ema_params=ema_update(state.ema_params, params, ema_decay_at(state.step, ema_decay)),
                                  opt_state=opt_state)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}

    return train_step

"""Optimizer from plain numbers: Adam with a linear warm-up counted in steps and optional clipping.

Fixes the reference's warm-up (per epoch, so its length depended on the data set size, and the learning
rate was exactly zero for the whole first epoch): here step 0 already uses lr / warmup_steps.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """lr * min(1, (step + 1) / warmup_steps); constant lr when warmup_steps <= 0."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)
    return lambda step: learning_rate * jnp.minimum(1.0, (step + 1) / warmup_steps)


def make_optimizer(learning_rate: float = 5e-5, warmup_steps: int = 0, grad_clip_norm: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam (AdamW when weight_decay > 0) on float32 parameters; clip_by_global_norm when > 0."""
    schedule = learning_rate_schedule(learning_rate, warmup_steps)
    if weight_decay > 0:
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    if grad_clip_norm and grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), opt)
    return opt

"""Memory planning before the first call: fewer rows for a lower limit, a clear refusal when one row cannot fit."""

import jax
import numpy as np
import pytest

from emdiffuse_jax import inference, memory, models


def test_plan_takes_the_most_rows_that_fit_and_splits_a_shared_host_between_devices():
    kw = dict(per_row_bytes=100, fixed_bytes=1000, num_devices=4, max_rows_per_device=50, what="one tile",
              advice="use a smaller --tile")
    assert memory.plan_rows(limit=4 * 3000, shared_host=True, **kw).rows_per_device == 20
    assert memory.plan_rows(limit=4 * 1500, shared_host=True, **kw).rows_per_device == 5
    assert memory.plan_rows(limit=3000, shared_host=False, **kw).rows_per_device == 20  # per-device memory
    assert memory.plan_rows(limit=10 ** 9, shared_host=True, **kw).rows_per_device == 50  # no more than needed
    plan = memory.plan_rows(limit=4 * 1500, shared_host=True, **kw)
    assert plan.estimated_bytes == 4 * (1000 + 5 * 100) <= plan.limit_bytes
    with pytest.raises(MemoryError, match="one tile per device needs about .* use a smaller --tile"):
        memory.plan_rows(limit=4 * 1050, shared_host=True, **kw)


def test_attention_dominates_the_analytic_estimate_of_large_tiles(tiny_unet):
    small, large = memory.unet_row_bytes(tiny_unet, 32), memory.unet_row_bytes(tiny_unet, 256)
    # 2 heads at 128 x 128 positions: the scores alone are 2 x 16384^2 float32 (2 GiB), plus their softmax.
    assert large >= 2 * 2 * 16384 ** 2 * 4 and large > 1000 * small


@pytest.fixture(scope="module")
def tiny_restorer_parts(tiny_unet, tiny_params):
    sample_fn = inference.make_sample_fn(inference.SamplerSpec("ddim", 2))
    return models.make_apply_fn(tiny_unet), tiny_params, sample_fn, tiny_unet


def test_restorer_plans_fewer_rows_when_the_limit_is_lowered(tiny_restorer_parts):
    apply, params, sample_fn, unet = tiny_restorer_parts
    roomy = inference.Restorer(apply, params, sample_fn, unet=unet, memory_limit_gb=64.0)
    per_row = memory.unet_row_bytes(unet, 128)
    tight_gb = 8 * (memory.tree_bytes(params) + 3 * per_row) / memory.GB  # ~3 rows per device on 8 devices
    tight = inference.Restorer(apply, params, sample_fn, unet=unet, memory_limit_gb=tight_gb)
    kwargs = dict(tile=128, channels=1, vem=False, total_rows=400, fixed_bytes=0)
    big, small = roomy.plan(**kwargs), tight.plan(**kwargs)
    assert 1 <= small.rows_per_device < big.rows_per_device
    assert small.estimated_bytes <= tight_gb * memory.GB


def test_a_tile_that_cannot_fit_is_refused_before_sampling_with_what_to_change(tiny_restorer_parts):
    apply, params, sample_fn, unet = tiny_restorer_parts
    restorer = inference.Restorer(apply, params, sample_fn, unet=unet, memory_limit_gb=1.0, default_tile=32)
    image = np.zeros((300, 300), np.float32)
    with pytest.raises(MemoryError, match=r"one 256 x 256 tile per device needs about .* GiB .* smaller --tile "
                                          r"\(a multiple of 4; the model was trained on 32 px tiles\)"):
        inference.predict_image(restorer, image, jax.random.key(0), num_samples=2, tile=256)
    assert restorer.last_plan is None  # refused while planning: nothing compiled or run


def test_memory_limit_must_be_positive():
    with pytest.raises(ValueError, match="memory_limit_gb must be positive"):
        memory.limit_bytes(0.0)
    assert memory.limit_bytes(None)[0] <= memory.available_bytes()

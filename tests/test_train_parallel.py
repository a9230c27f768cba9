"""Mesh construction, the size-based sharding rule, batch assembly, and sharded == single-device steps."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from emdiffuse_jax import parallel
from emdiffuse_jax.train import programs_for
from train_helpers import StripeSource, tiny_config


def test_mesh_minus_one_takes_the_remaining_devices_with_auto_axes():
    mesh = parallel.make_mesh(-1, 2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert tuple(mesh.axis_types) == (AxisType.Auto, AxisType.Auto)
    assert dict(parallel.make_mesh(2, -1).shape) == {"data": 2, "fsdp": 4}


@pytest.mark.parametrize("data,fsdp", [(3, -1), (-1, -1), (2, 2), (-1, 0)])
def test_mesh_rejects_axis_sizes_that_do_not_fit_the_devices(data, fsdp):
    with pytest.raises(ValueError, match="mesh"):
        parallel.make_mesh(data, fsdp)


def test_large_arrays_shard_their_largest_divisible_dim_small_ones_replicate():
    assert parallel.leaf_spec((3, 3, 64, 128), 2, 1000) == P(None, None, None, "fsdp")
    assert parallel.leaf_spec((256, 64), 4, 1000) == P("fsdp", None)
    assert parallel.leaf_spec((128,), 2, 1000) == P()             # below the size threshold
    assert parallel.leaf_spec((3, 3, 5, 7), 2, 10) == P()         # nothing divisible by the fsdp size
    assert parallel.leaf_spec((3, 3, 64, 128), 1, 10) == P()      # no fsdp axis


def test_process_local_rows_become_one_global_batch_split_over_all_devices():
    mesh = parallel.make_mesh(4, 2)
    local = {"cond": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = parallel.global_batch(local, parallel.batch_sharding(mesh))
    np.testing.assert_array_equal(np.asarray(batch["cond"]), local["cond"])
    assert {shard.data.shape for shard in batch["cond"].addressable_shards} == {(2, 3)}
    assert parallel.process_row_blocks(parallel.batch_sharding(mesh), 16) == [(0, 16)]   # one process
    with pytest.raises(ValueError, match="divisible"):
        parallel.process_row_blocks(parallel.batch_sharding(mesh), 12)


def _run_steps(mesh, initial_state, batches):
    programs = programs_for(tiny_config(), mesh)
    # From host copies: the step donates its input state, which must not alias the caller's buffers.
    state = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), initial_state, programs.shardings)
    key = jax.device_put(jax.random.key(7), parallel.replicated(mesh))
    metrics = []
    for batch in batches:
        state, m = programs.train_step(state, parallel.global_batch(batch, parallel.batch_sharding(mesh)), key)
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics


def test_sharded_step_equals_single_device_step():
    """Same losses, gradient norms, parameters and EMA (to a small fraction of one Adam step)."""
    batches = [StripeSource("denoise", 32).batch(0, s, 0, 1, 8) for s in range(2)]
    single = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    sharded = parallel.make_mesh(-1, 2)
    initial = programs_for(tiny_config(), sharded).init(jax.random.key(3))
    state_1, metrics_1 = _run_steps(single, initial, batches)
    state_8, metrics_8 = _run_steps(sharded, initial, batches)
    assert any(s.spec != P() for s in jax.tree.leaves(jax.tree.map(lambda a: a.sharding, state_8.params)))
    for m1, m8 in zip(metrics_1, metrics_8):
        np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
        np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    assert int(state_8.step) == int(state_1.step) == 2
    lr = tiny_config().optim.learning_rate
    for tree_8, tree_1 in [(state_8.params, state_1.params), (state_8.ema_params, state_1.ema_params)]:
        for a, b in zip(jax.tree.leaves(tree_8), jax.tree.leaves(tree_1)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0.01 * lr)


def test_distributed_initialisation_is_skipped_off_cluster(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
                 "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.maybe_initialize_distributed("auto") is False
    assert parallel.maybe_initialize_distributed("never") is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")   # a single-host TPU VM
    assert parallel.maybe_initialize_distributed("auto") is False
    with pytest.raises(ValueError, match="distributed mode"):
        parallel.maybe_initialize_distributed("sometimes")

"""Checkpoint retention, exact restore across device layouts, identity checks and the .pth loader path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_UNET, TINY_VEM_UNET, shared_path
from emdiffuse_jax import checkpointing, models, parallel
from emdiffuse_jax.optim import make_optimizer
from emdiffuse_jax.train_state import create_train_state


def _toy_state():
    params = {"conv": {"kernel": jnp.arange(3 * 3 * 8 * 16, dtype=jnp.float32).reshape(3, 3, 8, 16)},
              "bias": jnp.linspace(-1, 1, 16)}
    return create_train_state(params, make_optimizer(1e-3, warmup_steps=3))


def _saved_steps(workdir):
    return sorted(int(p.name) for p in (workdir / checkpointing.CHECKPOINT_DIR).iterdir() if p.name.isdigit())


def test_keeps_the_latest_n_and_the_best_by_validation_metric(tmp_path):
    ckpt = checkpointing.Checkpointer(tmp_path, every_steps=1, keep=2, keep_best=1, best_metric="psnr")
    state = _toy_state()
    for step, psnr in [(1, 20.0), (2, 31.0), (3, 25.0), (4, 24.0), (5, 22.0)]:
        ckpt.save(step, state, {"task": "denoise", "unet": {}, "step": step}, metrics={"psnr": psnr})
    ckpt.close()
    assert _saved_steps(tmp_path) == [2, 4, 5]


def test_interval_policy_decides_which_steps_save(tmp_path):
    ckpt = checkpointing.Checkpointer(tmp_path, every_steps=5)
    assert [s for s in range(1, 16) if ckpt.should_save(s)] == [5, 10, 15]
    ckpt.close()


def test_restore_is_exact_onto_another_device_layout(tmp_path):
    state = _toy_state()
    mesh_8 = parallel.make_mesh(-1, 2)
    sharded = jax.device_put(state, parallel.state_sharding(mesh_8, state, min_size=64))
    assert sharded.params["conv"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    ckpt = checkpointing.Checkpointer(tmp_path, every_steps=1)
    ckpt.save(3, sharded, {"task": "denoise", "unet": {}, "step": 3})
    ckpt.wait()
    mesh_1 = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    abstract = jax.eval_shape(lambda: state)
    restored = ckpt.restore(3, parallel.with_sharding(abstract, parallel.state_sharding(mesh_1, abstract)))
    ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype and len(a.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_identity_mismatch_names_each_difference():
    a = checkpointing.model_identity("denoise", models.unet_config(TINY_UNET))
    b = checkpointing.model_identity("vem_i", models.unet_config(TINY_VEM_UNET))
    diffs = checkpointing.identity_mismatch(a, b)
    assert any("task 'denoise'" in d for d in diffs)
    assert any("model.in_channel 2" in d for d in diffs) and any("model.vem False" in d for d in diffs)
    fine_tune = checkpointing.model_identity("denoise", models.unet_config(dict(TINY_UNET, dropout=0.3)))
    assert checkpointing.identity_mismatch(a, fine_tune) == []


def test_load_model_reads_a_reference_pth_and_infers_its_network_family():
    path = shared_path("golden", "unet3d_tiny_Network.pth")
    unet = {k: v for k, v in TINY_VEM_UNET.items() if k not in ("in_channel", "vem")}
    loaded = checkpointing.load_model(path, unet=unet)
    assert loaded.task == "vem_i" and loaded.meta["task_inferred"]
    assert loaded.unet == models.unet_config(TINY_VEM_UNET)
    assert jax.tree.structure(loaded.params) == jax.tree.structure(models.abstract_params(loaded.unet))
    with pytest.raises(ValueError, match="looks like a vEMDiffuse checkpoint"):
        checkpointing.load_model(path, task="denoise", unet=unet)


def test_load_model_explains_missing_or_foreign_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpointing.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no emdiffuse_jax checkpoint"):
        checkpointing.load_model(tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        checkpointing.load_model(tmp_path, task="deblur")

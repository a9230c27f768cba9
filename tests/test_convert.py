"""Import of published PyTorch checkpoints: exact parity with the reference networks, clear failures."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_UNET, shared_path
from emdiffuse_jax.convert import load_torch_checkpoint, torch_key
from emdiffuse_jax.diffusion.samplers import posterior_step
from emdiffuse_jax.diffusion.schedules import TEST_SCHEDULE, make_schedule
from emdiffuse_jax.models import make_denoise_fn, unet_config
from emdiffuse_jax.torch_checkpoint import CheckpointFormatError


def relative_error(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def golden_unet(name):
    manifest = json.loads(shared_path("golden", "manifest.json").read_text())
    return manifest[name]["unet"]


@pytest.mark.parametrize("name", ["unet2d_tiny", "unet3d_tiny"])
def test_converted_tiny_networks_reproduce_the_reference_output(name):
    unet = golden_unet(name)
    params = load_torch_checkpoint(shared_path("golden", f"{name}_Network.pth"), unet)  # vem inferred
    io = np.load(shared_path("golden", f"{name}_io.npz"))
    vem = "channel_index" in io
    slice_index = jnp.asarray(io["channel_index"], jnp.int32) if vem else None
    out = make_denoise_fn(unet_config(dict(unet, vem=vem)), params)(nhwc(io["x"]), jnp.asarray(io["gammas"]),
                                                                    slice_index)
    assert relative_error(out, io["out"].transpose(0, 2, 3, 1)) <= 1e-5


def test_posterior_step_matches_the_reference():
    unet = golden_unet("unet2d_tiny")
    params = load_torch_checkpoint(shared_path("golden", "unet2d_tiny_Network.pth"), unet)
    golden = np.load(shared_path("golden", "posterior_step_2d.npz"))
    mean, log_var, y0_hat = posterior_step(
        make_denoise_fn(unet, params), nhwc(golden["y_t"]), nhwc(golden["y_cond"]),
        jnp.asarray(golden["t"], jnp.int32), make_schedule(**TEST_SCHEDULE))
    assert relative_error(mean, golden["model_mean"].transpose(0, 2, 3, 1)) <= 1e-5
    # x0 = y_t / sqrt(gamma) - sqrt(1/gamma - 1) * noise amplifies the float32 rounding of the predicted noise
    # by sqrt(1/gamma - 1) (about 290 at t = 500), so the tolerance scales with that factor per sample.
    amplification = np.asarray(make_schedule(**TEST_SCHEDULE).sqrt_recipm1_gammas)[golden["t"]]
    ref_y0 = golden["y0_hat"].transpose(0, 2, 3, 1)
    for i, factor in enumerate(amplification):
        assert relative_error(y0_hat[i], ref_y0[i]) <= 1e-5 * max(1.0, factor)
    np.testing.assert_allclose(np.asarray(log_var).ravel(), golden["log_variance"].ravel(), rtol=1e-6)


def test_key_mapping_examples():
    assert torch_key(("input_blocks_3_1", "qkv", "kernel")) == "denoise_fn.input_blocks.3.1.qkv.weight"
    assert torch_key(("middle_block_0", "out_norm", "scale")) == "denoise_fn.middle_block.0.out_layers.0.weight"
    assert torch_key(("out_conv", "bias")) == "denoise_fn.out.2.bias"
    assert torch_key(("channel_embed", "dense_2", "kernel")) == "denoise_fn.channel_embed.2.weight"


def test_2d_checkpoint_into_a_vem_network_names_the_missing_key():
    path = shared_path("golden", "unet2d_tiny_Network.pth")
    with pytest.raises(ValueError, match=r"missing 4 keys, e\.g\. 'denoise_fn\.channel_embed\.0\.(weight|bias)'.*2D EMDiffuse checkpoint"):
        load_torch_checkpoint(path, dict(TINY_UNET, in_channel=3, vem=True))


def test_vem_checkpoint_into_a_2d_network_reports_unexpected_keys():
    path = shared_path("golden", "unet3d_tiny_Network.pth")
    with pytest.raises(ValueError, match="unexpected keys.*channel_embed"):
        load_torch_checkpoint(path, dict(TINY_UNET, in_channel=3, vem=False))


def test_checkpoint_into_a_network_of_other_width_names_key_and_shapes():
    path = shared_path("golden", "unet2d_tiny_Network.pth")
    with pytest.raises(ValueError, match=r"cond_embed\.0\.(weight|bias).*has shape \(64.*expects \(128"):
        load_torch_checkpoint(path, dict(TINY_UNET, inner_channel=32))


def test_truncated_and_non_checkpoint_files_fail_clearly(tmp_path):
    source = shared_path("golden", "unet2d_tiny_Network.pth")
    truncated = tmp_path / "truncated_Network.pth"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="truncated_Network.pth"):
        load_torch_checkpoint(truncated, TINY_UNET)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="notes.pth"):
        load_torch_checkpoint(text, TINY_UNET)


def test_loading_does_not_modify_the_checkpoint(tmp_path):
    copy = tmp_path / "copy_Network.pth"
    shutil.copy(shared_path("golden", "unet2d_tiny_Network.pth"), copy)
    before = copy.read_bytes()
    load_torch_checkpoint(copy, TINY_UNET)
    assert copy.read_bytes() == before

"""The noise-level and slice-index embeddings stay float32 under a bfloat16 compute dtype."""

import jax.numpy as jnp
import numpy as np

from emdiffuse_jax.models.unet import UNet


def _embeddings(unet, params, gammas, dtype, slice_index=None):
    x = jnp.zeros((len(gammas), 8, 8, unet.in_channel), jnp.float32)
    _, state = UNet(unet, dtype=dtype).apply({"params": params}, x, jnp.asarray(gammas, jnp.float32), slice_index,
                                             capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    return {name: inter[name]["__call__"][0] for name in ("cond_embed", "channel_embed") if name in inter}


def test_bf16_noise_level_embeddings_of_0_9995_and_0_9999_differ(tiny_unet, tiny_params):
    emb = _embeddings(tiny_unet, tiny_params, [0.9995, 0.9999], jnp.bfloat16)["cond_embed"]
    assert emb.dtype == jnp.float32
    assert np.abs(np.asarray(emb[0]) - np.asarray(emb[1])).max() > 1e-5
    # and equal to the float32 network's embedding: the compute dtype does not touch it
    f32 = _embeddings(tiny_unet, tiny_params, [0.9995, 0.9999], jnp.float32)["cond_embed"]
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(f32))


def test_bf16_slice_index_embedding_is_float32(tiny_vem_unet, tiny_vem_params):
    emb = _embeddings(tiny_vem_unet, tiny_vem_params, [0.5, 0.5], jnp.bfloat16, jnp.asarray([1, 2]))
    assert emb["channel_embed"].dtype == jnp.float32
    assert np.abs(np.asarray(emb["channel_embed"][0]) - np.asarray(emb["channel_embed"][1])).max() > 1e-3

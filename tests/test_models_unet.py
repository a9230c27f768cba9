"""The UNet: parameter counts, shapes, input checks, dropout and initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emdiffuse_jax.models import (abstract_params, count_params, init_params, make_apply_fn, make_denoise_fn,
                                  unet_config)

FULL_2D = dict(in_channel=2, out_channel=1, inner_channel=32, channel_mults=[1, 2, 4, 8], attn_res=[16],
               num_head_channels=32, res_blocks=2, dropout=0.2, image_size=256)


def test_full_size_parameter_counts_match_the_reference():
    assert count_params(FULL_2D) == 15_677_345
    assert count_params(dict(FULL_2D, in_channel=3, vem=True)) == 16_615_873


def test_full_size_network_has_attention_only_in_the_middle_block():
    params = abstract_params(FULL_2D)
    attention_blocks = {name for name, block in params.items() if "qkv" in block}
    assert attention_blocks == {"middle_block_1"}
    assert unet_config(FULL_2D).attention_levels == ()


def test_tiny_parameter_counts_match_the_golden_manifest(tiny_unet, tiny_vem_unet):
    assert count_params(tiny_unet) == 345_153
    assert count_params(tiny_vem_unet) == 403_793


def test_output_shape_for_non_square_input(tiny_unet, tiny_params):
    denoise = jax.jit(make_denoise_fn(tiny_unet, tiny_params))
    x = jax.random.normal(jax.random.key(2), (3, 16, 24, 2))
    out = denoise(x, jnp.full((3,), 0.5))
    assert out.shape == (3, 16, 24, 1) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))


def test_vem_network_output_depends_on_slice_index(tiny_vem_unet, tiny_vem_params):
    denoise = jax.jit(make_denoise_fn(tiny_vem_unet, tiny_vem_params))
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    gamma = jnp.full((2,), 0.4)
    a = denoise(x, gamma, jnp.array([0, 0]))
    b = denoise(x, gamma, jnp.array([0, 3]))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1], b[1])


@pytest.mark.parametrize("shape,message", [
    ((1, 16, 16, 3), "expected x of shape"),
    ((1, 16, 18, 2), "multiples of 4"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(tiny_unet, tiny_params, shape, message):
    with pytest.raises(ValueError, match=message):
        make_denoise_fn(tiny_unet, tiny_params)(jnp.zeros(shape), jnp.ones((1,)))


def test_slice_index_required_exactly_for_the_vem_network(tiny_unet, tiny_params, tiny_vem_unet, tiny_vem_params):
    with pytest.raises(ValueError, match="needs slice_index"):
        make_denoise_fn(tiny_vem_unet, tiny_vem_params)(jnp.zeros((1, 8, 8, 3)), jnp.ones((1,)))
    with pytest.raises(ValueError, match="only used by the vEM"):
        make_denoise_fn(tiny_unet, tiny_params)(jnp.zeros((1, 8, 8, 2)), jnp.ones((1,)), jnp.zeros((1,), int))


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown UNet config keys"):
        unet_config(dict(FULL_2D, inner_channels=32))


def test_dropout_only_when_training(tiny_unet, tiny_params):
    # Dropout has no parameters: the tiny network's parameters serve a copy configured with dropout 0.5.
    cfg = unet_config(dict(tiny_unet.__dict__, dropout=0.5))
    params = tiny_params
    apply = jax.jit(make_apply_fn(cfg))
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 2))
    gamma = jnp.full((1,), 0.3)
    np.testing.assert_array_equal(apply(params, x, gamma), apply(params, x, gamma))
    a = apply(params, x, gamma, dropout_key=jax.random.key(5))
    b = apply(params, x, gamma, dropout_key=jax.random.key(6))
    assert not np.allclose(a, b)


def test_kaiming_initialisation_and_optional_zero_init(tiny_unet, tiny_params):
    kernel = tiny_params["out_conv"]["kernel"]  # (3, 3, 16, 1): fan-in 144
    assert float(jnp.std(tiny_params["input_blocks_1_0"]["in_conv"]["kernel"])) == pytest.approx(
        np.sqrt(2 / (9 * 16)), rel=0.15)
    assert float(jnp.abs(kernel).max()) > 0
    small = dict(tiny_unet.__dict__, channel_mults=(1,), attn_res=(), zero_init=True)  # quick to compile
    zero = init_params(unet_config(small), jax.random.key(0))
    assert float(jnp.abs(zero["out_conv"]["kernel"]).max()) == 0
    assert float(jnp.abs(zero["middle_block_1"]["proj_out"]["kernel"]).max()) == 0
    assert float(jnp.abs(zero["input_blocks_1_0"]["out_conv"]["kernel"]).max()) == 0
    assert float(jnp.abs(zero["input_blocks_1_0"]["in_conv"]["kernel"]).max()) > 0


def test_same_key_gives_the_same_parameters(tiny_unet, tiny_params):
    again = init_params(tiny_unet, jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, tiny_params, again)


def test_init_inside_jit_or_eval_shape_gives_the_same_parameters(tiny_unet, tiny_params):
    """init_params draws all kernels at once on the host; traced (inside jit, as a caller may do) it must give
    the same values, and eval_shape the same structure."""
    small = dict(tiny_unet.__dict__, channel_mults=(1,), attn_res=())  # quick to compile
    key = jax.random.key(3)
    eager = init_params(unet_config(small), key)
    traced = jax.jit(lambda k: init_params(unet_config(small), k))(key)
    jax.tree.map(np.testing.assert_array_equal, eager, traced)
    shapes = jax.eval_shape(lambda k: init_params(tiny_unet, k), key)
    assert jax.tree.structure(shapes) == jax.tree.structure(tiny_params)
    other = init_params(unet_config(small), jax.random.key(4))
    assert not np.allclose(eager["out_conv"]["kernel"], other["out_conv"]["kernel"])

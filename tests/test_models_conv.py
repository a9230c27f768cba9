"""conv2d (custom kernel gradient on CPU) against XLA's plain convolution and its autodiff gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emdiffuse_jax.models import conv


def _plain_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


CASES = [  # (batch, height, width, in channels, out channels, kernel size)
    (1, 5, 7, 3, 4, 3),
    (3, 5, 7, 3, 4, 3),
    (3, 7, 5, 4, 2, 1),
    (1, 6, 6, 2, 5, 1),
    (2, 9, 4, 6, 3, 3),
]


def _loss_fns(cotangent):
    custom = lambda x, k: jnp.sum(conv.conv2d(x, k) * cotangent)
    plain = lambda x, k: jnp.sum(_plain_conv(x, k) * cotangent)
    return custom, plain


@pytest.mark.parametrize("batch,height,width,cin,cout,ksize", CASES)
def test_conv2d_values_and_gradients_match_plain_conv_under_jit(batch, height, width, cin, cout, ksize):
    x = _random((batch, height, width, cin), 0)
    kernel = _random((ksize, ksize, cin, cout), 1)
    cotangent = _random((batch, height, width, cout), 2)
    custom, plain = _loss_fns(cotangent)

    out = jax.jit(conv.conv2d)(x, kernel)
    assert out.shape == (batch, height, width, cout)
    assert _relative_error(out, _plain_conv(x, kernel)) < 1e-6

    dx, dk = jax.jit(jax.grad(custom, argnums=(0, 1)))(x, kernel)
    dx_ref, dk_ref = jax.jit(jax.grad(plain, argnums=(0, 1)))(x, kernel)
    assert _relative_error(dx, dx_ref) < 1e-5
    assert _relative_error(dk, dk_ref) < 1e-5


@pytest.mark.parametrize("rows_per_chunk", [1, 2, 3, 4, 16])
def test_kernel_gradient_is_independent_of_row_chunking(rows_per_chunk):
    # Height 7 is not a multiple of most chunk sizes, so the zero-padded last chunk is exercised.
    x = _random((2, 7, 6, 3), 3)
    g = _random((2, 7, 6, 4), 4)
    _, vjp = jax.vjp(lambda k: _plain_conv(x, k), jnp.zeros((3, 3, 3, 4)))
    (expected,) = vjp(g)
    got = jax.jit(conv.kernel_gradient, static_argnums=(2, 3))(x, g, (3, 3, 3, 4), rows_per_chunk)
    assert _relative_error(got, expected) < 1e-5


def test_conv2d_gradient_under_vmap_matches_plain_conv():
    xs = _random((2, 3, 5, 7, 3), 5)
    kernels = _random((2, 3, 3, 3, 4), 6)
    cotangent = _random((2, 3, 5, 7, 4), 7)

    def per_example(fn):
        return lambda x, k, c: jax.grad(lambda x_, k_: jnp.sum(fn(x_, k_) * c), argnums=(0, 1))(x, k)

    got = jax.jit(jax.vmap(per_example(conv.conv2d)))(xs, kernels, cotangent)
    expected = jax.vmap(per_example(_plain_conv))(xs, kernels, cotangent)
    for a, b in zip(got, expected):
        assert _relative_error(a, b) < 1e-5


def test_conv2d_casts_kernel_to_input_dtype():
    x = _random((1, 5, 7, 3), 8)
    kernel = _random((3, 3, 3, 2), 9).astype(jnp.bfloat16)
    assert conv.conv2d(x, kernel).dtype == jnp.float32


def test_conv2d_takes_fast_path_only_on_cpu():
    x = _random((1, 5, 7, 3), 10)
    on_cpu = jax.default_backend() == "cpu"
    jaxpr_3x3 = str(jax.make_jaxpr(conv.conv2d)(x, _random((3, 3, 3, 2), 11)))
    assert ("custom_vjp_call" in jaxpr_3x3) == on_cpu
    jaxpr_1x1 = str(jax.make_jaxpr(conv.conv2d)(x, _random((1, 1, 3, 2), 12)))
    assert ("conv_general_dilated" not in jaxpr_1x1) == on_cpu


def test_plain_xla_convolutions_context_disables_fast_path_while_active():
    x = _random((1, 5, 7, 3), 13)
    kernel = _random((3, 3, 3, 2), 14)
    with conv.plain_xla_convolutions():
        inside = str(jax.make_jaxpr(lambda a, b: conv.conv2d(a, b))(x, kernel))
    after = str(jax.make_jaxpr(lambda a, b: conv.conv2d(a, b))(x, kernel))
    assert "custom_vjp_call" not in inside
    assert ("custom_vjp_call" in after) == (jax.default_backend() == "cpu")

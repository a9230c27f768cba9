"""The 2D convolution every UNet layer uses (stride 1, 'SAME' padding, NHWC / HWIO).

Kept as one function so that its gradient can be specialised for speed in a single place.
"""

import jax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' convolution of x (B, H, W, I) with kernel (kh, kw, I, O)."""
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1), padding="SAME",
        dimension_numbers=_DIMENSION_NUMBERS)

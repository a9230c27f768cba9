"""The 2D convolution every UNet layer uses (stride 1, 'SAME' padding, NHWC / HWIO).

Kept as one function so that its gradient can be specialised for speed in a single place.

CPU fast path (measured on the 2-core development machine, jax 0.10; see bench/bench_conv.py):
- 1x1 kernels are one matrix product over all pixels: forward + backward 2-3x faster than XLA:CPU's
  1x1 convolution.
- kxk kernels keep XLA's convolution for the forward pass and the input gradient (as fast as PyTorch),
  but get a custom kernel (weight) gradient: kh*kw shifted matrix products contracting over all pixels,
  accumulated over chunks of image rows so the shifted copies stay small. XLA instead lowers it to a
  whole-image-window convolution over transposed (channel-major) activations; in isolation that is
  about as fast, but inside the full UNet training step it and its transposes took about 2.5x the
  time of the shifted products (profiler), and the whole step used about 10 % less CPU time with
  both changes.
On GPU/TPU the vendor convolution libraries handle all of this well, so the plain XLA path is kept there;
the choice is made when the function is traced (`jax.default_backend()`).
"""

import contextlib

import jax
import jax.numpy as jnp

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# Rows of the image handled per step of the kernel-gradient loop. Bounds the temporary shifted copies
# to about kh*kw*B*rows*W*C floats instead of kh*kw full activations.
_ROWS_PER_CHUNK = 16


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' convolution of x (B, H, W, I) with kernel (kh, kw, I, O)."""
    kernel = kernel.astype(x.dtype)
    if not use_cpu_fast_path():
        return plain_conv2d(x, kernel)
    if kernel.shape[:2] == (1, 1):
        return _pointwise_conv2d(x, kernel)
    return _conv2d_cpu(x, kernel)


_force_plain = False


def use_cpu_fast_path() -> bool:
    """Whether conv2d traced now takes the CPU-specialised path (CPU backend, not forced plain)."""
    return jax.default_backend() == "cpu" and not _force_plain


@contextlib.contextmanager
def plain_xla_convolutions():
    """Functions traced inside this context use XLA's plain convolution everywhere (for A/B benchmarks).

    Only tracing inside the context is affected: wrap a fresh `jax.jit` there, since JAX reuses cached
    traces of a function it has already seen.
    """
    global _force_plain
    previous, _force_plain = _force_plain, True
    try:
        yield
    finally:
        _force_plain = previous


def _pointwise_conv2d(x, kernel):
    """A 1x1 convolution as one matrix product over all pixels (2-3x faster than XLA:CPU's 1x1
    convolution for forward + backward, and autodiff then gives matrix products as well)."""
    flat = x.reshape(-1, x.shape[-1]) @ kernel[0, 0]
    return flat.reshape(x.shape[:-1] + kernel.shape[-1:])


def plain_conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's convolution with XLA's own gradients (the reference for tests and benchmarks)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME", dimension_numbers=_DIMENSION_NUMBERS)


@jax.custom_vjp
def _conv2d_cpu(x, kernel):
    return plain_conv2d(x, kernel)


def _conv2d_cpu_fwd(x, kernel):
    return plain_conv2d(x, kernel), (x, kernel)


def _conv2d_cpu_bwd(residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: plain_conv2d(x_, kernel), x)
    (dx,) = input_vjp(g)
    return dx, kernel_gradient(x, g, kernel.shape)


_conv2d_cpu.defvjp(_conv2d_cpu_fwd, _conv2d_cpu_bwd)


def _same_pads(k: int) -> tuple[int, int]:
    """(low, high) padding of a 'SAME' stride-1 convolution with a window of k."""
    low = (k - 1) // 2
    return low, k - 1 - low


def kernel_gradient(x: jax.Array, g: jax.Array, kernel_shape, rows_per_chunk: int = _ROWS_PER_CHUNK):
    """d(sum(conv2d(x, k) * g)) / dk as shifted matrix products, summed over chunks of image rows.

    dk[a, b, i, o] = sum over pixels p of x_padded[p + (a, b), i] * g[p, o]. The loop over row chunks
    (lax.scan) keeps the shifted copies small; the per-tap products contract over B*rows*W pixels.
    """
    kh, kw, cin, cout = kernel_shape
    batch, height, width, _ = x.shape
    rows = min(rows_per_chunk, height)
    chunks = -(-height // rows)
    extra = chunks * rows - height  # zero rows of g past the image contribute nothing
    (top, bottom), (left, right) = _same_pads(kh), _same_pads(kw)
    x_pad = jnp.pad(x, ((0, 0), (top, bottom + extra), (left, right), (0, 0)))
    g_pad = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0)))

    def add_chunk(acc, start):
        xs = jax.lax.dynamic_slice_in_dim(x_pad, start, rows + kh - 1, axis=1)
        gs = jax.lax.dynamic_slice_in_dim(g_pad, start, rows, axis=1).reshape(-1, cout)
        taps = [xs[:, a:a + rows, b:b + width, :].reshape(-1, cin).T @ gs
                for a in range(kh) for b in range(kw)]
        return acc + jnp.stack(taps), None

    init = jnp.zeros((kh * kw, cin, cout), x.dtype)
    acc, _ = jax.lax.scan(add_chunk, init, jnp.arange(chunks) * rows)
    return acc.reshape(kernel_shape)

"""Benchmark conv2d's custom CPU kernel gradient against XLA's plain convolution gradient.

For UNet-like layer shapes, times forward + backward (gradients for input and kernel) of each path,
interleaving the two in one process so that a loaded machine affects both alike, and reports medians
of wall-clock and process CPU time. Peak memory (ru_maxrss) is measured per path in a fresh
subprocess. Prints one table row per shape. With --unet_step it adds a row for the whole EMDiffuse-n
training step (loss, gradients and an Adam update at --unet_size), where XLA's plain convolutions are
selected with `conv.plain_xla_convolutions()`.

    python bench/bench_conv.py --batch=4 --repeats=5
    python bench/bench_conv.py --shapes= --unet_step --batch=4 --repeats=3   # minutes per step on 2 cores
"""

import os
import resource
import subprocess
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emdiffuse_jax import models
from emdiffuse_jax.diffusion import objectives, schedules
from emdiffuse_jax.models import conv

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 4, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per path (medians are reported).")
flags.DEFINE_list("shapes", [
    "256x2x32x3", "256x32x32x3", "256x96x32x3", "256x32x1x3", "128x64x64x3", "128x192x64x3",
    "64x128x128x3", "64x384x128x3", "32x256x256x3", "32x512x256x3", "128x96x64x1", "32x256x768x1",
], "Layer shapes as SIZExCINxCOUTxK (square SIZE x SIZE images, K x K kernels).")
flags.DEFINE_bool("unet_step", False, "Also time the whole EMDiffuse-n training step.")
flags.DEFINE_integer("unet_size", 256, "Image size of the whole-step benchmark.")
flags.DEFINE_bool("memory", True, "Also measure peak memory of each path in a fresh subprocess.")
flags.DEFINE_string("worker", None, "Internal: PATH:SHAPE, run one path once and print ru_maxrss.")

PATHS = {"plain": conv.plain_conv2d, "custom": conv.conv2d}


def _parse(shape):
    size, cin, cout, k = (int(v) for v in shape.split("x"))
    return size, cin, cout, k


UNET = "unet"


def _make_unet_step(path, batch, size):
    """The full-size UNet's jitted training step (dropout on, Adam) and its inputs."""
    cfg = models.UNetConfig()
    params = models.init_params(cfg, jax.random.key(0))
    apply = models.make_apply_fn(cfg)
    gammas = schedules.make_schedule(**schedules.TRAIN_SCHEDULE).gammas
    optimizer = optax.adam(5e-5)
    images = jax.random.uniform(jax.random.key(1), (2, batch, size, size, 1), minval=-1.0, maxval=1.0)

    def train_step(params, opt_state, cond, y0, key):
        dropout_key, loss_key = jax.random.split(key)
        loss_fn = lambda p: objectives.noise_prediction_loss(
            lambda x, g, s: apply(p, x, g, s, dropout_key=dropout_key), y0, cond, loss_key, gammas)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), opt_state

    args = (params, optimizer.init(params), images[0], images[1], jax.random.key(2))
    if path == "plain":
        with conv.plain_xla_convolutions():
            return jax.jit(train_step).lower(*args).compile(), args
    return jax.jit(train_step).lower(*args).compile(), args


def _make_step(path, batch, shape):
    """A jitted forward + backward of sum(conv(x, k) * cotangent) and its inputs."""
    if shape == UNET:
        return _make_unet_step(path, batch, FLAGS.unet_size)
    size, cin, cout, k = _parse(shape)
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, size, size, cin))
    kernel = jax.random.normal(keys[1], (k, k, cin, cout)) * (k * k * cin) ** -0.5
    cotangent = jax.random.normal(keys[2], (batch, size, size, cout))
    fn = PATHS[path]
    loss = lambda x_, k_, c_: jnp.sum(fn(x_, k_) * c_)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (x, kernel, cotangent)


def _timed(step, args):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(step(*args))
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def _peak_memory_gb(path, shape):
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={path}:{shape}",
           f"--batch={FLAGS.batch}", f"--unet_size={FLAGS.unet_size}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def _worker():
    path, shape = FLAGS.worker.split(":")
    step, args = _make_step(path, FLAGS.batch, shape)
    jax.block_until_ready(step(*args))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB -> GiB


def main(argv):
    del argv
    if FLAGS.worker:
        _worker()
        return
    print(f"backend {jax.default_backend()}, batch {FLAGS.batch}, medians of {FLAGS.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}; CPU fast path active: "
          f"{conv.use_cpu_fast_path()}")
    header = (f"{'shape (size x cin x cout x k)':>30} | {'plain ms':>9} {'custom ms':>9} {'ratio':>6} | "
              f"{'plain cpu':>9} {'custom cpu':>10} {'ratio':>6} | {'plain GB':>8} {'custom GB':>9}")
    print(header)
    print("-" * len(header))
    for shape in FLAGS.shapes + ([UNET] if FLAGS.unet_step else []):
        steps = {p: _make_step(p, FLAGS.batch, shape) for p in PATHS}
        for step, args in steps.values():
            jax.block_until_ready(step(*args))  # compile
        times = {p: [] for p in PATHS}
        for _ in range(FLAGS.repeats):
            for p, (step, args) in steps.items():
                times[p].append(_timed(step, args))
        wall = {p: 1e3 * float(np.median([t[0] for t in ts])) for p, ts in times.items()}
        cpu = {p: 1e3 * float(np.median([t[1] for t in ts])) for p, ts in times.items()}
        mem = ({p: _peak_memory_gb(p, shape) for p in PATHS} if FLAGS.memory
               else {p: float("nan") for p in PATHS})
        label = f"UNet step {FLAGS.unet_size}x{FLAGS.unet_size}" if shape == UNET else shape
        print(f"{label:>30} | {wall['plain']:9.1f} {wall['custom']:9.1f} "
              f"{wall['plain'] / wall['custom']:6.2f} | {cpu['plain']:9.1f} {cpu['custom']:10.1f} "
              f"{cpu['plain'] / cpu['custom']:6.2f} | {mem['plain']:8.2f} {mem['custom']:9.2f}",
              flush=True)


if __name__ == "__main__":
    app.run(main)

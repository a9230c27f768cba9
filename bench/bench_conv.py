"""Benchmark conv2d's custom CPU kernel gradient against XLA's plain convolution gradient.

For UNet-like layer shapes, times forward + backward (gradients for input and kernel) of each path,
interleaving the two in one process so that a loaded machine affects both alike, and reports medians
of wall-clock and process CPU time. Peak memory (ru_maxrss) is measured per path in a fresh
subprocess. Prints one table row per shape.

    python bench/bench_conv.py --batch=4 --repeats=5
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

from emdiffuse_jax.models import conv

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 4, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per path (medians are reported).")
flags.DEFINE_list("shapes", [
    "256x2x32x3", "256x32x32x3", "256x96x32x3", "256x32x1x3", "128x64x64x3", "128x192x64x3",
    "64x128x128x3", "64x384x128x3", "32x256x256x3", "32x512x256x3", "128x96x64x1", "32x256x768x1",
], "Layer shapes as SIZExCINxCOUTxK (square SIZE x SIZE images, K x K kernels).")
flags.DEFINE_bool("memory", True, "Also measure peak memory of each path in a fresh subprocess.")
flags.DEFINE_string("worker", None, "Internal: PATH:SHAPE, run one path once and print ru_maxrss.")

PATHS = {"plain": conv.plain_conv2d, "custom": conv.conv2d}


def _parse(shape):
    size, cin, cout, k = (int(v) for v in shape.split("x"))
    return size, cin, cout, k


def _make_step(path, batch, shape):
    """A jitted forward + backward of sum(conv(x, k) * cotangent) and its inputs."""
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
           f"--batch={FLAGS.batch}"]
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
    for shape in FLAGS.shapes:
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
        print(f"{shape:>30} | {wall['plain']:9.1f} {wall['custom']:9.1f} "
              f"{wall['plain'] / wall['custom']:6.2f} | {cpu['plain']:9.1f} {cpu['custom']:10.1f} "
              f"{cpu['plain'] / cpu['custom']:6.2f} | {mem['plain']:8.2f} {mem['custom']:9.2f}",
              flush=True)


if __name__ == "__main__":
    app.run(main)

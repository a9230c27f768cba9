"""Prediction benchmark for the full EMDiffuse-n network (15.68 M parameters, float32, random weights).

Prints (1) the time per network evaluation of 256 x 256 tiles at batch 1, 4 and 8 (one jitted forward over
all local devices; medians after compilation) and (2) the wall time per 1024 x 1024 image at K samples for
every sampler at its default steps. (2) is an estimate: network evaluations (tiles x K x steps) times the
best measured per-tile evaluation time, because a DDPM run of one such image takes hours on a CPU;
--measure_steps=N additionally runs the real tiled sampler (dpm, N steps) on one 1024 x 1024 image and
prints its per-evaluation time, which checks that the estimate has no hidden sampler overhead.
To compare with the published PyTorch code, use bench/compare.py (both timed side by side in one run).

    python bench/bench_predict.py [--batches=1,4,8] [--repeats=3] [--num_samples=2] [--measure_steps=0]
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_BATCHES = flags.DEFINE_list("batches", ["1", "4", "8"], "Batch sizes of the forward timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed forwards per batch size (median reported).")
_SIZE = flags.DEFINE_integer("size", 256, "Tile size.")
_IMAGE = flags.DEFINE_integer("image", 1024, "Image side for the per-image estimate.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2, "Samples K per image.")
_OVERLAP = flags.DEFINE_integer("overlap", 32, "Tile overlap (pixels).")
_MEASURE = flags.DEFINE_integer("measure_steps", 0, "If > 0: run dpm with this many steps on one image.")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emdiffuse_jax import inference, models, parallel
    from emdiffuse_jax.data import tiling

    unet = models.unet_config({})
    params = jax.jit(lambda k: models.init_params(unet, k))(jax.random.key(0))
    apply = models.make_apply_fn(unet)
    mesh = parallel.make_mesh(devices=jax.local_devices())
    rows, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    params = jax.device_put(params, repl)
    forward = jax.jit(lambda p, x, g: apply(p, x, g), in_shardings=(repl, rows, rows), out_shardings=rows)
    print(f"JAX {jax.__version__}, {len(jax.local_devices())} x {jax.local_devices()[0].platform}, "
          f"{models.count_params(unet):,} parameters, {_SIZE.value} x {_SIZE.value} tiles, float32")
    print(f"{'batch':>5} {'compile s':>10} {'s / forward':>12} {'s / tile':>9}")
    per_tile = {}
    for batch in (int(b) for b in _BATCHES.value):
        if batch % len(jax.local_devices()):
            print(f"{batch:>5} skipped: not a multiple of the {len(jax.local_devices())} devices")
            continue
        x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, _SIZE.value, _SIZE.value, 2)), jnp.float32)
        g = jnp.full((batch,), 0.5, jnp.float32)
        t0 = time.perf_counter()
        forward(params, x, g).block_until_ready()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(_REPEATS.value):
            t0 = time.perf_counter()
            forward(params, x, g).block_until_ready()
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        per_tile[batch] = med / batch
        print(f"{batch:>5} {compile_s:>10.1f} {med:>12.2f} {med / batch:>9.2f}")
    best_batch = min(per_tile, key=per_tile.get)
    n_tiles = len(tiling.tile_origins((_IMAGE.value,) * 2, (_SIZE.value,) * 2, _OVERLAP.value))
    print(f"\n{_IMAGE.value} x {_IMAGE.value} image: {n_tiles} tiles (overlap {_OVERLAP.value}), K = "
          f"{_NUM_SAMPLES.value}; ESTIMATE = evaluations x {per_tile[best_batch]:.2f} s (batch {best_batch})")
    print(f"{'sampler':>8} {'steps':>6} {'evaluations':>12} {'est. wall':>12}")
    for name in inference.SAMPLERS:
        steps = inference.DEFAULT_STEPS[name]
        evals = n_tiles * _NUM_SAMPLES.value * steps
        seconds = evals * per_tile[best_batch]
        print(f"{name:>8} {steps:>6} {evals:>12,} {seconds / 60:>9.1f} min")
    if _MEASURE.value > 0:
        spec = inference.SamplerSpec("dpm", _MEASURE.value)
        rows_total = n_tiles * _NUM_SAMPLES.value
        restorer = inference.Restorer(apply, params, inference.make_sample_fn(spec),
                                      batch_per_device=max(1, min(best_batch, rows_total // len(jax.local_devices()))))
        image = np.zeros((_IMAGE.value, _IMAGE.value), np.float32)
        t0 = time.perf_counter()
        pred = inference.predict_image(restorer, image, jax.random.key(0), num_samples=_NUM_SAMPLES.value,
                                       tile=_SIZE.value, overlap=_OVERLAP.value)
        wall = time.perf_counter() - t0
        evals = pred.num_tiles * _NUM_SAMPLES.value * _MEASURE.value
        print(f"\nmeasured: dpm {_MEASURE.value} steps, whole image {wall:.1f} s including compilation, "
              f"{wall / evals:.2f} s per tile evaluation")


if __name__ == "__main__":
    app.run(main)

"""Train-step benchmark: time per step, compile time and peak memory of one sharded training step.

Default: the full EMDiffuse-n network, global batch 4, 256 x 256 patches, float32, random data, all local
devices on the data axis. Takes minutes on a CPU. To compare with the published PyTorch code, use
bench/compare.py (both timed side by side in one run).

    python bench/bench_train_step.py [--config=emdiffuse_n] [--batch=4] [--size=256] [--steps=3]
"""

import importlib.util
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "emdiffuse_n", "config file name under configs/ (optionally :tiny)")
_BATCH = flags.DEFINE_integer("batch", 4, "global batch size")
_SIZE = flags.DEFINE_integer("size", 256, "patch size (pixels)")
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps after compilation")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")


def _load_config(spec: str):
    name, _, variant = spec.partition(":")
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"bench_config_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # ru_maxrss is KiB on Linux


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emdiffuse_jax import models, parallel
    from emdiffuse_jax.diffusion import schedules
    from emdiffuse_jax.optim import make_optimizer
    from emdiffuse_jax.train_config import VEM_TASKS
    from emdiffuse_jax.train_state import create_train_state
    from emdiffuse_jax.train_step import make_train_step

    config = _load_config(_CONFIG.value)
    unet = models.unet_config(config.model.to_dict())
    tx = make_optimizer(**config.optim.to_dict())
    mesh = parallel.make_mesh(-1, 1)
    vem = config.task in VEM_TASKS
    rss_start = _peak_rss_gib()

    t0 = time.perf_counter()
    abstract = jax.eval_shape(lambda k: create_train_state(models.init_params(unet, k), tx), jax.random.key(0))
    shardings = parallel.state_sharding(mesh, abstract, config.mesh.fsdp_min_size)
    state = jax.jit(lambda k: create_train_state(models.init_params(unet, k), tx),
                    out_shardings=shardings)(jax.random.key(0))
    jax.block_until_ready(state)
    t_init = time.perf_counter() - t0

    b, s = _BATCH.value, _SIZE.value
    cond_ch = 2 if vem else 1
    target_ch = config.data.z_factor - 1 if vem else 1
    rng = np.random.default_rng(0)
    batch = {"cond": rng.uniform(-1, 1, (b, s, s, cond_ch)).astype(np.float32),
             "target": rng.uniform(-1, 1, (b, s, s, target_ch)).astype(np.float32)}
    batch = parallel.global_batch(batch, parallel.batch_sharding(mesh))
    gammas = schedules.make_schedule(**config.diffusion.train_schedule).gammas
    apply_fn = models.make_apply_fn(unet, jnp.dtype(_DTYPE.value))
    step_fn = make_train_step(apply_fn, tx, gammas, vem=vem, ema_decay=config.ema_decay)
    key = jax.device_put(jax.random.key(1), parallel.replicated(mesh))
    jitted = parallel.jit_train_step(step_fn, mesh, shardings)

    t0 = time.perf_counter()
    compiled = jitted.lower(state, batch, key).compile()
    t_compile = time.perf_counter() - t0

    times = []
    for _ in range(_STEPS.value + 1):      # the first call is a warm-up
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    steady = times[1:]
    rows = [
        ("config", f"{_CONFIG.value} ({models.count_params(unet):,} params)"),
        ("devices", f"{mesh.devices.size} x {jax.devices()[0].platform} ({jax.devices()[0].device_kind})"),
        ("batch x size", f"{b} x {s} x {s}, {_DTYPE.value}"),
        ("init (jit)", f"{t_init:.1f} s"),
        ("compile", f"{t_compile:.1f} s"),
        ("first step", f"{times[0]:.2f} s"),
        ("step median", f"{float(np.median(steady)):.2f} s  (min {min(steady):.2f}, n={len(steady)})"),
        ("images / s", f"{b / float(np.median(steady)):.3f}"),
        ("peak RSS", f"{_peak_rss_gib():.2f} GiB (at start {rss_start:.2f} GiB)"),
        ("loss", f"{float(metrics['loss']):.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    app.run(main)

"""Quality of the fast samplers against the reference DDPM on real FIB-SEM data (a tiny model trained here).

1. Trains the tiny EMDiffuse-n config (configs/emdiffuse_n.py:tiny settings, the training library's step,
   optimizer and EMA) on a clean EM stack whose noisy inputs are made by the data layer's default
   denoising degradation (Poisson-Gaussian, dose 20) - no real noisy/clean pairs exist here. The EMA
   weights are saved to --workdir/ema_params.npz and reused when present (delete the folder to retrain).
2. Draws held-out patches (the pipeline's validation images, never seen in training) with the same
   degradation, and restores them with DDPM (1000 steps) and DDIM / DPM-Solver++ at 10, 20 and 50 steps,
   all with the same K samples per patch (results are cached in --workdir/quality_results.json).
3. Prints a Markdown table: PSNR and SSIM of the K-sample mean against the clean patch, network evaluations,
   and the difference to DDPM.

    python bench/quality_table.py --data=PATH/fibsem-medulla-250.tif --workdir=/tmp/q [--train_steps=2000]
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_DATA = flags.DEFINE_string("data", None, "Clean EM stack (e.g. the shared fibsem-medulla-250.tif).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the trained weights (reused when present).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 2000, "Training steps of the tiny model.")
_PATCHES = flags.DEFINE_integer("patches", 16, "Held-out patches.")
_PATCH = flags.DEFINE_integer("patch", 64, "Held-out patch size.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2, "Samples K per patch (same for every sampler).")
_FAST_STEPS = flags.DEFINE_list("fast_steps", ["10", "20", "50"], "Steps of DDIM and DPM-Solver++.")
_DDPM_STEPS = flags.DEFINE_integer("ddpm_steps", 1000, "Steps of the reference DDPM.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["data", "workdir"])


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emdiffuse_jax import evaluation, inference, models, optim, train_config
    from emdiffuse_jax.data.pipeline import build_train_source
    from emdiffuse_jax.diffusion import schedules
    from emdiffuse_jax.train_state import create_train_state
    from emdiffuse_jax.train_step import make_train_step

    config = train_config.base_config("denoise")
    train_config.apply_tiny(config)
    unet = models.unet_config(config.model.to_dict())
    weights = pathlib.Path(_WORKDIR.value) / "ema_params.npz"
    if weights.exists():
        flat = dict(np.load(weights))
        params = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(models.abstract_params(unet)), [flat[str(i)] for i in range(len(flat))])
        print(f"reusing {weights}")
    else:
        source = build_train_source("denoise", _DATA.value, patch_size=config.data.patch_size, split="train")
        tx = optim.make_optimizer(config.optim.learning_rate, config.optim.warmup_steps)
        step_fn = jax.jit(make_train_step(models.make_apply_fn(unet), tx,
                                          schedules.make_schedule(**config.diffusion.train_schedule).gammas,
                                          vem=False, ema_decay=config.ema_decay), donate_argnums=(0,))
        state = create_train_state(jax.jit(lambda k: models.init_params(unet, k))(jax.random.key(0)), tx)
        t0 = time.perf_counter()
        for step in range(_TRAIN_STEPS.value):
            batch = {k: jnp.asarray(v) for k, v in source.batch(0, step, 0, 1, config.batch_size).items()}
            state, metrics = step_fn(state, batch, jax.random.key(1))
            if (step + 1) % 100 == 0:
                print(f"  step {step + 1}: loss {float(metrics['loss']):.4f}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        params = state.ema_params
        weights.parent.mkdir(parents=True, exist_ok=True)
        np.savez(weights, **{str(i): np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(params))})
        print(f"training: {time.perf_counter() - t0:.0f} s, {_TRAIN_STEPS.value} steps of batch "
              f"{config.batch_size} x {config.data.patch_size}^2 (tiny config)")

    source = build_train_source("denoise", _DATA.value, patch_size=_PATCH.value, split="validation")
    batch = source.batch(0, 0, 0, 1, _PATCHES.value)
    cond, target = np.asarray(batch["cond"]), np.asarray(batch["target"])
    apply = models.make_apply_fn(unet)
    k = _NUM_SAMPLES.value

    def evaluate(spec):
        sample = inference.make_sample_fn(spec)

        @jax.jit
        def run(key):
            denoise = lambda x, g, s: apply(params, x, g, s)  # noqa: E731
            keys = jax.random.split(key, k)
            draws = jax.vmap(lambda kk: sample(denoise, jnp.asarray(cond), kk, None))(keys)
            return draws.mean(axis=0)

        t = time.perf_counter()
        mean = run(jax.random.key(_SEED.value))
        psnr = float(jnp.mean(evaluation.psnr(mean, jnp.asarray(target))))
        ssim = float(jnp.mean(evaluation.ssim(mean, jnp.asarray(target))))
        return psnr, ssim, time.perf_counter() - t

    rows = [("ddpm", _DDPM_STEPS.value)] + [(n, int(s)) for n in ("ddim", "dpm") for s in _FAST_STEPS.value]
    cache_path = pathlib.Path(_WORKDIR.value) / "quality_results.json"  # reused: the DDPM row takes long
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = {}
    for name, steps in rows:
        tag = f"{name}-{steps}-K{k}-{_PATCHES.value}x{_PATCH.value}-seed{_SEED.value}"
        if tag not in cache:
            cache[tag] = evaluate(inference.SamplerSpec(name, steps))
            cache_path.write_text(json.dumps(cache, indent=1))
        results[name, steps] = cache[tag]
        print(f"  {name} {steps}: PSNR {results[name, steps][0]:.2f} dB, SSIM {results[name, steps][1]:.4f}, "
              f"{results[name, steps][2]:.0f} s", flush=True)
    base_psnr = results["ddpm", _DDPM_STEPS.value][0]
    noisy_psnr = float(jnp.mean(evaluation.psnr(jnp.asarray(cond), jnp.asarray(target))))
    print(f"\n{_PATCHES.value} held-out {_PATCH.value}x{_PATCH.value} patches, K = {k}; noisy input PSNR "
          f"{noisy_psnr:.2f} dB\n")
    print("| sampler | steps | network evals / sample | PSNR (dB) | SSIM | PSNR - DDPM (dB) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for (name, steps), (psnr, ssim, secs) in results.items():
        print(f"| {name} | {steps} | {steps} | {psnr:.2f} | {ssim:.4f} | {psnr - base_psnr:+.2f} | {secs:.0f} |")


if __name__ == "__main__":
    app.run(main)

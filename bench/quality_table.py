"""Quality of the fast samplers against the reference DDPM on real FIB-SEM data (a tiny model trained here).

1. Trains (or resumes) the tiny EMDiffuse-n config on a clean EM stack whose noisy inputs are made by the
   data layer's default denoising degradation (Poisson-Gaussian, dose 20) - no real noisy/clean pairs exist
   here - unless --workdir already holds a trained model.
2. Draws held-out patches (the pipeline's validation images, never seen in training) with the same
   degradation, and restores them with DDPM (1000 steps) and DDIM / DPM-Solver++ at 10, 20 and 50 steps,
   all with the same K samples per patch.
3. Prints a Markdown table: PSNR and SSIM of the K-sample mean against the clean patch, network evaluations,
   and the difference to DDPM.

    python bench/quality_table.py --data=PATH/fibsem-medulla-250.tif --workdir=/tmp/q [--train_steps=400]
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_DATA = flags.DEFINE_string("data", None, "Clean EM stack (e.g. the shared fibsem-medulla-250.tif).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (reused if it holds a trained model).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 400, "Training steps of the tiny model.")
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

    from emdiffuse_jax import checkpointing, evaluation, inference, models, train_config
    from emdiffuse_jax.data.pipeline import build_train_source
    from emdiffuse_jax.train import train_and_evaluate

    config = train_config.base_config("denoise")
    train_config.apply_tiny(config)
    config.data.input_path = _DATA.value
    config.num_steps = _TRAIN_STEPS.value
    config.eval.every_steps = 0
    config.checkpoint.keep_best = 0
    t0 = time.perf_counter()
    train_and_evaluate(config, _WORKDIR.value)
    print(f"training: {time.perf_counter() - t0:.0f} s for up to {_TRAIN_STEPS.value} steps (tiny config)")

    loaded = checkpointing.load_model(_WORKDIR.value, task="denoise")
    source = build_train_source("denoise", _DATA.value, patch_size=_PATCH.value, split="validation")
    batch = source.batch(0, 0, 0, 1, _PATCHES.value)
    cond, target = np.asarray(batch["cond"]), np.asarray(batch["target"])
    apply = models.make_apply_fn(loaded.unet)
    k = _NUM_SAMPLES.value

    def evaluate(spec):
        sample = inference.make_sample_fn(spec)

        @jax.jit
        def run(key):
            denoise = lambda x, g, s: apply(loaded.params, x, g, s)  # noqa: E731
            keys = jax.random.split(key, k)
            draws = jax.vmap(lambda kk: sample(denoise, jnp.asarray(cond), kk, None))(keys)
            return draws.mean(axis=0)

        t = time.perf_counter()
        mean = run(jax.random.key(_SEED.value))
        psnr = float(jnp.mean(evaluation.psnr(mean, jnp.asarray(target))))
        ssim = float(jnp.mean(evaluation.ssim(mean, jnp.asarray(target))))
        return psnr, ssim, time.perf_counter() - t

    rows = [("ddpm", _DDPM_STEPS.value)] + [(n, int(s)) for n in ("ddim", "dpm") for s in _FAST_STEPS.value]
    results = {}
    for name, steps in rows:
        results[name, steps] = evaluate(inference.SamplerSpec(name, steps))
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

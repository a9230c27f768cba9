"""The demo on built-in data: trains a tiny denoiser on phantoms and restores one with self-assessment.

  emdiffuse demo --workdir=runs/demo      (from a checkout: python launch/demo.py --workdir=runs/demo)

Trains a tiny EMDiffuse-n denoiser on synthetic EM phantoms (a few minutes on a laptop CPU), then restores
a held-out noisy phantom with K samples: writes the mean, the std map, the reliability map, PNG previews
and report.json to WORKDIR/demo_output, and prints PSNR and the uncertainty score. Re-running resumes.
"""

from absl import app, flags

from emdiffuse_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Directory for the model, the test image and outputs.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps of the tiny model.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Samples K per image (K >= 2 gives the uncertainty).")
_SAMPLER = flags.DEFINE_enum("sampler", "ddim", ["ddpm", "ddim", "dpm"], "Reverse-diffusion sampler.")
_SAMPLER_STEPS = flags.DEFINE_integer("sampler_steps", 20, "Network evaluations per sample.")
_SEED = flags.DEFINE_integer("seed", 2, "Training seed of the tiny model (initial parameters and batches); "
                             "its result varies with it, see emdiffuse_jax.demo.DEFAULT_SEED.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from emdiffuse_jax.demo import run_demo
    from emdiffuse_jax.user_errors import clean_exit

    with clean_exit():  # bad settings or disk: one line naming the file and the fix, no traceback
        run_demo(_WORKDIR.value, steps=_STEPS.value, num_samples=_NUM_SAMPLES.value, sampler=_SAMPLER.value,
                 sampler_steps=_SAMPLER_STEPS.value, seed=_SEED.value)


def run(argv=None):
    """Runs this program (``emdiffuse demo`` and ``launch/demo.py``)."""
    cli.run(main, __doc__, argv)

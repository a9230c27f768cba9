"""2D restoration with self-assessment (EMDiffuse-n denoising / EMDiffuse-r 2x super-resolution).

  python launch/predict.py --task=denoise --checkpoint=WORKDIR_OR_PTH --input=IMAGE_STACK_OR_FOLDER \
      --output=DIR [--num_samples=2] [--sampler=ddpm|ddim|dpm] [--steps=N] [--seed=0]

Writes, per image, the mean (input dtype and range), the std, the reliability map, PNG previews and
report.json (settings, per-image and per-tile uncertainty scores, flags, threshold, timings); see
docs/prediction.md. Any image size: overlapping tiles are blended; images smaller than a tile are padded.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_TASK = flags.DEFINE_enum("task", None, ["denoise", "superres"], "Restoration task of the checkpoint.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint step dir or reference .pth.")
_INPUT = flags.DEFINE_string("input", None, "A 2D image (TIFF/PNG), a TIFF stack or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (must not overlap the input).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2, "Samples K per image; K >= 2 gives the uncertainty.")
_SAMPLER = flags.DEFINE_enum("sampler", "ddpm", ["ddpm", "ddim", "dpm"], "Reverse-diffusion sampler.")
_STEPS = flags.DEFINE_integer("steps", None, "Network evaluations per sample (default ddpm 1000, ddim 50, dpm 20).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (results are reproducible for a given seed).")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM noise scale in [0, 1] (0 = deterministic).")
_TILE = flags.DEFINE_integer("tile", 256, "Tile size in pixels (network input; multiple of 8).")
_OVERLAP = flags.DEFINE_integer("overlap", 32, "Tile overlap in pixels, blended smoothly.")
_HARMONIZE = flags.DEFINE_bool("harmonize", False, "Match each tile's mean intensity to its input tile.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.12, "Uncertainty score above which a prediction is flagged.")
_SAVE_SAMPLES = flags.DEFINE_bool("save_samples", False, "Also write the K individual samples.")
_NORMALIZATION = flags.DEFINE_enum("normalization", "auto", ["auto", "uint8", "minmax", "percentile"],
                                   "Intensity mapping to [-1, 1]; auto = uint8 for 8-bit input, else percentile.")
_BATCH = flags.DEFINE_integer("batch_per_device", 4, "Tiles x samples per device per call (halves on OOM).")
flags.mark_flags_as_required(["task", "checkpoint", "input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _NUM_SAMPLES.value < 1:
        raise app.UsageError(f"--num_samples must be >= 1, got {_NUM_SAMPLES.value}")
    from emdiffuse_jax import checkpointing, inference, restore

    try:
        spec = inference.SamplerSpec(_SAMPLER.value, _STEPS.value, eta=_ETA.value)
        loaded = checkpointing.load_model(_CHECKPOINT.value, task=_TASK.value)
        if loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a volume (vEM) model; use launch/isotropic.py")
        restorer = restore.make_restorer(loaded, spec, _BATCH.value)
        restore.restore_files(
            restorer, _INPUT.value, _OUTPUT.value, task=_TASK.value, num_samples=_NUM_SAMPLES.value,
            seed=_SEED.value, tile=_TILE.value, overlap=_OVERLAP.value, harmonize=_HARMONIZE.value,
            keep_samples=_SAVE_SAMPLES.value, normalization=_NORMALIZATION.value, threshold=_THRESHOLD.value,
            settings={"checkpoint": _CHECKPOINT.value, "sampler": spec.to_dict()})
    except (ValueError, FileNotFoundError, MemoryError) as err:  # bad input or checkpoint: message, no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)

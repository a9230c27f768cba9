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

from emdiffuse_jax.cli import SamplingFlags  # noqa: E402

_SAMPLING = SamplingFlags("image")

_TASK = flags.DEFINE_enum("task", None, ["denoise", "superres"], "Restoration task of the checkpoint.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint step dir or reference .pth.")
_INPUT = flags.DEFINE_string("input", None, "A 2D image (TIFF/PNG), a TIFF stack or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (must not overlap the input).")
_SAVE_SAMPLES = flags.DEFINE_bool("save_samples", False, "Also write the K individual samples.")
flags.mark_flags_as_required(["task", "checkpoint", "input", "output"])


def main(argv):
    _SAMPLING.check(argv)
    from emdiffuse_jax import checkpointing, restore

    try:
        spec = _SAMPLING.sampler_spec()
        loaded = checkpointing.load_model(_CHECKPOINT.value, task=_TASK.value)
        if loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a volume (vEM) model; use launch/isotropic.py")
        spec = restore.spec_for_checkpoint(spec, loaded)
        restorer = restore.make_restorer(loaded, spec, **_SAMPLING.restorer_options())
        restore.restore_files(
            restorer, _INPUT.value, _OUTPUT.value, task=_TASK.value, num_samples=_SAMPLING.num_samples.value,
            seed=_SAMPLING.seed.value, tile=_SAMPLING.tile.value, overlap=_SAMPLING.overlap.value,
            harmonize=_SAMPLING.harmonize.value, keep_samples=_SAVE_SAMPLES.value,
            normalization=_SAMPLING.normalization.value, threshold=_SAMPLING.threshold.value,
            settings={"checkpoint": _CHECKPOINT.value, "sampler": spec.to_dict()})
    except (ValueError, FileNotFoundError, MemoryError) as err:  # bad input or checkpoint: message, no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)

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
    from emdiffuse_jax import checkpointing, restore, run_state
    from emdiffuse_jax.data import io
    from emdiffuse_jax.user_errors import clean_exit

    with clean_exit():  # bad flags, input, checkpoint or disk: one line naming the file and the fix
        _SAMPLING.check(argv)
        spec = _SAMPLING.sampler_spec()
        io.check_output_folder(_OUTPUT.value, [_INPUT.value])
        # A resumed run keeps the checkpoint step it started with, even if training saved newer ones since.
        step = run_state.recorded_checkpoint_step(restore.progress_file(_OUTPUT.value))
        loaded = checkpointing.load_model(_CHECKPOINT.value, task=_TASK.value, step=step)
        if loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a volume (vEM) model; use launch/isotropic.py")
        restorer = restore.make_restorer(loaded, spec, _SAMPLING.batch_per_device.value)
        restore.restore_files(
            restorer, _INPUT.value, _OUTPUT.value, task=_TASK.value, num_samples=_SAMPLING.num_samples.value,
            seed=_SAMPLING.seed.value, tile=_SAMPLING.tile.value, overlap=_SAMPLING.overlap.value,
            harmonize=_SAMPLING.harmonize.value, keep_samples=_SAVE_SAMPLES.value,
            normalization=_SAMPLING.normalization.value, threshold=_SAMPLING.threshold.value,
            settings={"checkpoint": str(pathlib.Path(_CHECKPOINT.value).resolve()),
                      "checkpoint_step": loaded.meta.get("step"), "sampler": spec.to_dict()})


if __name__ == "__main__":
    app.run(main)

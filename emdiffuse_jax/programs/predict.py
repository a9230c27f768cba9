"""2D restoration with self-assessment (EMDiffuse-n denoising / EMDiffuse-r 2x super-resolution).

  emdiffuse predict --task=denoise --checkpoint=WORKDIR_OR_PTH --input=IMAGE_STACK_OR_FOLDER
      --output=DIR [--num_samples=2] [--sampler=ddpm|ddim|dpm] [--steps=N] [--seed=0]

Writes, per image, the mean (in the training targets' units and dtype: the checkpoint's intensity contract),
the std, the reliability map (for a TIFF stack: one multi-page TIFF each), with the input's pixel size, PNG
previews and report.json (settings, per-image and per-tile uncertainty scores, flags, threshold, timings); see
docs/prediction.md. Any image size: overlapping tiles are blended; images smaller than a tile are padded.
(From a checkout: python launch/predict.py with the same flags.)
"""

import pathlib

from absl import app, flags

from emdiffuse_jax import cli

_SAMPLING = cli.SamplingFlags("image")

_TASK = flags.DEFINE_enum("task", None, ["denoise", "superres"], "Restoration task of the checkpoint.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint step dir or reference .pth.")
_INPUT = flags.DEFINE_string("input", None, "A 2D image (TIFF/PNG), a TIFF stack or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (must not overlap the input).")
_WEIGHTS = cli.define_weights_flag()
_SAVE_SAMPLES = flags.DEFINE_bool("save_samples", False, "Also write the K individual samples.")
flags.mark_flags_as_required(["task", "checkpoint", "input", "output"])


def main(argv):
    _SAMPLING.check(argv)
    voxel_size = _SAMPLING.voxel_size_nm((2, 3))
    from emdiffuse_jax import checkpointing, restore, run_state
    from emdiffuse_jax.data import intensity, io
    from emdiffuse_jax.user_errors import clean_exit

    with clean_exit():  # bad input, checkpoint or disk: one line naming the file and the fix, no traceback
        spec = _SAMPLING.sampler_spec()
        io.check_output_folder(_OUTPUT.value, [_INPUT.value])
        # A resumed run keeps the checkpoint step it started with, even if training saved newer ones since.
        step = run_state.recorded_checkpoint_step(restore.progress_file(_OUTPUT.value))
        try:
            loaded = checkpointing.load_model(_CHECKPOINT.value, task=_TASK.value, weights=_WEIGHTS.value,
                                              step=step)
        except checkpointing.IncompatibleCheckpointError:
            loaded = checkpointing.load_model(_CHECKPOINT.value)   # what it is instead, to say what to run
            if not loaded.unet.vem:
                raise
        if loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a volume ({loaded.task}) model: reconstruct volumes with "
                                 "`emdiffuse isotropic` (launch/isotropic.py) --checkpoint=... --input=STACK "
                                 "--z_factor=Z --output=DIR")
        spec = restore.spec_for_checkpoint(spec, loaded)
        restorer = restore.make_restorer(loaded, spec, **_SAMPLING.restorer_options())
        num_samples = restore.samples_for(loaded, _SAMPLING.num_samples.value)
        restore.restore_files(
            restorer, _INPUT.value, _OUTPUT.value, task=_TASK.value, num_samples=num_samples,
            seed=_SAMPLING.seed.value, tile=_SAMPLING.tile.value, overlap=_SAMPLING.overlap.value,
            harmonize=_SAMPLING.harmonize.value, keep_samples=_SAVE_SAMPLES.value,
            normalization=_SAMPLING.normalization.value, threshold=_SAMPLING.threshold.value,
            intensity=intensity.from_meta(loaded.meta, _CHECKPOINT.value), voxel_size=voxel_size,
            settings={"checkpoint": str(pathlib.Path(_CHECKPOINT.value).resolve()),
                      "checkpoint_step": loaded.meta.get("step"), "weights": _WEIGHTS.value,
                      "sampler": spec.to_dict()})


def run(argv=None):
    """Runs this program (``emdiffuse predict`` and ``launch/predict.py``)."""
    cli.run(main, __doc__, argv)

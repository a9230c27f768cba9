"""Isotropic volume reconstruction (vEMDiffuse-i / -a), slab by slab, resumable.

  emdiffuse isotropic --checkpoint=WORKDIR_OR_PTH --input=STACK_FOLDER_OR_ZARR --z_factor=Z
      --output=DIR [--num_samples=2]

N input slices give (N - 1) * Z + 1 output slices (originals interleaved with generated ones) and an
uncertainty (std) volume: mean.tif and std.tif, multi-page ImageJ TIFFs with the voxel size (the input's,
z divided by Z), or OME-Zarr with --format=ome-zarr. Rerunning the same command after an interruption resumes without recomputing
finished slabs; the final volumes appear only when complete. See docs/prediction.md.
Across hosts: start the same command in every process with --num_processes, --process_id and
--coordinator_address (or on a TPU pod / SLURM, where JAX finds them): each computes its block of slabs.
(From a checkout: python launch/isotropic.py with the same flags.)
"""

import pathlib

from absl import app, flags

from emdiffuse_jax import cli

_SAMPLING = cli.SamplingFlags("slice")

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "vEM training workdir, checkpoint step dir or .pth.")
_INPUT = flags.DEFINE_string("input", None, "Anisotropic volume: TIFF stack, folder of slices, Zarr or N5.")
_Z = flags.DEFINE_integer("z_factor", None, "Axial factor Z: Z - 1 slices are generated between neighbours.")
_TRAINED_Z = flags.DEFINE_integer("trained_z_factor", None, "The z_factor the model was trained with: required "
                                  "for a .pth, which does not record it (published weights: vEMDiffuse-i 6, "
                                  "vEMDiffuse-a 5; docs/weights.md); must equal --z_factor.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (must not overlap the input).")
_FORMAT = flags.DEFINE_enum("format", "tiff", ["tiff", "tiff-slices", "ome-zarr", "zarr"],
                            "Output: tiff = one multi-page ImageJ TIFF per volume (Fiji shows the scale); "
                            "tiff-slices = folders of one TIFF per slice; ome-zarr (or zarr) = OME-Zarr (NGFF "
                            "0.4) with a multiscale pyramid.")
_WEIGHTS = cli.define_weights_flag()
_DISTRIBUTED = cli.DistributedFlags()
_DISTRIBUTED_MODE = flags.DEFINE_enum("distributed", "auto", ["auto", "always", "never"],
                                      "jax.distributed: auto = when a launcher announced several processes.")
_DATASET = flags.DEFINE_string("dataset", None, "Array inside a Zarr group / N5 container.")
flags.mark_flags_as_required(["checkpoint", "input", "z_factor", "output"])


def main(argv):
    _SAMPLING.check(argv)
    voxel_size = _SAMPLING.voxel_size_nm((3,))
    if _DISTRIBUTED.initialize(_DISTRIBUTED_MODE.value):   # before any other JAX call
        import jax

        index = jax.process_index()
        log = print if index == 0 else (lambda msg: print(msg) if msg.startswith(("process ", "warning")) else None)
    else:
        log = print
    from emdiffuse_jax import checkpointing, restore, run_state, volume
    from emdiffuse_jax.data import intensity, io
    from emdiffuse_jax.user_errors import clean_exit

    if _Z.value < 2:
        raise app.UsageError(f"--z_factor must be >= 2 (Z - 1 slices are generated), got {_Z.value}")
    with clean_exit():  # bad input, checkpoint or disk: one line naming the file and the fix, no traceback
        spec = _SAMPLING.sampler_spec()
        io.check_output_folder(_OUTPUT.value, [_INPUT.value])
        # A resumed run keeps the checkpoint step it started with, even if training saved newer ones since.
        progress = volume.progress_file(_OUTPUT.value)
        step = run_state.recorded_checkpoint_step(progress)
        try:
            loaded = checkpointing.load_model(_CHECKPOINT.value, weights=_WEIGHTS.value, step=step)
        except FileNotFoundError as err:
            if step is None:
                raise
            raise io.DataError(f"{progress}: this unfinished run started with checkpoint step {step}, which is "
                               f"gone ({err}); delete {progress.parent} to start over") from err
        if not loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a 2D ({loaded.task}) model; use `emdiffuse predict` (launch/predict.py), or "
                                 "pass a vEMDiffuse-i/-a checkpoint")
        trained_z, trained_z_source = checkpointing.trained_z_factor(loaded, _Z.value, _TRAINED_Z.value)
        checkpoint = pathlib.Path(_CHECKPOINT.value)
        spec = restore.spec_for_checkpoint(spec, loaded)
        restorer = restore.make_restorer(loaded, spec, **_SAMPLING.restorer_options())
        num_samples = restore.samples_for(loaded, _SAMPLING.num_samples.value)
        volume.reconstruct(restorer, _INPUT.value, _OUTPUT.value, _Z.value, num_samples=num_samples,
                           seed=_SAMPLING.seed.value, tile=_SAMPLING.tile.value, overlap=_SAMPLING.overlap.value,
                           harmonize=_SAMPLING.harmonize.value, fmt=_FORMAT.value,
                           normalization=_SAMPLING.normalization.value, threshold=_SAMPLING.threshold.value,
                           dataset=_DATASET.value, voxel_size=voxel_size,
                           intensity=intensity.from_meta(loaded.meta, _CHECKPOINT.value), log=log,
                           settings={"checkpoint": str(checkpoint.resolve()),
                                     "checkpoint_step": loaded.meta.get("step"),
                                     "checkpoint_identity": io.file_identity(checkpoint)
                                     if checkpoint.is_file() else None,
                                     "weights": _WEIGHTS.value, "sampler": spec.to_dict(), "trained_z_factor": trained_z,
                                     "trained_z_factor_source": trained_z_source})


def run(argv=None):
    """Runs this program (``emdiffuse isotropic`` and ``launch/isotropic.py``)."""
    cli.run(main, __doc__, argv)

"""Isotropic volume reconstruction (vEMDiffuse-i / -a), slab by slab, resumable.

  python launch/isotropic.py --checkpoint=WORKDIR_OR_PTH --input=STACK_FOLDER_OR_ZARR --z_factor=Z \
      --output=DIR [--num_samples=2]

N input slices give (N - 1) * Z + 1 output slices (originals interleaved with generated ones) and an
uncertainty (std) volume. Rerunning the same command after an interruption resumes without recomputing
finished slabs; the final volumes appear only when complete. See docs/prediction.md.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from emdiffuse_jax.cli import SamplingFlags  # noqa: E402

_SAMPLING = SamplingFlags("slice")

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "vEM training workdir, checkpoint step dir or .pth.")
_INPUT = flags.DEFINE_string("input", None, "Anisotropic volume: TIFF stack, folder of slices, Zarr or N5.")
_Z = flags.DEFINE_integer("z_factor", None, "Axial factor Z: Z - 1 slices are generated between neighbours.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (must not overlap the input).")
_FORMAT = flags.DEFINE_enum("format", "tiff", ["tiff", "zarr"], "Output: folders of TIFF slices or Zarr arrays.")
_DATASET = flags.DEFINE_string("dataset", None, "Array inside a Zarr group / N5 container.")
flags.mark_flags_as_required(["checkpoint", "input", "z_factor", "output"])


def main(argv):
    _SAMPLING.check(argv)
    from emdiffuse_jax import checkpointing, restore, volume

    try:
        spec = _SAMPLING.sampler_spec()
        loaded = checkpointing.load_model(_CHECKPOINT.value)
        if not loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a 2D ({loaded.task}) model; use launch/predict.py, or "
                                 "pass a vEMDiffuse-i/-a checkpoint")
        trained_z = loaded.meta.get("z_factor")
        if trained_z and int(trained_z) != _Z.value:
            raise app.UsageError(f"the model was trained for z_factor={trained_z} (its slice embedding is tied to "
                                 f"it), got --z_factor={_Z.value}")
        spec = restore.spec_for_checkpoint(spec, loaded)
        restorer = restore.make_restorer(loaded, spec, **_SAMPLING.restorer_options())
        volume.reconstruct(restorer, _INPUT.value, _OUTPUT.value, _Z.value, num_samples=_SAMPLING.num_samples.value,
                           seed=_SAMPLING.seed.value, tile=_SAMPLING.tile.value, overlap=_SAMPLING.overlap.value,
                           harmonize=_SAMPLING.harmonize.value, fmt=_FORMAT.value,
                           normalization=_SAMPLING.normalization.value, threshold=_SAMPLING.threshold.value,
                           dataset=_DATASET.value,
                           settings={"checkpoint": str(pathlib.Path(_CHECKPOINT.value).resolve()),
                                     "sampler": spec.to_dict()})
    except (ValueError, FileNotFoundError, MemoryError) as err:  # bad input or checkpoint: message, no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)

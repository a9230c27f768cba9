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

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "vEM training workdir, checkpoint step dir or .pth.")
_INPUT = flags.DEFINE_string("input", None, "Anisotropic volume: TIFF stack, folder of slices, Zarr or N5.")
_Z = flags.DEFINE_integer("z_factor", None, "Axial factor Z: Z - 1 slices are generated between neighbours.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (must not overlap the input).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2, "Samples K per slice; K >= 2 gives the uncertainty.")
_SAMPLER = flags.DEFINE_enum("sampler", "ddpm", ["ddpm", "ddim", "dpm"], "Reverse-diffusion sampler.")
_STEPS = flags.DEFINE_integer("steps", None, "Network evaluations per sample (default ddpm 1000, ddim 50, dpm 20).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_TILE = flags.DEFINE_integer("tile", 256, "Tile size in pixels.")
_OVERLAP = flags.DEFINE_integer("overlap", 32, "Tile overlap in pixels, blended smoothly.")
_HARMONIZE = flags.DEFINE_bool("harmonize", False, "Match each tile's mean intensity to its input tiles.")
_FORMAT = flags.DEFINE_enum("format", "tiff", ["tiff", "zarr"], "Output: folders of TIFF slices or Zarr arrays.")
_DATASET = flags.DEFINE_string("dataset", None, "Array inside a Zarr group / N5 container.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.12, "Slab uncertainty score above which it is flagged.")
_NORMALIZATION = flags.DEFINE_enum("normalization", "auto", ["auto", "uint8", "minmax", "percentile"],
                                   "Intensity mapping to [-1, 1]; auto = uint8 for 8-bit input, else percentile.")
_BATCH = flags.DEFINE_integer("batch_per_device", 4, "Tiles x slices x samples per device per call.")
flags.mark_flags_as_required(["checkpoint", "input", "z_factor", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _NUM_SAMPLES.value < 1:
        raise app.UsageError(f"--num_samples must be >= 1, got {_NUM_SAMPLES.value}")
    from emdiffuse_jax import checkpointing, inference, restore, volume

    try:
        spec = inference.SamplerSpec(_SAMPLER.value, _STEPS.value)
        loaded = checkpointing.load_model(_CHECKPOINT.value)
        if not loaded.unet.vem:
            raise app.UsageError(f"{_CHECKPOINT.value} is a 2D ({loaded.task}) model; use launch/predict.py, or "
                                 "pass a vEMDiffuse-i/-a checkpoint")
        trained_z = loaded.meta.get("z_factor")
        if trained_z and int(trained_z) != _Z.value:
            raise app.UsageError(f"the model was trained for z_factor={trained_z} (its slice embedding is tied to "
                                 f"it), got --z_factor={_Z.value}")
        restorer = restore.make_restorer(loaded, spec, _BATCH.value)
        volume.reconstruct(restorer, _INPUT.value, _OUTPUT.value, _Z.value, num_samples=_NUM_SAMPLES.value,
                           seed=_SEED.value, tile=_TILE.value, overlap=_OVERLAP.value, harmonize=_HARMONIZE.value,
                           fmt=_FORMAT.value, normalization=_NORMALIZATION.value, threshold=_THRESHOLD.value,
                           dataset=_DATASET.value,
                           settings={"checkpoint": str(pathlib.Path(_CHECKPOINT.value).resolve()),
                                     "sampler": spec.to_dict()})
    except (ValueError, FileNotFoundError, MemoryError) as err:  # bad input or checkpoint: message, no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)

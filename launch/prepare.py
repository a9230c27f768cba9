"""Prepares a training dataset (TFDS array_record) for one EMDiffuse task.

Examples:
  python launch/prepare.py --task=denoise --input=raw/img --target=raw/gt --output=prepared/denoise
  python launch/prepare.py --task=denoise --input=clean_stack.tif --degrade="poisson:dose=10" --output=out
  python launch/prepare.py --task=vem_i --input=isotropic.zarr --z_factor=5 --output=prepared/vem_i
  python launch/prepare.py --task=vem_a --input=anisotropic.tif --z_factor=6 --output=prepared/vem_a
Without --input the built-in phantoms are used. Shows a progress bar and ends with a summary.
"""

from absl import app, flags, logging

from emdiffuse_jax.data.prepare import prepare_dataset
from emdiffuse_jax.user_errors import clean_exit

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", None, ["denoise", "superres", "vem_i", "vem_a"], "Restoration task.")
flags.DEFINE_string("input", None, "Input image/stack/folder (noisy or low-res; clean if no --target) or "
                    "volume (TIFF stack, slice folder, Zarr, N5). Empty: built-in phantoms.")
flags.DEFINE_string("target", None, "Targets (clean / high-res) matching --input, for 2D tasks.")
flags.DEFINE_string("output", None, "New output folder for the prepared dataset.")
flags.DEFINE_integer("patch_size", 256, "Patch side in pixels (of the target).")
flags.DEFINE_integer("z_factor", None, "vEM: axial spacing in slices of the generated volume (z-1 new slices).")
flags.DEFINE_string("degrade", None, "Degradation for clean-only 2D inputs, e.g. 'poisson:dose=10+scanline'. "
                    "Default: 'poisson:dose=20' (denoise), 'down2+poisson:dose=40' (superres).")
flags.DEFINE_float("overlap", 0.125, "Patch overlap: fraction of the patch (< 1) or pixels.")
flags.DEFINE_enum("normalization", None, ["uint8", "minmax", "percentile"],
                  "Intensity mapping; default 'uint8' for 8-bit data, else 'percentile' (0.1-99.9).")
flags.DEFINE_float("val_fraction", 0.1, "Held-out fraction (whole images, a strip, or a slab).")
flags.DEFINE_bool("register", True, "Register acquired 2D pairs before cutting patches.")
flags.DEFINE_integer("z_stride", 1, "vEM: step between the first slices of consecutive triplets.")
flags.DEFINE_integer("section_thickness", 1, "vEM: conditioning slices are the mean of this many slices "
                     "(simulates physical section thickness when training on isotropic data).")
flags.DEFINE_integer("seed", 0, "Seed of the degradation noise.")
flags.mark_flags_as_required(["task", "output"])


def main(argv):
    logging.set_verbosity(logging.WARNING)  # TFDS logs every file it writes; the summary says what matters
    with clean_exit():  # bad options, input or disk: one line naming the file and the fix, no traceback
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        summary = prepare_dataset(FLAGS.task, FLAGS.input or None, FLAGS.target, output=FLAGS.output,
                                  patch_size=FLAGS.patch_size, z_factor=FLAGS.z_factor, degrade=FLAGS.degrade,
                                  overlap=FLAGS.overlap, normalization=FLAGS.normalization,
                                  val_fraction=FLAGS.val_fraction, register=FLAGS.register,
                                  z_stride=FLAGS.z_stride, section_thickness=FLAGS.section_thickness,
                                  seed=FLAGS.seed)
    print(summary.text())
    print(f"train with: --input={summary.path}")


if __name__ == "__main__":
    app.run(main)

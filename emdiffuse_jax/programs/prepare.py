"""Prepares a training dataset (TFDS array_record) for one EMDiffuse task.

Examples (from a checkout, python launch/prepare.py takes the same flags):
  emdiffuse prepare --task=denoise --input=raw/img --target=raw/gt --output=prepared/denoise
  emdiffuse prepare --task=denoise --input=clean_stack.tif --degrade="poisson:dose=10" --output=out
  emdiffuse prepare --task=vem_i --input=isotropic.zarr --z_factor=5 --output=prepared/vem_i
  emdiffuse prepare --task=vem_a --input=anisotropic.tif --z_factor=6 --output=prepared/vem_a
Without --input the built-in phantoms are used. Shows a progress bar, ends with a summary and the
`emdiffuse train` command that trains on the prepared dataset.
"""

from absl import app, flags

from emdiffuse_jax import cli, configs
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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with clean_exit():  # bad options, input or disk: one line naming the file and the fix, no traceback
        summary = prepare_dataset(FLAGS.task, FLAGS.input or None, FLAGS.target, output=FLAGS.output,
                                  patch_size=FLAGS.patch_size, z_factor=FLAGS.z_factor, degrade=FLAGS.degrade,
                                  overlap=FLAGS.overlap, normalization=FLAGS.normalization,
                                  val_fraction=FLAGS.val_fraction, register=FLAGS.register,
                                  z_stride=FLAGS.z_stride, section_thickness=FLAGS.section_thickness,
                                  seed=FLAGS.seed)
    print(summary.text())
    print("train with: " + train_command(summary))


def train_command(summary) -> str:
    """The `emdiffuse train` command line that trains on the dataset just prepared (its patch size and
    z_factor must match the config's, so they are passed)."""
    parts = ["emdiffuse train", f"--config={configs.FOR_TASK[summary.task]}", f"--workdir=runs/{summary.task}",
             f"--config.data.input_path={summary.path}", f"--config.data.patch_size={FLAGS.patch_size}"]
    if FLAGS.z_factor:
        parts.append(f"--config.data.z_factor={FLAGS.z_factor}")
    return " ".join(parts)


def run(argv=None):
    """Runs this program (``emdiffuse prepare`` and ``launch/prepare.py``)."""
    cli.run(main, __doc__, argv)

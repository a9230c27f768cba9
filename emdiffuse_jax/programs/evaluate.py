"""Scores predictions (images or volumes, optionally with their std) against the ground truth.

  emdiffuse evaluate --truth=GT --prediction=diffusion=runs/iso/mean --std=diffusion=runs/iso/std
      --prediction=linear=linear.tif --z_factor=4 --voxel_size=10,10,10 --output=DIR
  (from a checkout: python launch/evaluate.py with the same flags)

Each --prediction is NAME=PATH (repeatable; one row of the table), each --std NAME=PATH for the prediction
of that name. Paths: a 2D image, a TIFF stack, a folder of slices, Zarr or N5, all of the truth's shape.
Writes DIR/metrics.json, DIR/metrics.md (PSNR, SSIM, MAE, FRC resolution at 1/7 in pixels and nm, the
high-frequency power kept, and for predictions with a std: Spearman(block score, block error) and the ROC
AUC for flagging the worst blocks; with --input, whether the input slices are kept) and PNG plots (frc.png, spectrum.png, score_vs_error.png; these need
matplotlib: pip install "emdiffuse_jax[plots]"). See docs/evaluation.md.
"""

import json
import pathlib
import sys

from absl import app, flags

from emdiffuse_jax import cli

_TRUTH = flags.DEFINE_string("truth", None, "Ground truth: image, TIFF stack, folder of slices, Zarr or N5.")
_PREDICTION = flags.DEFINE_multi_string("prediction", None, "NAME=PATH of a prediction (repeatable).")
_STD = flags.DEFINE_multi_string("std", [], "NAME=PATH of the per-pixel std of prediction NAME (optional).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for metrics.json, metrics.md and the plots.")
_Z = flags.DEFINE_integer("z_factor", None, "Isotropic reconstruction: score only the generated slices.")
_INPUT = flags.DEFINE_string("input", None, "With --z_factor: the anisotropic input; checks that every Z-th "
                             "output slice reproduces it (needs no ground truth).")
_VOXEL = flags.DEFINE_list("voxel_size", None, "Voxel size Z,Y,X in nm (gives FRC resolutions in nm).")
_RANGE = flags.DEFINE_list("data_range", None, "LO,HI intensity range (default: dtype range for integers).")
_BLOCK = flags.DEFINE_integer("block", 64, "Block size in pixels for score vs error.")
_WORST = flags.DEFINE_float("worst_fraction", 0.1, "Fraction of blocks (by error) the score should flag.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots (needs matplotlib).")
flags.mark_flags_as_required(["truth", "prediction", "output"])


def _named(values, flag: str) -> dict:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--{flag}={value!r}: expected NAME=PATH")
        if name in out:
            raise app.UsageError(f"--{flag}: the name {name!r} is given twice")
        out[name] = path
    return out


def _floats(values, flag: str, count: int):
    if values is None:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        numbers = ()
    if len(numbers) != count:
        raise app.UsageError(f"--{flag}: expected {count} comma-separated numbers, got {','.join(values)!r}")
    return numbers


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    predictions, stds = _named(_PREDICTION.value, "prediction"), _named(_STD.value, "std")
    voxel, data_range = _floats(_VOXEL.value, "voxel_size", 3), _floats(_RANGE.value, "data_range", 2)
    from emdiffuse_jax.evaluation import compare

    output = pathlib.Path(_OUTPUT.value)
    try:  # bad input: message naming the file, no traceback
        truth = compare.read_images(_TRUTH.value)
        loaded = {}
        for name, path in predictions.items():
            loaded[name] = compare.read_images(path)
            if loaded[name].shape != truth.shape:
                raise ValueError(f"{path}: prediction {name!r} has shape {loaded[name].shape}, the truth "
                                 f"{_TRUTH.value} {truth.shape}; crop them to the same region")
        std_arrays = {}
        for name, path in stds.items():
            std_arrays[name] = compare.read_images(path)
            if std_arrays[name].shape != truth.shape:
                raise ValueError(f"{path}: std of {name!r} has shape {std_arrays[name].shape}, the truth "
                                 f"{truth.shape}")
        inputs = compare.read_images(_INPUT.value) if _INPUT.value else None
        report = compare.evaluate(truth, loaded, std_arrays, inputs=inputs, data_range=data_range, z_factor=_Z.value,
                                  voxel_size=voxel, block=_BLOCK.value, worst_fraction=_WORST.value)
    except ValueError as err:
        sys.exit(f"error: {err}")
    report["settings"].update(truth=_TRUTH.value, predictions=predictions, stds=stds, input=_INPUT.value)
    output.mkdir(parents=True, exist_ok=True)
    for fname, text in (("metrics.json", json.dumps(report, indent=1)), ("metrics.md", compare.markdown_table(report))):
        tmp = output / f".{fname}.tmp"
        tmp.write_text(text)
        tmp.replace(output / fname)
    print(compare.markdown_table(report))
    if _PLOTS.value:
        from emdiffuse_jax.evaluation import plots

        try:
            written = plots.write_plots(report, output)
        except ImportError as err:
            print(f"warning: no plots written: {err}", file=sys.stderr)
        else:
            print("plots: " + ", ".join(str(p) for p in written))


def run(argv=None):
    """Runs this program (``emdiffuse evaluate`` and ``launch/evaluate.py``)."""
    cli.run(main, __doc__, argv)

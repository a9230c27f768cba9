"""Issue 8's 16-bit experiment: are restored intensities in the target's units? Prints a table.

  python bench/intensity_16bit.py --workdir=/tmp/i16 [--before=CHECKOUT_OF_AN_OLDER_VERSION]

Builds the case of tests/intensity_case.py from the FIB-SEM crop in ../shared/data (targets 100 x slice +
5000 in uint16, inputs 0.5 x target + 2000 with Poisson-Gaussian noise; --num_train pairs of --size px and
one held-out pair), trains `launch/train.py --config=configs/emdiffuse_n.py:tiny --config.num_steps=N` on
the folders of pairs, restores the held-out input with `launch/predict.py --tile=32`, and reports the
restored mean's offset (fraction of the target's 1-99 % range) and the error of its 1-99 % range
(contrast), with the noisy input's for reference. --before runs the same commands with the launch scripts
of another checkout (e.g. `git worktree add /tmp/old 9f11b26`, the version before the intensity contract)
so both rows come from one run on one machine.
"""

import json
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # the case definition the test shares
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from absl import app, flags  # noqa: E402

from intensity_case import intensity_errors, write_case  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch folder for the data, runs and outputs.")
_BEFORE = flags.DEFINE_string("before", None, "A checkout of another version to compare (optional).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 24, "Training pairs.")
_SIZE = flags.DEFINE_integer("size", 128, "Image size in pixels (square crops).")
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps (configs/emdiffuse_n.py:tiny).")
_SAMPLER = flags.DEFINE_string("sampler", "ddim", "Sampler of launch/predict.py.")
_SAMPLER_STEPS = flags.DEFINE_integer("sampler_steps", 50, "Sampler steps.")
_DATA = flags.DEFINE_string("data", str(ROOT.parent / "shared" / "data" / "fibsem-medulla-250.tif"),
                            "The 8-bit FIB-SEM stack the targets are made from.")
flags.mark_flags_as_required(["workdir"])


def _run(checkout: pathlib.Path, args: list[str], log: pathlib.Path) -> float:
    start = time.time()
    with open(log, "w") as out:
        result = subprocess.run([sys.executable, *args], cwd=checkout, stdout=out, stderr=subprocess.STDOUT,
                                env={"PYTHONPATH": str(checkout), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    if result.returncode:
        raise SystemExit(f"{args[0]} failed in {checkout}; see {log}")
    return time.time() - start


def _experiment(name: str, checkout: pathlib.Path, case: pathlib.Path, test_input: pathlib.Path,
                target: np.ndarray, scratch: pathlib.Path) -> dict:
    run, out = scratch / f"run_{name}", scratch / f"pred_{name}"
    train_s = _run(checkout, ["launch/train.py", "--config=configs/emdiffuse_n.py:tiny", f"--workdir={run}",
                              f"--config.num_steps={_STEPS.value}", f"--config.data.input_path={case / 'img'}",
                              f"--config.data.target_path={case / 'gt'}", "--config.eval.every_steps=0"],
                   scratch / f"train_{name}.log")
    predict_s = _run(checkout, ["launch/predict.py", "--task=denoise", f"--checkpoint={run}",
                                f"--input={test_input}", f"--output={out}", "--tile=32", "--overlap=8",
                                "--num_samples=2", f"--sampler={_SAMPLER.value}", f"--steps={_SAMPLER_STEPS.value}"],
                     scratch / f"predict_{name}.log")
    restored = tifffile.imread(out / "test_mean.tif")
    return {"name": name, "dtype": str(restored.dtype), **intensity_errors(restored, target),
            "train_s": train_s, "predict_s": predict_s}


def main(argv):
    del argv
    scratch = pathlib.Path(_WORKDIR.value)
    scratch.mkdir(parents=True, exist_ok=True)
    stack = tifffile.imread(_DATA.value)
    test_input, target = write_case(stack, scratch / "case", _NUM_TRAIN.value, _SIZE.value)
    rows = [{"name": "noisy input (no model)", "dtype": "uint16",
             **intensity_errors(tifffile.imread(test_input), target), "train_s": 0.0, "predict_s": 0.0}]
    checkouts = [("before", pathlib.Path(_BEFORE.value).resolve())] if _BEFORE.value else []
    for name, checkout in checkouts + [("this version", ROOT)]:
        rows.append(_experiment(name.replace(" ", "_"), checkout, scratch / "case" / "train", test_input, target,
                                scratch))
        rows[-1]["name"] = name
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"16-bit case: {_NUM_TRAIN.value} pairs of {_SIZE.value} px, {_STEPS.value} steps tiny EMDiffuse-n, "
          f"{_SAMPLER.value} {_SAMPLER_STEPS.value} steps, K=2, tile 32; CPU: {cpu}")
    print("| version | output dtype | mean offset (% of target 1-99 % range) | 1-99 % range error | train s | predict s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['dtype']} | {100 * r['mean_error']:.1f} % | {100 * r['range_error']:.1f} % | "
              f"{r['train_s']:.0f} | {r['predict_s']:.0f} |")
    (scratch / "intensity_16bit.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    app.run(main)

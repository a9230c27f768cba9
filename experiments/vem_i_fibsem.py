"""vEMDiffuse-i on the held-out FIB-SEM block: diffusion (mean of K, one sample, harmonised) vs linear and
cubic interpolation along z and the regression baseline; tables and plots by launch/evaluate.py.

  python experiments/fibsem_split.py --stack=../shared/data/fibsem-medulla-250.tif --workdir=W --z_factor=4
  python launch/train.py --config=configs/vemdiffuse_i.py:small --workdir=W/vemdiffuse_i_small_z4 \
      --config.data.input_path=W/data/train.tif --config.data.z_factor=4
  python launch/train.py --config=configs/regression_i.py:small --workdir=W/regression_i_small_z4 \
      --config.data.input_path=W/data/train.tif --config.data.z_factor=4
  python experiments/vem_i_fibsem.py --workdir=W --z_factor=4 [--num_samples=4 --sampler=dpm --steps=20]

Every prediction is made by launch/isotropic.py on W/data/test_input_z{Z}.tif (the test block subsampled in
z, never seen in training) and scored against W/data/test_truth_z{Z}.tif on the generated slices only.
Outputs: W/results_z{Z}[_c{CROP}][_n{N}]/{metrics.json, metrics.md, *.png}, predictions under W/pred_.../.
Rerunning skips predictions already made (isotropic.py resumes unfinished ones).
"""

import argparse
import pathlib
import subprocess
import sys

import numpy as np
import tifffile
from scipy import interpolate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def interpolate_z(stack: np.ndarray, z_factor: int, kind: str) -> np.ndarray:
    """(N, H, W) -> ((N - 1) Z + 1, H, W) by linear or cubic (not-a-knot spline) interpolation along z."""
    z_in = np.arange(len(stack)) * z_factor
    z_out = np.arange((len(stack) - 1) * z_factor + 1)
    data = stack.astype(np.float64)
    if kind == "linear":
        out = interpolate.interp1d(z_in, data, axis=0)(z_out)
    else:
        out = interpolate.CubicSpline(z_in, data, axis=0)(z_out)
    info = np.iinfo(stack.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(stack.dtype)


def isotropic(checkpoint: pathlib.Path, test_input: pathlib.Path, output: pathlib.Path, z_factor: int,
              args, *, num_samples: int, seed: int = 0, harmonize: bool = False) -> None:
    if (output / "mean.tif").exists():
        print(f"{output}: done before, kept")
        return
    cmd = [sys.executable, str(ROOT / "launch" / "isotropic.py"), f"--checkpoint={checkpoint}",
           f"--input={test_input}", f"--output={output}", f"--z_factor={z_factor}",
           f"--num_samples={num_samples}", f"--sampler={args.sampler}", f"--steps={args.steps}",
           f"--tile={args.tile}", f"--overlap={args.overlap}", f"--seed={seed}",
           f"--weights={args.weights}", "--harmonize" if harmonize else "--noharmonize"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--z_factor", type=int, default=4)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--sampler", default="dpm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--block", type=int, default=28)
    parser.add_argument("--skip", default="", help="comma-separated predictions to leave out")
    parser.add_argument("--weights", default="ema", choices=["ema", "online"],
                        help="checkpoint weights to predict with (online: for runs too short for the EMA)")
    parser.add_argument("--crop", type=int, default=0, help="score only the central CROP x CROP px (cheaper)")
    parser.add_argument("--input_slices", type=int, default=0,
                        help="score only the first N input slices' span, (N - 1) Z + 1 slices (cheaper)")
    parser.add_argument("--models", default="vemdiffuse_i_small,regression_i_small,vemdiffuse_i_small_residual",
                        help="training workdirs W/<name>_z{Z} to predict with (those without checkpoints skipped)")
    args = parser.parse_args()
    work, z = pathlib.Path(args.workdir), args.z_factor
    skip = set(filter(None, args.skip.split(",")))
    test_input, truth = work / "data" / f"test_input_z{z}.tif", work / "data" / f"test_truth_z{z}.tif"
    tag = f"z{z}" + (f"_c{args.crop}" if args.crop else "") + (f"_n{args.input_slices}" if args.input_slices else "") \
        + ("_online" if args.weights == "online" else "")
    pred = work / f"pred_{tag}"
    pred.mkdir(parents=True, exist_ok=True)
    if args.crop or args.input_slices:
        for name, path, step in (("test_input", test_input, 1), ("test_truth", truth, z)):
            volume = tifffile.imread(path)
            if args.input_slices:
                volume = volume[:(args.input_slices - 1) * step + 1]
            if args.crop:
                y0, x0 = (volume.shape[1] - args.crop) // 2, (volume.shape[2] - args.crop) // 2
                volume = volume[:, y0:y0 + args.crop, x0:x0 + args.crop]
            tifffile.imwrite(pred / f"{name}.tif", volume)
        test_input, truth = pred / "test_input.tif", pred / "test_truth.tif"
    stack = tifffile.imread(test_input)
    predictions, stds = {}, {}
    for kind in ("linear", "cubic"):
        path = pred / f"{kind}.tif"
        tifffile.imwrite(path, interpolate_z(stack, z, kind))
        predictions[kind] = path
    runs = {}
    for model in filter(None, args.models.split(",")):
        checkpoint = work / f"{model}_z{z}"
        if model.startswith("regression"):
            runs[model] = (checkpoint, 1, False)
            continue
        runs[f"{model}_mean_K{args.num_samples}"] = (checkpoint, args.num_samples, False)
        runs[f"{model}_mean_K{args.num_samples}_harmonized"] = (checkpoint, args.num_samples, True)
        runs[f"{model}_one_sample"] = (checkpoint, 1, False)
    for name, (checkpoint, k, harmonize) in runs.items():
        steps = checkpoint / "checkpoints"
        if name in skip or not (steps.is_dir() and any(p.name.isdigit() for p in steps.iterdir())):
            print(f"{name}: skipped ({checkpoint} has no checkpoints)" if name not in skip else f"{name}: skipped")
            continue
        isotropic(checkpoint, test_input, pred / name, z, args, num_samples=k, harmonize=harmonize)
        predictions[name] = pred / name / "mean.tif"
        if k > 1:
            stds[name] = pred / name / "std.tif"
    cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), f"--truth={truth}",
           f"--output={work / f'results_{tag}'}", f"--z_factor={z}", "--voxel_size=10,10,10",
           f"--block={args.block}", f"--input={test_input}"]
    cmd += [f"--prediction={n}={p}" for n, p in predictions.items()]
    cmd += [f"--std={n}={p}" for n, p in stds.items()]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()

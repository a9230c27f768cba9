"""Train / test split of the FIB-SEM stack for the isotropic-reconstruction experiments (docs/results.md).

  python experiments/fibsem_split.py --stack=../shared/data/fibsem-medulla-250.tif --workdir=runs/exp \
      [--z_factor=4]

Writes to WORKDIR/data:
  train.tif        z 0..174 of the stack (all of y, x): the only part any model is trained on
  test_truth.tif   z 193.. (a gap of 18 slices to the training part), y, x 69..181 (112 x 112 px); its depth
                   is (N - 1) * z_factor + 1, so the subsampled test input has N slices
  test_input.tif   test_truth subsampled in z (every z_factor-th slice): what the models and the
                   interpolation baselines see at test time
"""

import argparse
import pathlib

import numpy as np
import tifffile

TRAIN_END = 175       # z < 175: training
TEST_START = 193      # z >= 193: test (slices 175..192 are used by nothing)
TEST_XY = slice(69, 181)


def split(stack: np.ndarray, z_factor: int) -> dict:
    test = stack[TEST_START:, TEST_XY, TEST_XY]
    n = (len(test) - 1) // z_factor + 1
    test = test[:(n - 1) * z_factor + 1]
    return {"train": stack[:TRAIN_END], "test_truth": test, "test_input": test[::z_factor]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--z_factor", type=int, default=4)
    args = parser.parse_args()
    stack = tifffile.imread(args.stack)
    out = pathlib.Path(args.workdir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, array in split(stack, args.z_factor).items():
        suffix = "" if name == "train" else f"_z{args.z_factor}"
        tifffile.imwrite(out / f"{name}{suffix}.tif", np.ascontiguousarray(array))
        print(f"{out / (name + suffix)}.tif: {array.shape} {array.dtype}")


if __name__ == "__main__":
    main()

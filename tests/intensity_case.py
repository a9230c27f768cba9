"""The 16-bit intensity case of issue 8, shared by tests/test_intensity_16bit.py and bench/intensity_16bit.py.

Targets are FIB-SEM slices (8-bit, ../shared/data) as 16-bit: 100 x slice + 5000. Inputs are dimmer and
noisier, as a short dwell time gives: 0.5 x target + 2000 with Poisson-Gaussian noise (shot noise of
`electrons` per 10,000 intensity units, Gaussian read noise `read_sigma` units). The held-out pair is a
slice far from the training slices.
"""

import pathlib

import numpy as np
import tifffile


def noisy_input(target: np.ndarray, rng: np.random.Generator, electrons: float = 100.0,
                read_sigma: float = 300.0) -> np.ndarray:
    """0.5 x target + 2000 with Poisson-Gaussian noise, as uint16."""
    clean = 0.5 * target.astype(np.float64) + 2000.0
    gain = 10_000.0 / electrons
    noisy = rng.poisson(clean / gain) * gain + rng.normal(0.0, read_sigma, clean.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def write_case(stack: np.ndarray, folder: pathlib.Path, num_train: int, size: int, seed: int = 0):
    """Writes folder/train/{img,gt}/NN.tif (num_train pairs of size x size) and folder/test/{img,gt}/test.tif
    from the 8-bit (Z, Y, X) `stack`; returns (held-out input path, held-out target array)."""
    rng = np.random.default_rng(seed)
    z_train = np.linspace(0, stack.shape[0] * 0.7, num_train).astype(int)
    for split in ("train", "test"):
        for kind in ("img", "gt"):
            (folder / split / kind).mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(z_train):
        target = stack[z, :size, :size].astype(np.uint16) * 100 + 5000
        tifffile.imwrite(folder / "train" / "gt" / f"{i:02d}.tif", target)
        tifffile.imwrite(folder / "train" / "img" / f"{i:02d}.tif", noisy_input(target, rng))
    z_test = stack.shape[0] - 1
    target = stack[z_test, -size:, -size:].astype(np.uint16) * 100 + 5000
    tifffile.imwrite(folder / "test" / "gt" / "test.tif", target)
    tifffile.imwrite(folder / "test" / "img" / "test.tif", noisy_input(target, rng))
    return folder / "test" / "img" / "test.tif", target


def intensity_errors(restored: np.ndarray, target: np.ndarray) -> dict:
    """The issue's measures: the mean offset as a fraction of the target's 1-99 % range, and the relative
    error of the 1-99 % range (contrast)."""
    lo, hi = np.percentile(target.astype(np.float64), [1, 99])
    rlo, rhi = np.percentile(restored.astype(np.float64), [1, 99])
    return {"mean_error": abs(float(restored.mean()) - float(target.mean())) / (hi - lo),
            "range_error": abs((rhi - rlo) - (hi - lo)) / (hi - lo)}

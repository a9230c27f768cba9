"""EMDiffuse-n test on FIB-SEM slices degraded with the documented noise model, against classical denoisers.

  python experiments/fibsem_split.py --stack=../shared/data/fibsem-medulla-250.tif --workdir=W
  python experiments/denoise_fibsem.py --stack=../shared/data/fibsem-medulla-250.tif --workdir=W \
      [--doses=20,5]

Test images: every 8th slice of the test part of the stack (z >= 193, never used in training; the split of
experiments/fibsem_split.py), 250 x 250 px. Noisy inputs: data.degrade.poisson_gaussian (shot noise at
`dose` electrons per pixel for full intensity, read noise sigma 0.02) at each dose, seed 0. Compared: the
noisy input, a Gaussian filter (sigma 1 px) and non-local means (scikit-image, sigma estimated from the
image by Immerkaer's method), all scored by launch/evaluate.py; a trained model's prediction of
W/denoise_dose{D}/noisy.tif (launch/predict.py) is scored the same way with one more --prediction. Outputs:
W/denoise_dose{D}/{noisy.tif, truth.tif, metrics.json, metrics.md, *.png}.
"""

import argparse
import pathlib
import subprocess
import sys

import numpy as np
import tifffile
from scipy import ndimage
from skimage import restoration

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from emdiffuse_jax.data import degrade  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_START = 193   # experiments/fibsem_split.py: z >= 193 is the test part


def noise_sigma(img: np.ndarray) -> float:
    """Immerkaer's (1996) estimate of white-noise sigma from the Laplacian-like residual of one image."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    residual = ndimage.convolve(img, kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(residual).sum() / (6.0 * residual.size))


def nl_means(noisy: np.ndarray) -> np.ndarray:
    """Non-local means per slice (unit intensities), with the noise sigma estimated from each image."""
    out = []
    for img in noisy:
        sigma = noise_sigma(img)
        out.append(restoration.denoise_nl_means(img, h=0.8 * sigma, sigma=sigma, patch_size=5,
                                                patch_distance=6, fast_mode=True))
    return np.stack(out)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--doses", default="20,5")
    args = parser.parse_args()
    work = pathlib.Path(args.workdir)
    clean = tifffile.imread(args.stack)[TEST_START::8]
    unit = clean.astype(np.float64) / 255.0
    for dose in (float(d) for d in args.doses.split(",")):
        out = work / f"denoise_dose{dose:g}"
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        noisy = np.stack([degrade.poisson_gaussian(x, rng, dose=dose) for x in unit])
        files = {"truth": to_uint8(unit), "noisy": to_uint8(noisy),
                 "gaussian_sigma1": to_uint8(ndimage.gaussian_filter(noisy, (0, 1, 1))),
                 "nl_means": to_uint8(nl_means(noisy))}
        for name, array in files.items():
            tifffile.imwrite(out / f"{name}.tif", array)
        predictions = {n: out / f"{n}.tif" for n in files if n != "truth"}
        cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), f"--truth={out / 'truth.tif'}",
               f"--output={out}", "--voxel_size=10,10,10", "--block=50"]
        cmd += [f"--prediction={n}={p}" for n, p in predictions.items()]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()

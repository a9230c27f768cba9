"""Degradation models that turn clean EM data into training inputs (formulas in docs/data.md).

All functions take float images with intensities in [0, 1] (use `to_unit` / `from_unit` to go from and
to a dtype's range), are pure functions of their arguments and an explicit numpy Generator, and return
float64 arrays. `parse_degradation` turns the `--degrade` flag string into a callable.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
from scipy import ndimage


def to_unit(x: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Intensities to [0, 1]: integer dtypes by their full range, floats by min/max unless lo/hi given."""
    x = np.asarray(x)
    if lo is None or hi is None:
        if x.dtype.kind in "ui":
            info = np.iinfo(x.dtype)
            lo, hi = float(info.min), float(info.max)
        else:
            lo, hi = float(x.min()), float(x.max())
    return (x.astype(np.float64) - lo) / max(hi - lo, 1e-12)


def from_unit(x: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] floats back to an integer dtype's full range (rounded, clipped) or to a float dtype."""
    dtype = np.dtype(dtype)
    x = np.clip(x, 0.0, 1.0)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.rint(x * (info.max - info.min) + info.min).astype(dtype)
    return x.astype(dtype)


def poisson_gaussian(x: np.ndarray, rng: np.random.Generator, dose: float = 20.0,
                     read_sigma: float = 0.02, baseline: float = 0.0) -> np.ndarray:
    """Shot noise at `dose` electrons per pixel for intensity 1, plus Gaussian read noise.

    y = clip( (Poisson(dose * (b + (1 - b) x)) / dose) + N(0, read_sigma^2), 0, 1 ).
    Lower dose = shorter dwell time = noisier (the SNR of a pixel of intensity x is sqrt(dose * x)).
    """
    if dose <= 0:
        raise ValueError(f"dose must be positive, got {dose}")
    signal = baseline + (1.0 - baseline) * np.clip(x, 0.0, 1.0)
    y = rng.poisson(dose * signal) / dose
    if read_sigma > 0:
        y = y + rng.normal(0.0, read_sigma, x.shape)
    return np.clip(y, 0.0, 1.0)


def scan_line_noise(x: np.ndarray, rng: np.random.Generator, offset_sigma: float = 0.02,
                    jitter_sigma: float = 0.3) -> np.ndarray:
    """SEM raster artefacts: each row r gets a brightness offset o_r ~ N(0, offset_sigma^2) and a
    horizontal sub-pixel shift d_r ~ N(0, jitter_sigma^2) (linear interpolation, edge clamped):
    y[r, c] = x[r, c - d_r] + o_r."""
    h, w = x.shape
    cols = np.arange(w)[None, :] - rng.normal(0.0, jitter_sigma, (h, 1))
    cols = np.clip(cols, 0, w - 1)
    c0 = np.floor(cols).astype(int)
    c1 = np.minimum(c0 + 1, w - 1)
    f = cols - c0
    rows = np.arange(h)[:, None]
    y = (1 - f) * x[rows, c0] + f * x[rows, c1]
    return y + rng.normal(0.0, offset_sigma, (h, 1))


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian point-spread function of standard deviation `sigma` pixels (reflecting borders)."""
    return ndimage.gaussian_filter(np.asarray(x, np.float64), sigma, mode="reflect") if sigma > 0 else x


def downsample2(x: np.ndarray) -> np.ndarray:
    """x2 downsampling by 2x2 block averaging: y[i, j] = mean(x[2i:2i+2, 2j:2j+2]).

    This is what a bilinear resize to half size with half-pixel centres computes, as the reference did
    to build its half-resolution targets; odd trailing rows/columns are dropped.
    """
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = np.asarray(x[:h, :w], np.float64)
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def _upsample_axis(x: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return (1 - f) * np.take(x, i0, axis) + f * np.take(x, i1, axis)


def upsample2_bilinear(x: np.ndarray) -> np.ndarray:
    """x2 bilinear upsampling with half-pixel centres and clamped edges (reference section 4.3).

    Output pixel i samples the input at (i + 0.5) / 2 - 0.5, i.e. weights (3/4, 1/4); the same result
    as PIL's bilinear resize used by the reference, without its rounding to uint8. Works on (H, W, ...).
    """
    x = np.asarray(x, np.float64)
    return _upsample_axis(_upsample_axis(x, 0), 1)


def z_subsample(volume: np.ndarray, factor: int, thickness: int = 1, offset: int = 0) -> np.ndarray:
    """Keeps every `factor`-th slice from `offset`: y_k = mean_{j in J} x_{offset + k factor + j}.

    J is `thickness` consecutive offsets centred on 0 (thickness 1 = plain subsampling; thickness = factor
    simulates sections that integrate their whole thickness). Slices beyond the ends are reflected.
    """
    if factor < 1 or thickness < 1:
        raise ValueError(f"factor {factor} and thickness {thickness} must be >= 1")
    volume = np.asarray(volume)
    keep = np.arange(offset, volume.shape[0], factor)
    if thickness == 1:
        return volume[keep].astype(np.float64)
    js = np.arange(thickness) - (thickness - 1) // 2
    idx = keep[:, None] + js[None, :]
    n = volume.shape[0]
    idx = np.abs(idx)
    idx = np.where(idx >= n, 2 * (n - 1) - idx, idx)
    return volume[np.clip(idx, 0, n - 1)].astype(np.float64).mean(axis=1)


def parse_degradation(spec: str | None, task: str) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """`--degrade` string -> f(clean_unit_image, rng) -> degraded unit image.

    Spec: steps joined by '+', each `name[:key=value,...]`, applied left to right, e.g.
    "blur:sigma=1+poisson:dose=10,read_sigma=0.01+scanline:offset_sigma=0.02". Names: poisson, scanline,
    blur, down2 (x2 block-average downsampling). Default: 'poisson:dose=20' for denoise and
    'down2+poisson:dose=40' for superres.
    """
    if not spec:
        spec = {"denoise": "poisson:dose=20", "superres": "down2+poisson:dose=40"}.get(task)
        if spec is None:
            raise ValueError(f"no default degradation for task '{task}'")
    steps = []
    for part in spec.split("+"):
        name, _, args = part.strip().partition(":")
        kwargs = {}
        for item in filter(None, args.split(",")):
            key, _, value = item.partition("=")
            try:
                kwargs[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"--degrade '{spec}': '{item}' is not key=number") from None
        fn = {"poisson": poisson_gaussian, "scanline": scan_line_noise, "blur": _blur_step,
              "down2": _down_step}.get(name.strip())
        if fn is None:
            raise ValueError(f"--degrade '{spec}': unknown step '{name}' (use poisson, scanline, blur, down2)")
        known = [k for k in inspect.signature(fn).parameters if k not in ("x", "rng")]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"--degrade '{spec}': step '{name.strip()}' has no option {unknown[0]!r} "
                             f"(options: {', '.join(known) or 'none'})")
        try:  # a dry run on a tiny image: out-of-range values fail now, with the step named
            fn(np.full((4, 4), 0.5), np.random.default_rng(0), **kwargs)
        except ValueError as exc:
            raise ValueError(f"--degrade '{spec}': step '{name.strip()}': {exc}") from None
        steps.append((fn, kwargs))
    if task == "superres" and not any(fn is _down_step for fn, _ in steps):
        raise ValueError(f"--degrade '{spec}': super-resolution needs a 'down2' step")

    def degrade(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for fn, kwargs in steps:
            x = fn(x, rng, **kwargs)
        return x

    degrade.spec = spec
    return degrade


def _blur_step(x, rng, sigma: float = 1.0):
    return blur(x, sigma)


def _down_step(x, rng):
    return downsample2(x)

"""Intensity normalisation to the network's [-1, 1] range, with stored parameters to map outputs back.

Modes (lo, hi are stored in `NormParams` together with the input dtype):
  'uint8'      reference parity: lo = 0, hi = 255 (uint8 input only), y = x / 127.5 - 1.
  'minmax'     lo = min(x), hi = max(x).
  'percentile' lo, hi = the `low`, `high` percentiles of x (default 0.1 and 99.9); values outside are
               clipped to [-1, 1] unless clip=False.
All modes: y = 2 (x - lo) / (hi - lo) - 1, and `denormalize` computes x = (y + 1) (hi - lo) / 2 + lo,
rounded and clipped to the dtype's range for integer dtypes, so normalise-then-denormalise returns the
input exactly for 8/16-bit data (for 'percentile', for values inside [lo, hi] or with clip=False).
A constant input (hi == lo) uses hi = lo + 1 so that it maps to -1 instead of dividing by zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

MODES = ("uint8", "minmax", "percentile")


@dataclasses.dataclass(frozen=True)
class NormParams:
    """What `denormalize` needs: mode, the [lo, hi] that maps to [-1, 1], input dtype, clipping."""

    mode: str
    lo: float
    hi: float
    dtype: str
    clip: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NormParams":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def sample_values(x: Any, max_values: int) -> np.ndarray:
    """All of a small array, or a strided subset of a large or lazy one (for fitting lo/hi)."""
    shape = x.shape
    total = int(np.prod(shape))
    if total <= max_values:
        return np.asarray(x[...] if not isinstance(x, np.ndarray) else x)
    if len(shape) == 3:  # volumes: a spread of whole slices, then a pixel stride
        n = max(1, min(shape[0], max_values // int(np.prod(shape[1:])) + 1, 16))
        zs = np.unique(np.linspace(0, shape[0] - 1, n).round().astype(int))
        planes = np.stack([np.asarray(x[int(z)]) for z in zs])
        step = max(1, int(np.ceil(planes.size / max_values)))
        return planes.reshape(-1)[::step]
    step = max(1, int(np.ceil(total / max_values)))
    return np.asarray(x).reshape(-1)[::step]


def fit_normalization(x: Any, mode: str = "percentile", *, low: float = 0.1, high: float = 99.9,
                      clip: bool | None = None, max_values: int = 1 << 24) -> NormParams:
    """Parameters for `x` (numpy or lazy array-like); large inputs are fitted on a strided subset."""
    return fit_values(x, mode, np.dtype(x.dtype), low=low, high=high, clip=clip, max_values=max_values)


def fit_values(x: Any, mode: str, dtype: Any, *, low: float = 0.1, high: float = 99.9,
               clip: bool | None = None, max_values: int = 1 << 24) -> NormParams:
    """Parameters fitted on the values of `x` (an array, a lazy array or a flat pooled sample of several
    images) for data of `dtype`; arrays over `max_values` values are fitted on a strided subset."""
    if mode not in MODES:
        raise ValueError(f"normalisation mode '{mode}' unknown; use one of {MODES}")
    dtype = np.dtype(dtype)
    if mode == "uint8":
        if dtype != np.uint8:
            raise ValueError(f"normalisation 'uint8' needs 8-bit data, got {dtype}; use 'minmax' or "
                             "'percentile' to keep 16-bit or float data at full precision")
        return NormParams("uint8", 0.0, 255.0, dtype.str, bool(clip) if clip is not None else False)
    values = sample_values(x, max_values).astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise ValueError("input holds NaN or infinite values; fill or mask them before normalising")
    if mode == "minmax":
        lo, hi = float(values.min()), float(values.max())
    else:
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    return NormParams(mode, lo, hi, dtype.str, (mode == "percentile") if clip is None else bool(clip))


def apply_normalization(x: Any, params: NormParams) -> np.ndarray:
    """Maps x to float32 with [lo, hi] -> [-1, 1] (clipped if params.clip)."""
    x = np.asarray(x)
    y = (x.astype(np.float64) - params.lo) * (2.0 / (params.hi - params.lo)) - 1.0
    if params.clip:
        np.clip(y, -1.0, 1.0, out=y)
    return y.astype(np.float32)


def normalize(x: Any, mode: str = "percentile", **kwargs) -> tuple[np.ndarray, NormParams]:
    """Fits and applies a normalisation; returns (float32 array, params for `denormalize`)."""
    params = fit_normalization(x, mode, **kwargs)
    return apply_normalization(x, params), params


def denormalize(y: Any, params: NormParams, dtype: Any = None) -> np.ndarray:
    """Back to the input's range and dtype (or `dtype`): rounded and clipped for integer types."""
    dtype = np.dtype(dtype if dtype is not None else params.dtype)
    x = (np.asarray(y, np.float64) + 1.0) * ((params.hi - params.lo) / 2.0) + params.lo
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return x.astype(dtype)

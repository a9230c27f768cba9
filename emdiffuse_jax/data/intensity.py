"""The intensity contract: how a model's inputs and targets map to [-1, 1], and its outputs back.

A model learns to map inputs, normalised one way, to targets, normalised another way; its outputs are
therefore in the *targets'* normalised units. So the contract is two affine maps (`NormParams`), both
fitted once on the whole training set (not per image):

  input   raw input  -> [-1, 1]   fitted on the training inputs (for inputs made by degrading clean
                                   images: the target map, as the degradation works in target units)
  target  raw target -> [-1, 1]   fitted on the training targets; outputs map back with its inverse, into
                                   the targets' units and dtype

Fitting per dataset rather than per image keeps the brightness and contrast relation between input and
target (a dimmer, noisier input, as short-dwell SEM gives) in the data, where the network learns it;
per-image percentiles would erase it, and reading outputs with the input's percentiles puts them on the
wrong scale. The contract is stored in every checkpoint (meta "intensity") and the workdir's config.json;
training, validation, prediction and calibration all apply it through this module.

At prediction (`prediction_mapping`): 'checkpoint' applies the stored contract as is; 'match' maps each
input by its own statistics onto the training inputs' range (for data acquired with other detector
settings) and still reads the outputs in target units; 'uint8' | 'minmax' | 'percentile' are the
per-image mappings of earlier versions (input and output both by the input's own statistics), which is
also what 'auto' falls back to for checkpoints without a contract (with a warning) and for the published
.pth weights (whose own contract is uint8 for 8-bit data, i.e. exactly that).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from emdiffuse_jax.data.normalize import MODES, NormParams, apply_normalization, denormalize, fit_normalization
from emdiffuse_jax.data.normalize import fit_values, sample_values

log = logging.getLogger(__name__)

VERSION = 1
META_KEY = "intensity"
PREDICTION_MODES = ("auto", "checkpoint", "match") + MODES
# Fraction of an input's pixels allowed outside the training inputs' range before a warning.
OUT_OF_RANGE_WARNING = 0.05


def default_mode(dtypes: Sequence[Any]) -> str:
    """'uint8' (the reference mapping) when all data is 8-bit, else 'percentile'."""
    return "uint8" if all(np.dtype(d) == np.uint8 for d in dtypes) else "percentile"


@dataclasses.dataclass(frozen=True)
class Intensity:
    """The input map (raw input -> [-1, 1]) and the target map (raw target <-> [-1, 1]) of one model."""

    input: NormParams
    target: NormParams

    def input_to_model(self, x: Any) -> np.ndarray:
        return apply_normalization(x, self.input)

    def target_to_model(self, x: Any) -> np.ndarray:
        return apply_normalization(x, self.target)

    def target_to_unit(self, x: Any) -> np.ndarray:
        """Raw target-unit intensities to [0, 1] units (those of the std maps and uncertainty scores)."""
        return (self.target_to_model(x).astype(np.float64) + 1.0) / 2.0

    def output_from_model(self, y: Any, dtype: Any = None) -> np.ndarray:
        """Network outputs in [-1, 1] (clipped there) to target units and dtype (default: the targets')."""
        return denormalize(np.clip(y, -1.0, 1.0), self.target, dtype)

    def to_dict(self) -> dict:
        return {"version": VERSION, "input": self.input.to_dict(), "target": self.target.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Intensity":
        if d.get("version") != VERSION:
            raise ValueError(f"intensity contract version {d.get('version')!r} is not supported (this code "
                             f"reads version {VERSION}); use the emdiffuse_jax version that trained the model")
        return cls(NormParams.from_dict(d["input"]), NormParams.from_dict(d["target"]))

    @classmethod
    def shared(cls, params: NormParams) -> "Intensity":
        """One map for both (vEM: input and target slices come from the same volume)."""
        return cls(params, params)


def fit_pooled(images: Sequence[Any], mode: str, *, max_values: int = 1 << 24, **kwargs) -> NormParams:
    """One NormParams for a set of images (arrays or lazy volumes): fitted on their pooled values, each
    image contributing an even share of at most `max_values` values."""
    if not images:
        raise ValueError("no images to fit an intensity mapping on")
    dtype = np.result_type(*[np.dtype(x.dtype) for x in images])
    if mode == "uint8" or len(images) == 1:  # fixed map / nothing to pool
        return fit_values(images[0], mode, dtype, max_values=max_values, **kwargs)
    share = max(1, max_values // len(images))
    pooled = np.concatenate([sample_values(x, share).reshape(-1) for x in images])
    return fit_values(pooled, mode, dtype, max_values=max_values, **kwargs)


def fit(targets: Sequence[Any], inputs: Sequence[Any] | None = None, mode: str | None = None,
        **kwargs) -> Intensity:
    """The contract of a training set: `targets` and their acquired `inputs` (None or empty when inputs
    are made from the targets by a degradation model: the input map is then the target map).
    mode None: 'uint8' when all data is 8-bit, else 'percentile' (0.1 and 99.9 %, clipped)."""
    inputs = list(inputs or [])
    mode = mode or default_mode([x.dtype for x in list(targets) + inputs])
    target = fit_pooled(list(targets), mode, **kwargs)
    return Intensity(fit_pooled(inputs, mode, **kwargs) if inputs else target, target)


def from_meta(meta: dict, where: str = "checkpoint") -> Intensity | None:
    """The contract stored in a checkpoint's meta; None (with a warning for our own checkpoints, silently
    for a published .pth, whose reference mapping the per-image 'uint8' mode reproduces) when absent."""
    stored = meta.get(META_KEY)
    if stored is not None:
        return Intensity.from_dict(stored)
    if meta.get("source") != "torch":
        log.warning("%s stores no intensity contract (trained before it existed, or on a prepared dataset "
                    "without one): every image is normalised by its own statistics and the output is read "
                    "back with them, so a brightness or contrast difference between the training inputs and "
                    "targets is lost; retrain to fix this", where)
    return None


def _check_dtype(raw: np.ndarray, params: NormParams) -> None:
    trained, got = np.dtype(params.dtype), np.dtype(raw.dtype)
    if trained.kind in "ui" and got != trained:
        raise ValueError(f"the model was trained on {trained} inputs but this image is {got}; convert "
                         f"it to {trained}, or pass --normalization=match to map its own intensity range onto "
                         "the training range")


def prediction_mapping(raw: np.ndarray, contract: Intensity | None, mode: str = "auto", *,
                       name: str = "image") -> Intensity:
    """The Intensity to apply to one prediction input `raw` (an image or a lazy volume): its `input` maps
    `raw` to the network, its `target` maps the outputs back (see the module docstring for the modes).
    ValueError for a mode the checkpoint cannot serve or an input of another integer dtype than the
    training inputs'; `name` (the input's) only labels the out-of-range warning."""
    if mode not in PREDICTION_MODES:
        raise ValueError(f"normalisation '{mode}' unknown; use one of {PREDICTION_MODES}")
    if mode == "auto":
        mode = "checkpoint" if contract is not None else default_mode([raw.dtype])
    if mode in ("checkpoint", "match"):
        if contract is None:
            raise ValueError(f"--normalization={mode} needs a checkpoint that stores an intensity "
                             "contract; this one does not (use uint8, minmax or percentile)")
        if mode == "match":
            own = fit_normalization(raw, "percentile" if contract.input.mode == "uint8" else contract.input.mode)
            # own statistics onto the training inputs' [-1, 1], outputs still in the target's units
            return Intensity(dataclasses.replace(own, clip=contract.input.clip), contract.target)
        _check_dtype(raw, contract.input)
        _warn_out_of_range(raw, contract.input, name)
        return contract
    params = fit_normalization(raw, mode)
    return Intensity.shared(params)


def _warn_out_of_range(raw: Any, params: NormParams, name: str) -> None:
    mapped = (sample_values(raw, 1 << 20).astype(np.float64) - params.lo) * (2.0 / (params.hi - params.lo)) - 1.0
    outside = float(np.mean(np.abs(mapped) > 1.0 + 1e-6)) if mapped.size else 0.0
    if outside > OUT_OF_RANGE_WARNING:
        log.warning("%s: %.0f %% of its pixels lie outside the training inputs' intensity range [%g, %g]; if it "
                    "was acquired with other detector settings, --normalization=match maps its own range onto "
                    "the training range", name, 100 * outside, params.lo, params.hi)

"""Brightness harmonisation of diffusion samples: each sample's low frequencies matched to the condition's.

Small or partly trained models disagree between samples mostly about overall brightness (measured on FIB-SEM:
52-58 grey levels between the samples of one 56 px quadrant), which dominates both their error and their
std. What the condition implies about the low frequencies is known: the input itself for denoising, the
upsampled input for super-resolution, the linear interpolation of the two input slices for a generated vEM
slice. Harmonising replaces each sample's low-pass part (Gaussian, sigma in pixels) by the reference's and
keeps the sample's own detail above it:

    harmonised = sample - G_sigma(sample) + G_sigma(reference)

one correction per sample (not one offset per tile for all samples), so the samples' std then measures
disagreement about structure. Pure NumPy/SciPy on (..., H, W) arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def default_sigma(tile: int) -> float:
    """The low-pass scale for a tile size: an eighth of the tile (8 px for 64 px tiles, 32 px for 256)."""
    return max(2.0, tile / 8.0)


def slice_reference(earlier, later, slice_index: int, z_factor: int) -> np.ndarray:
    """What two input slices imply for generated slice c (at depth (c + 1) / z_factor): linear interpolation."""
    if not 0 <= slice_index < z_factor - 1:
        raise ValueError(f"slice index {slice_index} is not among the {z_factor - 1} generated slices")
    w = (slice_index + 1) / z_factor
    return (1.0 - w) * np.asarray(earlier, np.float32) + w * np.asarray(later, np.float32)


def match_low_frequencies(samples, reference, sigma: float) -> np.ndarray:
    """samples (..., H, W) with their Gaussian low-pass (sigma px) replaced by that of reference (..., H, W).

    reference broadcasts against samples (one reference for all samples of a tile). Borders are reflected.
    """
    if not sigma > 0:
        raise ValueError(f"the harmonisation scale sigma must be > 0 pixels, got {sigma}")
    samples = np.asarray(samples, np.float32)
    reference = np.asarray(reference, np.float32)
    spatial = (0,) * (samples.ndim - 2) + (sigma, sigma)
    low = ndimage.gaussian_filter(samples, spatial, mode="reflect")
    ref_low = ndimage.gaussian_filter(reference, (0,) * (reference.ndim - 2) + (sigma, sigma), mode="reflect")
    return samples - low + ref_low

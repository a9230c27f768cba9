"""Fourier measures of a restoration against its ground truth: ring correlation and radial power spectra.

* Fourier ring correlation FRC(f) of two images a, b: per ring of spatial frequency f (cycles per pixel,
  0 to the Nyquist frequency 0.5), Re(sum A B*) / sqrt(sum |A|^2 sum |B|^2). Against the ground truth it
  says up to which frequency the prediction still carries the true structure. Resolution: 1 / f at the
  first ring (after the zero-frequency ring) where the curve falls below the threshold (default 1/7,
  the usual fixed threshold), linearly interpolated between rings; in pixels, and in nm with the pixel
  size. A curve that never falls below it reports the limit of its highest ring (the Nyquist limit of
  2 pixels for an even image size, n / floor(n / 2) for an odd shorter side n) and says it did not cross.
* Radially averaged power spectrum: mean |FFT|^2 per ring. The ratio of a prediction's power to the
  truth's in a high-frequency band tells how much fine detail is kept: a regression to the mean loses it
  (ratio well below 1), realistic samples keep it (ratio near 1), noise adds to it (ratio above 1).

For the axial resolution of a volume (XZ views, first image axis = z) both measures take an optional
`cone="axial"`: only the Fourier coefficients within 45 degrees of the z axis (|f_z| >= |f_x|) count, so the
lateral detail of the input slices, which every method copies, does not mask what is missing along z.

Every image has its mean removed and is apodised with a 2D Hann window (the same for both images) so
that the image borders do not show up as false high-frequency content. Pure NumPy; images (H, W) or
stacks (N, H, W), whose per-ring sums are pooled over the stack.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FRC_THRESHOLD = 1.0 / 7.0
HIGH_FREQUENCY_BAND = (0.25, 0.5)   # cycles per pixel: from half the Nyquist frequency to Nyquist


def _stack(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or min(x.shape[1:]) < 8:
        raise ValueError(f"{name}: expected an image (H, W) or a stack (N, H, W) of at least 8 x 8 pixels, "
                         f"got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return x


def _spectra(x: np.ndarray) -> np.ndarray:
    """Centred, apodised 2D FFTs of a stack (N, H, W)."""
    h, w = x.shape[1:]
    window = np.outer(np.hanning(h), np.hanning(w))
    x = (x - x.mean(axis=(1, 2), keepdims=True)) * window
    return np.fft.fft2(x)


CONES = ("all", "axial")


def _rings(h: int, w: int, cone: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Ring index of every FFT coefficient and the ring centre frequencies (cycles per pixel).

    Rings are 1 / min(h, w) wide; frequencies beyond Nyquist along the shorter axis (the corners) are
    dropped (index -1), and with cone="axial" so is every coefficient further than 45 degrees from the
    first axis.
    """
    if cone not in CONES:
        raise ValueError(f"cone must be one of {CONES}, got {cone!r}")
    n = min(h, w)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    radius = np.sqrt(fy ** 2 + fx ** 2)
    index = np.rint(radius * n).astype(int)
    num = n // 2 + 1
    index[index >= num] = -1
    if cone == "axial":
        index[np.broadcast_to(np.abs(fy) < np.abs(fx), index.shape)] = -1
    return index, np.arange(num) / n


def _ring_sum(values: np.ndarray, index: np.ndarray, num: int) -> np.ndarray:
    keep = index >= 0
    return np.bincount(index[keep].ravel(), weights=values[keep].ravel(), minlength=num)[:num]


@dataclasses.dataclass(frozen=True)
class FrcResult:
    """An FRC curve and the resolution read from it."""
    frequencies: np.ndarray     # ring centres, cycles per pixel
    frc: np.ndarray
    threshold: float
    resolution_px: float        # 1 / crossing frequency; 2.0 when the curve never crosses
    crossed: bool               # False: stays above the threshold up to Nyquist (resolution is a bound)

    def resolution_nm(self, pixel_nm: float | None) -> float | None:
        return None if pixel_nm is None else self.resolution_px * float(pixel_nm)


def frc_curve(a, b, cone: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, FRC) of two images or stacks of equal shape; sums pooled over the stack."""
    a, b = _stack(a, "first image"), _stack(b, "second image")
    if a.shape != b.shape:
        raise ValueError(f"FRC needs images of one shape, got {a.shape} and {b.shape}")
    fa, fb = _spectra(a), _spectra(b)
    index, freqs = _rings(*a.shape[1:], cone)
    num = len(freqs)
    cross = sum(_ring_sum(np.real(fa[i] * np.conj(fb[i])), index, num) for i in range(len(a)))
    pa = sum(_ring_sum(np.abs(fa[i]) ** 2, index, num) for i in range(len(a)))
    pb = sum(_ring_sum(np.abs(fb[i]) ** 2, index, num) for i in range(len(a)))
    denom = np.sqrt(pa * pb)
    frc = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)
    return freqs, frc


def frc_resolution(freqs: np.ndarray, frc: np.ndarray, threshold: float = FRC_THRESHOLD) -> FrcResult:
    """Resolution from an FRC curve: 1 / frequency of its first crossing below `threshold` (ring 0 skipped)."""
    below = np.flatnonzero(frc[1:] < threshold)
    if below.size == 0:
        return FrcResult(freqs, frc, threshold, 1.0 / freqs[-1], crossed=False)
    i = int(below[0]) + 1
    if i == 1:
        f = freqs[1]
    else:   # linear interpolation between the last ring above and the first below
        f0, f1, c0, c1 = freqs[i - 1], freqs[i], frc[i - 1], frc[i]
        f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return FrcResult(freqs, frc, threshold, float(1.0 / f), crossed=True)


def frc(a, b, threshold: float = FRC_THRESHOLD, cone: str = "all") -> FrcResult:
    """FRC curve of two images (or stacks) and the resolution at `threshold`."""
    return frc_resolution(*frc_curve(a, b, cone), threshold)


def radial_power_spectrum(x, cone: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, mean |FFT|^2 per ring) of an image or a stack (rings averaged over the stack)."""
    x = _stack(x, "image")
    f = _spectra(x)
    index, freqs = _rings(*x.shape[1:], cone)
    num = len(freqs)
    power = sum(_ring_sum(np.abs(f[i]) ** 2, index, num) for i in range(len(x)))
    counts = _ring_sum(np.ones(index.shape), index, num) * len(x)
    return freqs, power / np.maximum(counts, 1)


def band_power_ratio(prediction, truth, band: tuple[float, float] = HIGH_FREQUENCY_BAND,
                     cone: str = "all") -> float:
    """Power of `prediction` over the power of `truth` in the frequency band [band[0], band[1]] (cycles/px)."""
    freqs, p_pred = radial_power_spectrum(prediction, cone)
    _, p_true = radial_power_spectrum(truth, cone)
    if np.shape(prediction) != np.shape(truth):
        raise ValueError(f"prediction {np.shape(prediction)} and truth {np.shape(truth)} differ in shape")
    sel = (freqs >= band[0]) & (freqs <= band[1])
    if not sel.any():
        raise ValueError(f"no frequency ring in the band {band} (cycles per pixel, 0 to 0.5)")
    return float(p_pred[sel].sum() / max(p_true[sel].sum(), 1e-300))

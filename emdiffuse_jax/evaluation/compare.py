"""Predictions on disk against their ground truth: the metrics table of launch/evaluate.py.

Inputs are images or stacks (N, H, W) of one shape in the user's units (any dtype): the ground truth,
one or more named predictions (a restored mean, a single sample, a baseline such as interpolation or the
regression model) and, optionally per prediction, its per-pixel std (as written by predict.py /
isotropic.py, in [0, 1] units of the intensity range).

* Intensities are mapped to [0, 1] with one data range (lo, hi) for all predictions: by default the
  dtype's full range for integer ground truth (0..255 for 8-bit, as scikit-image does) and the truth's
  min..max for float data.
* With z_factor (isotropic reconstructions, (N - 1) * Z + 1 slices), only the generated slices (index not
  a multiple of Z) enter PSNR, SSIM, MAE, the XY FRC, the spectra and the block statistics; per-slice PSNR
  is also reported against the distance to the nearest input slice. The XZ FRC and XZ power (the axial
  resolution) use whole XZ views, input slices included, restricted to the Fourier coefficients within 45
  degrees of the z axis (`fourier`, cone="axial").
* PSNR, SSIM and MAE are means over the evaluated images (slices) of the per-image values.
* With the anisotropic input (N slices) as well, each reconstruction is checked without ground truth: its
  every Z-th slice, i.e. the output subsampled back to the input's spacing, must reproduce the input
  (`input_max_abs_diff`, in the input's units; 0 for a reconstruction that keeps its input slices).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import tifffile

from emdiffuse_jax.data import io
from emdiffuse_jax.evaluation import blocks, fourier, metrics


def read_images(path: str | os.PathLike) -> np.ndarray:
    """An image (1, H, W) or a stack (N, H, W) from a TIFF/PNG, a folder of slices, Zarr or N5."""
    path = pathlib.Path(path)
    if not path.exists():
        raise io.DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            shape = tuple(s for s in tif.series[0].shape if s != 1)
        if len(shape) == 3 and shape[-1] not in (3, 4):
            return np.asarray(io.read_volume(path))
        return io.read_image(path)[None]
    if path.is_file():
        return io.read_image(path)[None]
    return np.asarray(io.read_volume(path))


def default_data_range(truth: np.ndarray) -> tuple[float, float]:
    """The full dtype range for integer data, else the truth's min..max."""
    if np.issubdtype(truth.dtype, np.integer):
        info = np.iinfo(truth.dtype)
        return float(info.min), float(info.max)
    lo, hi = float(np.min(truth)), float(np.max(truth))
    if hi <= lo:
        raise ValueError(f"the ground truth is constant ({lo}); pass data_range=(lo, hi) explicitly")
    return lo, hi


def generated_slices(depth: int, z_factor: int | None) -> np.ndarray:
    """Indices of the evaluated slices: all, or those between the input slices of an isotropic volume."""
    if not z_factor:
        return np.arange(depth)
    if z_factor < 2:
        raise ValueError(f"z_factor must be >= 2, got {z_factor}")
    if (depth - 1) % z_factor:
        raise ValueError(f"{depth} slices is not (N - 1) * {z_factor} + 1: crop the truth and predictions to "
                         "start and end on an input slice")
    return np.array([i for i in range(depth) if i % z_factor])


@dataclasses.dataclass
class Evaluated:
    """Metrics of one prediction (a row of the table) and its curves (for the plots)."""
    name: str
    row: dict
    curves: dict


def _unit(x: np.ndarray, data_range: tuple[float, float]) -> np.ndarray:
    lo, hi = data_range
    return (np.asarray(x, np.float64) - lo) / (hi - lo)


def _frc_entry(result: fourier.FrcResult, pixel_nm: float | None) -> dict:
    return {"px": result.resolution_px, "nm": result.resolution_nm(pixel_nm), "crossed": result.crossed}


def evaluate_one(name: str, prediction: np.ndarray, truth_unit: np.ndarray, data_range, *, std=None,
                 z_factor: int | None = None, voxel_size: tuple[float, float, float] | None = None,
                 block: int = 64, worst_fraction: float = blocks.WORST_FRACTION,
                 band: tuple[float, float] = fourier.HIGH_FREQUENCY_BAND) -> Evaluated:
    """Metrics of one prediction against the truth (already in [0, 1] units), see the module docstring."""
    if prediction.shape != truth_unit.shape:
        raise ValueError(f"prediction {name!r} has shape {prediction.shape}, the ground truth "
                         f"{truth_unit.shape}: crop both to the same region")
    pred = _unit(prediction, data_range)
    if not np.isfinite(pred).all():
        raise ValueError(f"prediction {name!r} holds NaN or infinite values")
    sel = generated_slices(len(pred), z_factor)
    p, t = pred[sel], truth_unit[sel]
    x, y = p[..., None].astype(np.float32), t[..., None].astype(np.float32)
    psnr = np.asarray(metrics.psnr(x, y, data_range=1.0), np.float64)
    ssim = np.asarray(metrics.ssim(x, y, data_range=1.0), np.float64)
    row = {"name": name, "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
           "mae": float(np.abs(p - t).mean()), "images": int(len(sel))}
    curves = {}
    lateral_nm = voxel_size[2] if voxel_size and voxel_size[1] == voxel_size[2] else None
    frc_xy = fourier.frc(p, t)
    row["frc_xy"] = _frc_entry(frc_xy, lateral_nm)
    curves["frc_xy"] = (frc_xy.frequencies.tolist(), frc_xy.frc.tolist())
    freqs, power = fourier.radial_power_spectrum(p)
    curves["spectrum_xy"] = (freqs.tolist(), power.tolist())
    row["hf_power_xy"] = fourier.band_power_ratio(p, t, band)
    if z_factor and len(pred) >= 8:   # an isotropic volume's XZ views (Y, Z, X): the axial direction
        axial_nm = voxel_size[2] if voxel_size and voxel_size[0] == voxel_size[2] else None
        pxz, txz = pred.transpose(1, 0, 2), truth_unit.transpose(1, 0, 2)
        frc_xz = fourier.frc(pxz, txz, cone="axial")
        row["frc_xz"] = _frc_entry(frc_xz, axial_nm)
        curves["frc_xz"] = (frc_xz.frequencies.tolist(), frc_xz.frc.tolist())
        row["hf_power_xz"] = fourier.band_power_ratio(pxz, txz, band, cone="axial")
    if z_factor:
        distance = np.minimum(sel % z_factor, z_factor - sel % z_factor)
        row["psnr_by_distance"] = {int(d): float(psnr[distance == d].mean()) for d in np.unique(distance)}
    if std is not None:
        std = np.asarray(std, np.float64)
        if std.shape != pred.shape:
            raise ValueError(f"std of {name!r} has shape {std.shape}, the prediction {pred.shape}")
        scores, errors = blocks.block_scores_errors(p, t, std[sel], block)
        st = blocks.score_error_stats(scores, errors, block, worst_fraction)
        row["score_error"] = st.to_dict()
        row["mean_score"] = float(scores.mean())
        curves["blocks"] = (scores.tolist(), errors.tolist())
    return Evaluated(name, row, curves)


def input_max_abs_diff(prediction: np.ndarray, inputs: np.ndarray, z_factor: int) -> float:
    """Largest |prediction[::Z] - input| (input units): does re-subsampling the output return the input?"""
    resampled = np.asarray(prediction)[::z_factor]
    if resampled.shape != np.shape(inputs):
        raise ValueError(f"the prediction subsampled by {z_factor} has shape {resampled.shape}, the input "
                         f"{np.shape(inputs)}: give the input the reconstruction was made from")
    return float(np.abs(resampled.astype(np.float64) - np.asarray(inputs, np.float64)).max())


def evaluate(truth: np.ndarray, predictions: dict[str, np.ndarray], stds: dict[str, np.ndarray] | None = None,
             *, inputs: np.ndarray | None = None, data_range: tuple[float, float] | None = None,
             z_factor: int | None = None,
             voxel_size: tuple[float, float, float] | None = None, block: int = 64,
             worst_fraction: float = blocks.WORST_FRACTION,
             band: tuple[float, float] = fourier.HIGH_FREQUENCY_BAND) -> dict:
    """The full comparison: {"settings", "rows", "curves"} (JSON-ready); see the module docstring."""
    stds = stds or {}
    unknown = sorted(set(stds) - set(predictions))
    if unknown:
        raise ValueError(f"std given for {unknown}, which are not among the predictions {sorted(predictions)}")
    if not predictions:
        raise ValueError("nothing to evaluate: give at least one prediction")
    truth = np.asarray(truth)
    data_range = tuple(float(v) for v in (data_range or default_data_range(truth)))
    if data_range[1] <= data_range[0]:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    truth_unit = _unit(truth, data_range)
    if inputs is not None and not z_factor:
        raise ValueError("the input-consistency check needs z_factor (the input is every Z-th output slice)")
    results = [evaluate_one(name, np.asarray(pred), truth_unit, data_range, std=stds.get(name),
                            z_factor=z_factor, voxel_size=voxel_size, block=block,
                            worst_fraction=worst_fraction, band=band) for name, pred in predictions.items()]
    if inputs is not None:
        for r in results:
            r.row["input_max_abs_diff"] = input_max_abs_diff(predictions[r.name], inputs, z_factor)
    freqs, power = fourier.radial_power_spectrum(truth_unit[generated_slices(len(truth_unit), z_factor)])
    settings = {"shape": list(truth.shape), "dtype": str(truth.dtype), "data_range": list(data_range),
                "z_factor": z_factor, "voxel_size_nm": list(voxel_size) if voxel_size else None,
                "block": block, "worst_fraction": worst_fraction, "high_frequency_band": list(band),
                "frc_threshold": fourier.FRC_THRESHOLD}
    return {"settings": settings, "rows": [r.row for r in results],
            "curves": {"truth": {"spectrum_xy": (freqs.tolist(), power.tolist())},
                       **{r.name: r.curves for r in results}}}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _frc_text(entry: dict | None) -> str:
    if entry is None:
        return "-"
    bound = "" if entry["crossed"] else "<= "
    text = f"{bound}{entry['px']:.2f} px"
    return text + (f" / {bound}{entry['nm']:.1f} nm" if entry["nm"] is not None else "")


def markdown_table(report: dict) -> str:
    """The rows of a report as a Markdown table (plus per-distance PSNR when z_factor was given)."""
    rows = report["rows"]
    has_std = any("score_error" in r for r in rows)
    has_xz = any("frc_xz" in r for r in rows)
    has_input = any("input_max_abs_diff" in r for r in rows)
    head = ["prediction", "PSNR (dB)", "SSIM", "MAE", "FRC XY"] + (["FRC XZ"] if has_xz else []) + \
        ["HF power XY"] + (["HF power XZ"] if has_xz else []) + \
        (["mean score", "Spearman", f"AUC worst {report['settings']['worst_fraction']:.0%}"] if has_std else []) + \
        (["input kept (max diff)"] if has_input else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], _fmt(r["psnr"], 2), _fmt(r["ssim"]), _fmt(r["mae"], 4), _frc_text(r["frc_xy"])]
        if has_xz:
            cells.append(_frc_text(r.get("frc_xz")))
        cells.append(_fmt(r["hf_power_xy"], 2))
        if has_xz:
            cells.append(_fmt(r.get("hf_power_xz"), 2))
        if has_std:
            se = r.get("score_error")
            cells += ([_fmt(r["mean_score"], 4), _fmt(se["spearman"]), _fmt(se["auc_worst"])] if se
                      else ["-", "-", "-"])
        if has_input:
            cells.append(_fmt(r.get("input_max_abs_diff"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    s = report["settings"]
    notes = [f"Intensities in [0, 1] units of the data range {s['data_range'][0]:g}..{s['data_range'][1]:g}; "
             f"{rows[0]['images']} evaluated images"
             + (f" (the generated slices of z_factor {s['z_factor']})" if s["z_factor"] else "") + ". "
             f"FRC: resolution at the 1/7 threshold ('<=' = never crossed, Nyquist bound). HF power: "
             f"prediction / truth power in {s['high_frequency_band'][0]:g}-{s['high_frequency_band'][1]:g} "
             "cycles/px."]
    if has_std:
        notes.append(f"Blocks of {s['block']} px: score = mean std, error = MAE; AUC for flagging the worst "
                     f"{s['worst_fraction']:.0%} of blocks by error.")
    text = "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
    with_distance = [r for r in rows if "psnr_by_distance" in r]
    if with_distance:
        distances = sorted({int(d) for r in with_distance for d in r["psnr_by_distance"]})
        text += ("\nPSNR (dB) by distance to the nearest input slice:\n\n| prediction | "
                 + " | ".join(f"d = {d}" for d in distances) + " |\n|" + "---|" * (len(distances) + 1) + "\n")
        for r in with_distance:
            by = {int(k): v for k, v in r["psnr_by_distance"].items()}
            text += f"| {r['name']} | " + " | ".join(_fmt(by.get(d), 2) for d in distances) + " |\n"
    return text

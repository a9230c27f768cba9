"""PNG figures of a comparison report (`compare.evaluate`): FRC curves, power spectra, score vs error.

Needs matplotlib, an optional extra: pip install "emdiffuse_jax[plots]". Files are written under a hidden
temporary name and renamed when complete.
"""

from __future__ import annotations

import pathlib

from emdiffuse_jax.evaluation import fourier


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError('the plots need matplotlib: pip install "emdiffuse_jax[plots]" (or pip install '
                          'matplotlib)') from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    tmp.replace(path)


def write_plots(report: dict, output: str | pathlib.Path) -> list[pathlib.Path]:
    """frc.png, spectrum.png and (when a prediction has a std) score_vs_error.png; returns the paths."""
    plt = _pyplot()
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = [r["name"] for r in report["rows"]]
    curves = report["curves"]
    written = []

    planes = [p for p in ("frc_xy", "frc_xz") if any(p in curves[n] for n in names)]
    fig, axes = plt.subplots(1, len(planes), figsize=(5.5 * len(planes), 4), squeeze=False)
    for ax, plane in zip(axes[0], planes):
        for n in names:
            if plane in curves[n]:
                f, c = curves[n][plane]
                ax.plot(f[1:], c[1:], label=n)
        ax.axhline(fourier.FRC_THRESHOLD, color="grey", ls="--", lw=1, label="1/7")
        ax.set(xlabel="spatial frequency (cycles / pixel)", ylabel="FRC with the ground truth",
               title=f"Fourier ring correlation, {plane[-2:].upper()} planes", ylim=(-0.1, 1.02))
        ax.legend(fontsize=8)
    _save(fig, output / "frc.png")
    plt.close(fig)
    written.append(output / "frc.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    f, p = curves["truth"]["spectrum_xy"]
    ax.semilogy(f[1:], p[1:], color="black", lw=2, label="ground truth")
    for n in names:
        f, p = curves[n]["spectrum_xy"]
        ax.semilogy(f[1:], p[1:], label=n)
    band = report["settings"]["high_frequency_band"]
    ax.axvspan(band[0], band[1], color="grey", alpha=0.1, label="high-frequency band")
    ax.set(xlabel="spatial frequency (cycles / pixel)", ylabel="radially averaged power",
           title="power spectrum, XY planes")
    ax.legend(fontsize=8)
    _save(fig, output / "spectrum.png")
    plt.close(fig)
    written.append(output / "spectrum.png")

    with_blocks = [n for n in names if "blocks" in curves[n]]
    if with_blocks:
        fig, axes = plt.subplots(1, len(with_blocks), figsize=(5.5 * len(with_blocks), 4), squeeze=False)
        rows = {r["name"]: r for r in report["rows"]}
        for ax, n in zip(axes[0], with_blocks):
            scores, errors = curves[n]["blocks"]
            se = rows[n]["score_error"]
            ax.scatter(scores, errors, s=8, alpha=0.6)
            ax.set(xlabel="block score (mean std)", ylabel="block MAE ([0, 1] units)",
                   title=f"{n}\nSpearman {se['spearman']:.2f}, AUC {se['auc_worst']:.2f}")
            ax.title.set_fontsize(9)
        _save(fig, output / "score_vs_error.png")
        plt.close(fig)
        written.append(output / "score_vs_error.png")
    return written

"""What the Colab notebooks (colab/*.ipynb) share: progress lines in the notebook, which accelerator runs,
and figures of a restoration with its self-assessment, each panel with a colour bar.

matplotlib is needed only here: ``pip install "emdiffuse_jax[notebooks]"``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def setup() -> str:
    """Shows our progress lines (training steps, ETA, tiles) in the notebook and says what JAX runs on."""
    import jax

    from emdiffuse_jax.cli import configure_logging

    configure_logging()
    devices = jax.devices()
    kind = devices[0].platform.upper()
    return f"JAX {jax.__version__} on {len(devices)} {kind} device(s): {devices[0].device_kind}"


def show(panels: Mapping[str, np.ndarray], *, cmaps: Mapping[str, str] | None = None,
         limits: Mapping[str, tuple[float, float]] | None = None, labels: Mapping[str, str] | None = None,
         width: float = 4.0):
    """One row of images, each with its colour bar (grey for intensities unless `cmaps` says otherwise);
    `limits` fixes a panel's colour range, `labels` names its colour bar's unit. Returns the figure."""
    import matplotlib.pyplot as plt

    cmaps, limits, labels = dict(cmaps or {}), dict(limits or {}), dict(labels or {})
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), width), squeeze=False)
    for ax, (title, image) in zip(axes[0], panels.items()):
        lo, hi = limits.get(title, (None, None))
        shown = ax.imshow(np.asarray(image), cmap=cmaps.get(title, "gray"), vmin=lo, vmax=hi)
        ax.set_title(title)
        ax.axis("off")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        if title in labels:
            bar.set_label(labels[title])
    fig.tight_layout()
    return fig


def show_assessment(input_image: np.ndarray, mean: np.ndarray, std: np.ndarray, reliability: np.ndarray,
                    threshold: float, truth: np.ndarray | None = None):
    """Input, mean of the K samples, per-pixel std and the local uncertainty score (reliability map) with
    the flagging threshold as the top of its colour range, plus the ground truth when known."""
    panels = {"input": input_image, "mean of K samples": mean}
    if truth is not None:
        panels["ground truth"] = truth
    panels.update({"std of K samples": std, "local uncertainty score": reliability})
    return show(panels, cmaps={"std of K samples": "magma", "local uncertainty score": "RdYlGn_r"},
                limits={"local uncertainty score": (0.0, 2 * threshold)},
                labels={"std of K samples": "[0, 1] intensity units",
                        "local uncertainty score": f"flagged above {threshold:g}"})

"""Console logging for the launch scripts: our progress lines at INFO, other libraries only from WARNING
(Orbax and TFDS log every file they touch)."""

import logging

from absl import logging as absl_logging


def configure_logging() -> logging.Logger:
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("emdiffuse_jax")
    ours.setLevel(logging.INFO)
    ours.handlers = [handler]
    ours.propagate = False
    return ours


class SamplingFlags:
    """The sampling, tiling and self-assessment flags that launch/predict.py and launch/isotropic.py share."""

    def __init__(self, item: str):
        from absl import flags

        self.num_samples = flags.DEFINE_integer(
            "num_samples", 2, f"Samples K per {item}; K >= 2 gives the uncertainty.")
        self.sampler = flags.DEFINE_enum("sampler", "ddpm", ["ddpm", "ddim", "dpm"], "Reverse-diffusion sampler.")
        self.steps = flags.DEFINE_integer(
            "steps", None, "Network evaluations per sample (default ddpm 1000, ddim 50, dpm 20).")
        self.eta = flags.DEFINE_float("eta", 0.0, "DDIM noise scale in [0, 1] (0 = deterministic).")
        self.seed = flags.DEFINE_integer("seed", 0, "Random seed (results are reproducible for a given seed).")
        self.tile = flags.DEFINE_integer("tile", 256, "Tile size in pixels (network input; multiple of 8).")
        self.overlap = flags.DEFINE_integer("overlap", 32, "Tile overlap in pixels, blended smoothly.")
        self.harmonize = flags.DEFINE_bool(
            "harmonize", False, "Match each tile's mean intensity to its input tile.")
        self.threshold = flags.DEFINE_float(
            "threshold", 0.12, f"Uncertainty score above which a {item} is flagged.")
        self.normalization = flags.DEFINE_enum(
            "normalization", "auto", ["auto", "uint8", "minmax", "percentile"],
            "Intensity mapping to [-1, 1]; auto = uint8 for 8-bit input, else percentile.")
        self.batch_per_device = flags.DEFINE_integer(
            "batch_per_device", 4, "Rows (tiles x samples) per device per call (halves on out-of-memory).")

    def check(self, argv) -> None:
        """Rejects stray arguments and out-of-range values before anything is loaded or written."""
        from absl import app

        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        tile, overlap = self.tile.value, self.overlap.value
        problems = [
            (self.num_samples.value < 1, f"--num_samples must be >= 1, got {self.num_samples.value}"),
            (self.steps.value is not None and self.steps.value < 2, f"--steps must be >= 2, got {self.steps.value}"),
            (not 0 <= self.eta.value <= 1, f"--eta must be in [0, 1], got {self.eta.value}"),
            (tile < 8 or tile % 8, f"--tile must be a positive multiple of 8 pixels, got {tile}"),
            (not 0 <= overlap < tile, f"--overlap must be in [0, --tile) pixels, got {overlap} (tile {tile})"),
            (not self.threshold.value >= 0, f"--threshold must be >= 0, got {self.threshold.value}"),
            (self.batch_per_device.value < 1, f"--batch_per_device must be >= 1, got {self.batch_per_device.value}"),
        ]
        for bad, message in problems:
            if bad:
                raise app.UsageError(message)

    def sampler_spec(self):
        from emdiffuse_jax import inference

        return inference.SamplerSpec(self.sampler.value, self.steps.value, eta=self.eta.value)

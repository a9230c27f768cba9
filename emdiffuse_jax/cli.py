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
        self.tile = flags.DEFINE_integer(
            "tile", None, "Tile size in pixels (default: the model's training patch size; a multiple of the "
            "network's down-sampling factor).")
        self.overlap = flags.DEFINE_integer(
            "overlap", None, "Tile overlap in pixels, below half the tile (default: tile / 4).")
        self.tiling = flags.DEFINE_enum(
            "tiling", "joint", ["joint", "independent"],
            "joint: every sample is one whole image (network predictions blended at every step); independent: "
            "tiles sampled on their own and blended afterwards (smoother samples along tile borders).")
        self.memory_limit_gb = flags.DEFINE_float(
            "memory_limit_gb", None, "Memory the sampler may plan for, GiB (default: 80% of the free memory: "
            "host RAM on CPU, device memory on GPU/TPU).")
        self.harmonize = flags.DEFINE_bool(
            "harmonize", False, "Match each tile's mean intensity to its input tile.")
        self.threshold = flags.DEFINE_float(
            "threshold", 0.12, f"Uncertainty score above which a {item} is flagged.")
        self.normalization = flags.DEFINE_enum(
            "normalization", "auto", ["auto", "uint8", "minmax", "percentile"],
            "Intensity mapping to [-1, 1]; auto = uint8 for 8-bit input, else percentile.")
        self.batch_per_device = flags.DEFINE_integer(
            "batch_per_device", None, "At most this many network rows (tiles x samples) per device per call "
            "(default: as many as the memory plan allows; halves on out-of-memory).")

    def check(self, argv) -> None:
        """Rejects stray arguments and K < 1 before anything is loaded."""
        from absl import app

        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if self.num_samples.value < 1:
            raise app.UsageError(f"--num_samples must be >= 1, got {self.num_samples.value}")
        if self.memory_limit_gb.value is not None and self.memory_limit_gb.value <= 0:
            raise app.UsageError(f"--memory_limit_gb must be positive, got {self.memory_limit_gb.value}")

    def sampler_spec(self):
        from emdiffuse_jax import inference

        return inference.SamplerSpec(self.sampler.value, self.steps.value, eta=self.eta.value)

    def restorer_options(self) -> dict:
        """Keyword arguments of `restore.make_restorer`: tiling mode and memory planning."""
        return dict(tiling=self.tiling.value, batch_per_device=self.batch_per_device.value,
                    memory_limit_gb=self.memory_limit_gb.value)

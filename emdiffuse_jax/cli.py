"""What every command-line program shares: how it runs (one-line errors, --help with its main flags, quiet
libraries), console logging, and the sampling flags of predict and isotropic.

A program is an absl ``main(argv)`` in ``emdiffuse_jax.programs``; ``run`` starts it for ``launch/X.py``
and for ``emdiffuse X`` alike.
"""

from __future__ import annotations

import difflib
import logging
import os
import pathlib
import re
import runpy
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags as absl_flags
from absl import logging as absl_logging

USAGE_EXIT_CODE = 2


def configure_logging() -> logging.Logger:
    """Our progress lines (logger "emdiffuse_jax") at INFO on stderr; absl, Orbax and TFDS only from
    WARNING (they log every file they touch). Also what a notebook calls to see training progress."""
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

        from emdiffuse_jax.data.intensity import PREDICTION_MODES

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
            "harmonize", False, "Match each sample's low frequencies (Gaussian, tile / 8 px) to what the input "
            "implies (the input; for volumes the linear interpolation of the two slices).")
        self.threshold = flags.DEFINE_float(
            "threshold", 0.12, f"Uncertainty score above which the {item} is flagged.")
        self.normalization = flags.DEFINE_enum(
            "normalization", "auto", list(PREDICTION_MODES),
            "Intensity mapping (docs/data.md section 2). auto = the checkpoint's intensity contract (outputs in "
            "the training targets' units), or per image without one; match = the input's own range onto the "
            "training inputs' range; uint8|minmax|percentile = per image, outputs in the input's units.")
        self.batch_per_device = flags.DEFINE_integer(
            "batch_per_device", None, "At most this many network rows (tiles x samples) per device per call "
            "(default: as many as the memory plan allows; halves on out-of-memory).")
        self.voxel_size = flags.DEFINE_list(
            "voxel_size", None, "Input voxel size in nm, Z,Y,X (or Y,X for 2D images); default: from the input's "
            "metadata. Written to every output (isotropic: z / z_factor; superres: y, x halved).")

    def check(self, argv) -> None:
        """Rejects stray arguments and out-of-range values before anything is loaded or written."""
        from absl import app

        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        problems = [   # tile and overlap are checked against the network (Restorer.resolve_tiling)
            (self.num_samples.value < 1, f"--num_samples must be >= 1, got {self.num_samples.value}"),
            (self.steps.value is not None and self.steps.value < 2, f"--steps must be >= 2, got {self.steps.value}"),
            (not 0 <= self.eta.value <= 1, f"--eta must be in [0, 1], got {self.eta.value}"),
            (not self.threshold.value >= 0, f"--threshold must be >= 0, got {self.threshold.value}"),
            (self.batch_per_device.value is not None and self.batch_per_device.value < 1,
             f"--batch_per_device must be >= 1, got {self.batch_per_device.value}"),
            (self.memory_limit_gb.value is not None and self.memory_limit_gb.value <= 0,
             f"--memory_limit_gb must be positive, got {self.memory_limit_gb.value}"),
        ]
        for bad, message in problems:
            if bad:
                raise app.UsageError(message)

    def voxel_size_nm(self, counts: tuple[int, ...]) -> tuple[float, ...] | None:
        """--voxel_size as floats (None when not given); a usage error unless it has one of `counts` values."""
        from absl import app

        if self.voxel_size.value is None:
            return None
        try:
            values = tuple(float(v) for v in self.voxel_size.value)
        except ValueError:
            values = ()
        if len(values) not in counts or min(values) <= 0:
            raise app.UsageError(f"--voxel_size={','.join(self.voxel_size.value)}: expected "
                                 f"{' or '.join(str(c) for c in counts)} positive numbers in nm (Z,Y,X or Y,X)")
        return values

    def sampler_spec(self):
        from emdiffuse_jax import inference

        return inference.SamplerSpec(self.sampler.value, self.steps.value, eta=self.eta.value)

    def restorer_options(self) -> dict:
        """Keyword arguments of `restore.make_restorer`: tiling mode and memory planning."""
        return dict(tiling=self.tiling.value, batch_per_device=self.batch_per_device.value,
                    memory_limit_gb=self.memory_limit_gb.value)


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache, so a second run of the same command skips most of the
    compilation (the EMDiffuse-n training step: about a minute on a 2-core CPU). Returns the cache folder.

    Default folder: $XDG_CACHE_HOME/emdiffuse_jax/xla (~/.cache/emdiffuse_jax/xla). A set
    JAX_COMPILATION_CACHE_DIR is left to JAX: it names another folder, or, set empty, turns the cache off.
    Call before the first compilation.
    """
    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ["JAX_COMPILATION_CACHE_DIR"] or None
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    folder = str(pathlib.Path(root) / "emdiffuse_jax" / "xla")
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder


def _log_unraisable(unraisable) -> None:
    """Errors Python cannot raise (in abandoned coroutines, e.g. Orbax's background reads of a damaged
    checkpoint after the program has already reported it in one line) go to the debug log, not to stderr
    as a traceback after the program's own error line."""
    logging.debug("ignored in %r: %r", unraisable.object, unraisable.exc_value)


def run(main: Callable[[list[str]], object], doc: str, argv: Sequence[str] | None = None) -> None:
    """Runs the absl program `main`: ``--help`` shows `doc` and the program's own flags (those defined in
    emdiffuse_jax, e.g. the shared sampling flags, not only the script's); a bad flag, a mistyped config
    override or an ``app.UsageError`` ends in one line on stderr (exit code 2) instead of a traceback or
    the whole docstring; libraries log from WARNING up; JAX's persistent compilation cache is on
    (`enable_compilation_cache`)."""
    argv = list(sys.argv if argv is None else argv)
    sys.argv[0] = argv[0]                     # absl's --help names the program and its key flags by argv[0]
    sys.modules["__main__"].__doc__ = doc     # absl's --help prints __main__'s docstring
    _make_key_flags(argv[0])
    if any(arg in ("-h", "--help", "--helpshort") for arg in argv[1:]):   # absl's own exits 1
        app.usage(shorthelp=True, writeto_stdout=True)
        sys.stdout.write("--helpfull lists every flag, the libraries' included.\n")
        sys.exit(0)

    def parse(args):
        try:
            return absl_flags.FLAGS(args)
        except absl_flags.Error as err:
            _usage_exit(_flag_error_line(str(err)))
        except (AttributeError, KeyError, TypeError, ValueError) as err:   # a --config.x override
            _usage_exit(_config_override_error_line(args, err))

    def guarded_main(args):
        configure_logging()
        enable_compilation_cache()
        sys.unraisablehook = _log_unraisable
        try:
            return main(args)
        except app.UsageError as err:
            _usage_exit(str(err))

    app.run(guarded_main, argv=argv, flags_parser=parse)


def _usage_exit(message: str) -> None:
    sys.stderr.write(f"error: {message} (--help lists the flags)\n")
    sys.exit(USAGE_EXIT_CODE)


def _make_key_flags(program: str) -> None:
    """Every flag defined by this package or the config flag is shown by --help (absl shows only the flags
    of the script itself, which for a thin launch/ script is none)."""
    flag_values = absl_flags.FLAGS
    for module, defined in flag_values.flags_by_module_dict().items():
        if module.startswith("emdiffuse_jax") or "config_flags" in module:
            for flag in defined:
                flag_values.register_key_flag_for_module(program, flag)


def _flag_error_line(message: str) -> str:
    """absl's flag-parsing message on one line: missing required flags are listed together."""
    missing = re.findall(r"Flag --(\w+) must have a value other than None", message)
    if missing:
        return "missing required flag" + ("s " if len(missing) > 1 else " ") + ", ".join(f"--{m}" for m in missing)
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _config_override_error_line(args: Sequence[str], err: Exception) -> str:
    """Names the ``--config.a.b=`` override that does not exist, with the closest existing field."""
    from emdiffuse_jax import configs

    config_arg = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    overrides = [a[2:].split("=", 1)[0] for a in args if a.startswith("--config.")]
    if config_arg is None or not overrides:
        return str(err).splitlines()[0]
    path, _, variant = configs.resolve(config_arg).partition(":")
    try:
        config = runpy.run_path(path)["get_config"](*([variant] if variant else []))
    except Exception as load_err:  # noqa: BLE001 - the config itself is broken: say so, in one line
        return f"cannot load --config={config_arg}: {load_err}"
    for override in overrides:
        node, keys = config, override.split(".")[1:]
        for depth, key in enumerate(keys):
            children = list(node.keys()) if hasattr(node, "keys") else []
            if key not in children:
                field = "config." + ".".join(keys[:depth + 1])
                close = difflib.get_close_matches(key, children, n=1)
                hint = (f"; did you mean --{'.'.join(['config', *keys[:depth], close[0]])}?" if close
                        else f"; fields here: {', '.join(sorted(children))}" if children else "")
                return f"--{override}: the config has no field {field}{hint}"
            node = node[key]
    return f"bad config override: {' '.join(str(err).split())}"


def define_weights_flag():
    """--weights=ema|online for the prediction commands (checkpointing.load_model's choice)."""
    return absl_flags.DEFINE_enum("weights", "ema", ["ema", "online"],
                             "Which parameters of a training checkpoint predict: the EMA (default) or the online "
                             "(optimizer) weights. A reference .pth holds one set: choose the file instead.")


class DistributedFlags:
    """How this process joins a multi-process run: --coordinator_address, --num_processes, --process_id.

    Unset flags fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, and then to
    what JAX detects on TPU pods, SLURM and Open MPI (see parallel.maybe_initialize_distributed).
    """

    def __init__(self):
        from absl import flags

        self.coordinator_address = flags.DEFINE_string(
            "coordinator_address", None, "host:port of process 0, reachable from every process.")
        self.num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
        self.process_id = flags.DEFINE_integer("process_id", None, "Index of this process, 0 .. num_processes-1.")

    def initialize(self, mode: str) -> bool:
        """parallel.maybe_initialize_distributed with these flags; call before any other JAX call."""
        from emdiffuse_jax import parallel

        return parallel.maybe_initialize_distributed(
            mode, coordinator_address=self.coordinator_address.value,
            num_processes=self.num_processes.value, process_id=self.process_id.value)

    @staticmethod
    def quiet_other_processes(logger: logging.Logger) -> None:
        """Progress lines on process 0 only; the other processes still report warnings and errors."""
        import jax

        if jax.process_index() > 0:
            logger.setLevel(logging.WARNING)

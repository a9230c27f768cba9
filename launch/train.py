"""Trains an EMDiffuse model: ``python launch/train.py --config=configs/emdiffuse_n.py[:tiny] --workdir=DIR``.

Overrides: ``--config.batch_size=32 --config.optim.learning_rate=1e-4`` (unknown keys are an error).
Re-running with the same --workdir resumes from its newest checkpoint. On a TPU pod run the same command
on every worker with a shared workdir (see launch/tpu_pod.sh).
"""

import pathlib
import sys

# Lets the script run from a source checkout without installing the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:tiny]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    from emdiffuse_jax.cli import configure_logging
    from emdiffuse_jax.user_errors import clean_exit

    with clean_exit():
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config = _CONFIG.value
        config.get("task")   # ml_collections loads the file lazily: a missing or broken one fails here
    ours = configure_logging()
    from emdiffuse_jax import parallel

    parallel.maybe_initialize_distributed(config.distributed)   # before any other JAX call
    import jax

    from emdiffuse_jax.train import train_and_evaluate

    ours.info("JAX %s, process %d/%d, devices: %s", jax.__version__, jax.process_index(), jax.process_count(),
              jax.devices())
    with clean_exit():  # bad config, data, checkpoint or disk: one line naming the problem and the fix
        train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

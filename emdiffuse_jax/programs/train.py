"""Trains an EMDiffuse model.

  emdiffuse train --config=emdiffuse_n[:tiny] --workdir=DIR [--config.data.input_path=NOISY ...]
  (from a checkout: python launch/train.py --config=configs/emdiffuse_n.py:tiny --workdir=DIR)

--config: a config file, or a shipped one by name: emdiffuse_n, emdiffuse_r, vemdiffuse_i, vemdiffuse_a
(':tiny' trains on a CPU in minutes). Overrides: --config.batch_size=32 --config.optim.learning_rate=1e-4
(unknown keys are an error). Re-running with the same --workdir resumes from its newest checkpoint.
Multi-process runs (TPU pods, GPU clusters) run the same command in every process with one shared workdir;
see launch/tpu_pod.sh and the multi-host section of docs/training.md (--coordinator_address,
--num_processes, --process_id).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from emdiffuse_jax import cli, configs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration: a file or a shipped name (emdiffuse_n, emdiffuse_r, vemdiffuse_i, "
    "vemdiffuse_a), optionally with ':tiny'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = cli.DistributedFlags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from emdiffuse_jax.user_errors import clean_exit

    with clean_exit():
        config = _CONFIG.value
        config.get("task")   # ml_collections loads the file lazily: a missing or broken one fails here
    ours = cli.configure_logging()
    _DISTRIBUTED.initialize(config.distributed)   # before any other JAX call
    _DISTRIBUTED.quiet_other_processes(ours)
    import jax

    from emdiffuse_jax.train import train_and_evaluate

    ours.info("JAX %s, process %d/%d, devices: %s", jax.__version__, jax.process_index(), jax.process_count(),
              jax.devices())
    with clean_exit():  # bad config, data, checkpoint or disk: one line naming the problem and the fix
        train_and_evaluate(config, _WORKDIR.value)


def run(argv=None):
    """Runs this program (``emdiffuse train`` and ``launch/train.py``); a shipped config may be named."""
    argv = list(sys.argv if argv is None else argv)
    argv = [f"--config={configs.resolve(a[len('--config='):])}" if a.startswith("--config=") else a for a in argv]
    cli.run(main, __doc__, argv)

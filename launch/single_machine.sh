#!/usr/bin/env bash
# Train on one machine (CPU, one or several GPUs, or a single TPU VM); every local device joins the mesh.
# Usage: launch/single_machine.sh CONFIG WORKDIR [--config.x=y ...]
#   launch/single_machine.sh configs/vemdiffuse_i.py:tiny /tmp/vem_tiny
#   launch/single_machine.sh configs/emdiffuse_n.py runs/emd_n --config.data.input_path=data/noisy \
#       --config.data.target_path=data/clean --config.batch_size=16
# Re-running the same command resumes from the newest checkpoint in WORKDIR.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,8p' "$0"; exit 2
fi
CONFIG="$1"; WORKDIR="$2"; shift 2
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# Compiled programs are cached across restarts (a resumed run skips most of the compilation).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/emdiffuse_jax/xla}"
exec "$PYTHON" "$REPO/launch/train.py" --config="$CONFIG" --workdir="$WORKDIR" \
  --config.distributed=never "$@"

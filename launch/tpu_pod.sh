#!/usr/bin/env bash
# Train on a multi-host Cloud TPU pod slice: every worker runs the same command at the same time, with a
# workdir that all workers share (gs://bucket/run, NFS/Filestore or a gcsfuse mount): one checkpoint, any
# worker restart resumes.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/emdiffuse_n.py /mnt/shared/runs/emd_n \
#       --config.batch_size=256 --config.data.input_path=/mnt/shared/data/noisy
# Prerequisites on every worker (once): the repository at ~/emdiffuse-jax and
#   pip install "jax[tpu]" -e "$HOME/emdiffuse-jax[gcs]"   (e.g. with --command and --worker=all as below).
# jax.distributed.initialize() finds the other workers by itself on a TPU pod; if it fails every worker
# stops (config.distributed=always). Each process loads only its devices' rows of every global batch and
# only process 0 prints progress. Re-run the same command after a preemption to resume; several slices:
# add --config.mesh.dcn_data=<slices> (docs/training.md, multi-host).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
TPU_NAME="$1"; ZONE="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
EXTRA=""
for arg in "$@"; do EXTRA+=" $(printf '%q' "$arg")"; done
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "cd ~/emdiffuse-jax && python3 launch/train.py --config=$(printf '%q' "$CONFIG") \
   --workdir=$(printf '%q' "$WORKDIR") --config.distributed=always$EXTRA"

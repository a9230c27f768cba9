"""One process of a multi-process isotropic reconstruction (tests/test_predict_multihost.py):
``python multihost_volume_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID STACK OUTPUT FORMAT``.
NUM_PROCESSES 1 runs alone (no jax.distributed). Uses the analytic blend model of test_predict_volume."""

import sys

from emdiffuse_jax import parallel


def main(coordinator, num_processes, process_id, stack, output, fmt):
    num_processes, process_id = int(num_processes), int(process_id)
    parallel.maybe_initialize_distributed("auto", coordinator_address=coordinator, num_processes=num_processes,
                                          process_id=process_id)
    from emdiffuse_jax import volume
    from test_predict_volume import Z, make_restorer

    volume.reconstruct(make_restorer(), stack, output, Z, num_samples=2, tile=32, overlap=8, fmt=fmt,
                       log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main(*sys.argv[1:])

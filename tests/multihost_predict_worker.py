"""One process of a multi-process prediction (tests/test_predict_multihost.py):
``python multihost_predict_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID volume|images INPUT OUTPUT FORMAT``.
NUM_PROCESSES 1 runs alone (no jax.distributed). The network is analytic (no training, nothing to compile
but the sampler): its clean estimate blends the condition channels, and its noise estimate is scaled by
0.8 so that every sample depends on its random key."""

import sys

import jax.numpy as jnp
import numpy as np

from emdiffuse_jax import parallel

GAMMAS = np.linspace(0.05, 0.999, 3)
Z = 3


def blend_apply(params, x, gamma, slice_index):
    """vEM: the clean slice at depth (c + 1) / Z blends [later, earlier]; 2D: the clean image is the input."""
    if slice_index is None:
        target = x[..., :1]
    else:
        w = (slice_index.astype(jnp.float32)[:, None, None, None] + 1.0) / Z
        target = w * x[..., :1] + (1 - w) * x[..., 1:2]
    g = gamma[:, None, None, None]
    return 0.8 * (x[..., -1:] - jnp.sqrt(g) * target) / jnp.sqrt(1.0 - g)


def main(coordinator, num_processes, process_id, kind, source, output, fmt):
    parallel.maybe_initialize_distributed("auto", coordinator_address=coordinator,
                                          num_processes=int(num_processes), process_id=int(process_id))
    from emdiffuse_jax import inference, restore, volume
    from emdiffuse_jax.diffusion import samplers

    def ddim(denoise, cond, key, slice_index):
        return samplers.ddim_sample(denoise, cond, key, GAMMAS, eta=1.0, slice_index=slice_index)

    restorer = inference.Restorer(blend_apply, {}, ddim, batch_per_device=2)
    log = lambda line: print(line, flush=True)   # noqa: E731
    if kind == "volume":
        volume.reconstruct(restorer, source, output, Z, num_samples=2, tile=32, overlap=8, fmt=fmt, log=log)
    else:
        restore.restore_files(restorer, source, output, task="denoise", num_samples=2, tile=32, overlap=8, log=log)


if __name__ == "__main__":
    main(*sys.argv[1:])

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

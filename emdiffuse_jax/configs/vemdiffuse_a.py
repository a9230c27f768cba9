"""vEMDiffuse-a: axial interpolation learnt from the lateral axis of an anisotropic volume (vEMDiffuse-a.json).

Training pairs come from XZ images of the anisotropic volume itself (the data pipeline transposes it), so
the volume needs at least patch_size slices... along its lateral axes only. Default data: the built-in
phantoms (set --config.data.input_path to an anisotropic stack). z_factor 6 as in the README (the
reference JSON says 10 and its notebook 5); use the same z_factor at prediction time.
"""

from emdiffuse_jax import train_config


def get_config(arg: str | None = None):
    config = train_config.base_config("vem_a")
    config.data.patch_size = 256
    config.data.z_factor = 6
    return train_config.apply_variant(config, arg)

"""Built-in EM phantoms: deterministic, EM-like statistics, 2D and (anisotropic) 3D."""

import numpy as np

from emdiffuse_jax.data.phantom import phantom


def test_phantom_image_is_deterministic_uint8_with_dark_membranes_and_structure():
    a = phantom((192, 160), seed=3)
    assert a.dtype == np.uint8 and a.shape == (192, 160)
    assert np.array_equal(a, phantom((192, 160), seed=3))
    assert not np.array_equal(a, phantom((192, 160), seed=4))
    assert np.median(a) > 120  # bright background
    assert (a < 80).mean() > 0.01  # dark membranes / organelle rims
    gy, gx = np.gradient(a.astype(float))
    assert np.hypot(gy, gx).mean() > 2  # edges and texture, not a flat image


def test_phantom_volume_is_continuous_along_z_and_anisotropy_reduces_it():
    iso = phantom((24, 96, 96), seed=1).astype(float)
    aniso = phantom((24, 96, 96), seed=1, voxel_size=(6, 1, 1)).astype(float)
    step = lambda v: np.abs(np.diff(v, axis=0)).mean()  # noqa: E731
    assert step(iso) < np.abs(iso[:, 1:] - iso[:, :-1]).mean() * 3
    assert step(aniso) > step(iso)
    assert iso.std() > 10

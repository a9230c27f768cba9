"""Sample construction: pair layouts, triplet geometry, lateral views with reflection, augmentation."""

import numpy as np
import pytest
import tifffile

from emdiffuse_jax.data import io, samples


def _write(path, value, shape=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, value, np.uint8))


def test_reference_layout_pairs_by_relative_path_even_with_wf_in_parent_folders(tmp_path):
    root = tmp_path / "wf_project"  # the reference replaced every 'wf' in the path and broke here
    for roi, n in [("2", 1), ("2", 2), ("10", 1)]:
        _write(root / "train_wf" / roi / "Brain__4w_04" / f"{n}.tif", 1)
        _write(root / "train_gt" / roi / "Brain__4w_04" / f"{n}.tif", 2)
    pairs = samples.find_pairs(root)
    assert [p[0] for p in pairs] == ["2/Brain__4w_04/1.tif", "2/Brain__4w_04/2.tif", "10/Brain__4w_04/1.tif"]
    assert all("train_gt" in str(t) and "wf_project" in str(t) for _, _, t in pairs)
    assert samples.find_pairs(root / "train_wf") == pairs


def test_plain_img_gt_layout_and_clean_only_folder(tmp_path):
    for name in ("a.tif", "b.png"):
        _write(tmp_path / "img" / name, 1) if name.endswith("tif") else None
    _write(tmp_path / "img" / "c.tif", 1)
    _write(tmp_path / "gt" / "a.tif", 2)
    _write(tmp_path / "gt" / "c.tif", 2)
    assert [p[0] for p in samples.find_pairs(tmp_path)] == ["a.tif", "c.tif"]
    pairs = samples.load_pairs(tmp_path / "img", tmp_path / "gt")
    assert pairs[0].cond.max() == 1 and pairs[0].target.max() == 2
    clean = samples.find_pairs(tmp_path / "gt")
    assert all(inp is None for _, inp, _ in clean)


def test_unmatched_pairs_name_both_folders(tmp_path):
    _write(tmp_path / "img" / "a.tif", 1)
    _write(tmp_path / "gt" / "b.tif", 2)
    with pytest.raises(io.DataError, match=r"img and .*gt do not pair up.*'a.tif'.*'b.tif'"):
        samples.find_pairs(tmp_path)


def test_stack_pairs_are_slice_by_slice_and_checked(tmp_path):
    tifffile.imwrite(tmp_path / "n.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "c.tif", np.ones((3, 16, 16), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "c2.tif", np.ones((2, 16, 16), np.uint8), photometric="minisblack")
    pairs = samples.load_pairs(tmp_path / "n.tif", tmp_path / "c.tif")
    assert [p.name for p in pairs] == ["c[0]", "c[1]", "c[2]"]
    with pytest.raises(io.DataError, match="n.tif has 3 slices but .*c2.tif has 2"):
        samples.load_pairs(tmp_path / "n.tif", tmp_path / "c2.tif")


def test_reflect_index_mirrors_without_repeating_the_edge():
    assert samples.reflect_index(4, 10).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert samples.reflect_index(1, 3).tolist() == [0, 0, 0]


def test_lateral_views_of_a_thin_volume_are_reflected_xz_images():
    z, y, x = 5, 12, 20
    vol = (np.arange(z)[:, None, None] * 100 + np.arange(y)[None, :, None] + 0 * np.arange(x)).astype(np.uint16)
    geo = samples.TripletVolume(vol, "vem_a", patch_size=8)
    assert (geo.depth, geo.height, geo.width) == (12, 8, 20)
    slab = geo.slab(first=3, count=4, y=0, x=2, size=8)
    assert slab.shape == (4, 8, 8)
    assert slab[:, :, 0].tolist() == [[100 * r + d for r in [0, 1, 2, 3, 4, 3, 2, 1]] for d in range(3, 7)]
    cond, target = samples.triplet_from_slab(slab)
    assert cond[0, 0].tolist() == [6, 3] and target[0, 0].tolist() == [4, 5]


def test_augment_flips_rotates_both_and_blurs_inputs_only():
    cond = np.zeros((32, 32, 2), np.float32)
    cond[10, 5] = 1
    target = np.zeros((32, 32, 1), np.float32)
    target[10, 5] = 1
    seen = set()
    for s in range(40):
        c, t = samples.augment(cond, target, np.random.default_rng(s), blur_channels=(0, 1))
        assert t.max() == 1  # targets are never blurred
        assert np.array_equal(np.argwhere(c[..., 1] == c[..., 1].max())[0], np.argwhere(t[..., 0] == 1)[0])
        seen.add((c[..., 0].max() < 0.1, c[..., 1].max() < 0.1, tuple(np.argwhere(t[..., 0] == 1)[0])))
    assert len({k[2] for k in seen}) == 4 and {k[0] for k in seen} == {True, False}
    assert cond[10, 5].tolist() == [1, 1] and cond.sum() == 2  # the caller's arrays are untouched


def test_section_thickness_averages_the_conditioning_slices_only():
    vol = np.zeros((12, 8, 8), np.uint16)
    vol[4] = 300  # one bright slice
    geo = samples.TripletVolume(vol, "vem_i", patch_size=8)
    thin_c, thin_t = samples.triplet(geo, first=3, z=3, y=0, x=0, size=8)
    thick_c, thick_t = samples.triplet(geo, first=3, z=3, y=0, x=0, size=8, thickness=3)
    assert thin_c[0, 0].tolist() == [0, 0] and thick_c[0, 0].tolist() == [0, 100]  # earlier = mean(2, 3, 4)
    assert np.array_equal(thin_t, thick_t) and thin_t[0, 0].tolist() == [300, 0]
    vol2 = vol.copy()
    vol2[1] = 90
    geo2 = samples.TripletVolume(vol2, "vem_i", patch_size=8)
    c2, _ = samples.triplet(geo2, first=0, z=3, y=0, x=0, size=8, thickness=3, bounds=(0, 6))
    assert c2[0, 0, 1] == 60  # slices (1, 0, 1) mirrored at the start: (90 + 0 + 90) / 3


def test_super_resolution_inputs_are_blurred_at_low_resolution_then_upsampled_as_the_reference():
    from scipy import ndimage

    from emdiffuse_jax.data.degrade import upsample2_bilinear

    low = np.zeros((16, 16, 1), np.float32)
    low[8, 8] = 1.0   # an impulse at the 16 px input resolution of a 32 px target
    target = np.zeros((32, 32, 1), np.float32)
    c, t = samples.augment(low, target, np.random.default_rng(0), blur_channels=(0,), p=1.0)  # blur, flip, rot90
    # the reference: Gaussian blur sigma 3 of the low-resolution input, then the x2 resize
    reference = upsample2_bilinear(ndimage.gaussian_filter(low[..., 0].astype(np.float64), 3.0, mode="reflect",
                                                           truncate=3.0))
    expected = np.rot90(reference[::-1])
    assert c.shape == (32, 32, 1) and t.shape == (32, 32, 1)
    np.testing.assert_allclose(c[..., 0], expected, atol=1e-6)
    # blurring after the upsampling would be half as wide (sigma 3 at the high resolution)
    after = np.rot90(ndimage.gaussian_filter(upsample2_bilinear(low[..., 0]), 3.0, mode="reflect", truncate=3.0)[::-1])
    assert np.abs(c[..., 0] - after).max() > 0.1 * c.max()
    width = lambda img: np.sum(img.sum(axis=0) > 0.5 * img.sum(axis=0).max())  # noqa: E731
    assert width(c[..., 0]) >= 1.6 * width(after)   # half-maximum width: 14 px vs 8 px

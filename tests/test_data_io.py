"""Readers/writers: lossless round trips, natural order, lazy volumes and clear errors on bad files."""

import hashlib
import os

import numpy as np
import pytest
import tifffile
from conftest import shared_path
from PIL import Image

from emdiffuse_jax.data import io


def _fingerprint(path):
    return os.stat(path).st_mtime_ns, hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_volume_round_trip_is_lossless_with_dtype_axes_and_voxel_size(tmp_path, dtype):
    rng = np.random.default_rng(0)
    vol = (rng.random((5, 33, 47)) * (255 if dtype == np.uint8 else 65535)).astype(dtype)
    path = io.write_tiff(tmp_path / "v.tif", vol, axes="ZYX", voxel_size=(40.0, 8.0, 8.0))
    back = io.read_volume(path)
    assert back.dtype == vol.dtype and np.array_equal(back, vol)
    meta = io.read_tiff_metadata(path)
    assert meta["axes"] == "ZYX" and meta["unit"] == "nm"
    assert np.allclose(meta["voxel_size"], (40.0, 8.0, 8.0))


def test_tiff_image_round_trip_other_dtype_keeps_values_and_metadata(tmp_path):
    img = np.arange(-600, 600, dtype=np.int16).reshape(30, 40)
    path = io.write_tiff(tmp_path / "i.tif", img, voxel_size=(4.0, 4.0))
    assert np.array_equal(io.read_image(path), img)
    assert np.allclose(io.read_tiff_metadata(path)["voxel_size"], (4.0, 4.0))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_zarr_round_trip_is_lossless_and_lazy(tmp_path, dtype):
    vol = (np.random.default_rng(1).random((4, 20, 30)) * 200).astype(dtype)
    path = io.write_zarr(tmp_path / "v.zarr", vol, voxel_size=(40, 8, 8))
    assert np.array_equal(io.read_volume(path), vol)
    lazy = io.read_volume(path, lazy=True)
    assert lazy.shape == vol.shape and np.array_equal(lazy[2, 5:9], vol[2, 5:9])


def test_n5_volume_is_read_through_tensorstore(tmp_path):
    import tensorstore as ts

    vol = np.random.default_rng(2).integers(0, 65535, (3, 16, 24), dtype=np.uint16)
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / "c.n5" / "raw")},
                     "metadata": {"dataType": "uint16", "dimensions": [3, 16, 24], "blockSize": [1, 16, 16],
                                  "compression": {"type": "raw"}}, "create": True}).result()
    store.write(vol).result()
    assert np.array_equal(io.read_volume(tmp_path / "c.n5", dataset="raw"), vol)


def test_slice_folder_is_read_in_natural_order_lazily_and_untouched(tmp_path):
    vol = np.random.default_rng(3).integers(0, 255, (12, 16, 20), dtype=np.uint8)
    for z in range(12):
        tifffile.imwrite(tmp_path / f"{z}.tif", vol[z])
    before = {p: _fingerprint(p) for p in tmp_path.iterdir()}
    assert np.array_equal(io.read_volume(tmp_path), vol)  # lexical order would put 10, 11 after 1
    lazy = io.read_volume(tmp_path, lazy=True)
    assert isinstance(lazy, io.LazyVolume) and np.array_equal(lazy[9:12, 2], vol[9:12, 2])
    for index in [(..., 3), (-1, slice(2, 5)), ([0, 11], ..., slice(None, None, 2)), (slice(5, 5),)]:
        assert np.array_equal(lazy[index], vol[index])
    assert {p: _fingerprint(p) for p in tmp_path.iterdir()} == before


def test_png_8_and_16_bit_and_rgb_grey_are_read_as_grey(tmp_path):
    img16 = np.random.default_rng(4).integers(0, 65535, (10, 14), dtype=np.uint16)
    Image.fromarray(img16).save(tmp_path / "a.png")
    assert np.array_equal(io.read_image(tmp_path / "a.png"), img16)
    grey = np.random.default_rng(5).integers(0, 255, (10, 14), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "b.png")
    assert np.array_equal(io.read_image(tmp_path / "b.png"), grey)


def test_real_stacks_read_lazily_match_eager(tmp_path):
    path = shared_path("data", "sstem-vnc-30.tif")
    before = _fingerprint(path)
    lazy = io.read_volume(path, lazy=True)
    assert lazy.shape == (30, 512, 512) and lazy.dtype == np.uint8
    eager = io.read_volume(path)
    assert np.array_equal(lazy[[0, 17, 29], 100:140], eager[[0, 17, 29], 100:140])
    assert _fingerprint(path) == before


def test_writers_refuse_to_overwrite_existing_files(tmp_path):
    path = tmp_path / "x.tif"
    io.write_tiff(path, np.zeros((4, 4), np.uint8))
    stamp = _fingerprint(path)
    with pytest.raises(io.DataError, match="already exists"):
        io.write_tiff(path, np.ones((4, 4), np.uint8))
    assert _fingerprint(path) == stamp
    io.write_tiff(path, np.ones((4, 4), np.uint8), overwrite=True)
    assert io.read_image(path).max() == 1


def test_empty_folder_error_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.DataError, match="empty.*no images"):
        io.read_volume(tmp_path / "empty")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_error_names_the_file(tmp_path, compression):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.random.default_rng(6).integers(0, 255, (4, 64, 64), dtype=np.uint8),
                     compression=compression, photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.DataError, match="cut.tif.*truncated"):
        io.read_volume(path)


def test_not_an_image_error_names_the_file(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"hello")
    (tmp_path / "junk.png").write_bytes(b"hello")
    with pytest.raises(io.DataError, match="junk.tif"):
        io.read_image(tmp_path / "junk.tif")
    with pytest.raises(io.DataError, match="junk.png"):
        io.read_image(tmp_path / "junk.png")


def test_unsupported_dtype_nan_and_one_slice_volume_are_rejected_by_name(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((4, 4), np.complex64))
    with pytest.raises(io.DataError, match="c.tif: unsupported dtype complex64"):
        io.read_image(tmp_path / "c.tif")
    bad = np.zeros((3, 4, 4), np.float32)
    bad[1, 2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad, photometric="minisblack")
    with pytest.raises(io.DataError, match="nan.tif: 1 NaN"):
        io.read_volume(tmp_path / "nan.tif")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((1, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(io.DataError, match="one.tif: volume has 1 slice"):
        io.read_volume(tmp_path / "one.tif")


def test_slice_folder_with_mismatched_slice_names_the_folder(tmp_path):
    tifffile.imwrite(tmp_path / "0.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "1.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(io.DataError, match="slice 1 has shape"):
        io.read_volume(tmp_path)


def test_ome_zarr_group_reads_full_resolution_level(tmp_path):
    import zarr

    vol = np.random.default_rng(7).integers(0, 65535, (4, 24, 24), dtype=np.uint16)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    group.create_array("0", data=vol, chunks=(1, 24, 24))
    group.create_array("1", data=vol[:, ::2, ::2], chunks=(1, 12, 12))
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
    assert np.array_equal(io.read_volume(tmp_path / "img.ome.zarr"), vol)
    assert io.read_volume(tmp_path / "img.ome.zarr", dataset="1").shape == (4, 12, 12)


def test_lazy_volume_auto_mode_loads_small_volumes_into_memory(tmp_path):
    vol = np.random.default_rng(8).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    io.write_tiff(tmp_path / "s.tif", vol)
    out = io.read_volume(tmp_path / "s.tif", lazy=None)
    assert isinstance(out, np.ndarray) and np.array_equal(out, vol)


def test_voxel_size_is_read_from_resolution_tags_imagej_units_ome_zarr_and_n5(tmp_path):
    import json as json_module

    from emdiffuse_jax.data import ome_zarr

    vol = np.zeros((3, 16, 16), np.uint8)
    # Resolution tags in pixels per micrometre (as the FIB-SEM crop in ../shared): 100 px/um = 10 nm.
    tifffile.imwrite(tmp_path / "um.tif", vol, photometric="minisblack", resolution=(100, 100), resolutionunit=5)
    assert io.read_voxel_size(tmp_path / "um.tif") == pytest.approx((None, 10.0, 10.0))
    # Fiji's own way: unit 'micron', spacing in microns, resolution in pixels per micron.
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"unit": "micron", "spacing": 0.05, "axes": "ZYX"})
    assert io.read_voxel_size(tmp_path / "ij.tif") == pytest.approx((50.0, 4.0, 4.0))
    # Pixels per centimetre (the TIFF standard's unit): 1e6 px/cm = 10 nm.
    tifffile.imwrite(tmp_path / "cm.tif", vol[0], resolution=(1e6, 1e6), resolutionunit=3)
    assert io.read_voxel_size(tmp_path / "cm.tif") == pytest.approx((10.0, 10.0))
    tifffile.imwrite(tmp_path / "none.tif", vol, photometric="minisblack")   # XResolution 1/1 without a unit says nothing
    assert io.read_voxel_size(tmp_path / "none.tif") is None
    ome_zarr.write_volume(tmp_path / "v.ome.zarr", vol, (40.0, 8.0, 8.0))
    assert io.read_voxel_size(tmp_path / "v.ome.zarr") == pytest.approx((40.0, 8.0, 8.0))
    n5 = tmp_path / "v.n5"
    n5.mkdir()
    (n5 / "attributes.json").write_text(json_module.dumps({"resolution": [8, 8, 40], "units": ["nm", "nm", "nm"]}))
    assert io.read_voxel_size(n5) == pytest.approx((40.0, 8.0, 8.0))   # N5 lists X, Y, Z


def test_tiff_stack_written_page_by_page_reads_back_with_its_voxel_size(tmp_path):
    planes = [np.full((8, 9), v, np.uint16) for v in range(5)]
    path = io.write_tiff_stack(tmp_path / "s.tif", iter(planes), (5, 8, 9), np.uint16, voxel_size=(8.5, 4.0, 4.0))
    np.testing.assert_array_equal(tifffile.imread(path), np.stack(planes))
    assert io.read_voxel_size(path) == pytest.approx((8.5, 4.0, 4.0))
    with pytest.raises(io.DataError, match="already exists"):
        io.write_tiff_stack(path, iter(planes), (5, 8, 9), np.uint16)

"""Training input pipeline: contract shapes/ranges, pure-function batches, process sharding, held-out
validation, and the four tasks on phantoms and on the real crops."""

import numpy as np
import pytest
import tifffile
from conftest import shared_path

from emdiffuse_jax.data import io
from emdiffuse_jax.data.pipeline import build_train_source

TASKS = [("denoise", None, (1, 1)), ("superres", None, (1, 1)), ("vem_i", 4, (2, 3)), ("vem_a", 3, (2, 2))]


@pytest.mark.parametrize("task,z,channels", TASKS)
def test_builtin_sources_give_contract_batches(task, z, channels):
    src = build_train_source(task, patch_size=32, z_factor=z)
    assert src.channels == channels and src.num_examples > 0
    b = src.batch(seed=1, step=3, process_index=0, process_count=2, global_batch=6)
    assert set(b) == {"cond", "target"}
    assert b["cond"].shape == (3, 32, 32, channels[0]) and b["target"].shape == (3, 32, 32, channels[1])
    for x in b.values():
        assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1 and x.std() > 0.01


@pytest.mark.parametrize("task,z,channels", TASKS)
def test_batches_are_a_pure_function_of_seed_step_and_process(task, z, channels):
    a = build_train_source(task, patch_size=32, z_factor=z)
    b = build_train_source(task, patch_size=32, z_factor=z)
    later = a.batch(7, 11, 0, 1, 4)
    a.batch(7, 3, 0, 1, 4)  # consuming other steps first changes nothing (exact resume)
    again = b.batch(7, 11, 0, 1, 4)
    assert all(np.array_equal(later[k], again[k]) for k in later)
    other_step = a.batch(7, 12, 0, 1, 4)
    other_seed = a.batch(8, 11, 0, 1, 4)
    assert not np.array_equal(later["target"], other_step["target"])
    assert not np.array_equal(later["target"], other_seed["target"])
    assert a.batch(-1, 0, 0, 1, 1)["cond"].shape[0] == 1  # negative seeds (the reference's -1) work


def test_processes_get_disjoint_shares_of_the_same_global_batch():
    src = build_train_source("denoise", patch_size=32)
    whole = src.batch(0, 5, 0, 1, 8)
    parts = [src.batch(0, 5, i, 4, 8) for i in range(4)]
    assert np.array_equal(np.concatenate([p["cond"] for p in parts]), whole["cond"])
    flat = whole["target"].reshape(8, -1)
    assert len({row.tobytes() for row in flat}) == 8
    with pytest.raises(ValueError, match="divisible"):
        src.batch(0, 5, 0, 3, 8)


def _ramp_volume(tmp_path, depth=40, side=48):
    vol = np.broadcast_to(np.arange(depth, dtype=np.uint8)[:, None, None] * 5, (depth, side, side)).copy()
    path = tmp_path / "ramp.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    return path


def test_vem_i_validation_is_a_held_out_slab_and_triplets_are_ordered(tmp_path):
    path = _ramp_volume(tmp_path)
    z = 4
    train = build_train_source("vem_i", path, patch_size=32, z_factor=z, val_fraction=0.25,
                               normalization="uint8")
    val = build_train_source("vem_i", path, patch_size=32, z_factor=z, split="validation",
                             val_fraction=0.25, normalization="uint8")
    to_z = lambda a: np.rint((a + 1) * 127.5 / 5).astype(int)  # noqa: E731
    tz = [to_z(train.batch(0, s, 0, 1, 8)["cond"]) for s in range(20)]
    vz = [to_z(val.batch(0, s, 0, 1, 8)["cond"]) for s in range(5)]
    assert max(t.max() for t in tz) < 30 and min(v.min() for v in vz) >= 30
    assert max(t.max() for t in tz) == 29  # the last training slice is used (reference dropped it)
    b = val.batch(0, 0, 0, 1, 2)
    later, earlier = to_z(b["cond"][0, 0, 0, 0]), to_z(b["cond"][0, 0, 0, 1])
    assert later - earlier == z
    assert list(to_z(b["target"][0, 0, 0])) == list(range(earlier + 1, later))


def test_2d_validation_holds_out_whole_images_or_a_strip(tmp_path):
    img_dir, gt_dir = tmp_path / "img", tmp_path / "gt"
    img_dir.mkdir(), gt_dir.mkdir()
    for i in range(5):
        tifffile.imwrite(gt_dir / f"{i}.tif", np.full((40, 40), 50 * i, np.uint8))
        tifffile.imwrite(img_dir / f"{i}.tif", np.full((40, 40), 50 * i + 1, np.uint8))
    train = build_train_source("denoise", tmp_path, patch_size=32, val_fraction=0.2)
    val = build_train_source("denoise", tmp_path, patch_size=32, val_fraction=0.2, split="validation")
    seen = {int(np.rint((v + 1) * 127.5)) for s in range(10) for v in train.batch(0, s, 0, 1, 4)["target"][:, 0, 0, 0]}
    assert seen <= {0, 50, 100, 150} and len(seen) > 1
    assert {int(np.rint((v + 1) * 127.5)) for v in val.batch(0, 0, 0, 1, 4)["target"][:, 0, 0, 0]} == {200}
    one = np.broadcast_to(np.arange(200, dtype=np.uint8)[:, None], (200, 64)).copy()
    tifffile.imwrite(tmp_path / "one.tif", one)
    tr = build_train_source("denoise", tmp_path / "one.tif", patch_size=32, val_fraction=0.25)
    va = build_train_source("denoise", tmp_path / "one.tif", patch_size=32, val_fraction=0.25,
                            split="validation")
    rows = lambda s: np.rint((s.batch(0, 0, 0, 1, 16)["target"] + 1) * 127.5)  # noqa: E731
    assert rows(tr).max() < 150 <= rows(va).min()


def test_real_fibsem_stack_gives_vem_i_triplets():
    src = build_train_source("vem_i", shared_path("data", "fibsem-medulla-250.tif"), patch_size=128,
                             z_factor=5, lazy=True)
    b = src.batch(0, 0, 0, 1, 4)
    assert b["cond"].shape == (4, 128, 128, 2) and b["target"].shape == (4, 128, 128, 4)
    # neighbouring FIB-SEM slices are similar: each target slice is closer to its nearer input
    t, c = b["target"], b["cond"]
    near_earlier = np.abs(t[..., 0] - c[..., 1]).mean()
    far_earlier = np.abs(t[..., 0] - c[..., 0]).mean()
    assert near_earlier < far_earlier


def test_real_sstem_stack_gives_vem_a_samples_despite_30_slices():
    path = shared_path("data", "sstem-vnc-30.tif")
    src = build_train_source("vem_a", path, patch_size=64, z_factor=4)
    b = src.batch(0, 0, 0, 1, 4)
    assert b["cond"].shape == (4, 64, 64, 2) and b["target"].shape == (4, 64, 64, 3)
    big = build_train_source("vem_a", path, patch_size=256, z_factor=6, split="validation")
    assert big.batch(0, 0, 0, 1, 1)["target"].shape == (1, 256, 256, 5)


def test_real_clean_slices_give_denoising_pairs_by_degradation():
    path = shared_path("data", "fibsem-medulla-250.tif")
    src = build_train_source("denoise", path, patch_size=64, degrade="poisson:dose=5")
    b = src.batch(0, 0, 0, 1, 4)
    noise = b["cond"] - b["target"]
    assert 0.05 < noise.std() < 0.6  # visibly noisy but the same image
    assert np.corrcoef(b["cond"].ravel(), b["target"].ravel())[0, 1] > 0.3


def test_superres_pairs_with_half_size_inputs(tmp_path):
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 255, (96, 96), dtype=np.uint8)
    lr = hr.reshape(48, 2, 48, 2).mean((1, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "lr.tif", lr)
    tifffile.imwrite(tmp_path / "hr.tif", hr)
    src = build_train_source("superres", tmp_path / "lr.tif", tmp_path / "hr.tif", patch_size=32,
                             val_fraction=0)
    b = src.batch(0, 0, 0, 1, 2)
    assert b["cond"].shape == (2, 32, 32, 1)


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.DataError, match="empty.*no images"):
        build_train_source("denoise", tmp_path / "empty", patch_size=32)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((64, 60), np.uint8))
    with pytest.raises(io.DataError, match="a.tif.*b.tif.*mismatched pair sizes"):
        build_train_source("denoise", tmp_path / "a.tif", tmp_path / "b.tif", patch_size=32)
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((1, 64, 64), np.uint8), photometric="minisblack")
    with pytest.raises(io.DataError, match="one.tif: volume has 1 slice"):
        build_train_source("vem_i", tmp_path / "one.tif", patch_size=32, z_factor=2)
    with pytest.raises(ValueError, match="task 'iso' unknown"):
        build_train_source("iso", patch_size=32)


def test_prefetching_iterator_yields_the_same_batches_from_any_start_step():
    from emdiffuse_jax.data.pipeline import iterate_batches

    src = build_train_source("superres", patch_size=32)
    it = iterate_batches(src, seed=4, start_step=7, global_batch=2, prefetch=2, threads=2)
    for _ in range(3):
        step, batch = next(it)
        assert np.array_equal(batch["cond"], src.batch(4, step, 0, 1, 2)["cond"])
    assert step == 9
    it.close()


def test_16_bit_pairs_smaller_than_a_patch_are_padded_and_percentile_normalised(tmp_path):
    rng = np.random.default_rng(5)
    clean = rng.integers(20000, 40000, (3, 50, 40), dtype=np.uint16)
    clean[2] += 20000  # the held-out slice is brighter: it must not move the training contract
    tifffile.imwrite(tmp_path / "clean.tif", clean, photometric="minisblack")
    tifffile.imwrite(tmp_path / "noisy.tif", clean // 2 + 100, photometric="minisblack")
    src = build_train_source("denoise", tmp_path / "noisy.tif", tmp_path / "clean.tif", patch_size=64,
                             val_fraction=0.34)
    contract = src.intensity
    assert contract.target.mode == "percentile" and contract.target.dtype == np.dtype(np.uint16).str
    # dataset-level percentiles of the two training slices, input and target each in its own units
    lo, hi = np.percentile(clean[:2].astype(float), [0.1, 99.9])
    np.testing.assert_allclose([contract.target.lo, contract.target.hi], [lo, hi], rtol=1e-3)
    np.testing.assert_allclose([contract.input.lo, contract.input.hi], [lo / 2 + 100, hi / 2 + 100], rtol=1e-3)
    val = build_train_source("denoise", tmp_path / "noisy.tif", tmp_path / "clean.tif", patch_size=64,
                             val_fraction=0.34, split="validation")
    assert val.intensity == contract
    b = src.batch(0, 0, 0, 1, 2)
    assert b["cond"].shape == (2, 64, 64, 1) and -1 <= b["target"].min() and b["target"].max() <= 1
    vb = val.batch(0, 0, 0, 1, 1)
    assert vb["target"].min() > 0.5  # the brighter held-out slice, read in the training units
    np.testing.assert_allclose(vb["cond"], vb["target"], atol=0.01)  # input and target agree after mapping

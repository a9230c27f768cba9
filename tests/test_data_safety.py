"""Nothing a user gave the tools is modified, overwritten or mixed into another run's output (issue 14)."""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from PIL import Image

from emdiffuse_jax import checkpointing, inference, models, restore, train
from emdiffuse_jax.data import io
from emdiffuse_jax.data.prepare import prepare_dataset
from emdiffuse_jax.diffusion import samplers
from train_helpers import tiny_config

GAMMAS = np.linspace(0.05, 0.999, 3)


def snapshot(root):
    """Every file under root with the sha256 of its bytes and its modification time."""
    root = root if root.is_dir() else root.parent
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _denoise_apply(params, x, gamma, slice_index):
    """Analytic stand-in network: predicts the noise that would make the condition the clean image."""
    g = gamma[:, None, None, None]
    return (x[..., -1:] - jnp.sqrt(g) * x[..., :1]) / jnp.sqrt(1.0 - g) * params["scale"]


def _ddim(denoise, cond, key, slice_index):
    return samplers.ddim_sample(denoise, cond, key, GAMMAS, eta=1.0, slice_index=slice_index)


@pytest.fixture(scope="module")
def restorer():
    return inference.Restorer(_denoise_apply, {"scale": jnp.float32(1.0)}, _ddim, batch_per_device=2)


def _images(folder, names=("a", "b"), shape=(20, 24)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        tifffile.imwrite(folder / f"{name}.tif", np.full(shape, 40 + 50 * i, np.uint8) + np.eye(*shape, dtype=np.uint8))
    return folder


def _restore(restorer, inp, out, **kw):
    return restore.restore_files(restorer, inp, out, task="denoise", tile=16, overlap=4, log=lambda _: None, **kw)


# --- predict: output folders -------------------------------------------------------------------------

def test_predict_refuses_an_output_folder_holding_other_files_and_leaves_them_intact(restorer, tmp_path):
    inp = _images(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(io.DataError, match=r"out is not empty \(holds notes.txt\).*choose a new output folder"):
        _restore(restorer, inp, out)
    assert snapshot(out) == before


def test_predict_never_overwrites_a_users_file_with_a_colliding_name(restorer, tmp_path):
    inp = _images(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    tifffile.imwrite(out / "a_mean.tif", np.zeros((4, 4), np.uint16))   # the user's, not ours
    before = snapshot(out)
    with pytest.raises(io.DataError, match="not empty"):
        _restore(restorer, inp, out)
    assert snapshot(out) == before


@pytest.mark.parametrize("output_kind", ["file", "under_file"])
def test_predict_refuses_an_output_that_is_or_lies_under_a_file(restorer, tmp_path, output_kind):
    inp = _images(tmp_path / "in")
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if output_kind == "file" else tmp_path / "taken" / "out"
    with pytest.raises(io.DataError, match="is an existing file" if output_kind == "file" else "which is a file"):
        _restore(restorer, inp, out)
    assert (tmp_path / "taken").read_text() == "x"


def test_two_inputs_of_one_name_are_refused_before_anything_is_written(restorer, tmp_path):
    inp = _images(tmp_path / "in", names=("a",))
    Image.fromarray(np.full((20, 24), 90, np.uint8)).save(inp / "a.png")
    with pytest.raises(io.DataError, match="both named 'a'.*rename one"):
        _restore(restorer, inp, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rerun_of_a_finished_prediction_returns_it_untouched(restorer, tmp_path):
    inp = _images(tmp_path / "in")
    out = tmp_path / "out"
    first = _restore(restorer, inp, out)
    before = snapshot(out)
    assert not (out / restore.PROGRESS).exists()
    assert _restore(restorer, inp, out) == first
    assert snapshot(out) == before
    with pytest.raises(io.DataError, match="finished prediction with other settings.*seed: 0 -> 1"):
        _restore(restorer, inp, out, seed=1)
    assert snapshot(out) == before


def test_killed_prediction_resumes_only_the_missing_images_and_matches(restorer, tmp_path):
    inp = _images(tmp_path / "in", names=("a", "b", "c"))
    reference = _restore(restorer, inp, tmp_path / "ref")
    out = tmp_path / "out"
    calls = []

    def kill_after_first(message):
        calls.append(message)
        if "[1/3]" in message:
            raise KeyboardInterrupt   # stands in for a kill right after image 1 was finished

    with pytest.raises(KeyboardInterrupt):
        restore.restore_files(restorer, inp, out, task="denoise", tile=16, overlap=4, log=kill_after_first)
    assert json.loads((out / restore.PROGRESS).read_text())["done"].keys() == {"a"}
    logs = []
    resumed = restore.restore_files(restorer, inp, out, task="denoise", tile=16, overlap=4, log=logs.append)
    assert "resuming: 1 of 3 images already done" in logs
    assert not any("[1/3]" in m for m in logs)
    assert [e["score"] for e in resumed["images"]] == [e["score"] for e in reference["images"]]
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_mean.tif"),
                                      tifffile.imread(tmp_path / "ref" / f"{name}_mean.tif"))


def test_resume_after_the_input_changed_is_refused(restorer, tmp_path):
    inp = _images(tmp_path / "in", names=("a", "b"))
    out = tmp_path / "out"

    def kill(message):
        if "[1/2]" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore.restore_files(restorer, inp, out, task="denoise", tile=16, overlap=4, log=kill)
    tifffile.imwrite(inp / "b.tif", np.full((20, 24), 7, np.uint8))
    with pytest.raises(io.DataError, match="unfinished prediction with other settings.*input_identity"):
        _restore(restorer, inp, out)


# --- readers ---------------------------------------------------------------------------------------

def test_a_multichannel_tiff_is_refused_not_read_as_a_stack(tmp_path):
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((48, 48, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    for read in (io.read_image, io.read_volume, restore.list_inputs):
        with pytest.raises(io.DataError, match="five.tif: holds 5 channels per pixel.*save one channel"):
            read(path)


def test_an_imagej_channel_stack_is_refused(tmp_path):
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16), imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(io.DataError, match="holds 2 channels"):
        io.read_volume(path)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:   # a small file announcing 200000 x 200000 pixels
        tif.pages[0].tags["ImageWidth"].overwrite(200_000)
        tif.pages[0].tags["ImageLength"].overwrite(200_000)
        tif.pages[0].tags["RowsPerStrip"].overwrite(200_000)
    with pytest.raises(io.DataError, match="bomb.tif: decoding its pixels needs 74.5 GiB"):
        io.read_image(path)


def test_a_corrupt_zarr_chunk_names_the_volume_and_the_slice(tmp_path):
    import zarr

    path = tmp_path / "vol.zarr"
    array = zarr.create_array(store=str(path), shape=(3, 8, 8), dtype="uint8", chunks=(1, 8, 8))
    array[:] = 7
    chunk = next(p for p in sorted(path.rglob("*")) if p.is_file() and p.name == "0" and p.parent.name == "0"
                 and p.parent.parent.name in ("1", "c"))
    chunk.write_bytes(b"not zstd")
    volume = io.read_volume(path, lazy=True)
    with pytest.raises(io.DataError, match=r"vol.zarr: cannot read \[1\].*corrupt"):
        volume[1]


# --- prepare and train -------------------------------------------------------------------------------

def test_prepare_refuses_an_output_inside_its_input_folder(tmp_path):
    inp = _images(tmp_path / "clean", shape=(64, 64))
    before = snapshot(inp)
    with pytest.raises(io.DataError, match="overlaps the input"):
        prepare_dataset("denoise", inp, output=inp / "prepared", patch_size=32, show_progress=False)
    assert snapshot(inp) == before


def test_refused_training_run_leaves_the_workdirs_config_untouched(tmp_path):
    unet = models.unet_config({**tiny_config("vem_i").model.to_dict()})
    params = jax.eval_shape(lambda: models.init_params(unet, jax.random.key(0)))
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), params)
    ckpt = checkpointing.Checkpointer(tmp_path, every_steps=1)
    ckpt.save(1, {"params": params, "ema_params": params}, {**checkpointing.model_identity("vem_i", unet), "step": 1},
              force=True)
    ckpt.close()
    (tmp_path / "config.json").write_text('{"task": "vem_i"}')
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="another model"):
        train.train_and_evaluate(tiny_config("denoise"), str(tmp_path))
    assert (tmp_path / "config.json").read_text() == '{"task": "vem_i"}'


def test_a_full_disk_reported_by_a_library_is_one_line_with_the_fix():
    from emdiffuse_jax import user_errors

    err = ValueError('RESOURCE_EXHAUSTED: Error writing "params.a/0" in OCDBT database at local file\n"/w/ck/1": '
                     "Failed to write 317279 bytes to file 11: No space left on device [os_error_code='28']")
    line = user_errors.describe(err)
    assert "\n" not in line and line.startswith("RESOURCE_EXHAUSTED") and line.endswith("on another disk")
    assert user_errors.describe(OSError(28, "No space left on device", "/w/out/a.tif")) == \
        "/w/out/a.tif: no space left on the device; free space or choose an output on another disk"

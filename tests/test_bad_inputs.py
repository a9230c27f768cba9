"""Bad input to every command-line tool: a clean refusal, never a traceback, never a touched input (issue 14).

Each case is one command line of predict.py, isotropic.py, prepare.py, calibrate.py, train.py or demo.py
on malformed, hostile or impossible input (damaged files, wrong shapes or dtypes, NaN, decompression
bombs, damaged checkpoints, out-of-range flags, outputs that are files or overlap the input, read-only,
forbidden or full file systems). Every case asserts: exit status 1 (2 for a usage error), no traceback,
one `error:` line, the last, naming the problem, every input byte-identical afterwards and no output left
behind. All cases of one tool run in one process (tests/cli_runner.py), so the suite is fast.
The last tests resume runs stopped by a full disk after a newer checkpoint appeared: they must load the
checkpoint step recorded at the start.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from emdiffuse_jax import checkpointing, models

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(in_channel=2, out_channel=1, inner_channel=16, channel_mults=(1, 2), attn_res=(), num_head_channels=16,
            res_blocks=1, dropout=0.0, image_size=32, vem=False, zero_init=False)

W = "{W}"   # the world folder of the inputs below, filled in at run time
PRED = ["--task=denoise", f"--checkpoint={W}/ckpt/denoise", "--sampler=ddim", "--steps=2", "--tile=16",
        "--overlap=4"]
ISO = [f"--checkpoint={W}/ckpt/vem", "--z_factor=2", "--sampler=ddim", "--steps=2", "--tile=16", "--overlap=4"]
PREP = ["--task=denoise", "--patch_size=32"]
CAL = [f"--predictions={W}/pred", f"--target={W}/gt", "--block=16"]
TRAIN = [f"--config={ROOT}/configs/emdiffuse_n.py:tiny"]


def fault(code, where, on="write"):
    return {"errno": code, "prefix": where, "on": on}


# (id, argv, expected text, fault): the output of case <id> is {W}/out/<id> unless the argv names another.
CASES = {
    "predict": [
        ("missing_input", [f"--input={W}/nothing.tif"], "nothing.tif: no such file", None),
        ("zero_byte_tif", [f"--input={W}/in/zero.tif"], "zero.tif: empty file (0 bytes)", None),
        ("text_as_tif", [f"--input={W}/in/text.tif"], "text.tif: cannot read TIFF", None),
        ("truncated_tif", [f"--input={W}/in/trunc.tif"], "trunc.tif: page 0 ends at byte", None),
        ("nan_image", [f"--input={W}/in/nan.tif"], "nan.tif: 3 NaN or infinite values", None),
        ("inf_image", [f"--input={W}/in/inf.tif"], "inf.tif: 1 NaN or infinite values", None),
        ("multichannel_tif", [f"--input={W}/in/five.tif"], "five.tif: holds 5 channels per pixel", None),
        ("imagej_channels", [f"--input={W}/in/channels.tif"], "channels.tif: holds 2 channels", None),
        ("decompression_bomb", [f"--input={W}/in/bomb.tif"], "bomb.tif: decoding its pixels needs", None),
        ("int64_dtype", [f"--input={W}/in/int64.tif"], "int64.tif: unsupported dtype int64", None),
        ("complex_dtype", [f"--input={W}/in/complex.tif"], "complex.tif: unsupported dtype complex64", None),
        ("four_d_tif", [f"--input={W}/in/fourd.tif"], "fourd.tif: expected a 2D grey image", None),
        ("corrupt_png", [f"--input={W}/in/corrupt.png"], "corrupt.png: cannot read PNG", None),
        ("zero_byte_png", [f"--input={W}/in/zero.png"], "zero.png: empty file (0 bytes)", None),
        ("png_bomb", [f"--input={W}/in/bomb.png"], "bomb.png: ", None),
        ("empty_folder", [f"--input={W}/in/empty"], "empty: no images found", None),
        ("folder_without_images", [f"--input={W}/in/notes"], "notes: no images found", None),
        ("same_stem_in_folder", [f"--input={W}/in/dupes"], "two images are both named 'a'", None),
        ("bad_file_in_folder", [f"--input={W}/in/onebad"], "onebad/b.tif: cannot read TIFF", None),
        ("unsupported_suffix", [f"--input={W}/in/image.bmp"], "image.bmp: unsupported image type", None),
        ("unreadable_input", [f"--input={W}/in/good.tif"], "good.tif: permission denied",
         fault("EACCES", f"{W}/in/good.tif", on="read")),
        ("output_is_input", [f"--input={W}/in/folder", f"--output={W}/in/folder"], "overlaps the input", None),
        ("output_inside_input", [f"--input={W}/in/folder", f"--output={W}/in/folder/out"], "overlaps the input",
         None),
        ("output_is_a_file", [f"--input={W}/in/good.tif", f"--output={W}/taken"], "taken: is an existing file", None),
        ("output_under_a_file", [f"--input={W}/in/good.tif", f"--output={W}/taken/out"], "which is a file", None),
        ("output_holds_user_files", [f"--input={W}/in/good.tif", f"--output={W}/occupied"], "is not empty", None),
        ("output_name_collision", [f"--input={W}/in/good.tif", f"--output={W}/collide"], "is not empty", None),
        ("output_read_only", [f"--input={W}/in/good.tif", f"--output={W}/ro/out"], "read-only",
         fault("EROFS", f"{W}/ro")),
        ("output_forbidden", [f"--input={W}/in/good.tif", f"--output={W}/denied/out"], "permission denied",
         fault("EACCES", f"{W}/denied")),
        ("disk_full", [f"--input={W}/in/good.tif", f"--output={W}/full/out"], "no space left on the device",
         fault("ENOSPC", f"{W}/full")),
        ("damaged_report_in_output", [f"--input={W}/in/good.tif", f"--output={W}/badreport"],
         "report.json: cannot read this report", None),
        ("damaged_progress_in_output", [f"--input={W}/in/good.tif", f"--output={W}/badprogress"],
         ".progress.json: cannot read this progress file", None),
        ("missing_checkpoint", [f"--input={W}/in/good.tif", f"--checkpoint={W}/nockpt"], "does not exist", None),
        ("empty_checkpoint_dir", [f"--input={W}/in/good.tif", f"--checkpoint={W}/in/empty"],
         "no emdiffuse_jax checkpoint", None),
        ("checkpoint_meta_damaged", [f"--input={W}/in/good.tif", f"--checkpoint={W}/ckpt/badmeta"],
         "metadata: damaged checkpoint metadata", None),
        ("checkpoint_state_deleted", [f"--input={W}/in/good.tif", f"--checkpoint={W}/ckpt/nostate"],
         "cannot restore the model weights", None),
        ("checkpoint_state_truncated", [f"--input={W}/in/good.tif", f"--checkpoint={W}/ckpt/truncated"],
         "cannot restore the model weights", None),
        ("fake_pth", [f"--input={W}/in/good.tif", f"--checkpoint={W}/in/fake.pth"], "fake.pth", None),
        ("vem_checkpoint", [f"--input={W}/in/good.tif", f"--checkpoint={W}/ckpt/vem"], "is a volume (vem_i) model",
         None),
        ("wrong_task", [f"--input={W}/in/good.tif", "--task=superres"], "'superres' was requested", None),
        ("num_samples_zero", [f"--input={W}/in/good.tif", "--num_samples=0"], "--num_samples must be >= 1", None),
        ("tile_zero", [f"--input={W}/in/good.tif", "--tile=0"], "tile 0 must be a positive multiple of 2", None),
        ("tile_negative", [f"--input={W}/in/good.tif", "--tile=-16"], "tile -16 must be a positive multiple", None),
        ("tile_not_a_multiple_of_the_downsampling", [f"--input={W}/in/good.tif", "--tile=15"],
         "tile 15 must be a positive multiple of 2, the network's down-sampling factor", None),
        ("overlap_negative", [f"--input={W}/in/good.tif", "--overlap=-1"], "must be at least 0 and less than half",
         None),
        ("overlap_half_the_tile", [f"--input={W}/in/good.tif", "--overlap=8"], "less than half the tile (16 px)",
         None),
        ("steps_one", [f"--input={W}/in/good.tif", "--steps=1"], "--steps must be >= 2", None),
        ("eta_out_of_range", [f"--input={W}/in/good.tif", "--eta=2"], "--eta must be in [0, 1]", None),
        ("threshold_negative", [f"--input={W}/in/good.tif", "--threshold=-0.1"], "--threshold must be >= 0", None),
        ("batch_per_device_zero", [f"--input={W}/in/good.tif", "--batch_per_device=0"],
         "--batch_per_device must be >= 1", None),
        ("stray_argument", [f"--input={W}/in/good.tif", "extra"], "unexpected arguments: ['extra']", None),
        ("tile_not_a_number", [f"--input={W}/in/good.tif", "--tile=abc"], "--tile", None),
        ("unknown_sampler", [f"--input={W}/in/good.tif", "--sampler=euler"], "--sampler", None),
        ("missing_required_flag", ["--input="], "--output", None),
    ],
    "isotropic": [
        ("missing_input", [f"--input={W}/nothing.tif"], "nothing.tif: no such file", None),
        ("single_slice", [f"--input={W}/in/good.tif"], "volume tasks need at least 2", None),
        ("nan_volume", [f"--input={W}/in/nanvol.tif"], "NaN or infinite values", None),
        ("corrupt_zarr_chunk", [f"--input={W}/in/badchunk.zarr"], "a chunk is corrupt or missing", None),
        ("zarr_group_without_dataset", [f"--input={W}/in/group.zarr"], "name one with dataset", None),
        ("zarr_missing_dataset", [f"--input={W}/in/group.zarr", "--dataset=nope"], "has no array 'nope'", None),
        ("text_as_tif", [f"--input={W}/in/text.tif"], "text.tif: cannot read TIFF", None),
        ("truncated_stack", [f"--input={W}/in/truncstack.tif"], "truncstack.tif", None),
        ("multichannel_stack", [f"--input={W}/in/five.tif"], "holds 5 channels per pixel", None),
        ("mismatched_slices", [f"--input={W}/in/mixed"], "all slices must match", None),
        ("empty_folder", [f"--input={W}/in/empty"], "no images found", None),
        ("unreadable_input", [f"--input={W}/in/stack.tif"], "stack.tif: permission denied",
         fault("EACCES", f"{W}/in/stack.tif", on="read")),
        ("z_factor_one", [f"--input={W}/in/stack.tif", "--z_factor=1"], "--z_factor must be >= 2", None),
        ("z_factor_unlike_training", [f"--input={W}/in/stack.tif", "--z_factor=3"], "trained for z_factor=2", None),
        ("two_d_checkpoint", [f"--input={W}/in/stack.tif", f"--checkpoint={W}/ckpt/denoise"],
         "is a 2D (denoise) model", None),
        ("checkpoint_meta_damaged", [f"--input={W}/in/stack.tif", f"--checkpoint={W}/ckpt/badmeta"],
         "damaged checkpoint metadata", None),
        ("checkpoint_state_deleted", [f"--input={W}/in/stack.tif", f"--checkpoint={W}/ckpt/vemnostate"],
         "cannot restore the model weights", None),
        ("output_is_input", [f"--input={W}/in/slices", f"--output={W}/in/slices"], "overlaps the input", None),
        ("output_inside_input", [f"--input={W}/in/slices", f"--output={W}/in/slices/iso"], "overlaps the input",
         None),
        ("output_is_a_file", [f"--input={W}/in/stack.tif", f"--output={W}/taken"], "is an existing file", None),
        ("output_under_a_file", [f"--input={W}/in/stack.tif", f"--output={W}/taken/iso"], "which is a file", None),
        ("output_holds_user_files", [f"--input={W}/in/stack.tif", f"--output={W}/occupied"],
         "holds files this run does not write", None),
        ("damaged_progress", [f"--input={W}/in/stack.tif", f"--output={W}/isobadprogress"],
         "progress.json: cannot read this progress file", None),
        ("output_read_only", [f"--input={W}/in/stack.tif", f"--output={W}/ro/iso"], "read-only",
         fault("EROFS", f"{W}/ro")),
        ("disk_full", [f"--input={W}/in/stack.tif", f"--output={W}/full/iso"], "no space left on the device",
         fault("ENOSPC", f"{W}/full")),
        ("num_samples_zero", [f"--input={W}/in/stack.tif", "--num_samples=0"], "--num_samples must be >= 1", None),
        ("tile_zero", [f"--input={W}/in/stack.tif", "--tile=0"], "tile 0 must be a positive multiple", None),
        ("unknown_format", [f"--input={W}/in/stack.tif", "--format=hdf5"], "--format", None),
        ("stray_argument", [f"--input={W}/in/stack.tif", "extra"], "unexpected arguments", None),
    ],
    "prepare": [
        ("patch_size_zero", [f"--input={W}/in/clean", "--patch_size=0"], "patch_size must be an integer >= 8", None),
        ("patch_size_negative", [f"--input={W}/in/clean", "--patch_size=-32"], "patch_size must be", None),
        ("superres_odd_patch", [f"--input={W}/in/clean", "--task=superres", "--patch_size=33"],
         "even patch_size", None),
        ("overlap_negative", [f"--input={W}/in/clean", "--overlap=-0.1"], "overlap must be a fraction", None),
        ("overlap_past_patch", [f"--input={W}/in/clean", "--overlap=40"], "overlap must be a fraction", None),
        ("val_fraction_negative", [f"--input={W}/in/clean", "--val_fraction=-0.1"], "val_fraction must be in [0, 1)",
         None),
        ("val_fraction_one", [f"--input={W}/in/clean", "--val_fraction=1"], "val_fraction must be in [0, 1)", None),
        ("unknown_degradation", [f"--input={W}/in/clean", "--degrade=gauss"], "unknown step 'gauss'", None),
        ("unknown_degradation_option", [f"--input={W}/in/clean", "--degrade=poisson:dos=3"], "has no option 'dos'",
         None),
        ("degradation_value_out_of_range", [f"--input={W}/in/clean", "--degrade=poisson:dose=0"],
         "dose must be positive", None),
        ("degradation_not_a_number", [f"--input={W}/in/clean", "--degrade=poisson:dose=high"], "is not key=number",
         None),
        ("superres_without_down2", [f"--input={W}/in/clean", "--task=superres", "--degrade=poisson:dose=5"],
         "needs a 'down2' step", None),
        ("degrade_with_acquired_pairs", [f"--input={W}/in/pairs", "--degrade=poisson:dose=5"], "would be ignored",
         None),
        ("vem_without_z_factor", [f"--input={W}/in/stack.tif", "--task=vem_i"], "vem_i needs z_factor >= 2", None),
        ("vem_z_factor_one", [f"--input={W}/in/stack.tif", "--task=vem_i", "--z_factor=1"], "needs z_factor >= 2",
         None),
        ("vem_with_degrade", [f"--input={W}/in/stack.tif", "--task=vem_i", "--z_factor=2", "--degrade=blur"],
         "drop --degrade", None),
        ("vem_z_stride_zero", [f"--input={W}/in/stack.tif", "--task=vem_a", "--z_factor=2", "--z_stride=0"],
         "z_stride and section_thickness must be >= 1", None),
        ("vem_from_one_image", [f"--input={W}/in/good.tif", "--task=vem_i", "--z_factor=2"], "at least 2", None),
        ("missing_input", [f"--input={W}/nothing"], "nothing: no such file or folder", None),
        ("empty_folder", [f"--input={W}/in/empty"], "no images", None),
        ("nan_images", [f"--input={W}/in/nanfolder"], "NaN or infinite values", None),
        ("output_inside_input", [f"--input={W}/in/clean", f"--output={W}/in/clean/prepared"], "overlaps the input",
         None),
        ("output_is_a_file", [f"--input={W}/in/clean", f"--output={W}/taken"], "is an existing file", None),
        ("output_under_a_file", [f"--input={W}/in/clean", f"--output={W}/taken/p"], "which is a file", None),
        ("output_read_only", [f"--input={W}/in/clean", f"--output={W}/ro/p"], "read-only", fault("EROFS", f"{W}/ro")),
        ("stray_argument", [f"--input={W}/in/clean", "extra"], "unexpected arguments", None),
        ("unknown_task", ["--task=bogus"], "--task", None),
    ],
    "calibrate": [
        ("block_zero", ["--block=0"], "--block must be >= 2", None),
        ("block_negative", ["--block=-1"], "--block must be >= 2", None),
        ("block_larger_than_image", ["--block=128"], "smaller than the 128 px block", None),
        ("alpha_zero", ["--alpha=0"], "--alpha must be in (0, 1)", None),
        ("alpha_above_one", ["--alpha=1.5"], "--alpha must be in (0, 1)", None),
        ("delta_zero", ["--delta=0"], "--delta must be in (0, 1)", None),
        ("tolerance_zero", ["--tolerance=0"], "--tolerance must be > 0", None),
        ("missing_predictions", [f"--predictions={W}/nopred"], "no report.json", None),
        ("predictions_without_report", [f"--predictions={W}/in/empty"], "no report.json", None),
        ("damaged_report", [f"--predictions={W}/predbadjson"], "report.json: cannot read this report", None),
        ("report_of_another_tool", [f"--predictions={W}/predother"], "not a launch/predict.py report", None),
        ("predicted_with_k1", [f"--predictions={W}/predk1"], "predicted with K=1", None),
        ("missing_target", [f"--target={W}/nogt"], "nogt: no such file", None),
        ("target_names_differ", [f"--target={W}/gtnames"], "no ground truth for predicted images", None),
        ("target_shape_differs", [f"--target={W}/gtshape"], "differs from the prediction", None),
        ("damaged_target", [f"--target={W}/gtbad"], "cannot read TIFF", None),
        ("output_is_a_file", [f"--output={W}/taken"], "is an existing file", None),
        ("output_under_a_file", [f"--output={W}/taken/cal"], "which is a file", None),
        ("output_inside_predictions", [f"--output={W}/pred/cal"], "overlaps the input", None),
        ("output_holds_user_files", [f"--output={W}/occupied"], "holds files calibrate.py does not write", None),
        ("output_read_only", [f"--output={W}/ro/cal"], "read-only", fault("EROFS", f"{W}/ro")),
        ("disk_full", [f"--output={W}/full/cal"], "no space left on the device", fault("ENOSPC", f"{W}/full")),
        ("stray_argument", ["extra"], "unexpected arguments", None),
    ],
    "train": [
        ("batch_size_zero", ["--config.batch_size=0"], "config.batch_size must be > 0, got 0", None),
        ("num_steps_zero", ["--config.num_steps=0"], "config.num_steps must be > 0", None),
        ("log_every_zero", ["--config.log_every=0"], "config.log_every must be > 0", None),
        ("learning_rate_zero", ["--config.optim.learning_rate=0"], "config.optim.learning_rate must be > 0", None),
        ("ema_decay_above_one", ["--config.ema_decay=1.5"], "config.ema_decay must be in [0, 1)", None),
        ("val_fraction_negative", ["--config.data.val_fraction=-0.1"], "config.data.val_fraction must be in",
         None),
        ("patch_size_indivisible", ["--config.data.patch_size=31"], "must be divisible by 2", None),
        ("every_steps_zero", ["--config.checkpoint.every_steps=0"], "config.checkpoint.every_steps must be > 0",
         None),
        ("eval_samples_zero", ["--config.eval.num_samples=0"], "config.eval.num_samples must be > 0", None),
        ("compute_dtype_unknown", ["--config.compute_dtype=float16"], "compute_dtype must be", None),
        ("task_unknown", ["--config.task=bogus"], "is not one of", None),
        ("vem_z_factor_one", [f"--config={ROOT}/configs/vemdiffuse_i.py:tiny", "--config.data.z_factor=1"],
         "need data.z_factor >= 2", None),
        ("mistyped_key", ["--config.optim.learnig_rate=1"], "learnig_rate", None),
        ("missing_config_file", [f"--config={W}/noconfig.py"], "noconfig.py", None),
        ("missing_data", [f"--config.data.input_path={W}/nothing"], "nothing: no such file", None),
        ("nan_data", [f"--config.data.input_path={W}/in/nanfolder"], "NaN or infinite values", None),
        ("multichannel_data", [f"--config.data.input_path={W}/in/five.tif"], "holds 5 channels per pixel", None),
        ("missing_init_from", [f"--config.init_from={W}/nockpt"], "does not exist", None),
        ("workdir_is_a_file", [f"--workdir={W}/taken"], "is an existing file", None),
        ("workdir_under_a_file", [f"--workdir={W}/taken/run"], "which is a file", None),
        ("workdir_of_another_model", [f"--workdir={W}/vemrun"], "holds a checkpoint (step 1) of another model",
         None),
        ("workdir_read_only", [f"--workdir={W}/ro/run"], "read-only", fault("EROFS", f"{W}/ro")),
        ("stray_argument", ["extra"], "unexpected arguments", None),
    ],
    "demo": [
        ("num_samples_zero", ["--num_samples=0"], "num_samples >= 1", None),
        ("num_samples_negative", ["--num_samples=-3"], "num_samples >= 1", None),
        ("steps_zero", ["--steps=0"], "steps >= 1", None),
        ("sampler_steps_one", ["--sampler_steps=1"], "at least 2 steps", None),
        ("unknown_sampler", ["--sampler=euler"], "--sampler", None),
        ("workdir_is_a_file", [f"--workdir={W}/taken"], "is an existing file", None),
        ("workdir_under_a_file", [f"--workdir={W}/taken/demo"], "which is a file", None),
        ("workdir_read_only", [f"--workdir={W}/ro/demo"], "read-only", fault("EROFS", f"{W}/ro")),
        ("stray_argument", ["extra"], "unexpected arguments", None),
    ],
}

BASE = {"predict": PRED, "isotropic": ISO, "prepare": PREP, "calibrate": CAL, "train": TRAIN, "demo": []}
OUTPUT_FLAG = {"predict": "--output", "isotropic": "--output", "prepare": "--output", "calibrate": "--output",
               "train": "--workdir", "demo": "--workdir"}
PATH_FLAGS = ("--input=", "--target=", "--predictions=", "--checkpoint=", "--output=", "--workdir=",
              "--config.data.input_path=")


def _save_checkpoint(workdir, task, unet_values, z_factor=None):
    unet = models.unet_config(unet_values)
    params = models.init_params(unet, jax.random.key(0))
    ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
    ckpt.save(1, {"params": params, "ema_params": params},
              {**checkpointing.model_identity(task, unet), "z_factor": z_factor, "step": 1}, force=True)
    ckpt.close()


def _bomb(path):
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages[0].tags[tag].overwrite(200_000)


def _png_bomb(path):
    """A PNG header announcing 40000 x 40000 pixels over a tiny (invalid) body."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def build_world(w: pathlib.Path) -> None:
    """Every input the cases refer to."""
    inp = w / "in"
    inp.mkdir(parents=True)
    yy, xx = np.mgrid[:40, :52]
    good = (100 + 60 * np.sin(yy / 5.0) * np.cos(xx / 7.0)).astype(np.uint8)
    tifffile.imwrite(inp / "good.tif", good)
    (inp / "zero.tif").write_bytes(b"")
    (inp / "zero.png").write_bytes(b"")
    (inp / "text.tif").write_text("this is not a TIFF\n")
    (inp / "fake.pth").write_text("not a torch checkpoint")
    tifffile.imwrite(inp / "full.tif", np.random.default_rng(0).integers(0, 255, (40, 52), np.uint8))
    data = (inp / "full.tif").read_bytes()
    (inp / "trunc.tif").write_bytes(data[: len(data) // 2])
    (inp / "full.tif").unlink()
    nan = good.astype(np.float32)
    nan[1, 1:4] = np.nan
    tifffile.imwrite(inp / "nan.tif", nan)
    inf = good.astype(np.float32)
    inf[0, 0] = np.inf
    tifffile.imwrite(inp / "inf.tif", inf)
    tifffile.imwrite(inp / "five.tif", np.zeros((48, 48, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(inp / "channels.tif", np.zeros((2, 16, 16), np.uint16), imagej=True, metadata={"axes": "CYX"})
    _bomb(inp / "bomb.tif")
    _png_bomb(inp / "bomb.png")
    tifffile.imwrite(inp / "int64.tif", good.astype(np.int64))
    tifffile.imwrite(inp / "complex.tif", good.astype(np.complex64))
    tifffile.imwrite(inp / "fourd.tif", np.zeros((2, 3, 16, 16), np.uint8), photometric="minisblack")
    (inp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    Image.fromarray(good).save(inp / "image.bmp")
    (inp / "empty").mkdir()
    (inp / "notes").mkdir()
    (inp / "notes" / "readme.txt").write_text("no images here")
    (inp / "dupes").mkdir()
    tifffile.imwrite(inp / "dupes" / "a.tif", good)
    Image.fromarray(good).save(inp / "dupes" / "a.png")
    (inp / "onebad").mkdir()
    tifffile.imwrite(inp / "onebad" / "a.tif", good)
    (inp / "onebad" / "b.tif").write_text("broken")
    (inp / "folder").mkdir()
    for i in range(2):
        tifffile.imwrite(inp / "folder" / f"{i}.tif", good + i)
    stack = np.stack([np.full((24, 20), v, np.uint8) for v in (40, 120, 200)])
    tifffile.imwrite(inp / "stack.tif", stack, photometric="minisblack")
    (inp / "slices").mkdir()
    for i, s in enumerate(stack):
        tifffile.imwrite(inp / "slices" / f"{i}.tif", s)
    (inp / "mixed").mkdir()
    tifffile.imwrite(inp / "mixed" / "0.tif", stack[0])
    tifffile.imwrite(inp / "mixed" / "1.tif", stack[1][:, :10])
    nanvol = stack.astype(np.float32)
    nanvol[1, 2, 2] = np.nan
    tifffile.imwrite(inp / "nanvol.tif", nanvol, photometric="minisblack")
    tifffile.imwrite(inp / "bigstack.tif", np.random.default_rng(1).integers(0, 255, (3, 64, 64), np.uint8),
                     photometric="minisblack")
    data = (inp / "bigstack.tif").read_bytes()
    (inp / "truncstack.tif").write_bytes(data[: len(data) * 2 // 3])
    (inp / "bigstack.tif").unlink()
    import zarr

    bad = zarr.create_array(store=str(inp / "badchunk.zarr"), shape=(3, 8, 8), dtype="uint8", chunks=(1, 8, 8))
    bad[:] = 7
    chunk = next(p for p in sorted((inp / "badchunk.zarr").rglob("*")) if p.is_file() and p.name == "0"
                 and p.parent.name == "0" and p.parent.parent.name in ("1", "c"))
    chunk.write_bytes(b"not zstd")
    group = zarr.open_group(str(inp / "group.zarr"), mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=(3, 8, 8), dtype="uint8")[:] = 1
    (inp / "clean").mkdir()
    for i in range(2):
        tifffile.imwrite(inp / "clean" / f"{i}.tif", np.tile(good, (2, 2)))
    (inp / "nanfolder").mkdir()
    tifffile.imwrite(inp / "nanfolder" / "0.tif", np.tile(nan, (2, 2)))
    for sub in ("img", "gt"):
        (inp / "pairs" / sub).mkdir(parents=True)
        tifffile.imwrite(inp / "pairs" / sub / "0.tif", np.tile(good, (2, 2)))

    ckpt = w / "ckpt"
    _save_checkpoint(ckpt / "denoise", "denoise", TINY)
    _save_checkpoint(ckpt / "vem", "vem_i", {**TINY, "in_channel": 3, "vem": True}, z_factor=2)
    shutil.copytree(ckpt / "denoise", ckpt / "badmeta")
    (ckpt / "badmeta" / "checkpoints" / "1" / "meta" / "metadata").write_text('{"task": "den')
    shutil.copytree(ckpt / "denoise", ckpt / "nostate")
    shutil.rmtree(ckpt / "nostate" / "checkpoints" / "1" / "state")
    shutil.copytree(ckpt / "vem", ckpt / "vemnostate")
    shutil.rmtree(ckpt / "vemnostate" / "checkpoints" / "1" / "state")
    shutil.copytree(ckpt / "denoise", ckpt / "truncated")
    for p in (ckpt / "truncated" / "checkpoints" / "1" / "state").rglob("*"):
        if p.is_file() and "ocdbt.process_0" in str(p) and p.parent.name == "d":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    shutil.copytree(ckpt / "vem", w / "vemrun")
    (w / "vemrun" / "config.json").write_text('{"task": "vem_i"}')

    pred, gt = w / "pred", w / "gt"
    pred.mkdir(), gt.mkdir()
    rng = np.random.default_rng(0)
    norm = {"mode": "minmax", "lo": 0.0, "hi": 1.0, "dtype": "<f4", "clip": False}
    images = []
    for i in range(6):   # as in test_predict_calibrate: errors that follow the predicted std, 96 blocks
        mean = rng.uniform(0.3, 0.7, (64, 64)).astype(np.float32)
        std = np.kron(rng.choice([0.01, 0.08], (4, 4)), np.ones((16, 16))).astype(np.float32)
        tifffile.imwrite(pred / f"im{i}_mean.tif", mean)
        tifffile.imwrite(pred / f"im{i}_std.tif", std)
        tifffile.imwrite(gt / f"im{i}.tif", (mean + std * rng.standard_normal(mean.shape)).astype(np.float32))
        images.append({"name": f"im{i}", "score": float(std.mean()), "normalization": norm})
    (pred / "report.json").write_text(json.dumps({"images": images}))
    for name, report in (("predk1", {"images": [{**images[0], "score": None}]}), ("predother", {"settings": {}})):
        shutil.copytree(pred, w / name)
        (w / name / "report.json").write_text(json.dumps(report))
    shutil.copytree(pred, w / "predbadjson")
    (w / "predbadjson" / "report.json").write_text('{"images": [')
    shutil.copytree(gt, w / "gtnames")
    (w / "gtnames" / "im0.tif").rename(w / "gtnames" / "other.tif")
    shutil.copytree(gt, w / "gtshape")
    tifffile.imwrite(w / "gtshape" / "im0.tif", mean[:32])
    shutil.copytree(gt, w / "gtbad")
    (w / "gtbad" / "im0.tif").write_text("broken")

    (w / "taken").write_text("a file of the user's")
    (w / "occupied").mkdir()
    (w / "occupied" / "notes.txt").write_text("mine")
    (w / "collide").mkdir()
    tifffile.imwrite(w / "collide" / "good_mean.tif", np.zeros((4, 4), np.uint16))
    (w / "badreport").mkdir()
    (w / "badreport" / "report.json").write_text("{broken")
    (w / "badprogress").mkdir()
    (w / "badprogress" / ".progress.json").write_text("{broken")
    (w / "isobadprogress" / ".partial").mkdir(parents=True)
    (w / "isobadprogress" / ".partial" / "progress.json").write_text("{broken")
    for name in ("ro", "denied", "full", "out"):
        (w / name).mkdir()


def _argv(script, case_id, argv, world):
    args = [a.replace(W, str(world)) for a in BASE[script]]
    given = [a.replace(W, str(world)) for a in argv]
    # a flag given by the case replaces the base one
    names = {a.split("=")[0] for a in given if a.startswith("--")}
    args = [a for a in args if a.split("=")[0] not in names] + given
    flag = OUTPUT_FLAG[script]
    if not any(a.startswith(flag + "=") for a in args) and case_id != "missing_required_flag":
        args.append(f"{flag}={world}/out/{script}-{case_id}")
    if script == "predict" and not any(a.startswith("--input=") for a in args):
        args.append(f"--input={world}/in/good.tif")
    return args


def _watched(args, world):
    paths = {a.split("=", 1)[1].split(":")[0] for a in args if a.startswith(PATH_FLAGS) and "=" in a}
    return sorted(p for p in paths if p) + [str(world / "in")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    world = tmp_path_factory.mktemp("world")
    build_world(world)
    out = {}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    for script, cases in CASES.items():
        batch = []
        for case_id, argv, _, flt in cases:
            args = _argv(script, case_id, argv, world)
            batch.append({"id": case_id, "argv": args, "watch": _watched(args, world),
                          "fault": None if flt is None else {**flt, "prefix": flt["prefix"].replace(W, str(world))}})
        cases_path = world / f"{script}-cases.json"
        cases_path.write_text(json.dumps(batch))
        results_path = world / f"{script}-results.json"
        run = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_runner.py"), script, str(cases_path),
                              str(results_path)], env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        out.update({(script, r["id"]): r for r in json.loads(results_path.read_text())})
    out["world"] = world
    return out


def _case_params():
    return [pytest.param(script, case_id, expected, id=f"{script}-{case_id}")
            for script, cases in CASES.items() for case_id, _, expected, _ in cases]


def test_the_suite_has_at_least_a_hundred_cases_across_six_tools():
    assert len(_case_params()) >= 100 and len(CASES) == 6


@pytest.mark.parametrize("script, case_id, expected", _case_params())
def test_bad_input_is_refused_cleanly(results, script, case_id, expected):
    r = results[(script, case_id)]
    stderr = r["stderr"]
    assert r["traceback"] is None, r["traceback"]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert r["rc"] in (1, 2), (r["rc"], stderr[-2000:])   # 2: a usage error (a flag), 1: any other
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0] and stderr.rstrip().endswith(errors[0]), stderr[-2000:]
    assert r["changed"] == [], f"modified or left behind: {r['changed']}"


def _run_cases(script, cases, folder):
    """Runs `cases` of one tool through tests/cli_runner.py; returns their results by id."""
    cases_path, results_path = folder / f"{script}-pin-cases.json", folder / f"{script}-pin-results.json"
    cases_path.write_text(json.dumps(cases))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_runner.py"), script, str(cases_path),
                          str(results_path)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return {r["id"]: r for r in json.loads(results_path.read_text())}


@pytest.mark.parametrize("older_step_kept", [True, False])
def test_isotropic_resume_loads_the_checkpoint_step_it_started_with(tmp_path, older_step_kept):
    """An isotropic run stopped by a full disk, then resumed after training saved a newer checkpoint: the
    resume uses the step recorded at the start, or is refused when that step is gone; never the newer one."""
    ckpt = tmp_path / "run"
    _save_checkpoint(ckpt, "vem_i", {**TINY, "in_channel": 3, "vem": True}, z_factor=2)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([np.full((24, 20), v, np.uint8) for v in (40, 120, 200)]),
                     photometric="minisblack")
    out = tmp_path / "iso"
    argv = [a.replace(W, str(tmp_path)) for a in ISO if not a.startswith("--checkpoint")] + [
        f"--checkpoint={ckpt}", f"--input={tmp_path / 'stack.tif'}", f"--output={out}"]
    first = _run_cases("isotropic", [{"id": "full_disk", "argv": argv,
                                      "fault": fault("ENOSPC", str(out / ".partial" / "std"))}], tmp_path)
    assert "no space left on the device" in first["full_disk"]["stderr"]
    assert json.loads((out / ".partial" / "progress.json").read_text())["settings"]["checkpoint_step"] == 1
    unet = models.unet_config({**TINY, "in_channel": 3, "vem": True})
    params = models.init_params(unet, jax.random.key(5))   # a newer, different checkpoint appears
    manager = checkpointing.Checkpointer(ckpt, every_steps=1)
    manager.save(2, {"params": params, "ema_params": params},
                 {**checkpointing.model_identity("vem_i", unet), "z_factor": 2, "step": 2}, force=True)
    manager.close()
    if not older_step_kept:
        shutil.rmtree(ckpt / "checkpoints" / "1")
    resumed = _run_cases("isotropic", [{"id": "resume", "argv": argv}], tmp_path)["resume"]
    assert resumed["traceback"] is None, resumed["traceback"]
    if older_step_kept:
        assert resumed["rc"] == 0, resumed["stderr"][-2000:]
        assert json.loads((out / "report.json").read_text())["settings"]["checkpoint_step"] == 1
    else:
        assert resumed["rc"] == 1 and "started with checkpoint step 1, which is gone" in resumed["stderr"]
        assert not (out / "report.json").exists()


def test_predict_resume_loads_the_checkpoint_step_it_started_with(tmp_path):
    ckpt = tmp_path / "run"
    _save_checkpoint(ckpt, "denoise", TINY)
    tifffile.imwrite(tmp_path / "a.tif", np.full((20, 24), 90, np.uint8) + np.eye(20, 24, dtype=np.uint8))
    out = tmp_path / "out"
    argv = [a for a in PRED if not a.startswith("--checkpoint")] + [
        f"--checkpoint={ckpt}", f"--input={tmp_path / 'a.tif'}", f"--output={out}"]
    first = _run_cases("predict", [{"id": "full_disk", "argv": argv,
                                    "fault": fault("ENOSPC", str(out / ".a_"))}], tmp_path)["full_disk"]
    assert "no space left on the device" in first["stderr"] and not (out / "report.json").exists()
    unet = models.unet_config(TINY)
    params = models.init_params(unet, jax.random.key(5))
    manager = checkpointing.Checkpointer(ckpt, every_steps=1)
    manager.save(2, {"params": params, "ema_params": params}, {**checkpointing.model_identity("denoise", unet),
                                                                "step": 2}, force=True)
    manager.close()
    resumed = _run_cases("predict", [{"id": "resume", "argv": argv}], tmp_path)["resume"]
    assert resumed["rc"] == 0, resumed["stderr"][-2000:]
    assert json.loads((out / "report.json").read_text())["settings"]["checkpoint_step"] == 1

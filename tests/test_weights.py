"""Published weights (docs/weights.md): a full-size reference-layout vEM .pth built from the golden manifest
loads as the published network, and isotropic prediction refuses it without the z_factor it was trained
with, then records that z_factor in its report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import shared_path
from test_torch_checkpoint import Tensor, _write_checkpoint

from emdiffuse_jax import checkpointing

ROOT = Path(__file__).resolve().parents[1]


def _strides(shape):
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return tuple(reversed(out))


@pytest.fixture(scope="module")
def full_vem_pth(tmp_path_factory):
    """A `best_Network.pth` with every key and shape of the published vEMDiffuse network (random weights)."""
    manifest = json.loads(shared_path("golden", "manifest.json").read_text())["vEMDiffuse_full"]
    rng = np.random.default_rng(0)
    obj, blobs = {}, {}
    for index, (key, shape, dtype) in enumerate(manifest["state_dict"]):
        assert dtype == "float32"
        values = rng.normal(0, 0.02, size=shape).astype(np.float32)
        obj[key] = Tensor(str(index), "FloatStorage", values.size, 0, tuple(shape), _strides(shape))
        blobs[str(index)] = values.tobytes()
    path = tmp_path_factory.mktemp("published") / "best_Network.pth"
    return _write_checkpoint(path, obj, blobs), manifest["n_params"]


def test_full_size_pth_loads_as_the_published_vem_network(full_vem_pth):
    import jax

    path, n_params = full_vem_pth
    loaded = checkpointing.load_model(path)
    assert loaded.unet.vem and loaded.unet.in_channel == 3 and loaded.task == "vem_i"
    assert sum(x.size for x in jax.tree_util.tree_leaves(loaded.params)) == n_params


def test_a_pth_needs_its_training_z_factor_stated_and_equal_to_the_one_used(full_vem_pth):
    loaded = checkpointing.load_model(full_vem_pth[0])
    with pytest.raises(ValueError, match=r"does not record the z_factor.*--trained_z_factor=Z \(6 for the published "
                                         r"vEMDiffuse-i weights, 5 for vEMDiffuse-a; see docs/weights.md\)"):
        checkpointing.trained_z_factor(loaded, 6)
    with pytest.raises(ValueError, match=r"trained for z_factor=5 .* got --z_factor=6"):
        checkpointing.trained_z_factor(loaded, 6, declared=5)
    assert checkpointing.trained_z_factor(loaded, 6, declared=6) == (6, "--trained_z_factor (a .pth does not record it)")


def test_our_checkpoints_record_their_z_factor(tmp_path):
    from test_predict_launch import TINY, save_checkpoint

    loaded = checkpointing.load_model(save_checkpoint(tmp_path / "v", "vem_i", {**TINY, "in_channel": 3, "vem": True},
                                                      z_factor=4))
    assert checkpointing.trained_z_factor(loaded, 4) == (4, "checkpoint metadata")
    with pytest.raises(ValueError, match="records z_factor=4; --trained_z_factor=6 contradicts it"):
        checkpointing.trained_z_factor(loaded, 4, declared=6)
    with pytest.raises(ValueError, match="trained for z_factor=4"):
        checkpointing.trained_z_factor(loaded, 6)


def _isotropic(pth, tmp_path, *flags):
    tifffile.imwrite(tmp_path / "two.tif", np.stack([np.full((64, 64), v, np.uint8) for v in (60, 180)]),
                     photometric="minisblack")
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
           **({"JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"]}
              if os.environ.get("JAX_COMPILATION_CACHE_DIR") else {})}
    return subprocess.run([sys.executable, str(ROOT / "launch" / "isotropic.py"), f"--checkpoint={pth}",
                           f"--input={tmp_path / 'two.tif'}", f"--output={tmp_path / 'iso'}", *flags],
                          capture_output=True, text=True, timeout=1200, env=env)


def test_isotropic_refuses_a_pth_without_trained_z_factor_in_one_line(full_vem_pth, tmp_path):
    result = _isotropic(full_vem_pth[0], tmp_path, "--z_factor=6")
    assert result.returncode == 1 and not (tmp_path / "iso").exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "best_Network.pth (PyTorch weights) does not record the z_factor" in line


@pytest.mark.slow
def test_isotropic_with_the_full_size_pth_records_the_stated_z_factor(full_vem_pth, tmp_path):
    result = _isotropic(full_vem_pth[0], tmp_path, "--z_factor=6", "--trained_z_factor=6", "--num_samples=1",
                        "--sampler=ddim", "--steps=2", "--tile=64", "--overlap=0")
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads((tmp_path / "iso" / "report.json").read_text())["settings"]
    assert settings["z_factor"] == 6 and settings["trained_z_factor"] == 6
    assert settings["trained_z_factor_source"] == "--trained_z_factor (a .pth does not record it)"
    assert tifffile.imread(tmp_path / "iso" / "mean.tif").shape == (7, 64, 64)

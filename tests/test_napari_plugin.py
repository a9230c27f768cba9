"""The napari plugin, headless: the npe2 manifest validates and points to importable functions; the reader
opens outputs with their physical scale; the widget's function restores a layer into mean, std and
reliability layers scaled like the input. These need no napari (the functions napari calls);
tests/test_napari_viewer.py runs them inside a real offscreen viewer."""

import importlib
import pathlib
import types

import numpy as np
import pytest
from test_predict_launch import TINY, save_checkpoint
from test_predict_volume import make_restorer

from emdiffuse_jax import napari_plugin, volume
from emdiffuse_jax.data import io

MANIFEST = pathlib.Path(napari_plugin.__file__).parent / "napari.yaml"


def test_manifest_validates_and_its_commands_resolve():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "emdiffuse_jax"   # npe2 requires the package name
    for command in manifest.contributions.commands:
        module, _, name = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), command.python_name
    assert [w.command for w in manifest.contributions.widgets] == ["emdiffuse_jax.restore_layer"]
    assert manifest.contributions.readers[0].accepts_directories


def test_reader_opens_an_isotropic_output_with_its_voxel_size(tmp_path):
    slices = np.stack([np.full((40, 36), v, np.uint8) for v in (30, 90, 150)])
    path = io.write_tiff(tmp_path / "in.tif", slices, voxel_size=(48.0, 8.0, 8.0))
    volume.reconstruct(make_restorer(), path, tmp_path / "iso", 3, num_samples=2, tile=32, overlap=8,
                       log=lambda s: None)
    assert napari_plugin.get_reader(str(tmp_path)) is None   # not an output folder: napari asks others
    reader = napari_plugin.get_reader(str(tmp_path / "iso" / "mean.tif"))
    (mean, mean_kw, kind), (std, std_kw, _) = reader(str(tmp_path / "iso"))
    assert kind == "image" and mean.shape == (7, 40, 36) and np.asarray(mean[0]).dtype == np.uint8
    assert mean_kw["scale"] == pytest.approx((16.0, 8.0, 8.0)) and std_kw["scale"] == mean_kw["scale"]
    assert std_kw["colormap"] == "magma" and mean_kw["metadata"]["unit"] == "nm"


def _layer(data, scale, name="cell"):
    return types.SimpleNamespace(data=data, scale=np.asarray(scale, float), name=name)


def test_widget_restores_a_2d_layer_and_a_volume_into_three_scaled_layers(tmp_path):
    yy, xx = np.mgrid[:40, :52]
    image = (20000 + 8000 * np.sin(yy / 5.0) * np.cos(xx / 7.0)).astype(np.uint16)
    ckpt = save_checkpoint(tmp_path / "n", "denoise", TINY)
    messages = []
    layers = napari_plugin.restore(_layer(image, (5.0, 5.0)), ckpt, num_samples=2, sampler="ddim", steps=2,
                                   log=messages.append)
    # The widget's default tile is the model's own (32 px patches, overlap 8): 2 x 2 tiles for 40 x 52.
    assert any(" 4 tiles x 2 samples" in m for m in messages), messages
    assert [kw["name"] for _, kw, _ in layers] == ["cell mean", "cell std", "cell reliability"]
    (mean, mean_kw, _), (std, _, _), (rel, rel_kw, _) = layers
    assert mean.shape == image.shape and mean.dtype == np.uint16 and std.max() > 0
    assert all(kw["scale"] == pytest.approx((5.0, 5.0)) for _, kw, _ in layers)
    assert rel_kw["contrast_limits"] == (0.0, 0.24)
    vem = save_checkpoint(tmp_path / "v", "vem_i", {**TINY, "in_channel": 3, "vem": True}, z_factor=2)
    stack = np.stack([np.full((24, 20), v, np.uint8) for v in (40, 120, 200)])
    layers = napari_plugin.restore(_layer(stack, (40.0, 8.0, 8.0), "vol"), vem, task="isotropic",
                                         z_factor=2, num_samples=2, sampler="ddim", steps=2, tile=16, overlap=4,
                                         log=lambda s: None)
    assert [kw["name"] for _, kw, _ in layers] == ["vol mean", "vol std", "vol reliability"]
    assert all(d.shape == (5, 24, 20) for d, _, _ in layers)
    assert all(kw["scale"] == pytest.approx((20.0, 8.0, 8.0)) for _, kw, _ in layers)   # z / Z

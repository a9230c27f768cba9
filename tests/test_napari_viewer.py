"""The napari plugin inside a real (offscreen) napari viewer: the widget napari builds from the manifest
adds mean, std and reliability layers with the input's scale, and File > Open of an output folder uses our
reader. In the default run (the test extra installs napari with PyQt5); Qt runs with
QT_QPA_PLATFORM=offscreen, so no display is needed."""

import os

import numpy as np
import pytest
from test_predict_launch import TINY, save_checkpoint

pytestmark = pytest.mark.napari


@pytest.fixture()
def viewer(monkeypatch):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import sys

    import napari
    import napari._vispy.layers.image  # noqa: F401  (the modules that query GL, imported to be patched)
    import napari._vispy.utils.gl  # noqa: F401

    # Offscreen Qt has no OpenGL context; napari asks GL only for its texture limits when a layer is added,
    # so those two queries are answered here (nothing is rendered: layers, widget and reader are tested).
    for name, module in list(sys.modules.items()):
        if name.startswith("napari._vispy"):
            if hasattr(module, "get_gl_extensions"):
                monkeypatch.setattr(module, "get_gl_extensions", lambda: "")
            if hasattr(module, "get_max_texture_sizes"):
                monkeypatch.setattr(module, "get_max_texture_sizes", lambda: (2048, 2048))
    viewer = napari.Viewer(show=False)
    yield viewer
    viewer.close()


def test_restore_widget_adds_three_scaled_layers_and_the_reader_opens_outputs(viewer, tmp_path):
    yy, xx = np.mgrid[:40, :52]
    image = (20000 + 8000 * np.sin(yy / 5.0) * np.cos(xx / 7.0)).astype(np.uint16)
    layer = viewer.add_image(image, name="cell", scale=(5.0, 5.0))
    _, widget = viewer.window.add_plugin_dock_widget("emdiffuse_jax", "EMDiffuse restore")
    widget.image.value = layer
    widget.checkpoint.value = save_checkpoint(tmp_path / "n", "denoise", TINY)
    widget.num_samples.value, widget.steps.value, widget.tile.value, widget.overlap.value = 2, 2, 32, 8
    widget.sampler.value = widget.sampler.choices[1]   # ddim
    widget()
    names = [lay.name for lay in viewer.layers]
    assert names == ["cell", "cell mean", "cell std", "cell reliability"]
    for lay in viewer.layers[1:]:
        assert tuple(lay.scale) == pytest.approx((5.0, 5.0)) and lay.data.shape == image.shape
    assert viewer.layers["cell mean"].data.dtype == np.uint16

    import tifffile

    from emdiffuse_jax import checkpointing, inference, restore

    restorer = restore.make_restorer(checkpointing.load_model(tmp_path / "n", task="denoise"),
                                     inference.SamplerSpec("ddim", 2))
    tifffile.imwrite(tmp_path / "img.tif", image)
    restore.restore_files(restorer, tmp_path / "img.tif", tmp_path / "out", task="denoise", tile=32, overlap=8,
                          voxel_size=(4.0, 4.0), log=lambda _: None)
    opened = viewer.open(str(tmp_path / "out"), plugin="emdiffuse_jax")
    assert [lay.name for lay in opened] == ["img mean", "img std", "img reliability"]
    assert tuple(opened[0].scale) == pytest.approx((4.0, 4.0))

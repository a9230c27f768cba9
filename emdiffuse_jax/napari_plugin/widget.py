"""The napari widget's function: restores an image layer with self-assessment and returns the mean, std
and reliability layers. napari builds the widget from the signature (npe2 `autogenerate`), so its
annotations stay real objects (no `from __future__ import annotations`) except napari's own types, named as
strings that magicgui resolves when napari is there."""

import enum
import pathlib
import tempfile
from typing import Callable

import numpy as np

from emdiffuse_jax.napari_plugin.reader import LayerData, read_outputs, reliability_layer


class Task(enum.Enum):
    denoise = "denoise"
    superres = "superres"
    isotropic = "isotropic"


class Sampler(enum.Enum):
    dpm = "dpm"
    ddim = "ddim"
    ddpm = "ddpm"


def _progress_log() -> Callable[[str], None]:
    """napari's progress display when napari is there (the status bar), else print."""
    try:
        from napari.utils import notifications
    except ImportError:
        return print
    return lambda message: notifications.show_info(message)


def restore_layer(image: "napari.layers.Image", checkpoint: pathlib.Path, task: Task = Task.denoise,  # noqa: F821
                  num_samples: int = 4, sampler: Sampler = Sampler.dpm, steps: int = 20, z_factor: int = 6,
                  trained_z_factor: int = 0, tile: int = 0, overlap: int = 0,
                  seed: int = 0) -> "list[napari.types.LayerDataTuple]":  # noqa: F821
    """The widget (napari builds it from this signature and adds the returned layers): `restore` with
    progress shown in napari's notifications."""
    return restore(image, checkpoint, task=task, num_samples=num_samples, sampler=sampler, steps=steps,
                   z_factor=z_factor, trained_z_factor=trained_z_factor, tile=tile, overlap=overlap, seed=seed)


def restore(image, checkpoint: pathlib.Path, *, task: Task = Task.denoise, num_samples: int = 4,
            sampler: Sampler = Sampler.dpm, steps: int = 20, z_factor: int = 6, trained_z_factor: int = 0,
            tile: int = 0, overlap: int = 0, seed: int = 0,
            log: Callable[[str], None] | None = None) -> list[LayerData]:
    """Restores `image` (a napari image layer or anything with .data, .scale, .name: a 2D image, or a
    (Z, Y, X) stack: every slice for denoise/superres, the volume for isotropic) with the model in
    `checkpoint`; returns mean, std and reliability layers scaled like the input (its layer scale is taken
    as the voxel size, so outputs overlay it). trained_z_factor: for a .pth (0 = not given; docs/weights.md).
    tile, overlap: 0 = the model's own (its training patch size, and a quarter of the tile).
    """
    from emdiffuse_jax import checkpointing, inference, restore, volume
    from emdiffuse_jax.data import intensity, io

    log = log or _progress_log()
    task = Task(task)
    data = np.asarray(image.data)
    scale = tuple(float(s) for s in np.asarray(image.scale)[-data.ndim:])
    spec = inference.SamplerSpec(Sampler(sampler).value, steps)
    with tempfile.TemporaryDirectory(prefix="emdiffuse_napari_") as tmp:
        tmp = pathlib.Path(tmp)
        source = io.write_tiff(tmp / f"{image.name or 'layer'}.tif", data, voxel_size=scale)
        if task is Task.isotropic:
            loaded = checkpointing.load_model(checkpoint)
            trained, source_of_z = checkpointing.trained_z_factor(loaded, z_factor, trained_z_factor or None)
            volume.reconstruct(restore.make_restorer(loaded, spec), source, tmp / "out", z_factor,
                               num_samples=num_samples, seed=seed, tile=tile or None, overlap=overlap or None, log=log,
                               intensity=intensity.from_meta(loaded.meta, str(checkpoint)),
                               settings={"checkpoint": str(checkpoint), "trained_z_factor": trained,
                                         "trained_z_factor_source": source_of_z})
        else:
            loaded = checkpointing.load_model(checkpoint, task=task.value)
            restore.restore_files(restore.make_restorer(loaded, spec), source, tmp / "out", task=task.value,
                                  num_samples=num_samples, seed=seed, tile=tile or None, overlap=overlap or None, log=log,
                                  intensity=intensity.from_meta(loaded.meta, str(checkpoint)),
                                  settings={"checkpoint": str(checkpoint)})
        layers = [(np.asarray(d), kwargs, kind) for d, kwargs, kind in read_outputs(tmp / "out", source.stem)]
    if task is Task.isotropic:   # volumes have no reliability file: the same local score, slice by slice
        from emdiffuse_jax import uncertainty

        (mean, mean_kwargs, _), (std, _, _) = layers
        threshold = uncertainty.DEFAULT_THRESHOLD
        local = np.stack([uncertainty.reliability_map(s, min(64, *s.shape), threshold)[0] for s in std])
        layers.append(reliability_layer(mean_kwargs["name"].removesuffix(" mean"), local.astype(np.float32),
                                        mean_kwargs["scale"], threshold))
    return layers


"""napari plugin (npe2 manifest napari.yaml): open emdiffuse-jax outputs with their physical scale, and a
widget that restores the active image layer (denoise, super-resolution or isotropic reconstruction) with a
chosen checkpoint, K and sampler, adding mean, std and reliability layers.

Both go through the same file-level code as `emdiffuse predict` / `emdiffuse isotropic` (restore.py,
volume.py), so normalisation, tiling and metadata follow one contract: the layer is written to a temporary
TIFF with its scale as voxel size, restored there, and the outputs are read back by the reader, whose
layer scales are the outputs' voxel sizes (halved in x/y for super-resolution, z / Z for isotropic).
Nothing here imports napari: the functions return napari layer-data tuples (data, kwargs, layer type).
"""

from emdiffuse_jax.napari_plugin.reader import get_reader, read_outputs
from emdiffuse_jax.napari_plugin.widget import Sampler, Task, restore, restore_layer

__all__ = ["get_reader", "read_outputs", "restore", "restore_layer", "Sampler", "Task"]

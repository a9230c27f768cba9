"""Prepared datasets: a TFDS GeneratorBasedBuilder writing array_record, read back without TensorFlow.

Each example is one training sample before augmentation, stored in the data's own dtype (16-bit stays
16-bit) with the bounds of the dataset's intensity contract (data.intensity; older datasets: of its
image), so reading is exact and compact:
  cond    (Pc, Pc, Cc)  input patch; Pc = P/2 for super-resolution with a half-resolution input
  target  (P, P, Ct)    target patch (vEM: the z-1 slices between the two inputs)
  cond_lo, cond_hi, target_lo, target_hi (float64), clip (bool): see normalize.NormParams
  name    text: source image and patch origin
Dataset-level facts (task, patch size, channels, z_factor, normalisation mode, the intensity contract under
"intensity", degradation, counts) are in the builder metadata. Reading: `tfds.builder_from_directory(dir).as_data_source()` (numpy, no TensorFlow).
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import tempfile
from typing import Callable, Iterable

import numpy as np

from emdiffuse_jax.data import io
from emdiffuse_jax.data.degrade import upsample2_bilinear
from emdiffuse_jax.data.normalize import NormParams, apply_normalization

DATASET_NAME = "em_patches"


@functools.cache
def _builder_class():
    """The builder class, defined on first use so that importing this module does not import TFDS."""
    import tensorflow_datasets as tfds

    class EmPatches(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """EM training patches for one task (see module docstring)."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Patches in the source dtype with per-example normalisation bounds."}

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            # TFDS's own lookup needs the optional `importlib_resources` package for builders that live
            # in an installed package; the answer is simply this file.
            from etils import epath

            return epath.Path(__file__)

        def __init__(self, *, spec: dict | None = None, splits: dict | None = None, **kwargs):
            self._spec = spec
            self._splits = splits
            super().__init__(**kwargs)

        def _info(self):
            spec = self._spec
            features = tfds.features.FeaturesDict({
                # raw bytes: tf.train.Example int lists would be 8x larger and slow to write
                "cond": tfds.features.Tensor(shape=tuple(spec["cond_shape"]), dtype=np.dtype(spec["dtype"]),
                                             encoding=tfds.features.Encoding.BYTES),
                "target": tfds.features.Tensor(shape=tuple(spec["target_shape"]), dtype=np.dtype(spec["dtype"]),
                                               encoding=tfds.features.Encoding.BYTES),
                "cond_lo": tfds.features.Scalar(dtype=np.float64),
                "cond_hi": tfds.features.Scalar(dtype=np.float64),
                "target_lo": tfds.features.Scalar(dtype=np.float64),
                "target_hi": tfds.features.Scalar(dtype=np.float64),
                "clip": tfds.features.Scalar(dtype=np.bool_),
                "name": tfds.features.Text(),
            })
            return tfds.core.DatasetInfo(builder=self, features=features,
                                         metadata=tfds.core.MetadataDict(spec["metadata"]),
                                         description="EM restoration training patches (emdiffuse_jax).")

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(make) for name, make in self._splits.items()}

        def _generate_examples(self, make):
            for example in make():
                yield example["name"], example

    return EmPatches


def write_prepared(output_dir: str | pathlib.Path, *, cond_shape, target_shape, dtype,
                   splits: dict[str, Callable[[], Iterable[dict]]], metadata: dict) -> pathlib.Path:
    """Writes the splits (callables yielding example dicts with unique 'name') as array_record under
    output_dir/em_patches/1.0.0 and returns that directory. Refuses an existing dataset there."""
    output_dir = pathlib.Path(output_dir)
    if find_prepared(output_dir) is not None:
        raise io.DataError(f"{output_dir}: already holds a prepared dataset; choose a new --output")
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = {"cond_shape": list(cond_shape), "target_shape": list(target_shape), "dtype": np.dtype(dtype).str,
            "metadata": metadata}
    builder = _builder_class()(spec=spec, splits=splits, data_dir=str(output_dir), file_format="array_record")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # the caller shows its own
    try:
        with tempfile.TemporaryDirectory() as downloads:
            builder.download_and_prepare(download_dir=downloads)
    except Exception as exc:
        for partial in (output_dir / DATASET_NAME).glob("incomplete.*"):  # TFDS's unfinished files
            shutil.rmtree(partial, ignore_errors=True)
        if (output_dir / DATASET_NAME).is_dir() and not any((output_dir / DATASET_NAME).iterdir()):
            (output_dir / DATASET_NAME).rmdir()
        cause = exc
        while cause is not None and not isinstance(cause, io.DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # TFDS wraps errors raised inside the generator
            raise io.DataError(str(cause)) from exc
        raise
    leftover = output_dir / "downloads"
    if leftover.is_dir() and not any(p.is_file() for p in leftover.rglob("*")):
        shutil.rmtree(leftover)
    return pathlib.Path(builder.data_dir)


def find_prepared(path: pathlib.Path) -> pathlib.Path | None:
    """The version directory of a prepared dataset at `path` (output dir, dataset dir or version dir)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    for cand in [path, *sorted(path.glob("*")), *sorted(path.glob(f"{DATASET_NAME}/*"))]:
        if (cand / "dataset_info.json").is_file() and any(cand.glob("*.array_record*")):
            return cand
    return None


def open_prepared(path: str | pathlib.Path, split: str):
    """(random-access data source of `split`, dataset metadata dict); numpy only, no TensorFlow."""
    import tensorflow_datasets as tfds

    version_dir = find_prepared(pathlib.Path(path))
    if version_dir is None:
        raise io.DataError(f"{path}: no prepared dataset (run launch/prepare.py to make one)")
    builder = tfds.builder_from_directory(str(version_dir))
    sources = builder.as_data_source()
    if split not in sources:
        raise io.DataError(f"{path}: has splits {sorted(sources)}, not '{split}'")
    return sources[split], dict(builder.info.metadata)


def decode_example(example: dict, task: str, upsample: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A stored example -> (cond, target) float32 in [-1, 1]; half-resolution inputs upsampled x2 unless
    `upsample` is False (the training pipeline upsamples after its low-resolution blur)."""
    clip = bool(example["clip"])
    dtype = np.dtype(example["target"].dtype).str
    cnorm = NormParams("stored", float(example["cond_lo"]), float(example["cond_hi"]), dtype, clip)
    tnorm = NormParams("stored", float(example["target_lo"]), float(example["target_hi"]), dtype, clip)
    cond = apply_normalization(example["cond"], cnorm)
    target = apply_normalization(example["target"], tnorm)
    if upsample and task == "superres" and cond.shape[0] != target.shape[0]:
        cond = upsample2_bilinear(cond).astype(np.float32)
    return cond, target

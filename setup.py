"""Installs emdiffuse_jax: EMDiffuse (Lu et al., Nat. Commun. 2024) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="emdiffuse_jax",
    version="0.1.0",
    description="Diffusion-model restoration of electron-microscopy images and volumes (EMDiffuse) in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["emdiffuse_jax", "emdiffuse_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "numpy>=1.26",
        "tifffile>=2024.1.30",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.7",
        "zarr>=2.18",
        "scikit-image>=0.24",
        "scipy>=1.11",
    ],
    extras_require={
        "test": ["pytest>=8"],
        # torch is optional: the cross-check of the checkpoint reader and bench/compare.py's side-by-side
        # timing of the published code (measured with torch 2.13).
        "torch": ["torch>=2.0,<3"],
    },
)

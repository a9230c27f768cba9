"""Installs emdiffuse_jax: all metadata, dependencies and the `emdiffuse` command are in pyproject.toml.

Kept so that `python setup.py ...` tooling and older pips still find the project.
"""

from setuptools import setup

setup()

"""Every program runs with JAX's persistent compilation cache on, in a folder the user can redirect or empty."""

import os
import subprocess
import sys

_PROGRAM = """
import jax, jax.numpy as jnp
from emdiffuse_jax import cli

def main(argv):
    jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()

cli.run(main, "test program", ["prog"])
"""


def _run_program(env_updates, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu", **env_updates)
    done = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_programs_cache_compilations_under_the_user_cache_folder(tmp_path):
    _run_program({}, tmp_path)
    assert any((tmp_path / "xdg" / "emdiffuse_jax" / "xla").iterdir())


def test_jax_compilation_cache_dir_redirects_or_disables_the_cache(tmp_path):
    _run_program({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "elsewhere")}, tmp_path)
    assert any((tmp_path / "elsewhere").iterdir())
    assert not (tmp_path / "xdg" / "emdiffuse_jax").exists()
    _run_program({"JAX_COMPILATION_CACHE_DIR": ""}, tmp_path)
    assert not (tmp_path / "xdg" / "emdiffuse_jax").exists()

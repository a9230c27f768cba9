"""The four model configs: they load, build the reference networks, accept overrides and reject typos."""

import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import shared_path
from emdiffuse_jax import models
from emdiffuse_jax.train import check_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
NAMES = {"emdiffuse_n": "denoise", "emdiffuse_r": "superres", "vemdiffuse_i": "vem_i", "vemdiffuse_a": "vem_a"}


def _parse(*args):
    values = flags.FlagValues()
    argv = ["prog", *args]
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


@pytest.mark.parametrize("name", sorted(NAMES))
def test_full_config_builds_the_reference_network(name):
    config = _parse(f"--config={CONFIGS / name}.py")
    check_config(config)
    assert config.task == NAMES[name]
    assert config.optim.learning_rate == 5e-5 and config.ema_decay == 0.9999
    assert config.diffusion.train_schedule.n_timestep == 2000
    # Reference parameter counts (reference section 9): 2D 15,677,345; vEM 16,615,873.
    expected = 16_615_873 if name.startswith("vem") else 15_677_345
    assert models.count_params(models.unet_config(config.model)) == expected


@pytest.mark.parametrize("name", sorted(NAMES))
def test_tiny_variant_is_small_and_valid(name):
    config = _parse(f"--config={CONFIGS / name}.py:tiny")
    check_config(config)
    assert config.data.patch_size == 32
    assert models.count_params(models.unet_config(config.model)) < 500_000


@pytest.mark.parametrize("name", sorted(NAMES))
def test_small_variant_sits_between_tiny_and_full_and_ships_under_10_mb(name):
    config = _parse(f"--config={CONFIGS / name}.py:small")
    check_config(config)
    assert config.data.patch_size == 64 and config.model.inner_channel == 32
    params = models.count_params(models.unet_config(config.model))
    assert 500_000 < params < 2_000_000 and 4 * params < 10e6   # float32 weights under 10 MB
    assert config.task == NAMES[name] and config.diffusion == _parse(f"--config={CONFIGS / name}.py").diffusion


def test_command_line_overrides_apply():
    config = _parse(f"--config={CONFIGS / 'emdiffuse_n'}.py:tiny", "--config.optim.learning_rate=0.25",
                    "--config.mesh.fsdp=2", "--config.data.input_path=/data/noisy", "--config.model.dropout=0.1")
    assert config.optim.learning_rate == 0.25
    assert config.mesh.fsdp == 2
    assert config.data.input_path == "/data/noisy"
    assert config.model.dropout == 0.1


@pytest.mark.parametrize("override", ["--config.optim.learnig_rate=0.1", "--config.batch_size=many",
                                      "--config.new_field=1"])
def test_mistyped_or_ill_typed_overrides_fail(override):
    with pytest.raises(Exception, match="learnig_rate|many|new_field"):
        _parse(f"--config={CONFIGS / 'emdiffuse_n'}.py:tiny", override)


def test_unknown_variant_fails():
    with pytest.raises(Exception, match="variant"):
        _parse(f"--config={CONFIGS / 'emdiffuse_n'}.py:huge")


def test_check_config_rejects_a_network_that_does_not_fit_the_task():
    config = _parse(f"--config={CONFIGS / 'vemdiffuse_i'}.py:tiny", "--config.model.in_channel=2")
    with pytest.raises(ValueError, match="in_channel"):
        check_config(config)


def test_vem_i_trains_on_the_shared_fibsem_stack_when_present():
    stack = shared_path("data", "fibsem-medulla-250.tif")
    config = _parse(f"--config={CONFIGS / 'vemdiffuse_i'}.py:tiny")
    assert pathlib.Path(config.data.input_path).resolve() == stack.resolve()

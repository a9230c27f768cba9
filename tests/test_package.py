"""The project as a user installs it: the wheel ships configs, programs and the `emdiffuse` command; launch/
and configs/ are thin views of what the package ships; one-line usage errors and --help content."""

import ast
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from emdiffuse_jax import command, configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "emdiffuse_jax" / "programs"


def _env(**extra):
    env = {"JAX_PLATFORMS": "cpu", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    return env


def _run(args, cwd=None, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=cwd, env=_env(**env))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                 PIP_DISABLE_PIP_VERSION_CHECK="1", HOME=os.environ.get("HOME", str(out)))
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("emdiffuse_jax-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed (not editable) into a folder of its own; run with PYTHONPATH=that folder."""
    target = tmp_path_factory.mktemp("site")
    result = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                  PIP_DISABLE_PIP_VERSION_CHECK="1", HOME=os.environ.get("HOME", str(target)))
    assert result.returncode == 0, result.stderr[-3000:]
    return target


def test_wheel_ships_every_config_program_the_command_and_the_licence(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for name in configs.names():
        assert f"emdiffuse_jax/configs/{name}.py" in names
    for name in command.programs():
        assert f"emdiffuse_jax/programs/{name}.py" in names
    assert "emdiffuse = emdiffuse_jax.command:main" in entry_points
    assert "emdiffuse_jax/napari_plugin/napari.yaml" in names   # the napari plugin's manifest, and its hook:
    assert "[napari.manifest]\nemdiffuse_jax = emdiffuse_jax.napari_plugin:napari.yaml" in entry_points
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata and "Project-URL: Homepage" in metadata
    assert "Classifier: Topic :: Scientific/Engineering :: Image Processing" in metadata


def test_installed_command_finds_its_programs_and_configs_from_any_directory(installed, tmp_path):
    script = installed / "bin" / "emdiffuse"
    env = dict(PYTHONPATH=str(installed))
    listing = _run([sys.executable, str(script), "--help"], cwd=tmp_path, **env)
    assert listing.returncode == 0
    for name in ("train", "predict", "isotropic", "prepare", "calibrate", "evaluate", "demo"):
        assert f"  {name} " in listing.stdout
    # The shipped config is found by name and by the docs' path, though tmp_path has no configs/ folder.
    for config in ("emdiffuse_n:tiny", "configs/vemdiffuse_i.py:tiny"):
        bad = _run([sys.executable, str(script), "train", f"--config={config}", "--workdir=w",
                    "--config.optim.learnig_rate=1"], cwd=tmp_path, **env)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            "error: --config.optim.learnig_rate: the config has no field config.optim.learnig_rate; did you mean "
            "--config.optim.learning_rate? (--help lists the flags)"]
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_installed_command_trains_and_predicts_outside_the_checkout(installed, tmp_path):
    import numpy as np
    import tifffile

    script, env = installed / "bin" / "emdiffuse", dict(PYTHONPATH=str(installed))
    train = _run([sys.executable, str(script), "train", "--config=emdiffuse_n:tiny", "--workdir=w",
                  "--config.num_steps=2", "--config.eval.every_steps=0", "--config.checkpoint.every_steps=2"],
                 cwd=tmp_path, **env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "step 2/2" in train.stderr
    tifffile.imwrite(tmp_path / "img.tif", (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    predict = _run([sys.executable, str(script), "predict", "--task=denoise", "--checkpoint=w", "--input=img.tif",
                    "--output=out", "--sampler=ddim", "--steps=2", "--tile=32", "--overlap=8"], cwd=tmp_path, **env)
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert tifffile.imread(tmp_path / "out" / "img_mean.tif").shape == (40, 40)


def test_every_launch_script_is_the_program_the_command_runs():
    scripts = {p.stem for p in (ROOT / "launch").glob("*.py")}
    assert scripts == set(command.programs()), (
        "each launch/NAME.py must be a thin script over emdiffuse_jax/programs/NAME.py (so that the wheel and "
        "`emdiffuse NAME` ship it); see emdiffuse_jax/programs/__init__.py")
    for name in scripts:
        tree = ast.parse((ROOT / "launch" / f"{name}.py").read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert any(i.module == "emdiffuse_jax.programs" and i.names[0].name == name for i in imports), name


def test_every_top_level_config_re_exports_a_shipped_one():
    for path in (ROOT / "configs").glob("*.py"):
        assert path.stem in configs.names(), (
            f"{path} is not shipped: put it in emdiffuse_jax/configs/ and re-export it here")
        assert f"from emdiffuse_jax.configs.{path.stem} import get_config" in path.read_text()


def test_config_names_resolve_to_shipped_files_and_existing_paths_stay(tmp_path):
    shipped = pathlib.Path(configs.__file__).parent
    assert configs.resolve("emdiffuse_n") == str(shipped / "emdiffuse_n.py")
    assert configs.resolve("configs/vemdiffuse_a.py:tiny") in (f"{shipped / 'vemdiffuse_a.py'}:tiny",
                                                                "configs/vemdiffuse_a.py:tiny")
    own = tmp_path / "emdiffuse_n.py"
    own.write_text("")
    assert configs.resolve(f"{own}:tiny") == f"{own}:tiny"   # a user's own file wins over the shipped name
    assert configs.resolve("no_such_config.py") == "no_such_config.py"   # ml_collections reports it


def test_command_lists_programs_and_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["emdiffuse", "trian"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: emdiffuse has no program 'trian'; did you mean `emdiffuse train`?\n"
    with pytest.raises(SystemExit) as exit_info:
        command.main(["emdiffuse", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "isotropic  Isotropic volume reconstruction" in out and "emdiffuse PROGRAM --help" in out


@pytest.mark.parametrize("program", ["predict", "isotropic"])
def test_help_lists_the_sampling_and_tiling_flags(program):
    result = _run([sys.executable, str(ROOT / "launch" / f"{program}.py"), "--help"])
    assert result.returncode == 0
    for flag in ("--sampler", "--steps", "--num_samples", "--tile", "--overlap", "--[no]harmonize", "--threshold",
                 "--checkpoint", "--input", "--output"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("args, message", [
    (["train.py", "--config=configs/emdiffuse_n.py:tiny", "--workdir=w", "--config.optimm.learning_rate=1"],
     "error: --config.optimm.learning_rate: the config has no field config.optimm; did you mean --config.optim?"),
    (["train.py", "--config=emdiffuse_n", "--workdir=w", "--confg.batch_size=2"],
     "error: Unknown command line flag 'confg.batch_size'"),
    (["predict.py", "--task=denoise"], "error: missing required flags --checkpoint, --input, --output"),
    (["predict.py", "--task=denoise", "--checkpoint=c", "--input=i", "--output=o", "stray"],
     "error: unexpected arguments: ['stray']"),
    (["isotropic.py", "--checkpoint=c", "--input=i", "--output=o", "--z_factor=x"],
     "error: flag --z_factor=x: invalid literal for int() with base 10: 'x'"),
    (["calibrate.py", "--predictions=p", "--target=t", "--output=o", "--num_samples=2"],
     "error: Unknown command line flag 'num_samples'"),
])
def test_usage_errors_are_one_line(args, message, tmp_path):
    result = _run([sys.executable, str(ROOT / "launch" / args[0]), *args[1:]], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{message} (--help lists the flags)"]
    assert not list(tmp_path.iterdir())   # nothing written


def test_predict_with_a_volume_model_points_to_isotropic(tmp_path):
    from test_predict_launch import TINY, save_checkpoint

    vem = save_checkpoint(tmp_path / "vem", "vem_a", {**TINY, "in_channel": 3, "vem": True}, z_factor=2)
    (tmp_path / "img.tif").write_bytes(b"")   # never read: the checkpoint is refused first
    result = _run([sys.executable, str(ROOT / "launch" / "predict.py"), "--task=denoise", f"--checkpoint={vem}",
                   f"--input={tmp_path / 'img.tif'}", f"--output={tmp_path / 'out'}"])
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    (line,) = result.stderr.strip().splitlines()
    assert "is a volume (vem_a) model: reconstruct volumes with `emdiffuse isotropic`" in line

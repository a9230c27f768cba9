"""The Colab notebooks (colab/*.ipynb), executed headless with tiny settings as a user would run them."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
TINY = {"TRAIN_STEPS": 4, "SAMPLER_STEPS": 2, "NUM_SAMPLES": 2, "IMAGE_SIZE": 64, "SIZE": 64}


def _read(path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _parameters_cell(nb):
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return cell


def test_every_notebook_installs_from_the_project_url_and_has_a_parameters_cell():
    homepage = re.search(r'^Homepage = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "emdiffuse_r.ipynb", "vemdiffuse_i.ipynb",
                                           "vemdiffuse_a.ipynb"}
    for path in NOTEBOOKS:
        nb = _read(path)
        source = "\n".join(c.source for c in nb.cells)
        assert f'REPO_URL = "{homepage}"' in source, path      # the same URL as the package metadata
        assert 'emdiffuse_jax[notebooks] @ git+{REPO_URL}' in source and "jax[cuda12]" in source, path
        assert "notebook.setup()" in source, path              # progress lines shown in the notebook
        assert all(name in _parameters_cell(nb).source for name in ("TRAIN_STEPS", "WEIGHTS")), path
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path}: clear outputs"


def _execute(path, workdir):
    import nbclient   # nbclient, nbformat, ipykernel and matplotlib are in the test extra
    nb = _read(path)
    cell = _parameters_cell(nb)
    lines = [line for line in cell.source.splitlines() if line.split("=")[0].strip() not in TINY]
    cell.source = "\n".join(lines + [f"{k} = {v!r}" for k, v in TINY.items()])
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # the inline backend shows figures
    client.execute(env={**env, "JAX_PLATFORMS": "cpu"})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    figures = sum("image/png" in o.get("data", {}) for o in outputs if o.get("output_type") == "display_data")
    return text, figures


def _check(path, workdir, expect_figures):
    text, figures = _execute(path, workdir)
    assert "step 4/4" in text and "ETA" in text      # training progress, one line per log interval
    assert "uncertainty score" in text or "slab uncertainty scores" in text
    assert figures >= expect_figures                  # mean / std / reliability panels with colour bars
    return text


def test_quickstart_notebook_runs_headless(tmp_path):
    _check(ROOT / "colab" / "quickstart.ipynb", tmp_path, 1)
    assert (tmp_path / "test" / "output" / "input_reliability.tif").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name, figures", [("emdiffuse_r.ipynb", 1), ("vemdiffuse_i.ipynb", 2),
                                           ("vemdiffuse_a.ipynb", 2)])
def test_model_notebook_runs_headless(name, figures, tmp_path):
    text = _check(ROOT / "colab" / name, tmp_path, figures)
    if name.startswith("vem"):
        assert "out [8.0, 8.0, 8.0]" in text          # Z x 8 nm slices in, isotropic 8 nm out

"""The `pneumoscan` entry point (`pneumoscan.cli:main`, also `python -m pneumoscan`) builds only
the command named first, for a shorter cold start; it must behave as the whole app does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer.main

from pneumoscan.cli import BY_NAME, app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", *args], capture_output=True, text=True, timeout=120
    )


def test_every_command_of_the_app_can_be_built_alone():
    assert set(BY_NAME) == set(typer.main.get_command(app).commands)


def test_a_command_built_alone_predicts_the_golden_films(tmp_path):
    out = tmp_path / "out.json"
    finished = _run("predict", "--model", "binary", str(EXAMPLES), "--json", str(out))
    assert finished.returncode == 0, finished.stderr
    predictions = json.loads(out.read_text())["predictions"]
    rows = {Path(row["source"]).name.split("_")[0]: row for row in predictions}
    assert rows["pneumonia"]["label"] == "pneumonia" and rows["normal"]["label"] == "normal"
    assert "not a diagnostic device" in finished.stdout


def test_help_and_mistakes_read_as_the_whole_app():
    alone = _run("predict", "--help")
    assert alone.returncode == 0 and "Usage: pneumoscan predict [OPTIONS]" in alone.stdout
    assert "--heatmaps" in alone.stdout
    whole = _run("--help")
    assert whole.returncode == 0 and all(name in whole.stdout for name in ("dicom-node", "adapt"))
    typo = _run("predikt")
    assert typo.returncode == 2 and "No such command 'predikt'" in typo.stderr
    missing = _run("predict")  # an argument missing: click's usage error, exit 2
    assert missing.returncode == 2 and "Usage: pneumoscan predict" in missing.stderr


def test_predict_loads_only_what_predicting_needs(tmp_path):
    """A cold `pneumoscan predict` imports no library it does not use: every one below costs
    tens to hundreds of milliseconds of start-up (issue 27: lazy imports, checked by the list
    of modules loaded)."""
    film = next(EXAMPLES.glob("pneumonia_*"))
    code = (
        "import sys\n"
        "from pneumoscan.cli import main\n"
        f"sys.argv = ['pneumoscan', 'predict', {str(film)!r}, '--csv', {str(tmp_path / 'o.csv')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "heavy = ('torch', 'torchvision', 'lightning', 'sklearn', 'scipy', 'matplotlib', 'pandas',\n"
        "         'fastapi', 'starlette', 'uvicorn', 'pynetdicom', 'highdicom', 'dicomweb_client',\n"
        "         'ray', 'onnx', 'jinja2', 'prometheus_client', 'yaml')\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "light = {'pneumoscan.dicom', 'pneumoscan.dicom.settings',  # the node's and the server's\n"
        "         'pneumoscan.serve', 'pneumoscan.serve.settings'}  # option defaults\n"
        "ours = sorted(m for m in sys.modules if m not in light and m.startswith((\n"
        "    'pneumoscan.training', 'pneumoscan.serve', 'pneumoscan.dicom', 'pneumoscan.site',\n"
        "    'pneumoscan.research', 'pneumoscan.distributed')))\n"
        "assert not loaded and not ours, (loaded, ours)\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "pneumonia" in (tmp_path / "o.csv").read_text()


def test_the_cli_sets_its_start_up_environment_before_numpy_and_keeps_a_users_own():
    """numpy's OpenBLAS thread pool and pydantic's plugin scan cost a fifth of a cold predict:
    the `pneumoscan` process turns both off before numpy is imported, unless the user set them."""
    import os

    code = (
        "import sys, os\n"
        "import pneumoscan.cli\n"
        "assert 'numpy' in sys.modules\n"  # loaded by the CLI's import, after the environment
        "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['PYDANTIC_DISABLE_PLUGINS'])\n"
        "from threadpoolctl import threadpool_info\n"  # what OpenBLAS itself read at load
        "print(*sorted({p['num_threads'] for p in threadpool_info() if p['internal_api'] == 'openblas'}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",)}
    clean.pop("PYDANTIC_DISABLE_PLUGINS", None)
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.split() == ["1", "__all__", "1"]
    users = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**clean, "OPENBLAS_NUM_THREADS": "2"},
    )
    assert users.stdout.split() == ["2", "__all__", "2"]

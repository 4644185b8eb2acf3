"""Packaging: the wheel ``pip install .`` builds has every file the commands need, and trains.

The wheel is built from a copy of the source (no build files land in the checkout), installed into a
fresh virtual environment that sees this environment's dependencies but not the source tree, and
`trainlab pretrain` runs from there in a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _package_files() -> list[str]:
    """Files of the trainlab package in git (or on disk), relative to src/: what a wheel must hold."""
    try:
        out = subprocess.run(["git", "ls-files", "src/trainlab"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
        files = [f.removeprefix("src/") for f in out if (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): what is on disk
        files = [str(p.relative_to(REPO / "src")) for p in (REPO / "src" / "trainlab").rglob("*") if p.is_file()]
    return sorted(f for f in files if "__pycache__" not in f and not f.endswith(".pyc"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    # offline with this environment's setuptools (Python 3.11 venvs have it); else pip's isolated build (PyPI)
    import importlib.util

    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-q", "-w",
                           str(work / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (work / "dist").glob("trainlab-*.whl")
    return whl


def test_wheel_holds_every_package_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _package_files() if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert {"trainlab/presets/tiny.yaml", "trainlab/presets/quick.yaml", "trainlab/presets/full.yaml"} <= names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_trains_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, transformers, ...) from this environment, the package only from the wheel: a
    # path in a .pth file is appended to sys.path, and its own .pth files (our editable install) are not read
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAINLAB_DEBUG")}
    env.update(TRAINLAB_HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    where = subprocess.run([str(py), "-c", "import trainlab; print(trainlab.__file__)"], capture_output=True,
                           text=True, env=env, cwd=run_dir, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    proc = subprocess.run([str(env_dir / "bin" / "trainlab"), "pretrain", "--preset", "tiny", "--max-steps", "2",
                           "--out", "run", "--json"], capture_output=True, text=True, env=env, cwd=run_dir,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 2 and (run_dir / "run" / "model" / "config.json").is_file()

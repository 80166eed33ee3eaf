"""The README's install command gives an ``audiostory`` command that works from any folder.

``pip install -e ".[standalone,test]"`` installs the console script declared in ``pyproject.toml``; the
CLI must then run outside the repository (before, it worked only from the repository root: ``No module
named audiostory_core`` elsewhere).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import need

REPO = Path(__file__).resolve().parents[1]
INSTALL = 'python -m pip install -e ".[standalone,test]"  (in the repository folder)'


def _clean_env() -> dict:
    """The user's environment without anything that would find the package from the source tree."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _installed_package_dir(cwd: Path) -> Path | None:
    """Where this Python imports ``audiostory_core`` from when started outside the repository."""
    r = subprocess.run([sys.executable, "-c", "import audiostory_core, sys; print(audiostory_core.__file__)"],
                       cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=120)
    return Path(r.stdout.strip()).resolve().parent if r.returncode == 0 else None


def _script() -> Path:
    return Path(sys.executable).with_name("audiostory.exe" if os.name == "nt" else "audiostory")


def test_the_audiostory_command_runs_from_another_folder(tmp_path):
    need(_script().is_file() and _installed_package_dir(tmp_path) == REPO / "audiostory_core",
         f"the audiostory command of this clone in {Path(sys.executable).parent}", INSTALL)
    r = subprocess.run([str(_script()), "--help"], cwd=tmp_path, env=_clean_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for command in ("generate", "plan", "download", "dub", "continue", "batch", "score"):
        assert command in r.stdout, command
    r = subprocess.run([str(_script()), "generate", "--help"], cwd=tmp_path, env=_clean_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--instruction" in r.stdout, r.stderr


def test_python_dash_m_works_from_another_folder(tmp_path):
    need(_installed_package_dir(tmp_path) == REPO / "audiostory_core", "this clone installed in this Python", INSTALL)
    r = subprocess.run([sys.executable, "-m", "audiostory_core", "plan", "--help"], cwd=tmp_path, env=_clean_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--instruction" in r.stdout, r.stderr


def test_a_user_error_from_another_folder_is_one_line_and_exit_2(tmp_path):
    need(_script().is_file() and _installed_package_dir(tmp_path) == REPO / "audiostory_core",
         f"the audiostory command of this clone in {Path(sys.executable).parent}", INSTALL)
    r = subprocess.run([str(_script()), "generate", "--models", str(tmp_path / "none"), "--instruction", "rain",
                        "--duration", "10", "--out", str(tmp_path / "story.wav")],
                       cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "story.wav").exists()


def test_generate_prints_no_dependency_warning(tiny_root, tmp_path):
    """No library warnings by default (Python's own warning filter, not pytest's)."""
    need(_installed_package_dir(tmp_path) == REPO / "audiostory_core", "this clone installed in this Python", INSTALL)
    cmd = [sys.executable, "-m", "audiostory_core", "generate", "--models", str(tiny_root), "--instruction",
           "A train arrives and leaves.", "--duration", "10", "--steps", "2"]
    env = {**_clean_env(), "PYTHONWARNINGS": "default"}       # what a user sees without pytest's filters
    r = subprocess.run(cmd + ["--out", str(tmp_path / "a.wav")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    assert r.stderr.rstrip().split("\n")[-1].startswith("wrote ")

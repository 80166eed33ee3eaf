"""Under CI a skip is a failure that names what is missing; on a user's clone it stays a skip.

Runs pytest on a small example suite that uses this repository's ``conftest.py``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = '''
import pytest
from conftest import need


def test_needs_a_missing_tool():
    need(False, "the frobnicator", "apt-get install frobnicator")


def test_plain_skip():
    pytest.skip("no network")


@pytest.mark.ci_may_skip("needs a CUDA GPU")
def test_gpu_only():
    pytest.skip("no CUDA device")


def test_passes():
    assert True
'''


def _run(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_example.py").write_text(EXAMPLE)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "AUDIOSTORY_REQUIRE_FIXTURES")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=str(tmp_path), env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_on_a_users_clone_missing_resources_skip_with_the_reason(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stdout
    assert "1 passed, 3 skipped" in r.stdout
    assert "missing the frobnicator (apt-get install frobnicator)" in r.stdout


def test_under_ci_every_skip_fails_and_names_what_is_missing(tmp_path):
    for env in ({"CI": "true"}, {"AUDIOSTORY_REQUIRE_FIXTURES": "1"}):
        r = _run(tmp_path, **env)
        assert r.returncode == 1, r.stdout
        assert "2 failed, 1 passed, 1 skipped" in r.stdout, r.stdout
        assert "missing the frobnicator (apt-get install frobnicator); CI requires it" in r.stdout
        assert "resource: Skipped: no network" in r.stdout          # a plain skip fails too
        assert "SKIPPED [1]" in r.stdout and "no CUDA device" in r.stdout    # only the marked one skips

"""Shared fixtures: a tiny checkpoint built here (runs anywhere) and the shared official one (if present).

Skips that CI can provide are failures there. Under ``CI=true`` or ``AUDIOSTORY_REQUIRE_FIXTURES=1``
(``.ci/run`` sets both) every skipped test is reported as a failure naming what is missing (the shared
fixture, ComfyUI, Chromium, Playwright, a tiny test model), unless the test is marked
``@pytest.mark.ci_may_skip("why")`` for something no CI machine has (a GPU). On a user's clone the same
tests skip with the reason.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def require_fixtures() -> bool:
    """True in CI (``CI=true``) or with ``AUDIOSTORY_REQUIRE_FIXTURES=1``: missing test resources fail."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("AUDIOSTORY_REQUIRE_FIXTURES"))


def need(available: bool, what: str, hint: str = "") -> None:
    """Skip (user's clone) or fail (CI) when a test resource is missing; the message names it."""
    if available:
        return
    msg = f"missing {what}" + (f" ({hint})" if hint else "")
    if require_fixtures():
        pytest.fail(f"{msg}; CI requires it (CI=true / AUDIOSTORY_REQUIRE_FIXTURES=1)", pytrace=False)
    pytest.skip(msg)


def _shared_dir() -> Path:
    """``../shared`` next to the clone (CI layout), else ``/work/shared``."""
    for cand in (REPO.parent / "shared", Path("/work/shared")):
        if cand.is_dir():
            return cand
    return REPO.parent / "shared"


def _shared_fixture() -> Path:
    if os.environ.get("AUDIOSTORY_SHARED_FIXTURE"):
        return Path(os.environ["AUDIOSTORY_SHARED_FIXTURE"])
    for cand in (REPO.parent / "shared", Path("/work/shared")):
        if (cand / "fixtures" / "audiostory-tiny").is_dir():
            return cand / "fixtures" / "audiostory-tiny"
    return REPO.parent / "shared" / "fixtures" / "audiostory-tiny"


SHARED_DIR = _shared_dir()
SHARED_FIXTURE = _shared_fixture()


# Modules that start a real ComfyUI or Chromium, run torchrun, the benchmarks or many full renders: the
# ``slow`` marker. ``python -m pytest -q -m "not slow"`` is the quick subset (README, Tests).
SLOW_MODULES = frozenset({
    "test_comfyui_e2e", "test_comfyui_native", "test_browser", "test_reroll_comfyui",   # a real ComfyUI
    "test_training_comfyui",
    "test_batch", "test_fast_paths", "test_reroll", "test_continuation", "test_video_dubbing",
    "test_release_variants",
})


def pytest_configure(config):
    config.addinivalue_line("markers", "ci_may_skip(reason): a skip CI cannot avoid (e.g. needs a CUDA GPU)")
    config.addinivalue_line("markers", "slow: part of the full suite only; -m \"not slow\" is the quick subset")
    # Caches (null embedding, converted weights) go to a temporary folder, never into ../shared.
    if not os.environ.get("AUDIOSTORY_CACHE"):
        os.environ["AUDIOSTORY_CACHE"] = tempfile.mkdtemp(prefix="audiostory-test-cache-")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skip (skip(), skipif, importorskip) is a failure unless marked ``ci_may_skip``."""
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and require_fixtures()) or hasattr(rep, "wasxfail"):
        return
    if item.get_closest_marker("ci_may_skip") is not None:
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    rep.outcome = "failed"
    rep.longrepr = (f"skipped under CI=true / AUDIOSTORY_REQUIRE_FIXTURES=1, which require every test "
                    f"resource: {reason}")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A model root in the official layout with a tiny LLM trained to emit the grammar (~10 s to build)."""
    from tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_root, tmp_path_factory):
    from audiostory_core.pipeline import AudioStoryPipeline

    return AudioStoryPipeline.from_pretrained(tiny_root, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The checkpoint written by the official code (``../shared/fixtures/audiostory-tiny``)."""
    need((SHARED_FIXTURE / "audiostory" / "config.yaml").is_file(),
         f"the shared official fixture at {SHARED_FIXTURE}",
         "put ../shared/fixtures/audiostory-tiny next to the clone or set AUDIOSTORY_SHARED_FIXTURE")
    return SHARED_FIXTURE


@pytest.fixture(scope="session")
def shared_pipeline(shared_root, tmp_path_factory):
    from audiostory_core.pipeline import AudioStoryPipeline

    return AudioStoryPipeline.from_pretrained(shared_root, device="cpu", dtype="fp32")


PACK_UNDER_TEST = "audiostory_pack_under_test"


def register_pack() -> str:
    """Make the repository importable as one package, the way ComfyUI imports a custom node pack (the node
    modules use relative imports into ``audiostory_core``); returns its name for ``importlib.import_module``."""
    import types

    if PACK_UNDER_TEST not in sys.modules:
        pkg = types.ModuleType(PACK_UNDER_TEST)
        pkg.__path__ = [str(Path(__file__).resolve().parents[1])]
        sys.modules[PACK_UNDER_TEST] = pkg
    return PACK_UNDER_TEST

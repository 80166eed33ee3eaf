"""The pack puts its example media into ComfyUI's input folder: missing files only, atomically."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def helper():
    """``install_examples`` imported as part of the pack package (as ComfyUI imports it)."""
    name = "audiostory_pack_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    try:
        yield importlib.import_module(f"{name}.install_examples")
    finally:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]


def test_bundled_examples_exist_with_a_licence(helper):
    for name in helper.EXAMPLE_FILES:
        assert (helper.EXAMPLES_DIR / name).stat().st_size > 1000
    assert "CC0" in (helper.EXAMPLES_DIR / "LICENSE.md").read_text()


def test_copies_missing_files_and_keeps_the_users(helper, tmp_path):
    video, audio = helper.EXAMPLE_FILES
    (tmp_path / audio).write_bytes(b"the user's own file")
    written = helper.install_examples(tmp_path)
    assert written == [tmp_path / video]
    assert (tmp_path / video).read_bytes() == (helper.EXAMPLES_DIR / video).read_bytes()
    assert (tmp_path / audio).read_bytes() == b"the user's own file"
    assert helper.install_examples(tmp_path) == []                     # a second start copies nothing


def test_a_failed_copy_leaves_no_file(helper, tmp_path, monkeypatch):
    def broken_copy(src, dst):
        dst.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(helper.shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        helper.install_examples(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()                                                   # the next start copies them
    assert len(helper.install_examples(tmp_path)) == len(helper.EXAMPLE_FILES)


def test_training_example_folder_is_copied_manifest_last_and_once(helper, tmp_path, monkeypatch):
    src = helper.EXAMPLES_DIR / helper.EXAMPLE_DATASET
    assert sorted(p.name for p in src.iterdir()) == sorted(helper.EXAMPLE_DATASET_FILES)
    order = []
    real = helper.shutil.copyfileobj
    monkeypatch.setattr(helper.shutil, "copyfileobj", lambda a, b: (order.append(a.name), real(a, b)))
    written = helper.install_example_dataset(tmp_path)
    dst = tmp_path / helper.EXAMPLE_DATASET
    assert written == [dst / n for n in helper.EXAMPLE_DATASET_FILES]
    assert Path(order[-1]).name == "captions.jsonl"
    for n in helper.EXAMPLE_DATASET_FILES:
        assert (dst / n).read_bytes() == (src / n).read_bytes()
    (dst / "rain.wav").write_bytes(b"the user's edit")
    assert helper.install_example_dataset(tmp_path) == []              # present: never copied again
    assert (dst / "rain.wav").read_bytes() == b"the user's edit"

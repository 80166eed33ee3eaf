"""The training nodes' ComfyUI-free steps (``nodes/training_steps.py``): data-set choices under the input
folder (no path escapes), widget limits derived from ``TrainConfig``, LoRA file names, the loss graph."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PACK_UNDER_TEST, register_pack
import torch

PKG = PACK_UNDER_TEST


@pytest.fixture(scope="module")
def ts():
    register_pack()
    return importlib.import_module(f"{PKG}.nodes.training_steps")


@pytest.fixture(scope="module")
def errors(ts):
    return importlib.import_module(f"{PKG}.audiostory_core.errors")


def _manifest(folder: Path, name: str = "captions.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(json.dumps({"audio": "a.wav", "caption": "rain"}) + "\n")
    return p


def test_dataset_choices_list_folders_with_manifests_only(ts, tmp_path):
    _manifest(tmp_path / "rain")
    _manifest(tmp_path / "two", "a.jsonl"), _manifest(tmp_path / "two", "b.csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir(), _manifest(tmp_path / ".hidden")
    (tmp_path / "loose.jsonl").write_text("{}\n")           # a manifest directly in input/: not a data set folder
    assert ts.dataset_choices(tmp_path) == ["rain", "two/a.jsonl", "two/b.csv"]
    assert ts.dataset_choices(tmp_path / "missing") == []


def test_dataset_choices_are_bounded(ts, tmp_path, monkeypatch):
    for i in range(7):
        _manifest(tmp_path / f"d{i}")
    monkeypatch.setattr(ts, "MAX_DATASETS", 5)
    assert ts.dataset_choices(tmp_path) == [f"d{i}" for i in range(5)]


def test_resolve_dataset_accepts_only_listed_names(ts, errors, tmp_path):
    _manifest(tmp_path / "input" / "rain")
    _manifest(tmp_path / "outside")
    inp = tmp_path / "input"
    assert ts.resolve_dataset(inp, "rain") == (inp / "rain").resolve()
    for bad in ("../outside", str(tmp_path / "outside"), "rain/../../outside", "", None, "nope"):
        with pytest.raises(errors.InputError):
            ts.resolve_dataset(inp, bad)


def test_limits_default_to_the_cli_config(ts):
    trainer = importlib.import_module(f"{PKG}.audiostory_core.training.trainer")
    d = trainer.TrainConfig()
    assert ts.LIMITS["steps"].default == d.steps and ts.LIMITS["learning_rate"].default == d.lr
    assert ts.LIMITS["rank"].default == d.rank and ts.LIMITS["alpha"].default == d.alpha
    assert ts.LIMITS["seed"].default == d.seed and ts.DEFAULT_SCHEDULE == d.schedule
    for name, lim in ts.LIMITS.items():
        assert lim.min <= lim.default <= lim.max, name


def test_train_config_checks_every_bound(ts, errors):
    ok = dict(steps=5, learning_rate=1e-3, rank=4, alpha=4.0, seed=1)
    cfg = ts.train_config(**ok)
    assert (cfg.steps, cfg.lr, cfg.rank, cfg.alpha, cfg.seed, cfg.mode) == (5, 1e-3, 4, 4.0, 1, "dit")
    for name, bad in (("steps", 0), ("steps", 10_001), ("rank", 129), ("learning_rate", float("nan")),
                      ("learning_rate", 1.0), ("seed", -1), ("alpha", True)):
        with pytest.raises(errors.InputError, match=name):
            ts.train_config(**{**ok, name: bad})
    with pytest.raises(errors.InputError, match="schedule"):
        ts.train_config(**ok, schedule="linear")


def test_prefix_rejects_folders_and_odd_names(ts, errors):
    assert ts.check_prefix(" my rain_v1.2 ") == "my rain_v1.2"
    for bad in ("a/b", "a\\b", "../x", "..", ".hidden", "", "   ", "x" * 65, "a:b", "a\nb", None, 3):
        with pytest.raises(errors.InputError):
            ts.check_prefix(bad)


def test_next_lora_path_counts_up_and_never_overwrites(ts, tmp_path):
    assert ts.next_lora_path(tmp_path / "none", "rain").name == "rain_00001.safetensors"
    (tmp_path / "rain_00001.safetensors").write_bytes(b"x")
    (tmp_path / "rain_00007.safetensors").write_bytes(b"x")
    (tmp_path / "rainy_00009.safetensors").write_bytes(b"x")      # another prefix: not counted
    assert ts.next_lora_path(tmp_path, "rain") == tmp_path / "rain_00008.safetensors"


def test_trained_lora_saves_a_file_the_loader_reads(ts, tmp_path):
    lf = importlib.import_module(f"{PKG}.audiostory_core.training.lora_files")
    a, b = torch.randn(2, 6), torch.randn(5, 2)
    lora = ts.TrainedLora(tensors={"transformer.x.lora_A.weight": a, "transformer.x.lora_B.weight": b},
                          rank=2, alpha=4.0, targets=("x",), config={"steps": 3, "dataset": "rain"}, losses=[1.0])
    path = lora.save(tmp_path / "l.safetensors")
    read = lf.read_lora(path)
    assert read.scale == 2.0 and json.loads(read.metadata["config"])["dataset"] == "rain"
    assert torch.equal(read.pairs["transformer.x"][0], a) and torch.equal(read.pairs["transformer.x"][1], b)
    assert [p.name for p in tmp_path.iterdir()] == ["l.safetensors"]     # no temp file left behind


def test_loss_graph_draws_the_curve_where_the_losses_are(ts):
    img = ts.loss_graph([4.0, 3.0, 2.0, 1.0], width=200, height=100)
    assert img.shape == (1, 100, 200, 3) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    blue = (img[0, :, :, 2] > 0.6) & (img[0, :, :, 0] < 0.4)       # the line's colour (30, 90, 200)
    ys, xs = np.nonzero(blue.numpy())
    assert len(xs) > 50
    left, right = ys[xs < xs.min() + 5].mean(), ys[xs > xs.max() - 5].mean()
    assert left < right - 40            # falling loss: high (small y) at the left, low at the right
    flat = ts.loss_graph([1.0, 1.0, float("nan")])
    assert flat.shape[0] == 1 and torch.isfinite(flat).all()
    assert ts.loss_graph([]).shape == (1, 256, 512, 3)


def test_report_text_lists_each_skipped_line_bounded(ts):
    ds = importlib.import_module(f"{PKG}.audiostory_core.training.datasets")
    rep = ds.DataReport(used=["a"], skipped=[(f"c.jsonl:{i}", "bad audio " + "x" * 500) for i in range(50)])
    text = ts.report_text("rain", rep)
    lines = text.splitlines()
    assert lines[0] == "rain: 1 clips used, 50 skipped"
    assert lines[1].startswith("  skipped c.jsonl:0: bad audio") and all(len(x) <= 300 for x in lines)
    assert lines[-1] == f"  ... and {50 - ts.MAX_REPORT_LINES} more skipped lines"

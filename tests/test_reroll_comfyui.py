"""The "fix one event" workflow in a real ComfyUI: render, score with CLAP, re-roll the weakest event, save.

The server and helpers are those of ``test_comfyui_e2e.py`` (a temporary ComfyUI with the shared tiny
checkpoint and a tiny random CLAP in ``models/audiostory/clap-htsat-unfused``). Checks: the workflow runs as
shipped; the score table is on the node and its pick is what the re-roll sampler renders; every other event
of the fixed story is the first render's audio sample for sample; a new re-roll seed re-runs only the
re-roll (ComfyUI's cache keeps the planner, the first render and the score); the sampler's new inputs are
optional and appended.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from test_comfyui_e2e import API_DIR, _error_of, _files, _ui_text, comfy  # noqa: F401  (comfy: the fixture)

NAME = "audiostory_fix_one_event"
SCORE, REROLL, PLANNER = "6", "7", "2"


def _wavs(c, entry) -> dict[str, np.ndarray]:
    import soundfile as sf

    out = {}
    for f in _files(c, entry):
        if f.suffix == ".wav":
            key = "before" if "before_reroll" in f.name else "fixed"
            out[key], out["sr"] = sf.read(str(f), dtype="float32")
    return out


def _cached_nodes(entry) -> set[str]:
    for kind, msg in entry["status"]["messages"]:
        if kind == "execution_cached":
            return set(msg["nodes"])
    return set()


def _check_only_event_changed(wavs: dict, plan: dict, event: int, crossfade: float = 3.0) -> None:
    """Samples before event ``event``'s clip and after its clip (tail included) are the first render's."""
    sr = wavs["sr"]
    durs = [e["duration"] for e in plan["events"]]
    start = round(sum(durs[:event]) * sr)
    end = start + round((durs[event] + (crossfade if event < len(durs) - 1 else 0.0)) * sr)
    a, b = wavs["before"], wavs["fixed"]
    assert a.shape == b.shape
    assert np.array_equal(a[:start], b[:start]) and np.array_equal(a[end + 2:], b[end + 2:])
    assert not np.array_equal(a[start:end], b[start:end])


@pytest.fixture(scope="module")
def first(comfy):  # noqa: F811
    api = json.loads((API_DIR / f"{NAME}.json").read_text())
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    return api, entry


def test_sampler_takes_previous_latent_and_events_as_appended_optional_inputs(comfy):  # noqa: F811
    info = comfy.object_info["AudioStorySampler"]
    order = info["input_order"]["optional"]
    assert order[-5:] == ["sampler", "sigmas", "previous", "render_events", "reference"]   # reference: appended later
    assert info["input"]["optional"]["previous"][0] == "LATENT"
    score = comfy.object_info["AudioStoryScore"]
    assert score["output"] == ["STRING", "STRING", "FLOAT"] and score["description"]


def test_fix_one_event_rerolls_only_the_weakest(comfy, first):  # noqa: F811
    api, entry = first
    table = _ui_text(entry, SCORE)
    plan = json.loads(_ui_text(entry, PLANNER))
    scores = [float(m) for m in re.findall(r"^\s*\d+\s+[\d.]+-[\d.]+\s+([+-]\d\.\d{3})", table, re.M)]
    assert len(scores) == len(plan["events"]) >= 2, table
    picked = int(re.search(r"re-roll: (\d+)$", table).group(1)) - 1
    assert scores[picked] == min(scores)
    for ev in plan["events"]:
        assert ev["caption"] in table
    _check_only_event_changed(_wavs(comfy, entry), plan, picked)


def test_new_reroll_seed_reruns_only_the_reroll(comfy, first):  # noqa: F811
    api, entry = first
    plan = json.loads(_ui_text(entry, PLANNER))
    picked = int(re.search(r"re-roll: (\d+)$", _ui_text(entry, SCORE)).group(1)) - 1
    api = json.loads(json.dumps(api))
    api[REROLL]["inputs"]["seed"] = 8
    again = comfy.run(api)
    assert again["status"]["status_str"] == "success", _error_of(again)
    cached = _cached_nodes(again)
    assert {"1", "2", "3", "4", "5", "6"} <= cached, cached      # planner, tokens, first render, score
    assert REROLL not in cached and "8" not in cached
    w1, w2 = _wavs(comfy, entry), _wavs(comfy, again)
    assert np.array_equal(w1["before"], w2.get("before", w1["before"]))
    w2["before"], w2["sr"] = w1["before"], w1["sr"]
    _check_only_event_changed(w2, plan, picked)
    assert not np.array_equal(w1["fixed"], w2["fixed"])


def test_typed_event_list_and_bad_one(comfy, first):  # noqa: F811
    api, _ = first
    api = json.loads(json.dumps(api))
    api[REROLL]["inputs"]["render_events"] = "9"
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "error"
    assert "Events [9] do not exist" in _error_of(entry)

"""A prompt reaches only what the server's owner put in ComfyUI's folders, in a real ComfyUI over HTTP.

For every model input a node loads (the Score node's ``clap``, the Audio Context's ``whisper``, the Video
Captioner's ``vlm``), hostile values (traversal, absolute, ``~``, a link that leads outside ``models/``, a
Hugging Face id, a folder outside) are refused by ComfyUI's own validation: POST /prompt answers 400 and
nothing runs. The independent check that nothing outside ``models/`` is opened: a link in
``models/audiostory`` leads to a folder whose ``config.json`` is a FIFO; opening it to read would block the
server (validation runs in its request handler), so every request answering, and the server still answering
afterwards, shows it was never opened. Plans over the bounds are refused at validation the same way.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

import comfy_server

API_DIR = Path(__file__).resolve().parents[1] / "workflows" / "api"

# (workflow, node id, input, the installed choice comfy_server.prepare_base builds)
MODEL_INPUTS = [("audiostory_fix_one_event", "6", "clap", "clap-htsat-unfused"),
                ("audiostory_continuation", "3", "whisper", "whisper-large-v3"),
                ("audiostory_dubbing", "4", "vlm", "Qwen2.5-VL-3B-Instruct")]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, shared_root):
    yield from comfy_server.serve(tmp_path_factory.mktemp("comfy"), shared_root)


@pytest.fixture(scope="module")
def outside(comfy, tmp_path_factory):
    """A folder outside models/ holding a real (tiny) CLAP and a FIFO trap, linked from models/audiostory."""
    from tiny_clap import build_tiny_clap

    out = tmp_path_factory.mktemp("outside")
    build_tiny_clap(out / "clap")
    (out / "trap").mkdir()
    os.mkfifo(out / "trap" / "config.json")
    models = comfy.root / "models" / "audiostory"
    (models / "escape").symlink_to(out / "clap", target_is_directory=True)
    (models / "trap").symlink_to(out / "trap", target_is_directory=True)
    return out


def _api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def _ancestors(api: dict, node: str) -> set[str]:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += [v[0] for v in api[n]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return seen


def _only_through(comfy, api: dict, node: str) -> dict:
    """The workflow cut down to the output nodes that need ``node`` (and what they need): when ``node`` is
    refused, no output is left to run, so ComfyUI answers 400 and runs nothing."""
    outputs = [n for n, v in api.items() if comfy.object_info[v["class_type"]].get("output_node")
               and node in _ancestors(api, n)]
    keep = set().union(*(_ancestors(api, n) for n in outputs))
    return {n: v for n, v in api.items() if n in keep}


def _options(comfy, node_class: str, name: str) -> list:
    info = comfy.get("/object_info")[node_class]["input"]
    spec = {**info.get("required", {}), **info.get("optional", {})}[name]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


@pytest.mark.parametrize("workflow,node,name,installed", MODEL_INPUTS, ids=[m[2] for m in MODEL_INPUTS])
def test_model_inputs_are_choices_of_the_installed_folders(comfy, outside, workflow, node, name, installed):
    node_class = _api(workflow)[node]["class_type"]
    assert _options(comfy, node_class, name) == [installed]   # not the link out, not the FIFO trap


HOSTILE = ["../../../../../../etc", "/etc", "~", "~/.cache", "escape", "trap", "trap/config.json",
           "openai/whisper-tiny", "laion/clap-htsat-unfused"]


@pytest.mark.parametrize("workflow,node,name,installed", MODEL_INPUTS, ids=[m[2] for m in MODEL_INPUTS])
def test_hostile_model_values_are_refused_at_validation(comfy, outside, workflow, node, name, installed):
    base = _only_through(comfy, _api(workflow), node)
    for value in HOSTILE + [str(outside / "clap"), str(outside / "trap")]:
        api = copy.deepcopy(base)
        api[node]["inputs"][name] = value
        code, r = comfy.post("/prompt", {"prompt": api, "client_id": "security"})
        assert code == 400, (value, r)
        errs = r["node_errors"][node]["errors"]
        assert [e["type"] for e in errs] == ["value_not_in_list"] and errs[0]["extra_info"]["input_name"] == name
    assert comfy.get("/queue")["queue_running"] == []        # nothing ran
    assert "AudioStoryScore" in comfy.get("/object_info")     # and the server still answers


def _plan_editing(text: str) -> dict:
    api = _api("audiostory_plan_editing")
    api["2"]["inputs"]["json"] = text
    return api


@pytest.mark.parametrize("text,words", [
    (json.dumps({"instruction": "i", "reasoning": "r" * 100_000_000,
                 "events": [{"caption": "rain", "duration": 3.0}]}), "the limit is 4194304 bytes"),
    ('{"events": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests 100001 levels deep; the limit is 32"),
], ids=["100MB-reasoning", "100000-deep"])
def test_huge_or_deep_plans_are_refused_at_validation(comfy, text, words):
    code, r = comfy.post("/prompt", {"prompt": _plan_editing(text), "client_id": "security"})
    assert code == 400 and words in json.dumps(r), json.dumps(r)[:2000]


@pytest.mark.parametrize("prefix,words", [("audio/story\x00.sh", "filename_prefix contains a NUL byte"),
                                           ("../../escaped", "must stay inside the output folder"),
                                           ("a" * 5000, "filename_prefix has 5000 characters")])
def test_bad_filename_prefixes_are_refused_at_validation(comfy, prefix, words):
    api = _api("audiostory_plan_editing")
    save = next(k for k, n in api.items() if n["class_type"] == "AudioStorySaveAudio")
    api[save]["inputs"]["filename_prefix"] = prefix
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "security"})
    assert code == 400 and words in json.dumps(r), json.dumps(r)[:2000]

"""The pack as a ComfyUI citizen, checked in a real ComfyUI 0.8 (``COMFYUI_DIR``, default
``../shared/vendor/ComfyUI``; started by ``tests/comfy_server.py`` from a temporary copy, on CPU).

* ComfyUI's own min/max/combo checks apply to the pack's widgets, one message per bad input, and the
  pack's own checks (empty instruction, model folder, sample_rate rule) still run.
* The save node returns core SaveAudio's UI payload, and the web extension that puts the frontend's
  audio player on it is served.
* The planner streams readable plan text (no control tokens) and ends with the final plan text.
* Models go through ComfyUI's memory manager: "Unload models" makes the next run load the LLM again, the
  VLM and Whisper are built once and stay loaded between runs, and the pack's patchers load whole.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import comfy_server
from conftest import need

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "workflows" / "api"
PACK = comfy_server.PACK


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, shared_root):
    yield from comfy_server.serve(tmp_path_factory.mktemp("comfy_native"), shared_root)


def _api(name: str = "audiostory_text_to_long_audio") -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def _node_errors(r: dict) -> dict[str, list[tuple[str, str, str]]]:
    """{node id: [(input name, error type, details)]} of a refused /prompt."""
    return {nid: [(e["extra_info"].get("input_name"), e["type"], e.get("details", "")) for e in ne["errors"]]
            for nid, ne in r.get("node_errors", {}).items()}


def _plan_prompt(max_new_tokens: int) -> dict:
    """Loader -> Planner -> PreviewAny(plan JSON): the planner runs again for every new max_new_tokens."""
    api = {k: v for k, v in _api().items() if k in ("1", "2")}
    api["2"]["inputs"]["max_new_tokens"] = max_new_tokens
    api["99"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}
    return api


def _ok(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "success", comfy_server.error_of(entry)
    return entry


# ---------------------------------------------------------------- validation
def test_out_of_range_and_off_list_values_are_refused_once_each(comfy):
    api = _api()
    api["2"]["inputs"]["max_new_tokens"] = 10_000_000
    api["5"]["inputs"].update(crossfade=99.0, sample_rate=999999, curve="bogus")
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400, r
    errs = _node_errors(r)
    assert errs["2"] == [("max_new_tokens", "value_bigger_than_max", "max_new_tokens")]
    decode = sorted(errs["5"])
    assert [e[:2] for e in decode] == [("crossfade", "value_bigger_than_max"),
                                       ("curve", "value_not_in_list"),
                                       ("sample_rate", "custom_validation_failed")], decode
    assert "between 8000 and 192000 Hz, got 999999" in decode[2][2]
    assert set(errs) == {"2", "5"}            # nothing else is blamed


def test_core_checks_cover_every_other_widget(comfy):
    """Inputs the pack does not name in validate_inputs keep ComfyUI's checks (min, max, list)."""
    api = _api()
    api["1"]["inputs"]["dtype"] = "fp64"
    api["2"]["inputs"]["total_duration"] = 0.5
    api["3"]["inputs"]["crossfade"] = 11.0
    api["4"]["inputs"].update(steps=0, sampler_name="nope")
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400, r
    errs = {(nid, name, kind) for nid, lst in _node_errors(r).items() for name, kind, _ in lst}
    assert errs == {("1", "dtype", "value_not_in_list"), ("2", "total_duration", "value_smaller_than_min"),
                    ("3", "crossfade", "value_bigger_than_max"), ("4", "steps", "value_smaller_than_min"),
                    ("4", "sampler_name", "value_not_in_list")}


def test_pack_checks_name_only_their_input(comfy):
    api = _api()
    api["2"]["inputs"]["instruction"] = "   "
    api["5"]["inputs"]["sample_rate"] = 100
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400, r
    errs = _node_errors(r)
    assert [(n, k) for n, k, _ in errs["2"]] == [("instruction", "custom_validation_failed")]
    assert "instruction is empty" in errs["2"][0][2]
    assert [(n, k) for n, k, _ in errs["5"]] == [("sample_rate", "custom_validation_failed")]

    api = _api()
    api["1"]["inputs"]["root"] = "NoSuchModel"
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    errs = _node_errors(r)
    assert code == 400 and [(n, k) for n, k, _ in errs["1"]] == [("root", "custom_validation_failed")], r
    assert "'NoSuchModel' is not in models/audiostory/; available: AudioStory" in errs["1"][0][2]


# ---------------------------------------------------------------- frontend
def test_save_node_returns_the_core_audio_payload(comfy):
    api = _api()
    api["4"]["inputs"].update(seed=11, steps=2)
    api["6"]["inputs"]["filename_prefix"] = "audiostory/native_player"
    entry = _ok(comfy.run(api))
    items = entry["outputs"]["6"]["audio"]
    assert len(items) == 1 and set(items[0]) == {"filename", "subfolder", "type"}
    assert items[0]["type"] == "output" and items[0]["subfolder"] == "audiostory"
    f = comfy.root / "output" / items[0]["subfolder"] / items[0]["filename"]
    assert f.is_file() and f.stat().st_size > 1000
    # the frontend plays it from /view (what the player widget's src points at)
    with comfy_server.urllib.request.urlopen(f"{comfy.base}/view?filename={items[0]['filename']}"
                                             f"&subfolder=audiostory&type=output") as resp:
        assert resp.read() == f.read_bytes()


def test_save_node_writes_stems_that_remix_to_the_story(comfy):
    """stems=True with the decoder's clips and the events: one WAV per event beside the story, and laid at the
    offsets of stems.json with the crossfade they give back the saved story (independent re-mix of test_stems)."""
    import soundfile as sf
    from test_stems import read_audacity_labels, remix

    api = _api()
    api["4"]["inputs"].update(seed=12, steps=2)
    api["6"]["inputs"].update(filename_prefix="audiostory/stems", format="wav", clips=["5", 1], events=["3", 0],
                              stems=True)
    entry = _ok(comfy.run(api))
    saved = entry["outputs"]["6"]["audio"][0]
    folder = comfy.root / "output" / saved["subfolder"] / (Path(saved["filename"]).stem + "stems")
    index = json.loads((folder / "stems.json").read_text())
    story, sr = sf.read(str(folder.parent / saved["filename"]), dtype="float32", always_2d=True)
    assert index["sample_rate"] == sr and len(index["events"]) >= 2
    mixed = remix(folder, index)
    assert mixed.shape == story.T.shape
    np.testing.assert_allclose(mixed, story.T, atol=1e-5)
    labels = read_audacity_labels(folder / "labels.txt")
    assert [c for _, _, c in labels] == [e["caption"] for e in index["events"]]

    api["6"]["inputs"].pop("clips")     # stems without the clips: refused, nothing written
    api["6"]["inputs"]["filename_prefix"] = "audiostory/stems_refused"
    entry = comfy.run(api)
    assert "stems needs the clips output of AudioStoryDecode" in comfy_server.error_of(entry)
    assert not list((comfy.root / "output" / "audiostory").glob("stems_refused*"))


def test_player_extension_is_served(comfy):
    """ComfyUI serves every ES module of web/ (and nothing else of the pack); the player is among them."""
    scripts = comfy.get("/extensions")
    ours = sorted(s for s in scripts if s.startswith(f"/extensions/{PACK}/"))
    assert ours == sorted(f"/extensions/{PACK}/{p.name}" for p in (ROOT / "web").glob("*.js")), scripts
    with comfy_server.urllib.request.urlopen(comfy.base + f"/extensions/{PACK}/audiostory.js") as resp:
        js = resp.read().decode()
    assert '"AudioStorySaveAudio"' in js and '["AUDIO_UI", {}]' in js and "registerExtension" in js


def _run_collecting_text(comfy, api: dict, timeout: float = 300, progress: list | None = None
                         ) -> tuple[dict, list[tuple[str, str]]]:
    """Run a prompt while listening on the websocket; returns (history entry, [(node id, progress text)]).

    ``progress`` (when given) receives each progress-bar message's data (node, value, max).
    """
    import aiohttp

    async def go():
        texts: list[tuple[str, str]] = []
        cid = str(uuid.uuid4())
        ws_url = comfy.base.replace("http://", "ws://") + f"/ws?clientId={cid}"
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url) as ws:
            async with s.post(comfy.base + "/prompt", json={"prompt": api, "client_id": cid}) as r:
                body = await r.json()
                assert r.status == 200, body
                pid = body["prompt_id"]
            t0 = time.time()
            while time.time() - t0 < timeout:
                msg = await ws.receive(timeout=timeout)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    kind, = struct.unpack(">I", msg.data[:4])
                    if kind == 3:                                   # BinaryEventTypes.TEXT
                        n, = struct.unpack(">I", msg.data[4:8])
                        texts.append((msg.data[8:8 + n].decode(), msg.data[8 + n:].decode()))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m["type"] == "progress" and progress is not None and m["data"].get("prompt_id") == pid:
                        progress.append(m["data"])
                    if m["type"] in ("executing", "execution_error") and m["data"].get("prompt_id") == pid \
                            and (m["type"] == "execution_error" or m["data"].get("node") is None):
                        break
                else:
                    break
        return pid, texts

    pid, texts = asyncio.run(go())
    return comfy.wait(pid), texts


def test_planner_streams_readable_plan_text(comfy):
    entry, texts = _run_collecting_text(comfy, _plan_prompt(1590))
    _ok(entry)
    planner = [t for nid, t in texts if nid == "2"]
    assert len(planner) >= 3, texts
    assert not [t for t in planner if "<" in t], "control tokens were streamed"
    final = planner[-1]
    events = json.loads(entry["outputs"]["2"]["text"][0])["events"]
    ends = [sum(e["duration"] for e in events[:i + 1]) for i in range(len(events))]
    assert len(events) == 3 and all(f"{i + 1}. {end - e['duration']:g}\u2013{end:g} s  {e['caption']}" in final
                                    for i, (e, end) in enumerate(zip(events, ends))), final
    assert any("1. [" in t for t in planner[:-1]), "events appear while generating, in the final form"


def test_chapter_two_is_planned_with_chapter_one_in_memory(comfy, shared_pipeline):
    """In the running ComfyUI: Memory(new) -> Planner(ch. 1) -> Event Tokens -> memory -> Planner(ch. 2).
    Without memory the tiny planner writes the fixture README's cafe plan (oracle: the official fixture);
    with chapter 1 as an earlier chat turn it writes another one: the plan the library makes from that
    chat (chapter 1's plan as ComfyUI wrote it)."""
    import torch

    from audiostory_core.stages.grammar import build_instruction
    from audiostory_core.stages.plan import StoryPlan, generate_plan
    from audiostory_core.tasks.memory import StoryMemory, with_history

    cafe, total = "A busy morning in a small city cafe.", 14.0
    readme_cafe = [("a door bell rings and people chat", 3.0), ("an espresso machine hisses and cups clink", 4.0),
                   ("a spoon stirs coffee in a mug", 2.0), ("soft music plays while rain taps the window", 5.0)]
    api = {k: v for k, v in _api().items() if k == "1"}
    api["2"] = {"class_type": "AudioStoryConsistencyMemory",
                "inputs": {"mode": "new", "path": "audiostory/memory/story", "window": 8, "strength": 0.5}}
    api["3"] = {"class_type": "AudioStoryPlanner",
                "inputs": {"planner": ["1", 0], "instruction": "A thunderstorm rolls over a quiet farm at night.",
                           "total_duration": 12.0, "max_new_tokens": 1600}}
    api["4"] = {"class_type": "AudioStoryEventTokens",
                "inputs": {"planner": ["1", 0], "plan": ["3", 0], "crossfade": 3.0, "memory": ["2", 0]}}
    api["5"] = {"class_type": "AudioStoryPlanner",
                "inputs": {"planner": ["1", 0], "instruction": cafe, "total_duration": total, "max_new_tokens": 256,
                           "memory": ["4", 3]}}
    api["98"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}    # output nodes: run both planners
    api["99"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}
    entry = _ok(comfy.run(api))
    chapter1 = StoryPlan.from_json(entry["outputs"]["3"]["text"][0])
    got = [(e.caption, e.duration) for e in StoryPlan.from_json(entry["outputs"]["5"]["text"][0]).events]
    assert got != readme_cafe, "chapter 2 was planned as if there were no chapter 1"

    pl = shared_pipeline.models.planner
    n = len(chapter1.events)
    mem = StoryMemory().add_chapter(chapter1, torch.zeros(n, 8, 1024), torch.zeros(n, 4, 1024))  # plans only
    chat = with_history(pl.tokenizer, pl.ids, mem, build_instruction(cafe, total), None)
    want = generate_plan(pl, cafe, total, max_new_tokens=256, context=chat).plan
    assert got == [(e.caption, e.duration) for e in want.events]
    alone = generate_plan(pl, cafe, total, max_new_tokens=256).plan
    assert [(e.caption, e.duration) for e in alone.events] == readme_cafe    # the oracle holds here too


def test_loader_shows_progress_through_its_load_stages(comfy):
    code, _ = comfy.post("/free", {"unload_models": True, "free_memory": True})  # forget cached outputs too
    assert code == 200
    time.sleep(2.0)                                           # the idle worker applies the flags on wake-up
    progress: list[dict] = []
    entry, _ = _run_collecting_text(comfy, _plan_prompt(1577), progress=progress)
    _ok(entry)
    loader = [(d["value"], d["max"]) for d in progress if d["node"] == "1"]
    assert loader, f"the loader reported no progress: {progress}"
    values = [v for v, _ in loader]
    total = loader[-1][1]
    assert values == sorted(values) and values[-1] == total >= 5, loader  # null emb., VAE, LLM, heads, DiT, ...


# ---------------------------------------------------------------- memory manager
def test_unload_models_makes_the_next_run_load_the_llm_again(comfy):
    count = lambda: comfy.log_text().count("Requested to load AudioStoryLLM")   # noqa: E731

    def plan_again(n):
        return _ok(comfy.run(_plan_prompt(n)))

    plan_again(1581)
    loaded = count()
    assert loaded >= 1
    plan_again(1582)
    assert count() == loaded, "the LLM was loaded again although nothing unloaded it"
    code, _ = comfy.post("/free", {"unload_models": True})
    assert code == 200
    time.sleep(2.0)                                           # the idle worker applies the flag on wake-up
    plan_again(1583)
    plan_again(1584)
    assert count() > loaded, "after 'Unload models' the LLM was not loaded again"


def _caption_prompt(max_new_tokens: int) -> dict:
    api = {k: v for k, v in _api("audiostory_dubbing").items() if k in ("1", "2", "3", "4")}
    api["4"]["inputs"]["max_new_tokens"] = max_new_tokens
    api["99"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}}
    return api


def _context_prompt(description: str) -> dict:
    api = {k: v for k, v in _api("audiostory_continuation").items() if k in ("1", "2", "3")}
    api["3"]["inputs"]["audio_description"] = description
    api["99"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}
    return api


@pytest.mark.parametrize("kind,make,values", [("VLM", _caption_prompt, (60, 59)),
                                              ("Whisper", _context_prompt, ("", "rain on a roof"))])
def test_vlm_and_whisper_are_cached_between_runs(comfy, kind, make, values):
    built = lambda: comfy.log_text().count(f"AudioStory: loading the {kind} ")           # noqa: E731
    requested = lambda: comfy.log_text().count("Requested to load AudioStoryAuxModel")   # noqa: E731
    _ok(comfy.run(make(values[0])))
    assert built() == 1
    r = requested()
    entry = _ok(comfy.run(make(values[1])))                    # the node runs again (a new widget value)
    assert built() == 1, f"the {kind} was read from disk again"
    assert requested() == r, f"the {kind} was loaded again although it was still loaded"
    if kind == "Whisper":                                      # Whisper really ran (not the text fallback)
        assert entry["outputs"]["3"]["text"][0].startswith("understanding: whisper")


_IN_COMFY = r'''
import importlib, json, sys, types
sys.path.insert(0, sys.argv[1])
pkg = types.ModuleType("audiostory_pack"); pkg.__path__ = [sys.argv[2]]; sys.modules["audiostory_pack"] = pkg
import torch
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_patcher
cm = importlib.import_module("audiostory_pack.nodes.comfy_models")
cpu = torch.device("cpu")
'''


def _run_in_comfy(body: str) -> dict:
    """Run ``body`` in a fresh Python with ComfyUI importable and the pack's ``comfy_models`` as ``cm``;
    it prints one JSON line. (Not in this process: the ComfyUI-free tests check that comfy is not imported.)"""
    need(comfy_server.comfyui_available(), "ComfyUI", comfy_server.comfyui_missing_hint())
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", _IN_COMFY + body, str(comfy_server.comfyui_dir()), str(ROOT)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pack_patchers_load_whole():
    """A plain ModelPatcher over non-comfy.ops layers loads none of them when given less memory than the
    model (they would stay on the CPU); the pack's FullLoadPatcher loads all of them, never unloads part,
    and its clones keep the behaviour."""
    r = _run_in_comfy(r'''
net = lambda: torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
plain = comfy.model_patcher.ModelPatcher(net(), load_device=cpu, offload_device=cpu)
full = cm.FullLoadPatcher(net(), load_device=cpu, offload_device=cpu)
size = full.model_size()
plain.partially_load(cpu, extra_memory=size // 3)
full.partially_load(cpu, extra_memory=size // 3)
print(json.dumps({"size": size, "plain": plain.loaded_size(), "full": full.loaded_size(),
                  "unloaded": full.partially_unload(cpu, size // 2), "clone": type(full.clone()).__name__}))
''')
    assert r["plain"] < r["size"]
    assert r["full"] == r["size"] and r["unloaded"] == 0 and r["clone"] == "FullLoadPatcher"


def test_core_whisper_encoder_fits_the_continuation_path():
    """Core's AUDIO_ENCODER (whisper3) is used as [1, frames, width] final states of the 16 kHz window;
    a wav2vec2 encoder is refused with what to load instead."""
    r = _run_in_comfy(r'''
class Whisper3(torch.nn.Module):          # the attributes of comfy.audio_encoders.whisper.WhisperLargeV3
    def __init__(self):
        super().__init__()
        self.feature_extractor = object()
        self.encoder = torch.nn.Module()
        self.encoder.layer_norm = torch.nn.LayerNorm(24)
class Encoder:                            # comfy.audio_encoders.audio_encoders.AudioEncoderModel
    def __init__(self, model):
        self.model, self.calls = model, []
    def encode_audio(self, audio, sample_rate):
        self.calls.append((tuple(audio.shape), sample_rate))
        return {"encoded_audio": torch.ones(1, 1500, 24, dtype=torch.float16)}
enc = Encoder(Whisper3())
w = cm.CoreWhisperEncoder(enc)
out = w(torch.zeros(16000 * 3))
try:
    cm.CoreWhisperEncoder(Encoder(torch.nn.Linear(2, 2)))
    refused = ""
except cm.InputError as e:
    refused = str(e)
print(json.dumps({"width": w.width, "shape": list(out.shape), "dtype": str(out.dtype), "calls": enc.calls,
                  "refused": refused}))
''')
    assert r["width"] == 24 and r["shape"] == [1, 1500, 24] and r["dtype"] == "torch.float32"
    assert r["calls"] == [[[1, 1, 48000], 16000]]
    assert "not Whisper" in r["refused"] and "AudioEncoderLoader" in r["refused"]


def test_unloading_one_model_keeps_the_others():
    """``unload_llm_after`` unloads the LLM through the public ``free_memory`` and leaves every other
    loaded model alone; the next ``load`` brings it back."""
    r = _run_in_comfy(r'''
a = cm.FullLoadPatcher(torch.nn.Linear(8, 8), load_device=cpu, offload_device=cpu)
b = cm.FullLoadPatcher(torch.nn.Linear(8, 8), load_device=cpu, offload_device=cpu)
cm.load([a, b], 1 << 20)
both = [cm.is_loaded(a), cm.is_loaded(b)]
first = cm.unload_patcher(a)
after = [cm.is_loaded(a), cm.is_loaded(b)]
again = cm.unload_patcher(a)
cm.load([a])
print(json.dumps({"both": both, "first": first, "after": after, "again": again, "reloaded": cm.is_loaded(a)}))
''')
    assert r == {"both": [True, True], "first": True, "after": [False, True], "again": False, "reloaded": True}


def test_planner_node_puts_the_earlier_chapter_before_the_new_instruction(shared_root):
    """Through the Planner node's own code (``run_planner``, ComfyUI importable): chapter 2's prompt is the
    chat of chapter 1 (its instruction, then the planner's answer with its reasoning and captions), then
    chapter 2's turn. Oracle: the tokenizer's own Qwen chat template for the system and user turns, and
    chapter 1's plan as the planner wrote it."""
    r = _run_in_comfy(r'''
from pathlib import Path
planner_node = importlib.import_module("audiostory_pack.nodes.planner")
values = importlib.import_module("audiostory_pack.nodes.values")
loading = importlib.import_module("audiostory_pack.audiostory_core.models.loading")
config = importlib.import_module("audiostory_pack.audiostory_core.models.config")
memory = importlib.import_module("audiostory_pack.audiostory_core.tasks.memory")
tokens = importlib.import_module("audiostory_pack.audiostory_core.stages.event_tokens")
pl = loading.load_models(config.locate(Path(%r)), dit=False, vae=False).planner
llm_p, heads_p = cm.planner_patchers(pl)             # as the Loader node wraps them
handle = values.PlannerHandle(planner=pl, null_embedding=torch.zeros(1), audio_seq_len=176,
                             llm_patcher=llm_p, heads_patcher=heads_p)
prompts = []
real = planner_node.generate_plan
def spy(*a, context=None, **k):
    res = real(*a, context=context, **k)
    prompts.append(res.prompt_ids)
    return res
planner_node.generate_plan = spy
one, _ = planner_node.run_planner(handle, "A fire truck leaves the station with sirens blaring.", 7.5, 256,
                                  None, None, "1")
toks = tokens.event_tokens(pl, one.plan, one)
mem = memory.StoryMemory().add_chapter(one.plan, toks.semantic, toks.residual)
try:                                  # 16 tokens: only the prompt matters here, not chapter 2's plan
    planner_node.run_planner(handle, "The fire truck arrives at a burning house.", 6.0, 16, mem, None, "2")
except planner_node.PlanError:
    pass
tok = pl.tokenizer
print(json.dumps({"one": tok.decode(prompts[0]), "two": tok.decode(prompts[1]),
                  "plan": json.loads(one.plan.to_json())}))
''' % str(shared_root))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_root / "tokenizer")
    system = {"role": "system", "content": "You are a helpful assistant."}
    i1 = "A fire truck leaves the station with sirens blaring. The total duration is 7.5 seconds."
    i2 = "The fire truck arrives at a burning house. The total duration is 6.0 seconds."
    turn = lambda *msgs: tok.apply_chat_template([system, *msgs], tokenize=False, add_generation_prompt=True)
    assert r["one"] == turn({"role": "user", "content": i1}) + "<|think|>"          # the official prompt
    two = r["two"]
    assert two.startswith(r["one"])                          # chapter 1's turn first, as chapter 1 saw it
    tail = turn({"role": "user", "content": i2})[len(turn()) - len("<|im_start|>assistant\n"):] + "<|think|>"
    assert two.endswith("<|im_end|>\n" + tail)               # then chapter 2's instruction, last
    answer = two[len(r["one"]):-len("<|im_end|>\n" + tail)]
    assert "<|im_start|>" not in answer and "<|im_end|>" not in answer      # one assistant turn in between
    plan = r["plan"]
    assert answer.startswith(plan["reasoning"].strip()[:40])
    where = [answer.index(f"<|gen|>{e['caption']}") for e in plan["events"]]
    assert where == sorted(where) and len(where) == len(plan["events"]) >= 1
    for e in plan["events"]:
        assert f"<timestamp>{e['duration']:g}" in answer or f"<timestamp>{e['duration']}" in answer


def test_library_sampler_runs_in_the_sampler_node(comfy, shared_pipeline):
    """sampler_name audiostory_heun (derived from the library's sampler list) runs the library's Heun, the one
    `--sampler heun` runs: the node's latents equal core ``sample_latents`` for the same plan, noise and seed."""
    from safetensors.torch import load_file

    from audiostory_core.stages.event_tokens import clip_seconds, event_tokens
    from audiostory_core.stages.plan import generate_plan
    from audiostory_core.stages.sampling import sample_latents

    api = {k: v for k, v in _api().items() if k in ("1", "2", "3", "4")}
    api["4"]["inputs"].update(sampler_name="audiostory_heun", steps=2, noise="seeded", seed=5)
    api["99"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "latents/heun"}}
    f = _ok(comfy.run(api))["outputs"]["99"]["latents"][0]
    got = load_file(str(comfy.root / f.get("type", "output") / f.get("subfolder", "") / f["filename"]))
    p, planner = shared_pipeline.models, api["2"]["inputs"]
    r = generate_plan(p.planner, planner["instruction"], planner["total_duration"])
    toks = event_tokens(p.planner, r.plan, r)
    expect = sample_latents(p.dit, toks.fused, p.null_embedding, clip_seconds(toks.durations, 3.0), steps=2,
                            guidance=api["4"]["inputs"]["cfg"], noise="seeded", seed=5, sampler="heun")
    assert (got["latent_tensor"].transpose(1, 2) - expect).abs().max().item() < 1e-4

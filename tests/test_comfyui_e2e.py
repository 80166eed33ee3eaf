"""End to end in a real ComfyUI (found through COMFYUI_DIR, default /opt/ComfyUI), on CPU.

One server is started for the module with this repository on the custom-nodes path and
``models/audiostory/AudioStory`` pointing at the shared tiny checkpoint, next to a tiny random Whisper
(``whisper-large-v3``) and VLM (``Qwen2.5-VL-3B-Instruct``) built here, and synthetic media in the input
folder. Checks: node registration and schemas, no import failure, templates, UI workflows vs
/object_info, every API workflow, reference parity with the CLI, sampler-swap numerics, FLAC metadata,
stream-copied mux, dubbing (scenes at the cut, events = scene lengths, byte-identical video, audio length
= video length within one audio frame), continuation (length = input + story - crossfade, input kept, the
Planner's own prompt), bad inputs, Cancel (/interrupt) and "Unload models" (/free).
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", "/opt/ComfyUI"))
PACK = "comfyui-audiostory"
NODE_IDS = ["AudioStoryModelLoader", "AudioStoryPlanner", "AudioStoryPlanFromJSON", "AudioStoryEventTokens",
            "AudioStoryConsistencyMemory", "AudioStorySampler", "AudioStoryDecode", "AudioStoryMuxVideo",
            "AudioStorySaveAudio"]
API_DIR = ROOT / "workflows" / "api"
UI_DIR = ROOT / "workflows"
THUNDER = "A thunderstorm rolls over a quiet farm at night."
OWN_WORKFLOWS = {"audiostory_text_to_long_audio", "audiostory_plan_editing", "audiostory_sampler_swap",
                 "audiostory_two_chapters_memory", "audiostory_mux_video", "audiostory_dubbing",
                 "audiostory_continuation"}
EXAMPLE_VIDEO_CUTS, EXAMPLE_VIDEO_SECONDS = [2.0], 4.0      # input/audiostory_example.mp4
EXAMPLE_AUDIO_SECONDS, EXAMPLE_AUDIO_RATE = 4.0, 44100     # input/audiostory_continue_example.wav

pytestmark = pytest.mark.skipif(not (COMFYUI_DIR / "main.py").is_file(),
                                reason=f"ComfyUI not found at {COMFYUI_DIR} (set COMFYUI_DIR to a ComfyUI >= 0.8 "
                                       "checkout; see DEVELOPERS.md)")


def _builder():
    spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "tools" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, base: str, root: Path, log: Path):
        self.base, self.root, self.log = base, root, log

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def submit(self, prompt: dict, extra: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": str(uuid.uuid4())}
        if extra:
            body["extra_data"] = extra
        code, r = self.post("/prompt", body)
        assert code == 200 and "prompt_id" in r, f"prompt rejected: {json.dumps(r)[:3000]}"
        return r["prompt_id"]

    def wait(self, pid: str, timeout: float = 300) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h and h[pid].get("status", {}).get("status_str") in ("success", "error"):
                return h[pid]
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")

    def run(self, prompt: dict, extra: dict | None = None, timeout: float = 300) -> dict:
        return self.wait(self.submit(prompt, extra), timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _error_of(entry: dict) -> str:
    for kind, msg in entry["status"].get("messages", []):
        if kind == "execution_error":
            return f"{msg.get('node_type')}: {msg.get('exception_type')}: {msg.get('exception_message')}\n{''.join(msg.get('traceback', []))[-3000:]}"
    return json.dumps(entry["status"])[:2000]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, shared_root):
    from e2e_media import make_wav
    from synthetic_media import write_video
    from tiny_media_models import build_tiny_vlm, build_tiny_whisper

    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(ROOT, target_is_directory=True)
    models = base / "models" / "audiostory"
    models.mkdir(parents=True)
    (models / "AudioStory").symlink_to(shared_root, target_is_directory=True)
    # tiny random Whisper and VLM under the names the shipped workflows use (resolved in models/audiostory/)
    build_tiny_whisper(models / "whisper-large-v3")
    build_tiny_vlm(models / "Qwen2.5-VL-3B-Instruct", shared_root / "Qwen2.5-tiny-Instruct")
    for d in ("input", "output", "temp", "cache", "user"):
        (base / d).mkdir()
    # hard cut at a known time and an existing 440 Hz AAC track (replaced by the dubbing workflow)
    write_video(base / "input" / "audiostory_example.mp4", cuts=EXAMPLE_VIDEO_CUTS, duration=EXAMPLE_VIDEO_SECONDS)
    make_wav(base / "input" / "audiostory_continue_example.wav", seconds=EXAMPLE_AUDIO_SECONDS,
             rate=EXAMPLE_AUDIO_RATE)
    (base / "extra_model_paths.yaml").write_text(
        f"audiostory_e2e:\n  base_path: {base}\n  audiostory: models/audiostory\n  custom_nodes: custom_nodes\n")
    port = _free_port()
    log = base / "comfyui.log"
    env = dict(os.environ, AUDIOSTORY_CACHE=str(base / "cache"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(COMFYUI_DIR / "main.py"), "--cpu", "--disable-api-nodes", "--listen", "127.0.0.1",
           "--port", str(port), "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
           "--output-directory", str(base / "output"), "--input-directory", str(base / "input"),
           "--temp-directory", str(base / "temp"), "--user-directory", str(base / "user"),
           "--database-url", "sqlite:///:memory:"]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=str(base), stdout=fh, stderr=subprocess.STDOUT, env=env)
    c = Comfy(f"http://127.0.0.1:{port}", base, log)
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            fh.close()
            pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            c.get("/system_stats")
            break
        except Exception:
            if time.time() - t0 > 180:
                proc.kill()
                pytest.fail(f"ComfyUI did not start in 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
    c.object_info = c.get("/object_info")
    yield c
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    fh.close()


@pytest.fixture(scope="module")
def executed(comfy):
    """Run every API workflow once (in name order); returns {name: history entry}."""
    ui = {p.stem: json.loads(p.read_text()) for p in UI_DIR.glob("*.json")}
    out = {}
    for p in sorted(API_DIR.glob("*.json")):
        api = json.loads(p.read_text())
        missing = sorted({n["class_type"] for n in api.values()} - set(comfy.object_info))
        if missing:
            out[p.stem] = ("skipped", f"node types not registered: {', '.join(missing)}")
            continue
        extra = {"extra_pnginfo": {"workflow": ui[p.stem]}} if p.stem in ui else None
        t0 = time.time()
        out[p.stem] = comfy.run(api, extra)
        print(f"\n{p.stem}: {out[p.stem]['status']['status_str']} in {time.time() - t0:.1f} s")
    return out


def _ui_text(entry: dict, node_id: str) -> str:
    return entry["outputs"][node_id]["text"][0]


def _files(comfy, entry) -> list[Path]:
    files = []
    for node_out in entry["outputs"].values():
        for key in ("audio", "images", "latents", "gifs", "video"):
            for f in node_out.get(key, []) if isinstance(node_out.get(key), list) else []:
                if isinstance(f, dict) and "filename" in f:
                    files.append(comfy.root / f.get("type", "output") / f.get("subfolder", "") / f["filename"])
    return files


# ---------------------------------------------------------------- registration
def test_nodes_registered_without_import_failure(comfy):
    missing = [n for n in NODE_IDS if n not in comfy.object_info]
    assert not missing, f"not registered: {missing}"
    log = comfy.log_text()
    assert "IMPORT FAILED" not in log, log[-4000:]
    assert PACK in log and "Cannot import" not in log


def test_schemas(comfy):
    oi = comfy.object_info
    assert oi["AudioStoryModelLoader"]["output"] == ["AUDIOSTORY_PLANNER", "MODEL", "VAE"]
    assert oi["AudioStoryModelLoader"]["input"]["required"]["root"][1]["options"] == ["AudioStory"]
    assert oi["AudioStoryPlanner"]["output"] == ["STORY_PLAN", "STRING"]
    assert "memory" in oi["AudioStoryPlanner"]["input"]["optional"]
    assert oi["AudioStoryPlanner"]["input"]["optional"]["audio_context"][0] == "AUDIOSTORY_AUDIO_CONTEXT"
    assert oi["AudioStoryPlanFromJSON"]["output"] == ["STORY_PLAN", "STRING"]
    assert oi["AudioStoryEventTokens"]["output"][:4] == ["AUDIOSTORY_EVENTS", "CONDITIONING", "CONDITIONING",
                                                         "STORY_MEMORY"]
    assert oi["AudioStoryConsistencyMemory"]["output"] == ["STORY_MEMORY"]
    s = oi["AudioStorySampler"]["input"]
    assert s["required"]["sampler_name"][1]["options"][0] == "reference_euler"
    assert "euler" in s["required"]["sampler_name"][1]["options"] and "simple" in s["required"]["scheduler"][1]["options"]
    assert s["optional"]["sampler"][0] == "SAMPLER" and s["optional"]["sigmas"][0] == "SIGMAS"
    assert oi["AudioStorySampler"]["output"] == ["LATENT"]
    assert oi["AudioStoryDecode"]["output"] == ["AUDIO", "AUDIO"]
    assert oi["AudioStoryMuxVideo"]["output"] == ["VIDEO"]
    assert oi["AudioStorySaveAudio"]["output_node"] is True
    for n in NODE_IDS:
        assert oi[n]["description"], f"{n} has no description"


def test_templates_are_listed(comfy):
    t = comfy.get("/workflow_templates")
    names = set(t.get(PACK, []))
    expected = {p.stem for p in UI_DIR.glob("*.json")}
    assert expected and expected <= names, t
    for name in expected:
        with urllib.request.urlopen(f"{comfy.base}/api/workflow_templates/{PACK}/{name}.json") as r:
            assert json.loads(r.read())["nodes"]


# ---------------------------------------------------------------- UI workflows
def test_ui_workflows_match_object_info(comfy):
    b = _builder()
    ui_files = sorted(UI_DIR.glob("*.json"))
    assert ui_files
    for p in ui_files:
        wf = json.loads(p.read_text())
        ids = {n["id"]: n for n in wf["nodes"]}
        for n in wf["nodes"]:
            assert n["type"] in comfy.object_info, f"{p.name}: unknown node type {n['type']}"
            info = comfy.object_info[n["type"]]
            assert len(n["widgets_values"]) == b.expected_widget_count(info), \
                f"{p.name}: {n['type']} has {len(n['widgets_values'])} widget values, expected " \
                f"{b.expected_widget_count(info)}"
            names = b.input_names(info)
            for inp in n["inputs"]:
                assert inp["name"] in names, f"{p.name}: {n['type']} has no input {inp['name']}"
            assert len(n["outputs"]) == len(info["output"])
        for link_id, src, slot, dst, dslot, typ in wf["links"]:
            assert src in ids and dst in ids
            out_type = comfy.object_info[ids[src]["type"]]["output"][slot]
            assert typ == out_type
            assert ids[dst]["inputs"][dslot]["link"] == link_id
        # the UI twin describes the same graph as the API file
        api_path = API_DIR / p.name
        assert api_path.is_file(), f"{p.name} has no API twin"
        api = json.loads(api_path.read_text())
        assert sorted(n["type"] for n in wf["nodes"]) == sorted(v["class_type"] for v in api.values())
        assert len(wf["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())


# ---------------------------------------------------------------- API workflows
@pytest.mark.parametrize("name", sorted(p.stem for p in API_DIR.glob("*.json")))
def test_api_workflow_executes(comfy, executed, name):
    entry = executed[name]
    if isinstance(entry, tuple):
        pytest.skip(entry[1])
    if name not in OWN_WORKFLOWS and entry["status"]["status_str"] == "error" and "ModelFilesError" in _error_of(entry):
        pytest.skip(f"{name} needs model files that the tiny fixture lacks: {_error_of(entry).splitlines()[0]}")
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    files = _files(comfy, entry)
    assert files, f"{name} wrote no file: {entry['outputs']}"
    for f in files:
        assert f.is_file() and f.stat().st_size > 0, f
    assert not list((comfy.root / "output").rglob("*.part*"))


def test_reference_matches_cli(comfy, executed, shared_root, tmp_path):
    import soundfile as sf

    entry = executed["audiostory_text_to_long_audio"]
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    wav = [f for f in _files(comfy, entry) if f.suffix == ".wav"][0]
    out = tmp_path / "cli.wav"
    env = dict(os.environ, AUDIOSTORY_CACHE=str(comfy.root / "cache"))
    subprocess.run([sys.executable, "-m", "audiostory_core", "generate", "--models", str(shared_root),
                    "--instruction", THUNDER, "--duration", "12", "--out", str(out), "--noise", "reference",
                    "--steps", "50", "--guidance", "4.0", "--quiet", "--dump", str(tmp_path / "dump")],
                   cwd=str(ROOT), env=env, check=True, capture_output=True)
    a, sra = sf.read(str(wav), dtype="float32")
    b, srb = sf.read(str(out), dtype="float32")
    assert sra == srb == 32000 and a.shape == b.shape
    assert np.abs(a - b).max() == 0.0, f"node path differs from the CLI by {np.abs(a - b).max()}"


def _latent(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"]


def test_sampler_swap_matches_reference(comfy, executed, shared_pipeline):
    """KSampler(euler, simple, 50, cfg 4) and SamplerCustomAdvanced reproduce the reference Euler."""
    from audiostory_core.stages.plan import generate_plan
    from audiostory_core.stages.event_tokens import clip_seconds, event_tokens
    from audiostory_core.stages.sampling import sample_latents

    entry = executed["audiostory_sampler_swap"]
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    lat = {f.name.split("_000")[0]: f for f in _files(comfy, entry) if f.suffix == ".latent"}
    ks, sca = _latent(lat["audiostory_ksampler"]), _latent(lat["audiostory_custom_advanced"])
    p = shared_pipeline.models
    r = generate_plan(p.planner, THUNDER, 12.0)
    toks = event_tokens(p.planner, r.plan, r)
    secs = clip_seconds(toks.durations, 3.0)
    e, t = toks.fused.shape[0], p.dit.config.audio_seq_len
    # KSampler's noise: torch.manual_seed(seed) + randn in the latent's [E, 64, T] layout (comfy.sample.prepare_noise)
    comfy_noise = torch.randn(e, 64, t, generator=torch.manual_seed(0))
    expect_ks = sample_latents(p.dit, toks.fused, p.null_embedding, secs, steps=50, guidance=4.0,
                               initial_noise=comfy_noise.transpose(1, 2))
    expect_ref = sample_latents(p.dit, toks.fused, p.null_embedding, secs, steps=50, guidance=4.0, noise="reference")
    d_ks = (ks.transpose(1, 2) - expect_ks).abs().max().item()
    d_sca = (sca.transpose(1, 2) - expect_ref).abs().max().item()
    scale = expect_ref.abs().max().item()
    print(f"\nsampler swap: KSampler vs reference Euler max|d|={d_ks:.2e}, SamplerCustomAdvanced+AudioStoryNoise "
          f"vs reference max|d|={d_sca:.2e} (latent max {scale:.2f})")
    assert d_ks < 1e-4 and d_sca < 1e-4


def test_flac_carries_workflow(comfy, executed):
    import av

    entry = executed["audiostory_plan_editing"]
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    flac = [f for f in _files(comfy, entry) if f.suffix == ".flac"][0]
    with av.open(str(flac)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
    assert json.loads(tags["prompt"])["2"]["class_type"] == "AudioStoryPlanFromJSON"
    assert json.loads(tags["workflow"])["nodes"]


def test_memory_file_and_mux_stream_copy(comfy, executed):
    import av

    from audiostory_core.tasks.memory import StoryMemory

    mem = StoryMemory.load(comfy.root / "output" / "audiostory" / "memory" / "two_chapters.safetensors")
    assert mem.chapter_count == 1 and len(mem.events) == 3
    entry = executed["audiostory_mux_video"]
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    video = [f for f in _files(comfy, entry) if f.suffix == ".mp4"][0]

    def packets(path):
        with av.open(str(path)) as c:
            return [bytes(p) for p in c.demux(c.streams.video[0]) if p.dts is not None]

    assert packets(video) == packets(comfy.root / "input" / "audiostory_example.mp4")
    with av.open(str(video)) as c:
        assert len(c.streams.audio) == 1


# ---------------------------------------------------------------- dubbing and continuation
def _video_packets(path) -> list[bytes]:
    import av

    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def test_dubbing_workflow_follows_the_cuts_and_keeps_the_video(comfy, executed):
    """Scenes at the cut, one event per scene, the video stream copied byte for byte, the new audio
    starting at the first frame and ending at the video length within one audio frame."""
    import av

    from audiostory_core.media.video import probe_video

    entry = executed["audiostory_dubbing"]
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    scenes = json.loads(_ui_text(entry, "3"))["scenes"]
    bounds = [0.0] + EXAMPLE_VIDEO_CUTS + [EXAMPLE_VIDEO_SECONDS]
    assert [(s["start"], s["end"]) for s in scenes] == list(zip(bounds[:-1], bounds[1:]))
    captions = json.loads(_ui_text(entry, "4"))
    assert len(captions) == len(scenes) and all(isinstance(c, str) and c for c in captions)   # from the VLM
    plan = json.loads(_ui_text(entry, "5"))
    assert [e["duration"] for e in plan["events"]] == [s["end"] - s["start"] for s in scenes]
    src = comfy.root / "input" / "audiostory_example.mp4"
    out = [f for f in _files(comfy, entry) if f.suffix == ".mp4"]
    assert len(out) == 1, _files(comfy, entry)
    assert _video_packets(out[0]) == _video_packets(src)
    length = probe_video(src).duration
    with av.open(str(out[0])) as c:
        assert len(c.streams.audio) == 1
        st = c.streams.audio[0]
        frame = (st.codec_context.frame_size or 1024) / st.rate
        frames = list(c.decode(st))
        first = frames[0].pts * float(frames[0].time_base)
        samples = sum(f.samples for f in frames)
        codec, rate = st.codec_context.name, st.rate
    seconds = samples / rate
    print(f"\ndubbing: scenes {[(s['start'], s['end']) for s in scenes]}, events "
          f"{[e['duration'] for e in plan['events']]}, {len(_video_packets(src))} video packets identical, "
          f"audio {codec} {rate} Hz {seconds:.4f} s vs video {length:.4f} s (|d| {abs(seconds - length) * 1e3:.1f} ms, "
          f"one frame {frame * 1e3:.1f} ms), first sample at {first} s")
    assert codec == "aac" and first == 0.0
    assert abs(seconds - length) <= frame


def test_continuation_workflow_joins_input_and_continuation(comfy, executed):
    """Output = input + continuation - crossfade, starting with the input untouched; and the Planner
    builds the audio prompt for ITS instruction and duration, whatever the Audio Context node was given."""
    import soundfile as sf

    from audiostory_core.stages.audio import resample

    entry = executed["audiostory_continuation"]
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    api = json.loads((API_DIR / "audiostory_continuation.json").read_text())
    sr = api["7"]["inputs"]["sample_rate"]
    crossfade = api["8"]["inputs"]["crossfade"]
    assert "understanding: whisper" in _ui_text(entry, "3")
    plan = json.loads(_ui_text(entry, "4"))
    story_seconds = sum(e["duration"] for e in plan["events"])
    flac = [f for f in _files(comfy, entry) if f.suffix == ".flac"]
    assert len(flac) == 1
    out, out_sr = sf.read(str(flac[0]), dtype="float32", always_2d=True)
    src, src_sr = sf.read(str(comfy.root / "input" / "audiostory_continue_example.wav"), dtype="float32",
                          always_2d=True)
    inp = resample(torch.from_numpy(src.T.copy()), src_sr, sr)
    expected = inp.shape[-1] + round(story_seconds * sr) - round(crossfade * sr)
    print(f"\ncontinuation: input {inp.shape[-1]} + story {round(story_seconds * sr)} ({story_seconds} s, "
          f"{len(plan['events'])} events) - crossfade {round(crossfade * sr)} = {expected} samples; "
          f"written {out.shape[0]} at {out_sr} Hz")
    assert out_sr == sr and out.shape[0] == expected
    head = inp.shape[-1] - round(crossfade * sr)
    assert np.abs(out[:head].T - inp[:, :head].numpy()).max() < 1e-4          # the input, untouched

    # the Audio Context node with another instruction/duration: the Planner's prompt, hence the audio, is the same
    api["3"]["inputs"].update(instruction="", total_duration=30.0)
    api["9"]["inputs"]["filename_prefix"] = "audio/AudioStory_continuation_unbound"
    again = comfy.run(api)
    assert again["status"]["status_str"] == "success", _error_of(again)
    assert json.loads(_ui_text(again, "4")) == plan
    other, _ = sf.read(str([f for f in _files(comfy, again) if f.suffix == ".flac"][0]), dtype="float32",
                       always_2d=True)
    assert np.array_equal(other, out)


# ---------------------------------------------------------------- errors, cancel, unload
def _reference_prompt(**sampler):
    api = json.loads((API_DIR / "audiostory_text_to_long_audio.json").read_text())
    api["4"]["inputs"].update(sampler)
    return api


def test_bad_inputs_are_reported(comfy):
    api = json.loads((API_DIR / "audiostory_plan_editing.json").read_text())
    api["2"]["inputs"]["json"] = '{\n  "events": [,]\n}'
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400 and "line 2, column" in json.dumps(r), r

    api = _reference_prompt()
    api["2"]["inputs"]["instruction"] = "   "
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400 and "instruction is empty" in json.dumps(r), r

    api = _reference_prompt()
    api["1"]["inputs"]["root"] = "NoSuchModel"
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400 and "NoSuchModel" in json.dumps(r) and "AudioStory" in json.dumps(r), r

    api = json.loads((API_DIR / "audiostory_plan_editing.json").read_text())
    plan = json.loads(api["2"]["inputs"]["json"])
    plan["events"][0]["duration"] = 7.5
    api["2"]["inputs"]["json"] = json.dumps(plan)
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "error" and "longer than one clip can hold" in _error_of(entry)


def test_cancel_stops_within_a_step(comfy):
    prefix = f"audiostory/cancelled_{uuid.uuid4().hex[:6]}"
    api = _reference_prompt(steps=1000, seed=7)
    api["6"]["inputs"]["filename_prefix"] = prefix
    pid = comfy.submit(api)
    t0 = time.time()
    while time.time() - t0 < 120:
        q = comfy.get("/queue")
        if q["queue_running"]:
            break
        time.sleep(0.1)
    time.sleep(2.0)
    t_int = time.time()
    code, _ = comfy.post("/interrupt", {})
    assert code == 200
    entry = comfy.wait(pid, timeout=60)
    stopped = time.time() - t_int
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    assert stopped < 10, f"took {stopped:.1f} s to stop"
    assert not list((comfy.root / "output").rglob(Path(prefix).name + "*"))


def test_unload_models_frees_them(comfy):
    log_count = lambda: comfy.log_text().count("Requested to load AudioStoryDiTModel")  # noqa: E731
    assert comfy.run(_reference_prompt(seed=101))["status"]["status_str"] == "success"
    before = log_count()
    assert comfy.run(_reference_prompt(seed=102))["status"]["status_str"] == "success"
    assert log_count() == before, "the DiT was reloaded although nothing unloaded it"
    code, _ = comfy.post("/free", {"unload_models": True})
    assert code == 200
    # the worker applies the flag after its next wake-up (a prompt or the post-prompt gc timeout)
    assert comfy.run(_reference_prompt(seed=103))["status"]["status_str"] == "success"
    assert comfy.run(_reference_prompt(seed=104))["status"]["status_str"] == "success"
    assert log_count() > before, "models were not unloaded by /free"

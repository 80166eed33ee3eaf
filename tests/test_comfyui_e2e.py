"""End to end in a real ComfyUI (``COMFYUI_DIR``, default ``../shared/vendor/ComfyUI``), on CPU.

One server is started for the module (``tests/comfy_server.py``: a temporary copy of ComfyUI, every
writable folder in a temporary base directory) with this repository on the custom-nodes path and
``models/audiostory/AudioStory`` pointing at the shared tiny checkpoint, next to a tiny random Whisper
(``whisper-large-v3``) and VLM (``Qwen2.5-VL-3B-Instruct``) built here. The input folder starts empty: the
pack copies its bundled example media there itself, as on a fresh install. Checks: all node ids registered,
no import failure, templates, UI workflows vs /object_info, every API workflow, reference parity with the
CLI (default and the ``reference`` switch), sampler-swap numerics, FLAC metadata, stream-copied mux, dubbing (scenes at the cut, events = scene
lengths, byte-identical video, audio length = video length within one audio frame), continuation (length =
input + story - crossfade, input kept, the Planner's own prompt), bad inputs, Cancel (/interrupt) and
"Unload models" (/free).
"""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import comfy_server
from comfy_server import NODE_IDS, PACK

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "workflows" / "api"
UI_DIR = ROOT / "workflows"
THUNDER = "A thunderstorm rolls over a quiet farm at night."
BUILD = comfy_server.tool("build_workflows")
MEDIA = comfy_server.tool("make_example_media")
OWN_WORKFLOWS = set(BUILD.workflows())                  # API names; UI files are BUILD.ui_file_name(name)
EXAMPLE_VIDEO_CUTS, EXAMPLE_VIDEO_SECONDS = MEDIA.VIDEO_CUTS, MEDIA.VIDEO_SECONDS
EXAMPLE_AUDIO_SECONDS, EXAMPLE_AUDIO_RATE = MEDIA.AUDIO_SECONDS, MEDIA.AUDIO_RATE
_error_of = comfy_server.error_of
# API workflows run by another module on its own server: the training template needs a VAE whose encoder fits
# the DiT (the shared fixture's encoder writes 2 latent channels, its DiT takes 64), so
# test_training_comfyui.py runs it on a root with a VAE that encodes 64 channels.
RUN_ELSEWHERE = {"audiostory_train_lora": "test_training_comfyui.py"}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, shared_root):
    yield from comfy_server.serve(tmp_path_factory.mktemp("comfy"), shared_root)


def _ui_workflow(name: str) -> dict:
    return json.loads((UI_DIR / BUILD.ui_file_name(name)).read_text())


@pytest.fixture(scope="module")
def executed(comfy):
    """Run every API workflow once (in name order); returns {name: history entry}."""
    out = {}
    for p in sorted(API_DIR.glob("*.json")):
        if p.stem in RUN_ELSEWHERE:
            continue
        api = json.loads(p.read_text())
        missing = sorted({n["class_type"] for n in api.values()} - set(comfy.object_info))
        if missing:
            out[p.stem] = ("missing", f"node types not registered: {', '.join(missing)}")
            continue
        extra = {"extra_pnginfo": {"workflow": _ui_workflow(p.stem)}} if p.stem in OWN_WORKFLOWS else None
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
def test_all_nodes_registered_without_import_failure(comfy):
    missing = [n for n in NODE_IDS if n not in comfy.object_info]
    assert not missing, f"not registered: {missing}\n{comfy.startup_log[-4000:]}"
    assert not comfy.import_failures(), "\n".join(comfy.import_failures()) + "\n" + comfy.startup_log[-4000:]
    assert PACK in comfy.startup_log
    ours = sorted(k for k, v in comfy.object_info.items() if v.get("python_module", "").endswith(PACK))
    assert set(NODE_IDS) <= set(ours), ours


def test_import_failure_lines_are_caught(comfy):
    """The pack's own failure line (nodes/__init__.py) and ComfyUI's are recognised by the check above."""
    c = comfy_server.Comfy(comfy.base, comfy.root, comfy.log, comfy.proc)
    c.startup_log = ("ERROR AudioStory: nodes/video.py failed to import; its nodes are unavailable\n"
                     "   0.1 seconds (IMPORT FAILED): /x/custom_nodes/comfyui-audiostory\n")
    assert len(c.import_failures()) == 2
    assert "AudioStory: nodes/%s.py failed to import" in (ROOT / "nodes" / "__init__.py").read_text()


def test_example_media_installed_by_the_pack(comfy):
    """A fresh input folder gets the bundled examples (the shipped workflows load them by these names)."""
    for name in ("audiostory_example.mp4", "audiostory_continue_example.wav"):
        copied = comfy.root / "input" / name
        assert copied.is_file(), f"the pack did not copy {name} into the input folder"
        assert copied.read_bytes() == (ROOT / "example_media" / name).read_bytes()
    assert "CC0" in (ROOT / "example_media" / "LICENSE.md").read_text()


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


def test_templates_are_listed_with_thumbnails(comfy):
    """ComfyUI 0.8 lists every top-level workflows/*.json under the pack (the file name is the card title
    in frontend 1.35) and the card image is <name>.jpg next to it; the API twins stay out of the list."""
    t = comfy.get("/workflow_templates")
    names = set(t.get(PACK, []))
    expected = {BUILD.ui_file_name(n)[:-len(".json")] for n in OWN_WORKFLOWS}
    assert names == expected, t
    for name in expected:
        url = f"{comfy.base}/api/workflow_templates/{PACK}/{urllib.request.quote(name)}"
        with urllib.request.urlopen(url + ".json") as r:
            assert json.loads(r.read())["nodes"]
        with urllib.request.urlopen(url + ".jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read(3) == b"\xff\xd8\xff"


# ---------------------------------------------------------------- UI workflows
def test_ui_workflows_match_object_info(comfy):
    b = BUILD
    for name in sorted(OWN_WORKFLOWS):
        wf = _ui_workflow(name)
        ids = {n["id"]: n for n in wf["nodes"]}
        notes = [n for n in wf["nodes"] if n["type"] in b.FRONTEND_ONLY_NODES]
        assert notes and all("models/audiostory/" in n["widgets_values"][0] for n in notes), f"{name}: no Note"
        for n in wf["nodes"]:
            if n["type"] in b.FRONTEND_ONLY_NODES:
                continue
            assert n["type"] in comfy.object_info, f"{name}: unknown node type {n['type']}"
            info = comfy.object_info[n["type"]]
            assert len(n["widgets_values"]) == b.expected_widget_count(info), \
                f"{name}: {n['type']} has {len(n['widgets_values'])} widget values, expected " \
                f"{b.expected_widget_count(info)}"
            names = b.input_names(info)
            for inp in n["inputs"]:
                assert inp["name"] in names, f"{name}: {n['type']} has no input {inp['name']}"
            assert len(n["outputs"]) == len(info["output"])
        for link_id, src, slot, dst, dslot, typ in wf["links"]:
            assert src in ids and dst in ids
            out_type = comfy.object_info[ids[src]["type"]]["output"][slot]
            assert typ == out_type
            assert ids[dst]["inputs"][dslot]["link"] == link_id
        # the UI twin describes the same graph as the API file
        api = json.loads((API_DIR / f"{name}.json").read_text())
        assert sorted(n["type"] for n in wf["nodes"] if n["type"] not in b.FRONTEND_ONLY_NODES) == \
            sorted(v["class_type"] for v in api.values())
        assert len(wf["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())
        titles = [n.get("title") for n in wf["nodes"] if n["type"] not in b.FRONTEND_ONLY_NODES]
        assert all(titles) and len(set(titles)) == len(titles), f"{name}: titles missing or repeated: {titles}"
        assert wf["groups"], f"{name}: no stage groups"


def test_ui_workflows_are_regenerated(comfy, tmp_path):
    """The committed UI files are exactly what tools/build_workflows.py writes from this ComfyUI's schemas."""
    BUILD.main(["--object-info", comfy.base, "--out", str(tmp_path), "--no-thumbnails"])
    for name in sorted(OWN_WORKFLOWS):
        fresh = json.loads((tmp_path / BUILD.ui_file_name(name)).read_text())
        assert fresh == _ui_workflow(name), f"{BUILD.ui_file_name(name)} is stale: run tools/build_workflows.py"
        assert json.loads((tmp_path / "api" / f"{name}.json").read_text()) == \
            json.loads((API_DIR / f"{name}.json").read_text())


# ---------------------------------------------------------------- API workflows
@pytest.mark.parametrize("name", sorted(p.stem for p in API_DIR.glob("*.json") if p.stem not in RUN_ELSEWHERE))
def test_api_workflow_executes(comfy, executed, name):
    entry = executed[name]
    assert not isinstance(entry, tuple), f"{name}: {entry[1]}"
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    files = _files(comfy, entry)
    assert files, f"{name} wrote no file: {entry['outputs']}"
    for f in files:
        assert f.is_file() and f.stat().st_size > 0, f
    assert not list((comfy.root / "output").rglob("*.part*"))


def _cli_story(shared_root, env, out: Path, *extra) -> Path:
    subprocess.run([sys.executable, "-m", "audiostory_core", "generate", "--models", str(shared_root),
                    "--instruction", THUNDER, "--duration", "12", "--out", str(out), "--noise", "seeded", "--seed", "0",
                    "--steps", "50", "--guidance", "4.0", "--quiet", *extra],
                   cwd=str(ROOT), env=env, check=True, capture_output=True)
    return out


def test_default_and_reference_match_cli(comfy, shared_root, tmp_path):
    """The shipped workflow (default: fast paths) equals the CLI's default run bit for bit; the same graph
    with ``reference`` on (Planner, Sampler, Decode) equals ``generate --reference`` bit for bit; and the
    two differ only by float rounding (the fast paths' tolerance, tests/test_fast_paths.py)."""
    import soundfile as sf

    def run(prefix: str, reference: bool) -> Path:
        api = json.loads((API_DIR / "audiostory_text_to_long_audio.json").read_text())
        if reference:
            for node in ("2", "4", "5"):                  # Planner, Sampler, Decode
                api[node]["inputs"]["reference"] = True
        api["6"]["inputs"]["filename_prefix"] = f"audiostory/{prefix}"
        entry = comfy.run(api)
        assert entry["status"]["status_str"] == "success", _error_of(entry)
        return [f for f in _files(comfy, entry) if f.suffix == ".wav"][0]

    wav, ref_wav = run("default_switch", False), run("reference_switch", True)
    env = dict(os.environ, AUDIOSTORY_CACHE=str(comfy.root / "cache"))
    cli = _cli_story(shared_root, env, tmp_path / "cli.wav")
    cli_ref = _cli_story(shared_root, env, tmp_path / "cli_ref.wav", "--reference")
    (a, sra), (b, srb) = sf.read(str(wav), dtype="float32"), sf.read(str(cli), dtype="float32")
    (ra, _), (rb, _) = sf.read(str(ref_wav), dtype="float32"), sf.read(str(cli_ref), dtype="float32")
    assert sra == srb == 32000 and a.shape == b.shape == ra.shape == rb.shape
    assert np.abs(a - b).max() == 0.0, f"default node path differs from the CLI by {np.abs(a - b).max()}"
    assert np.abs(ra - rb).max() == 0.0, f"reference node path differs from --reference by {np.abs(ra - rb).max()}"
    assert np.linalg.norm(a - ra) / np.linalg.norm(ra) < 1e-4


def test_the_seed_widget_changes_the_story(comfy, executed):
    """The shipped workflows use seeded noise: another seed gives another story (with reference noise every
    seed gave the same file)."""
    import soundfile as sf

    first = [f for f in _files(comfy, executed["audiostory_text_to_long_audio"]) if f.suffix == ".wav"][0]
    api = json.loads((API_DIR / "audiostory_text_to_long_audio.json").read_text())
    api["4"]["inputs"]["seed"] = 1
    api["6"]["inputs"]["filename_prefix"] = "audiostory/seed_1"
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    other = [f for f in _files(comfy, entry) if f.suffix == ".wav"][0]
    a, b = sf.read(str(first), dtype="float32")[0], sf.read(str(other), dtype="float32")[0]
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3


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
    api["4"]["inputs"].update({"noise": "reference", **sampler})
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



def test_an_incomplete_model_root_is_named_before_anything_runs(comfy, shared_root):
    """A root holding only the AudioStory checkpoint is listed, but the prompt is refused at validation,
    naming the missing component and a fetch command that works from ComfyUI's folder."""
    broken = comfy.root / "models" / "audiostory" / "OnlyCheckpoint"
    (broken / "AudioStory-3B").mkdir(parents=True)
    for name in ("config.yaml", "pytorch_model.bin"):
        (broken / "AudioStory-3B" / name).symlink_to(shared_root / "audiostory" / name)
    try:
        api = _reference_prompt()
        api["1"]["inputs"]["root"] = "OnlyCheckpoint"
        code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
        text = json.dumps(r)
        assert code == 400 and "OnlyCheckpoint" in text and "Flux_detokenizer" in text, r
        assert "Download models" in text and "custom_nodes/comfyui-audiostory/download_models.py" in text, r
    finally:
        shutil.rmtree(broken)


def test_an_api_client_addresses_nodes_by_title(comfy):
    """What a third-party API client does with an API twin: find nodes by ``_meta.title`` (as
    comfy-api-simplified does), set widgets, queue it, and find the file it saved."""
    def by_title(prompt: dict, title: str) -> dict:
        found = [node for node in prompt.values() if node["_meta"]["title"] == title]
        assert len(found) == 1, f"{len(found)} nodes titled {title!r}"
        return found[0]

    prompt = json.loads((API_DIR / "audiostory_simple.json").read_text())
    prefix = f"audiostory/api_client_{uuid.uuid4().hex[:6]}"
    by_title(prompt, "AudioStory (simple)")["inputs"].update(instruction=THUNDER, duration=7.5, seed=3)
    by_title(prompt, "Save story (WAV)")["inputs"]["filename_prefix"] = prefix
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    import soundfile as sf

    wav = list((comfy.root / "output").glob(f"{prefix}*.wav"))
    assert len(wav) == 1, wav
    # the story is as long as the plan the (expanded) Planner wrote for this instruction and duration
    plans = [json.loads(t) for out in entry["outputs"].values() for t in out.get("text", []) if '"events"' in t]
    assert len(plans) == 1 and plans[0]["instruction"].startswith(THUNDER) and "7.5 seconds" in plans[0]["instruction"]
    info = sf.info(str(wav[0]))
    assert abs(info.frames - sum(e["duration"] for e in plans[0]["events"]) * info.samplerate) <= 1, info

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


# ---------------------------------------------------------------- save: formats and loudness
def _save_prompt(fmt: str, prefix: str, **level) -> dict:
    return {"1": {"class_type": "LoadAudio", "inputs": {"audio": "audiostory_continue_example.wav"}},
            "2": {"class_type": "AudioStorySaveAudio",
                  "inputs": {"audio": ["1", 0], "filename_prefix": prefix, "format": fmt, **level}}}


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_save_writes_mp3_and_opus_through_core_with_its_metadata(comfy, fmt):
    import av

    entry = comfy.run(_save_prompt(fmt, f"audiostory/save_{fmt}", quality="128k"),
                      {"extra_pnginfo": {"workflow": {"nodes": [{"id": 2}]}}})
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    (path,) = _files(comfy, entry)
    assert path.suffix == f".{fmt}" and path.is_file()
    assert entry["outputs"]["2"]["audio"][0]["type"] == "output"     # core's SavedResult: the player plays it
    with av.open(str(path)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        if not tags:                                                # Ogg keeps tags on the stream
            tags = {k.lower(): v for k, v in c.streams.audio[0].metadata.items()}
        rate = c.streams.audio[0].rate
    assert json.loads(tags["prompt"])["2"]["class_type"] == "AudioStorySaveAudio"
    assert json.loads(tags["workflow"])["nodes"]
    assert rate == (48000 if fmt == "opus" else EXAMPLE_AUDIO_RATE)


def _decode(path: Path) -> tuple[torch.Tensor, int]:
    """[C, S] float samples and the rate of an audio file, decoded by FFmpeg (PyAV)."""
    import av
    import numpy as np

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate, channels, planar = stream.rate, stream.channels, stream.format.is_planar
        data = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=-1)
    if not planar:                                             # packed: [1, S*C] interleaved
        data = data.reshape(-1, channels).T
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), rate


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_save_normalizes_the_loudness_measured_by_ffmpeg(comfy, fmt):
    from test_loudness import ffmpeg_r128

    entry = comfy.run(_save_prompt(fmt, f"audiostory/loud_{fmt}", loudness_lufs=-20.0, true_peak_dbtp=-1.0))
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    (path,) = _files(comfy, entry)
    loud, peak = ffmpeg_r128(*_decode(path))
    assert abs(loud - (-20.0)) <= 0.5, loud
    if fmt == "wav":                                           # a lossy codec may overshoot its input's peak
        assert peak <= -1.0, peak


def test_event_tokens_says_which_events_were_re_encoded(comfy, executed):
    hand_written = executed["audiostory_plan_editing"]            # a plan typed into Plan from JSON
    assert hand_written["status"]["status_str"] == "success", _error_of(hand_written)
    assert _ui_text(hand_written, "3").startswith(
        "plan: events re-encoded: 1 (no generated tokens (a new or hand-written event)), 2 (no generated tokens")
    generated = executed["audiostory_text_to_long_audio"]         # the Planner's own plan, unedited
    tokens_node = next(k for k, v in json.loads((API_DIR / "audiostory_text_to_long_audio.json").read_text()).items()
                       if v["class_type"] == "AudioStoryEventTokens")
    assert _ui_text(generated, tokens_node) == "plan: as generated; every event keeps the states captured while planning"

"""Build the shipped workflows: API-format prompts (``workflows/api/<name>.json``, used by the tests)
and their UI-format twins (``workflows/<name>.json``, drag & drop / templates).

The UI files are generated from the API graphs and a ComfyUI ``/object_info`` dump, so widget order
and counts always follow the real node schemas:

    python tools/build_workflows.py --object-info http://127.0.0.1:8188   # or a saved object_info.json

``widget_values_for`` / ``expected_widget_count`` are also used by tests/test_comfyui_e2e.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

MODEL_ROOT = "AudioStory"          # models/audiostory/AudioStory (README layout)
THUNDER = "A thunderstorm rolls over a quiet farm at night."
FIRE = "A fire truck leaves the station with sirens blaring."
EXAMPLE_VIDEO = "audiostory_example.mp4"
EXAMPLE_AUDIO = "audiostory_continue_example.wav"

EDITED_PLAN = {
    "instruction": "A thunderstorm rolls over a quiet farm at night. The total duration is 12.0 seconds.",
    "reasoning": "The night starts calm, then the storm arrives and grows loud, so three events follow in time.",
    "events": [
        {"caption": "crickets chirp softly in a calm field", "duration": 4.0},
        {"caption": "distant thunder rumbles as rain begins", "duration": 3.0},
        {"caption": "heavy rain pours while a dog barks", "duration": 5.0},
    ],
}
CHAPTER2_PLAN = {
    "instruction": "The storm passes and the farm wakes up at dawn. The total duration is 9.0 seconds.",
    "reasoning": "The rain fades out and morning sounds take over.",
    "events": [
        {"caption": "light rain drips from the roof as thunder fades", "duration": 4.5},
        {"caption": "a rooster crows while birds sing", "duration": 4.5},
    ],
}


def _loader():
    return {"class_type": "AudioStoryModelLoader", "inputs": {"root": MODEL_ROOT, "dtype": "auto"}}


def _planner(instr=THUNDER, dur=12.0):
    return {"class_type": "AudioStoryPlanner", "inputs": {"planner": ["1", 0], "instruction": instr,
                                                          "total_duration": dur, "max_new_tokens": 1600}}


def _tokens(plan, memory=None):
    inp = {"planner": ["1", 0], "plan": plan, "crossfade": 3.0}
    if memory is not None:
        inp["memory"] = memory
    return {"class_type": "AudioStoryEventTokens", "inputs": inp}


def _sampler(events, sampler="reference_euler"):
    return {"class_type": "AudioStorySampler", "inputs": {"model": ["1", 1], "events": events, "seed": 0, "steps": 50,
                                                          "cfg": 4.0, "sampler_name": sampler, "scheduler": "simple",
                                                          "noise": "reference"}}


def _decode(samples, events):
    return {"class_type": "AudioStoryDecode", "inputs": {"vae": ["1", 2], "samples": samples, "events": events,
                                                         "crossfade": 3.0, "sample_rate": 32000}}


def _save(audio, prefix, fmt="flac"):
    return {"class_type": "AudioStorySaveAudio", "inputs": {"audio": audio, "filename_prefix": prefix, "format": fmt}}


def workflows() -> dict[str, dict]:
    w = {}
    w["audiostory_text_to_long_audio"] = {
        "1": _loader(), "2": _planner(), "3": _tokens(["2", 0]), "4": _sampler(["3", 0]),
        "5": _decode(["4", 0], ["3", 0]), "6": _save(["5", 0], "audiostory/text_to_long_audio", "wav"),
    }
    w["audiostory_plan_editing"] = {
        "1": _loader(),
        "2": {"class_type": "AudioStoryPlanFromJSON", "inputs": {"json": json.dumps(EDITED_PLAN, indent=2)}},
        "3": _tokens(["2", 0]), "4": _sampler(["3", 0]), "5": _decode(["4", 0], ["3", 0]),
        "6": _save(["5", 0], "audiostory/plan_editing", "flac"),
    }
    w["audiostory_sampler_swap"] = {
        "1": _loader(), "2": _planner(), "3": _tokens(["2", 0]),
        # core KSampler: euler + simple, 50 steps, cfg 4 on EventTokens' conditioning and empty latent
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 1], "seed": 0, "steps": 50, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["3", 1], "negative": ["3", 2],
                                                   "latent_image": ["3", 4], "denoise": 1.0}},
        "5": _decode(["4", 0], ["3", 0]),
        "6": _save(["5", 0], "audiostory/sampler_swap_ksampler", "wav"),
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0],
                                                     "filename_prefix": "latents/audiostory_ksampler"}},
        # core SamplerCustomAdvanced with the reference noise: reproduces the reference path exactly
        "8": {"class_type": "AudioStoryNoise", "inputs": {"noise": "reference", "seed": 0}},
        "9": {"class_type": "CFGGuider", "inputs": {"model": ["1", 1], "positive": ["3", 1], "negative": ["3", 2],
                                                    "cfg": 4.0}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 1], "scheduler": "simple", "steps": 50,
                                                          "denoise": 1.0}},
        "12": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["8", 0], "guider": ["9", 0],
                                                                 "sampler": ["10", 0], "sigmas": ["11", 0],
                                                                 "latent_image": ["3", 4]}},
        "13": _decode(["12", 0], ["3", 0]),
        "14": _save(["13", 0], "audiostory/sampler_swap_custom_advanced", "wav"),
        "15": {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0],
                                                      "filename_prefix": "latents/audiostory_custom_advanced"}},
        # the same latent through core VAEDecodeAudio (note: core applies its loudness clamp)
        "16": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "17": {"class_type": "SaveAudio", "inputs": {"audio": ["16", 0],
                                                     "filename_prefix": "audiostory/sampler_swap_core_vae"}},
    }
    w["audiostory_two_chapters_memory"] = {
        "1": _loader(),
        "2": {"class_type": "AudioStoryConsistencyMemory", "inputs": {"mode": "new", "path": "audiostory/memory/story",
                                                                     "window": 8, "strength": 0.5}},
        "3": _planner(),
        "4": _tokens(["3", 0], ["2", 0]),
        "5": _sampler(["4", 0]), "6": _decode(["5", 0], ["4", 0]),
        "7": {"class_type": "AudioStoryConsistencyMemory",
              "inputs": {"memory": ["4", 3], "mode": "save", "path": "audiostory/memory/two_chapters",
                         "window": 8, "strength": 0.5}},
        "8": {"class_type": "AudioStoryPlanFromJSON", "inputs": {"json": json.dumps(CHAPTER2_PLAN, indent=2)}},
        "9": _tokens(["8", 0], ["7", 0]),
        "10": _sampler(["9", 0]), "11": _decode(["10", 0], ["9", 0]),
        "12": {"class_type": "AudioConcat", "inputs": {"audio1": ["6", 0], "audio2": ["11", 0],
                                                       "direction": "after"}},
        "13": _save(["12", 0], "audiostory/two_chapters", "flac"),
    }
    w["audiostory_mux_video"] = {
        "1": _loader(), "2": _planner(FIRE, 7.5), "3": _tokens(["2", 0]), "4": _sampler(["3", 0]),
        "5": _decode(["4", 0], ["3", 0]),
        "6": {"class_type": "LoadVideo", "inputs": {"file": EXAMPLE_VIDEO}},
        "7": {"class_type": "AudioStoryMuxVideo", "inputs": {"video": ["6", 0], "audio": ["5", 0],
                                                             "length_policy": "pad"}},
        "8": {"class_type": "SaveVideo", "inputs": {"video": ["7", 0], "filename_prefix": "video/audiostory_mux",
                                                    "format": "auto", "codec": "auto"}},
    }
    w["audiostory_dubbing"] = {
        "1": _loader(),
        "2": {"class_type": "LoadVideo", "inputs": {"file": EXAMPLE_VIDEO}},
        "3": {"class_type": "AudioStoryVideoScenes",
              "inputs": {"video": ["2", 0], "planner": ["1", 0], "crossfade": 3.0, "threshold": 0.12,
                         "analysis_fps": 4.0, "min_scene_seconds": 1.0, "keyframes": 1, "allow_vfr": False}},
        "4": {"class_type": "AudioStoryVideoCaptioner",
              "inputs": {"scenes": ["3", 0], "vlm": "Qwen2.5-VL-3B-Instruct", "brief": "", "captions": "",
                         "max_new_tokens": 60}},
        "5": {"class_type": "AudioStoryDubbingPlan",
              "inputs": {"planner": ["1", 0], "scenes": ["4", 0], "brief": "", "captions": "",
                         "event_captions": "auto", "max_new_tokens": 1600}},
        "6": _tokens(["5", 0]), "7": _sampler(["6", 0]), "8": _decode(["7", 0], ["6", 0]),
        "9": {"class_type": "AudioStoryMuxVideo",
              "inputs": {"video": ["2", 0], "audio": ["8", 0], "length_policy": "pad", "existing_audio": "replace",
                         "mix_gain_db": -12.0}},
        "10": {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": "video/AudioStory_dub",
                                                     "format": "auto", "codec": "auto"}},
    }
    planner = _planner()
    planner["inputs"]["audio_context"] = ["3", 0]
    w["audiostory_continuation"] = {
        "1": _loader(),
        "2": {"class_type": "LoadAudio", "inputs": {"audio": EXAMPLE_AUDIO}},
        # the Planner rebuilds the audio prompt for its own instruction/duration; the context node's
        # instruction and total_duration are optional and kept equal here for readability
        "3": {"class_type": "AudioStoryAudioContext",
              "inputs": {"planner": ["1", 0], "audio": ["2", 0], "instruction": THUNDER, "total_duration": 12.0,
                         "understanding": "auto", "whisper": "whisper-large-v3", "audio_description": "",
                         "long_input": "error", "placeholder": "<aud>,<aud_{:05d}>,</aud>"}},
        "4": planner, "5": _tokens(["4", 0]), "6": _sampler(["5", 0]), "7": _decode(["6", 0], ["5", 0]),
        "8": {"class_type": "AudioStoryContinuationJoin",
              "inputs": {"audio_context": ["3", 0], "continuation": ["7", 0], "crossfade": 3.0, "curve": "linear",
                         "output": "joined"}},
        "9": _save(["8", 0], "audio/AudioStory_continuation", "flac"),
    }
    return w


# ---------------------------------------------------------------- UI conversion
def _spec(info: dict, name: str) -> tuple[str, list]:
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return section, info["input"][section][name]
    raise KeyError(name)


def _type_of(spec: list) -> str:
    t = spec[0]
    return "COMBO" if isinstance(t, list) else t


def input_names(info: dict) -> list[str]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return list(order.get("required", [])) + list(order.get("optional", []))


def is_widget(spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return _type_of(spec) in WIDGET_TYPES and not opts.get("forceInput", False)


def widget_extras(spec: list) -> list:
    """Frontend-only values stored after a widget (seed control, upload button)."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("control_after_generate"):
        return ["fixed"]
    if opts.get("video_upload") or opts.get("image_upload"):
        return ["image"]
    if opts.get("audio_upload"):
        return [None, None]
    return []


def expected_widget_count(info: dict) -> int:
    n = 0
    for name in input_names(info):
        _, spec = _spec(info, name)
        if is_widget(spec):
            n += 1 + len(widget_extras(spec))
    return n


def widget_values_for(info: dict, inputs: dict) -> list:
    vals = []
    for name in input_names(info):
        _, spec = _spec(info, name)
        if not is_widget(spec):
            continue
        v = inputs.get(name)
        if v is None or isinstance(v, list):
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            v = opts.get("default")
            if v is None and _type_of(spec) == "COMBO":
                choices = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
                v = choices[0] if choices else None
        vals.append(v)
        vals += widget_extras(spec)
    return vals


def to_ui(api: dict, object_info: dict) -> dict:
    ids = {k: int(k) for k in api}
    depth: dict[str, int] = {}

    def d(k):
        if k not in depth:
            srcs = [v[0] for v in api[k]["inputs"].values() if isinstance(v, list)]
            depth[k] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[k]

    for k in api:
        d(k)
    links, out_links = [], defaultdict(list)
    link_id = 0
    node_inputs: dict[str, list] = {}
    for k in sorted(api, key=lambda x: ids[x]):
        info = object_info[api[k]["class_type"]]
        ins = []
        for name in input_names(info):
            _, spec = _spec(info, name)
            v = api[k]["inputs"].get(name)
            linked = isinstance(v, list)
            if is_widget(spec) and not linked:
                continue
            entry = {"name": name, "type": _type_of(spec), "link": None}
            if is_widget(spec):
                entry["widget"] = {"name": name}
            if linked:
                link_id += 1
                src, slot = v[0], int(v[1])
                src_info = object_info[api[src]["class_type"]]
                typ = src_info["output"][slot]
                typ = "COMBO" if isinstance(typ, list) else typ
                links.append([link_id, ids[src], slot, ids[k], len(ins), typ])
                out_links[(src, slot)].append(link_id)
                entry["link"] = link_id
            ins.append(entry)
        node_inputs[k] = ins
    col_y: dict[int, int] = defaultdict(int)
    nodes = []
    for order, k in enumerate(sorted(api, key=lambda x: (depth[x], ids[x]))):
        cls = api[k]["class_type"]
        info = object_info[cls]
        outs = []
        for slot, (typ, name) in enumerate(zip(info["output"], info["output_name"])):
            typ = "COMBO" if isinstance(typ, list) else typ
            o = {"name": name, "type": typ, "links": out_links.get((k, slot)) or None}
            if o["links"]:
                o["slot_index"] = slot
            outs.append(o)
        wv = widget_values_for(info, api[k]["inputs"])
        h = 60 + 26 * (len(wv) + max(len(node_inputs[k]), len(outs)))
        if any(isinstance(v, str) and "\n" in v for v in wv) or cls in ("AudioStoryPlanner", "AudioStoryPlanFromJSON"):
            h += 160
        x = 40 + depth[k] * 380
        y = 40 + col_y[depth[k]]
        col_y[depth[k]] += h + 40
        nodes.append({"id": ids[k], "type": cls, "pos": [x, y], "size": [340, h], "flags": {}, "order": order,
                      "mode": 0, "inputs": node_inputs[k], "outputs": outs,
                      "properties": {"Node name for S&R": cls}, "widgets_values": wv})
    return {"last_node_id": max(ids.values()), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def load_object_info(src: str) -> dict:
    if src.startswith("http"):
        with urllib.request.urlopen(src.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    return json.loads(Path(src).read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--object-info", required=True, help="ComfyUI URL or a saved object_info.json")
    ap.add_argument("--out", default=str(ROOT / "workflows"))
    a = ap.parse_args(argv)
    info = load_object_info(a.object_info)
    out = Path(a.out)
    (out / "api").mkdir(parents=True, exist_ok=True)
    for name, api in workflows().items():
        (out / "api" / f"{name}.json").write_text(json.dumps(api, indent=2) + "\n")
        (out / f"{name}.json").write_text(json.dumps(to_ui(api, info), indent=2) + "\n")
        print("wrote", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

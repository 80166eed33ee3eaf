"""Build the shipped workflows: API-format prompts (``workflows/api/<name>.json``, used by the tests)
and their UI-format twins (``workflows/AudioStory - <Title>.json``, drag & drop / templates).

The UI files are generated from the API graphs and a ComfyUI ``/object_info`` dump, so widget order
and counts always follow the real node schemas. Each UI file gets a Note (what it does, which model
folders it needs), a titled node per step, one group per stage, a compact multi-row layout that stays
readable at "fit view", and an opening view below the top bar and right of the sidebar. ComfyUI 0.8
(frontend 1.35) shows a custom-node template under its file name, hence the readable file names, and
uses ``<name>.jpg`` next to it as the card image (rendered in headless Chromium unless ``--no-thumbnails``):

    python tools/build_workflows.py --object-info http://127.0.0.1:8188   # or a saved object_info.json

``widget_values_for`` / ``expected_widget_count`` / ``ui_file_name`` are also used by the tests.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from audiostory_core.models.download import ROOT_NAME  # noqa: E402 - the model root the UI download fills

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

MODEL_ROOT = ROOT_NAME             # models/audiostory/AudioStory (README layout)
THUNDER = "A thunderstorm rolls over a quiet farm at night."
FIRE = "A fire truck leaves the station with sirens blaring."
EXAMPLE_VIDEO = "audiostory_example.mp4"
EXAMPLE_AUDIO = "audiostory_continue_example.wav"
EXAMPLE_DATASET = "audiostory_train_example"     # example_media/<this>/captions.jsonl, copied into input/

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
                                                          "noise": "seeded"}}


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
    w["audiostory_simple"] = {
        "1": {"class_type": "AudioStorySimple", "inputs": {"root": MODEL_ROOT, "instruction": THUNDER,
                                                           "duration": 12.0, "seed": 0}},
        "2": _save(["1", 0], "audiostory/simple", "wav"),
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
    # fix one event: render, score each event with CLAP, re-render only the weakest one (seeded noise 7),
    # keep every other event's latent; both versions are saved (WAV) to compare
    reroll = _sampler(["3", 0])
    reroll["inputs"].update(seed=7, noise="seeded", previous=["4", 0], render_events=["6", 1])
    w["audiostory_fix_one_event"] = {
        "1": _loader(), "2": _planner(), "3": _tokens(["2", 0]), "4": _sampler(["3", 0]),
        "5": _decode(["4", 0], ["3", 0]),
        "6": {"class_type": "AudioStoryScore",
              "inputs": {"audio": ["5", 0], "events": ["3", 0], "clap": "clap-htsat-unfused", "select": "weakest",
                         "threshold": 0.25, "count": 1}},
        "7": reroll, "8": _decode(["7", 0], ["3", 0]),
        "9": _save(["5", 0], "audio/AudioStory_before_reroll", "wav"),
        "10": _save(["8", 0], "audio/AudioStory_fixed", "wav"),
    }
    w["audiostory_timeline"] = timeline_workflow()
    w["audiostory_train_lora"] = train_workflow()
    return w


def train_workflow() -> dict:
    """Train a DiT LoRA on the example clips (the CLI's defaults), preview the loss, save the LoRA."""
    from audiostory_core.training.trainer import TrainConfig

    d = TrainConfig()
    return {
        "1": _loader(),
        "2": {"class_type": "AudioStoryTrainingData",
              "inputs": {"dataset": EXAMPLE_DATASET, "planner": ["1", 0], "vae": ["1", 2]}},
        "3": {"class_type": "AudioStoryTrainLora",
              "inputs": {"planner": ["1", 0], "model": ["1", 1], "vae": ["1", 2], "data": ["2", 0],
                         "steps": d.steps, "learning_rate": d.lr, "rank": d.rank, "alpha": d.alpha, "seed": d.seed,
                         "batch_size": d.batch_size, "grad_accum": d.grad_accum, "schedule": d.schedule,
                         "warmup_steps": d.warmup_steps, "bf16": d.bf16,
                         "gradient_checkpointing": d.gradient_checkpointing}},
        "4": {"class_type": "AudioStorySaveLora", "inputs": {"lora": ["3", 0], "filename_prefix": "audiostory_lora"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }


def timeline_workflow() -> dict:
    """Timeline: the Timeline's selected blocks (render_events) are re-rendered by the
    second sampler over the first render (previous); nothing selected = the first render passes through.
    The save writes stems, labels and cues beside the story."""
    reroll = _sampler(["3", 0])
    reroll["inputs"].update(seed=7, noise="seeded", previous=["4", 0], render_events=["2", 2])
    save = _save(["6", 0], "audiostory/timeline", "flac")
    save["inputs"].update(clips=["6", 1], events=["3", 0], stems=True)
    return {
        "1": _loader(),
        "2": {"class_type": "AudioStoryTimeline",
              "inputs": {"plan_json": json.dumps(EDITED_PLAN, indent=2), "render_events": ""}},
        "3": _tokens(["2", 0]), "4": _sampler(["3", 0]), "5": reroll, "6": _decode(["5", 0], ["3", 0]), "7": save,
    }


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


def widget_value(spec: list, value):
    """The value a widget holds: the graph's, else the schema default (a combo's first choice)."""
    if value is not None and not isinstance(value, list):
        return value
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    v = opts.get("default")
    if v is None and _type_of(spec) == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
        v = choices[0] if choices else None
    return v


def widget_values_for(info: dict, inputs: dict) -> list:
    vals = []
    for name in input_names(info):
        _, spec = _spec(info, name)
        if not is_widget(spec):
            continue
        vals.append(widget_value(spec, inputs.get(name)))
        vals += widget_extras(spec)
    return vals


def node_title(info: dict, name: str | None, key: str) -> str:
    """The title a node shows: the workflow's, else the node's display name (as the frontend does)."""
    return PRESENTATION.get(name or "", {}).get("titles", {}).get(key) or info.get("display_name") or info["name"]


def api_twin(api: dict, object_info: dict, name: str | None = None) -> dict:
    """What ComfyUI's "Export (API)" writes for the UI twin: every widget's value (defaults included),
    links as [node id, slot], and ``_meta.title`` (scripts and API clients find nodes by title)."""
    out = {}
    for k in sorted(api, key=int):
        cls = api[k]["class_type"]
        info = object_info[cls]
        inputs = {}
        for n in input_names(info):
            _, spec = _spec(info, n)
            v = api[k]["inputs"].get(n)
            if isinstance(v, list) or (v is not None and not is_widget(spec)):
                inputs[n] = v
            elif is_widget(spec):
                inputs[n] = widget_value(spec, v)
        inputs.update(FRONTEND_EXPORTED.get(cls, {}))
        out[k] = {"inputs": inputs, "class_type": cls, "_meta": {"title": node_title(info, name, k)}}
    return out


# ---------------------------------------------------------------- presentation
# A stage group: (title, colour, columns of node keys). A layout: rows of groups; the Note opens row 1.
Group = tuple  # (title or None, colour, columns of node keys)
BLUE, GREEN, YELLOW, PURPLE, CYAN, RED = "#3f789e", "#8A8", "#b58b2a", "#a1309b", "#3f8fa0", "#b06634"
FRONTEND_ONLY_NODES = ("MarkdownNote", "Note")          # drawn by the frontend, never sent to /prompt
NODE_W, WIDE_W, NOTE_W = 300, 380, 360
NOTE = "note"                     # the Note's key in a layout
# Widgets the frontend adds: upload button and media preview (a floor: the preview is the node's bulk)
FRONTEND_MIN = {"LoadVideo": [540, 392], "LoadAudio": [320, 170], "AudioStorySaveAudio": [300, 0],
                "AudioStoryTimeline": [660, 300],
                "SaveAudio": [300, 116]}
# Height the frontend adds below the widgets: the audio player on the pack's save node (web/audiostory.js),
# measured in ComfyUI 0.8's frontend (its computeSize is the widgets' height plus 54 px)
PLAYER_H = {"AudioStorySaveAudio": 58}
# Inputs the frontend adds to these nodes (preview widgets) and writes, empty, into "Export (API)"
FRONTEND_EXPORTED = {"LoadAudio": {"audioUI": ""}, "SaveAudio": {"audioUI": ""},
                     "AudioStorySaveAudio": {"audioUI": ""}, "LoadVideo": {"video-preview": ""}}
# Room for the plan text web/plan_text.js adds when the node runs (its widget's MIN_H, 200 px, plus margins),
# so the grown node stays inside its group
RUN_TEXT_H = {"AudioStoryPlanner": 216}
TITLE_H, SLOT_H, WIDGET_H = 30, 20, 24     # LiteGraph's title, slot and widget heights
MIN_TEXT_H, MAX_TEXT_H = 96, 330          # multiline text boxes
# GROUP_HEAD: the group's title bar plus room for the pack badge the frontend draws above a node's title bar
GROUP_HEAD, GROUP_PAD, GAP, NODE_GAP = 66, 16, 40, 24
TOP_BAR, SIDEBAR = 100, 64        # frontend 1.35: tabs + floating menu, left icon bar (CSS px)
OPEN_VIEW = (1600, 900)           # the opening view (extra.ds) shows the whole graph in a window this size



PACK_DIR = "custom_nodes/comfyui-audiostory"      # where ComfyUI's registry and a `git clone` put the pack
FETCH = (f"In ComfyUI: menu **Extensions > AudioStory > Download models**. Or in ComfyUI's folder, with "
         f"ComfyUI's Python: `python {PACK_DIR}/download_models.py`")


def fetch_note(what: str, key: str) -> str:
    """How to get one of the shared models (the menu, or the script with ``--only``)."""
    return f"**{what}.** {FETCH} `--only {key}`."


MODELS_NOTE = ("**Models.** `models/audiostory/AudioStory/` holds the official release (about 20 GB): "
               "`AudioStory-3B/`, `Flux_detokenizer/`, `Qwen2.5-3B-Instruct/`, `flan-t5-large/`. " + FETCH
               + ". Then pick the folder in **Load AudioStory models** (press R to refresh the list).")
REFERENCE_NOTE = ("Noise `seeded`: a new seed gives a new take. Noise `reference` with sampler `reference_euler`, "
                  "50 steps, cfg 4, crossfade 3 s at 32 kHz is the official AudioStory computation.")

PRESENTATION: dict[str, dict] = {
    "audiostory_text_to_long_audio": {
        "card": "Instruction to long WAV, node by node. Needs: AudioStory models",
        "file": "AudioStory - Text to long audio",
        "note": ("## Text to long audio\nOne instruction and a total length in, one story out: the planner (LLM) "
                 "reasons and writes timed sound events, each event becomes conditioning tokens, the DiT samples "
                 "one clip per event and the VAE decodes them into a crossfaded WAV.\n\n" + REFERENCE_NOTE
                 + "\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Planner · write the timed events", "3": "Event tokens",
                   "4": "Sampler (reference Euler)", "5": "Decode and crossfade", "6": "Save story (WAV)"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]), ("2 · Plan", GREEN, [["2"]])],
                 [("3 · Event tokens", YELLOW, [["3"]]), ("4 · Sample", PURPLE, [["4"]]),
                  ("5 · Decode and save", CYAN, [["5", "6"]])]],
    },
    "audiostory_simple": {
        "card": "Instruction and length in, audio out. Needs: AudioStory models",
        "file": "AudioStory - Simple (one node)",
        "note": ("## Simple (one node)\nType what should happen and how long it lasts; **AudioStory (simple)** "
                 "plans the timed events, renders them and crossfades them into one WAV. It runs the same "
                 "nodes as *Text to long audio* with their defaults and seeded noise: a new seed, a new take."
                 "\n\n" + MODELS_NOTE),
        "titles": {"1": "AudioStory (simple)", "2": "Save story (WAV)"},
        "rows": [[(None, "", [[NOTE]]), ("Story", GREEN, [["1"]]), ("Save", CYAN, [["2"]])]],
    },
    "audiostory_plan_editing": {
        "card": "Renders a plan typed as JSON, no LLM run. Needs: AudioStory models",
        "file": "AudioStory - Edit the plan",
        "note": ("## Edit the plan by hand\nThe plan is typed or pasted as JSON (reasoning plus events with "
                 "caption and duration in seconds), e.g. copied from a Planner's text output and edited. Edited "
                 "events are re-encoded by teacher forcing, so no generation runs. Saves FLAC with the "
                 "workflow embedded.\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Plan · edit the JSON", "3": "Event tokens",
                   "4": "Sampler (reference Euler)", "5": "Decode and crossfade", "6": "Save story (FLAC)"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]), ("2 · Plan (JSON)", GREEN, [["2"]])],
                 [("3 · Event tokens", YELLOW, [["3"]]), ("4 · Sample", PURPLE, [["4"]]),
                  ("5 · Decode and save", CYAN, [["5", "6"]])]],
    },
    "audiostory_sampler_swap": {
        "card": "Core KSampler, custom sampler, core VAE. Needs: AudioStory models",
        "file": "AudioStory - Core samplers",
        "note": ("## Core samplers\nThe AudioStory DiT is a ComfyUI MODEL: the same event tokens go through core "
                 "**KSampler** (euler, simple, 50 steps, cfg 4) and through **SamplerCustomAdvanced** with "
                 "AudioStory's reference noise (this one reproduces the reference path). Latents are saved "
                 "too; core **VAEDecodeAudio** decodes the KSampler latent (core applies its own loudness "
                 "clamp).\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Planner · write the timed events", "3": "Event tokens",
                   "4": "KSampler · euler, simple", "5": "KSampler · Decode", "6": "KSampler · Save (WAV)",
                   "7": "KSampler · Save latent", "8": "Custom · Reference noise", "9": "Custom · CFG guider",
                   "10": "Custom · Sampler select", "11": "Custom · Scheduler", "12": "Custom · Sampler",
                   "13": "Custom · Decode", "14": "Custom · Save (WAV)", "15": "Custom · Save latent",
                   "16": "Core VAE · Decode", "17": "Core VAE · Save"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]),
                  ("2 · Plan and event tokens", GREEN, [["2"], ["3"]])],
                 [("3a · Core KSampler", PURPLE, [["4", "7"], ["5", "6"]]), ("Core VAE decode", RED, [["16", "17"]]),
                  ("3b · SamplerCustomAdvanced", YELLOW, [["8", "10"], ["9", "11"], ["12", "15"], ["13", "14"]])]],
    },
    "audiostory_two_chapters_memory": {
        "card": "Chapter 2 remembers chapter 1. Needs: AudioStory models",
        "file": "AudioStory - Two chapters",
        "note": ("## Two chapters with memory\nChapter 1 is planned from the instruction; its plan and last event "
                 "tokens go into a story memory (saved under output/audiostory/memory/). Chapter 2 (here a plan "
                 "written by hand) is rendered with that memory, so its fusion also attends to chapter 1, and "
                 "the two are joined.\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Memory · new story", "3": "Chapter 1 · Planner",
                   "4": "Chapter 1 · Event tokens", "5": "Chapter 1 · Sampler", "6": "Chapter 1 · Decode",
                   "7": "Memory · save after chapter 1", "8": "Chapter 2 · Plan (by hand)",
                   "9": "Chapter 2 · Event tokens", "10": "Chapter 2 · Sampler", "11": "Chapter 2 · Decode",
                   "12": "Chapters 1 + 2", "13": "Save story (FLAC)"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models and memory", BLUE, [["1", "2"]]),
                  ("2 · Chapter 1", GREEN, [["3"], ["4", "7"], ["5"], ["6"]])],
                 [("3 · Chapter 2", PURPLE, [["8"], ["9"], ["10"], ["11"]]), ("4 · Join and save", CYAN, [["12", "13"]])]],
    },
    "audiostory_mux_video": {
        "card": "A story as a video's sound track. Needs: AudioStory models, a video",
        "file": "AudioStory - Story onto a video",
        "note": ("## Story onto a video\nRenders a story and muxes it onto a video: the video stream is copied "
                 "packet for packet, only the audio is encoded (AAC in MP4). The example video "
                 "`audiostory_example.mp4` (generated, CC0) is copied into ComfyUI's input folder by the pack; "
                 "pick your own in **Example video**.\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Planner · write the timed events", "3": "Event tokens",
                   "4": "Sampler (reference Euler)", "5": "Decode and crossfade", "6": "Example video",
                   "7": "Mux story onto the video", "8": "Save video"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]), ("2 · Plan", GREEN, [["2"]]),
                  ("Video", RED, [["6"]])],
                 [("3 · Event tokens and sample", YELLOW, [["3"], ["4"]]),
                  ("4 · Decode, mux and save", CYAN, [["5"], ["7", "8"]])]],
    },
    "audiostory_dubbing": {
        "card": "Sound for each scene of a video. Needs: AudioStory models, a VLM",
        "file": "AudioStory - Video dubbing",
        "note": ("## Video dubbing\nFinds the scene cuts, asks a local VLM for the sounds of each scene, plans "
                 "one event per scene with its exact length, renders and muxes the result (video stream copied). "
                 "Type captions in the captioner to skip the VLM. The example `audiostory_example.mp4` "
                 "(generated, CC0) is copied into the input folder by the pack.\n\n"
                 + fetch_note("VLM (models/audiostory/Qwen2.5-VL-3B-Instruct/)", "vlm") + "\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Example video", "3": "Video · find the scenes",
                   "4": "Video · caption the scenes (VLM)", "5": "Dubbing plan", "6": "Event tokens",
                   "7": "Sampler (reference Euler)", "8": "Decode and crossfade", "9": "Mux onto the video",
                   "10": "Save video"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models and video", BLUE, [["1", "2"]]),
                  ("2 · Scenes and captions", GREEN, [["3"], ["4"]])],
                 [("3 · Plan, tokens, sample", PURPLE, [["5"], ["6"], ["7"]]),
                  ("4 · Decode, mux and save", CYAN, [["8"], ["9", "10"]])]],
    },
    "audiostory_continuation": {
        "card": "Continues an audio clip's story. Needs: AudioStory models, Whisper",
        "file": "AudioStory - Audio continuation",
        "note": ("## Audio continuation\nWhisper listens to the input audio (up to 30 s), its features become "
                 "LLM input tokens, and the planner continues the story; the continuation is crossfaded onto "
                 "the input. The example `audiostory_continue_example.wav` (generated, CC0) is copied into the "
                 "input folder by the pack.\n\n"
                 + fetch_note("Whisper (models/audiostory/whisper-large-v3/)", "whisper") + "\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Input audio", "3": "Audio context (Whisper)",
                   "4": "Planner · continue the story", "5": "Event tokens", "6": "Sampler (reference Euler)",
                   "7": "Decode and crossfade", "8": "Join input + continuation", "9": "Save (FLAC)"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models and input", BLUE, [["1", "2"]]),
                  ("2 · Listen and plan", GREEN, [["3"], ["4"]])],
                 [("3 · Event tokens and sample", PURPLE, [["5"], ["6"]]),
                  ("4 · Decode, join and save", CYAN, [["7"], ["8", "9"]])]],
    },
    "audiostory_fix_one_event": {
        "card": "CLAP finds the weakest event, re-renders it. Needs: AudioStory, CLAP",
        "file": "AudioStory - Fix one event",
        "note": ("## Fix one event\nRenders the story, scores every event against its caption with CLAP "
                 "(**Score**: a table on the node), then a second sampler re-renders only the weakest event "
                 "(its `render_events` comes from the score; `previous` is the first render) with seeded noise. "
                 "Every other event keeps its latent bit for bit. Change the re-roll seed and queue again: "
                 "only the re-roll, its decode and save run (the planner and first render stay cached). Set "
                 "**select** to `below_threshold` to re-roll every event under the threshold.\n\n"
                 + fetch_note("CLAP (models/audiostory/clap-htsat-unfused/)", "clap") + "\n\n" + MODELS_NOTE),
        "titles": {"1": "Load AudioStory models", "2": "Planner · write the timed events", "3": "Event tokens",
                   "4": "Sampler · first render", "5": "Decode · first render", "6": "Score events (CLAP)",
                   "7": "Sampler · re-roll the weakest event", "8": "Decode · fixed story",
                   "9": "Save first render (WAV)", "10": "Save fixed story (WAV)"},
        "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]), ("2 · Plan", GREEN, [["2"], ["3"]])],
                 [("3 · Render and score", PURPLE, [["4"], ["5", "9"], ["6"]]),
                  ("4 · Re-roll and save", CYAN, [["7"], ["8", "10"]])]],
    },
}
PRESENTATION["audiostory_timeline"] = {
    "card": "Drag events on a time axis, re-roll a few. Needs: AudioStory models",
    "file": "AudioStory - Timeline",
    "note": ("## Timeline\nThe plan's events are blocks on a time axis: drag a block's right "
             "edge to change its duration (0.1 s steps), double-click to edit its caption, add, delete and move "
             "events with the buttons (or arrows, Enter, Delete, Alt+arrows). A red block names the limit it "
             "breaks. Paste a Planner's plan_json into the timeline to start from a generated plan.\n\n"
             "**Re-roll:** click (shift-click) blocks to select events, then queue: the second sampler re-renders "
             "only those (seed 7), every other event keeps its latent; with nothing selected the first render "
             "passes through. After a run each block shows its clip's waveform (and CLAP score with a Score "
             "node), saved with the workflow until the plan changes; a click on a block also plays the story "
             "from the block's start in the save node's player (shift-click only selects). The save writes the story (FLAC) and, in `<name>_stems/`, one WAV per event, "
             "stems.json (offsets), labels.txt (Audacity) and cues.vtt (WebVTT).\n\n" + MODELS_NOTE),
    "titles": {"1": "Load AudioStory models", "2": "Timeline · shape the story", "3": "Event tokens",
               "4": "Sampler · first render", "5": "Sampler · re-roll the selected events", "6": "Decode",
               "7": "Save story and stems"},
    "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]), ("2 · Timeline", GREEN, [["2"]])],
             [("3 · Event tokens", YELLOW, [["3"]]), ("4 · Render and re-roll", PURPLE, [["4"], ["5"]]),
              ("5 · Decode and save", CYAN, [["6", "7"]])]],
}
PRESENTATION["audiostory_train_lora"] = {
    "card": "A LoRA on your own clips. Needs: AudioStory models, peft",
    # Issue #25's "Train on your own sounds" is clipped on the card (its title is one line of 254 px at 1600x900,
    # frontend 1.35; that name needs about 267, this one 234; test_browser checks that every title is whole).
    "file": "AudioStory - Train on your sounds",
    "note": ("## Train on your own sounds\nPut a folder under ComfyUI's `input/` with your clips and a "
             "`captions.jsonl` (one line per clip: `{\"audio\": \"rain.wav\", \"caption\": \"soft rain on a "
             "roof\"}`), pick it in **Training data** (press R to refresh the list); lines that cannot be used "
             "are listed on the node with the reason. Videos work too: a line `{\"video\": \"clip.mp4\"}` takes its "
             "sound from the video and its captions, scene by scene, from the model picked in **vlm** (as Video "
             "dubbing captions). The example `audiostory_train_example/` (three generated "
             "CC0 clips) is copied there by the pack.\n\n**Train LoRA** trains a LoRA on the DiT as "
             "`python -m audiostory_core train --mode dit` does (same defaults; Cancel stops it between steps "
             "and writes no LoRA; each clip's latents are cached in ComfyUI's temp folder, so a rerun with other "
             "settings encodes no clip). **Save LoRA** writes `models/loras/audiostory/<prefix>_00001.safetensors`: "
             "pick it in **Load AudioStory models > lora** of any other workflow (strength 0 = the base model)."
             "\n\nNeeds the `peft` library (`pip install peft`).\n\n" + MODELS_NOTE),
    "titles": {"1": "Load AudioStory models", "2": "Training data · your clips", "3": "Train LoRA",
               "4": "Save LoRA", "5": "Loss per step"},
    "rows": [[(None, "", [[NOTE]]), ("1 · Models", BLUE, [["1"]]), ("2 · Data", GREEN, [["2"]])],
             [("3 · Train", PURPLE, [["3"]]), ("4 · Save and check", CYAN, [["4"], ["5"]])]],
}


TEMPLATE_CARDS = ROOT / "web" / "template_cards.json"   # card order and descriptions, read by web/templates.js


def template_order() -> list[str]:
    """Template names (file stems) in card order: PRESENTATION's order, "Text to long audio" first."""
    return [PRESENTATION[n]["file"] for n in PRESENTATION]


def template_cards() -> list[dict]:
    """What web/templates.js shows: each card's name (in order) and description (what it does, what it needs)."""
    return [{"name": PRESENTATION[n]["file"], "description": PRESENTATION[n]["card"]} for n in PRESENTATION]


def ui_file_name(name: str) -> str:
    """The UI/template file of API workflow ``name`` (the frontend shows the file name as the card title)."""
    return PRESENTATION[name]["file"] + ".json" if name in PRESENTATION else f"{name}.json"


def _multiline(info: dict, name: str) -> bool:
    _, spec = _spec(info, name)
    return _type_of(spec) == "STRING" and len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("multiline")


def node_size(info: dict, inputs: list, outputs: list, values: dict) -> list[int]:
    """At least LiteGraph's ``computeSize`` (so nothing is clipped); multiline text gets room for its lines."""
    widgets = [n for n in input_names(info) if is_widget(_spec(info, n)[1]) and not isinstance(values.get(n), list)]
    multiline = [n for n in widgets if _multiline(info, n)]
    extras = sum(len(widget_extras(_spec(info, n)[1])) for n in widgets)
    h = max(len(inputs), len(outputs)) * SLOT_H + (len(widgets) - len(multiline) + extras) * WIDGET_H + 14
    for n in multiline:
        lines = str(values.get(n) or "").count("\n") + 1
        h += min(MAX_TEXT_H, max(MIN_TEXT_H, 16 * lines + 24))
    w, h = (WIDE_W if multiline else NODE_W), h
    low = FRONTEND_MIN.get(info.get("name", ""), [0, 0])
    h += RUN_TEXT_H.get(info.get("name", ""), 0) + PLAYER_H.get(info.get("name", ""), 0)
    return [max(w, low[0]), max(h, low[1])]


def note_height(text: str, chars_per_line: int = 62, line_h: int = 15) -> int:
    """Room for the Note's markdown at NOTE_W (headings count double)."""
    lines = sum(max(1, -(-len(par) // chars_per_line)) + (1 if par.startswith("#") else 0)
                for par in text.split("\n"))
    return 40 + lines * line_h


def _layout(rows: list[list[Group]], sizes: dict[str, list[int]]):
    """Place the groups row by row, their columns left to right, nodes top to bottom. A group titled
    ``None`` is only a column holder (the Note); returns (node positions, groups)."""
    pos, groups, y = {}, [], 0
    for row in rows:
        x, row_h = 0, 0
        for title, colour, columns in row:
            head, pad = (GROUP_HEAD, GROUP_PAD) if title else (0, 0)
            gx, cx = x, x + pad
            inner_h = 0
            for col in columns:
                cy, col_w = y + head, 0
                for k in col:
                    pos[k] = [cx, cy + TITLE_H]
                    cy += TITLE_H + sizes[k][1] + NODE_GAP
                    col_w = max(col_w, sizes[k][0])
                inner_h = max(inner_h, cy - NODE_GAP - y - head)
                cx += col_w + NODE_GAP
            w, h = cx - NODE_GAP + pad - gx, head + inner_h + pad
            if title:
                groups.append({"id": len(groups) + 1, "title": title, "bounding": [gx, y, w, h], "color": colour,
                               "font_size": 24, "flags": {}})
            x += w + GAP
            row_h = max(row_h, h)
        y += row_h + GAP
    return pos, groups


GROUP_TITLE_H = 34       # a group's title bar: its font size (24) x 1.4, as the frontend draws it


def _spline(a: tuple[float, float], b: tuple[float, float], n: int = 48):
    """Points of the frontend's wire from an output at ``a`` to an input at ``b`` (LiteGraph's spline:
    control points a quarter of the distance out, horizontally)."""
    d = max(30.0, ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 * 0.25)
    c1, c2 = (a[0] + d, a[1]), (b[0] - d, b[1])
    for i in range(n + 1):
        t = i / n
        u = 1 - t
        yield (u ** 3 * a[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t ** 3 * b[0],
               u ** 3 * a[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t ** 3 * b[1])


def _over_title(points, groups: list[dict]) -> bool:
    return any(g[0] <= x <= g[0] + g[2] and g[1] <= y <= g[1] + GROUP_TITLE_H
               for x, y in points for g in (gr["bounding"] for gr in groups))


def route_wires(nodes: list[dict], links: list[list], groups: list[dict]) -> dict:
    """``extra`` entries (native reroutes) that keep wires off group title bars.

    A wire that would cross a title is led through the gap left of its target's group: down the gap
    between the rows (when it comes from a row above), then along the gap to the input's height, then
    straight into the input. The browser test checks the result as the frontend draws it."""
    by_id = {n["id"]: n for n in nodes}
    boxes = [gr["bounding"] for gr in groups]

    def group_of(pt: tuple[float, float]) -> list[float]:
        return next(g for g in boxes if g[0] <= pt[0] <= g[0] + g[2] and g[1] <= pt[1] <= g[1] + g[3])

    crossing = []
    for lid, src, slot, dst, dslot, _ in links:
        a, b = by_id[src], by_id[dst]
        p = (a["pos"][0] + a["size"][0], a["pos"][1] + (slot + 0.7) * SLOT_H)
        q = (b["pos"][0], b["pos"][1] + (dslot + 0.7) * SLOT_H)
        if _over_title(_spline(p, q), groups):
            g = group_of(q)
            if group_of(p)[1] > g[1]:
                raise ValueError(f"link {lid} runs up from a lower row of groups across a title: place its target "
                                 "group in the same row as its source or below it")
            crossing.append((lid, src, slot, p, q, g))
    # the wires of one output into one group share their reroute in the gap between the rows; outputs
    # entering the same group side by side are spread across the gap so that their reroutes stay apart
    origins: dict[tuple, list] = defaultdict(list)
    for lid, src, slot, p, q, g in crossing:
        if (src, slot) not in origins[tuple(g)]:
            origins[tuple(g)].append((src, slot))
    reroutes: dict[tuple, dict] = {}
    extensions = []

    def reroute(key: tuple, pos: list[float], parent: int | None) -> dict:
        if key not in reroutes:
            r = {"id": len(reroutes) + 1, "pos": pos, "linkIds": []}
            if parent is not None:
                r["parentId"] = parent
            reroutes[key] = r
        return reroutes[key]

    for lid, src, slot, p, q, g in crossing:
        order = origins[tuple(g)]
        spread = min(8.0, (GAP - 12) / max(1, len(order) - 1))
        gx = g[0] - GAP / 2 + (order.index((src, slot)) - (len(order) - 1) / 2) * spread
        parent = None
        if p[1] < g[1]:
            top = reroute((src, slot, tuple(g)), [gx, g[1] - GAP / 2], None)
            top["linkIds"].append(lid)
            parent = top["id"]
        side = reroute((src, slot, tuple(g), q[1]), [gx, q[1]], parent)
        side["linkIds"].append(lid)
        extensions.append({"id": lid, "parentId": side["id"]})
    if not extensions:
        return {}
    return {"reroutes": list(reroutes.values()), "linkExtensions": extensions}


def bounds(ui: dict) -> list[float]:
    """[x, y, w, h] of everything drawn: groups, nodes with their title bars."""
    boxes = [g["bounding"] for g in ui["groups"]]
    boxes += [[n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H] for n in ui["nodes"]]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def fit_view_scale(ui: dict, window: tuple[int, int]) -> float:
    """The scale of the frontend's "fit view" (LiteGraph ``animateToBounds``: 0.75 of the tighter axis)."""
    _, _, w, h = bounds(ui)
    return min(0.75 * window[0] / max(w, 300), 0.75 * window[1] / max(h, 300))


def opening_view(ui: dict, window: tuple[int, int] = OPEN_VIEW) -> dict:
    """``extra.ds``: the whole graph right of the sidebar and below the top bar, as large as fits (<= 1)."""
    x, y, w, h = bounds(ui)
    scale = min(1.0, (window[0] - SIDEBAR - 24) / w, (window[1] - TOP_BAR - 24) / h)
    scale = round(scale, 3)
    return {"scale": scale, "offset": [round((SIDEBAR + 12) / scale - x, 1), round((TOP_BAR + 12) / scale - y, 1)]}


def to_ui(api: dict, object_info: dict, name: str | None = None) -> dict:
    """The UI twin of an API graph; with a ``name`` from PRESENTATION: titles, Note, groups, layout."""
    pres = PRESENTATION.get(name or "", {})
    ids = {k: int(k) for k in api}
    links, out_links = [], defaultdict(list)
    link_id = 0
    node_inputs: dict[str, list] = {}
    for k in sorted(api, key=lambda x: ids[x]):
        info = object_info[api[k]["class_type"]]
        ins = []
        for name_ in input_names(info):
            _, spec = _spec(info, name_)
            v = api[k]["inputs"].get(name_)
            linked = isinstance(v, list)
            if is_widget(spec) and not linked:
                continue
            entry = {"name": name_, "type": _type_of(spec), "link": None}
            if is_widget(spec):
                entry["widget"] = {"name": name_}
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
    outputs, sizes = {}, {}
    for k in api:
        info = object_info[api[k]["class_type"]]
        outs = []
        for slot, (typ, oname) in enumerate(zip(info["output"], info["output_name"])):
            typ = "COMBO" if isinstance(typ, list) else typ
            o = {"name": oname, "type": typ, "links": out_links.get((k, slot)) or None}
            if o["links"]:
                o["slot_index"] = slot
            outs.append(o)
        outputs[k] = outs
        sizes[k] = node_size(info, node_inputs[k], outs, api[k]["inputs"])
    note_text = pres.get("note")
    if note_text:
        sizes[NOTE] = [NOTE_W, note_height(note_text)]
    rows = pres.get("rows") or [[("Workflow", BLUE, [[k] for k in sorted(api, key=lambda x: ids[x])])]]
    placed = {k for row in rows for _, _, cols in row for col in cols for k in col}
    expected = set(api) | ({NOTE} if note_text else set())
    assert placed == expected, f"{name}: layout places {sorted(placed)}, graph has {sorted(expected)}"
    pos, groups = _layout(rows, sizes)
    order_of = _execution_order(api)
    nodes = []
    for k in sorted(api, key=lambda x: ids[x]):
        cls = api[k]["class_type"]
        node = {"id": ids[k], "type": cls, "pos": pos[k], "size": sizes[k], "flags": {}, "order": order_of[k],
                "mode": 0, "inputs": node_inputs[k], "outputs": outputs[k],
                "properties": {"Node name for S&R": cls},
                "widgets_values": widget_values_for(object_info[cls], api[k]["inputs"])}
        if pres.get("titles", {}).get(k):
            node["title"] = pres["titles"][k]
        nodes.append(node)
    last_id = max(ids.values())
    if note_text:
        last_id += 1
        nodes.append({"id": last_id, "type": "MarkdownNote", "pos": pos[NOTE], "size": sizes[NOTE], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [note_text], "title": "About this workflow", "color": "#432",
                      "bgcolor": "#653"})
    ui = {"last_node_id": last_id, "last_link_id": link_id, "nodes": nodes, "links": links, "groups": groups,
          "config": {}, "extra": route_wires(nodes, links, groups), "version": 0.4}
    ui["extra"]["ds"] = opening_view(ui)
    return ui


def _execution_order(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def d(k):
        if k not in depth:
            srcs = [v[0] for v in api[k]["inputs"].values() if isinstance(v, list)]
            depth[k] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[k]

    ranked = sorted(api, key=lambda k: (d(k), int(k)))
    return {k: i for i, k in enumerate(ranked)}


def load_object_info(src: str) -> dict:
    if src.startswith("http"):
        with urllib.request.urlopen(src.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    return json.loads(Path(src).read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object-info", required=True, help="ComfyUI URL or a saved object_info.json")
    ap.add_argument("--out", default=str(ROOT / "workflows"))
    ap.add_argument("--no-thumbnails", action="store_true", help="do not render <name>.jpg (needs a ComfyUI URL)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="browser for the thumbnails")
    a = ap.parse_args(argv)
    info = load_object_info(a.object_info)
    out = Path(a.out)
    (out / "api").mkdir(parents=True, exist_ok=True)
    written = {}
    for name, api in workflows().items():
        (out / "api" / f"{name}.json").write_text(json.dumps(api_twin(api, info, name), indent=2) + "\n")
        ui = to_ui(api, info, name)
        (out / ui_file_name(name)).write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n")
        written[name] = out / ui_file_name(name)
        print(f"wrote {ui_file_name(name)}: fit view {fit_view_scale(ui, (1600, 900)):.2f} at 1600x900, "
              f"{fit_view_scale(ui, (1920, 1080)):.2f} at 1920x1080; opening scale {ui['extra']['ds']['scale']}")
    if out.resolve() == (ROOT / "workflows").resolve():
        TEMPLATE_CARDS.write_text(json.dumps(template_cards(), indent=2, ensure_ascii=False) + "\n")
    if not a.no_thumbnails:
        if not a.object_info.startswith("http"):
            ap.error("thumbnails need a running ComfyUI: pass its URL as --object-info, or --no-thumbnails")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from workflow_browser import render_thumbnails

        for path in render_thumbnails(a.object_info, list(written.values()), chromium=a.chromium):
            print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

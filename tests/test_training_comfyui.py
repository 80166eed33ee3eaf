"""The training nodes in a real ComfyUI (the server of ``test_comfyui_e2e.py``: CPU, the shared tiny checkpoint).

Checks: a data set with bad lines is read with each skipped line named on the node; a few training steps
write one LoRA file into models/loras/audiostory/ with its settings in the metadata; that LoRA, picked on the
Model Loader, changes the next render while strength 0 renders the base exactly (and the model the trainer
was given is left untouched: a render with it after training equals a fresh load at strength 0); a second run
with other settings encodes no clip (the latent cache in ComfyUI's temp folder; counted by ``tests/vae_spy.py``)
and trains as the first; Cancel (/interrupt) during training leaves no file; a prefix with a folder is refused
before anything runs.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

import comfy_server
from test_comfyui_e2e import API_DIR, _error_of, _files, _ui_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "audiostory_train_example"
# A model root the trainer can use: the shared fixture's VAE encoder writes 2 latent channels (encoder_hidden_size
# 4) where its DiT takes 64, so it cannot encode clips. This root links every part of the shared fixture but
# Flux_detokenizer/, whose VAE is a random one of the same config with encoder_hidden_size 128 (64 channels).
TRAINABLE = "Trainable"
TRAINING_STARTED = "AudioStory: training a rank-"     # nodes/training.py logs it when the step loop starts
LOADER, DATA, TRAIN, SAVE, PREVIEW, LOSSES = "1", "10", "11", "12", "13", "14"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, shared_root):
    yield from comfy_server.serve(tmp_path_factory.mktemp("comfy"), shared_root,
                                  extra_nodes=[Path(__file__).with_name("vae_spy.py")])


def _train_prompt(dataset: str, prefix: str, steps: int = 4, lr: float = 1e-2) -> dict:
    return {
        LOADER: {"class_type": "AudioStoryModelLoader",
                 "inputs": {"root": TRAINABLE, "dtype": "auto", "lora": "none", "lora_strength": 1.0}},
        DATA: {"class_type": "AudioStoryTrainingData",
               "inputs": {"dataset": dataset, "planner": [LOADER, 0], "vae": [LOADER, 2]}},
        TRAIN: {"class_type": "AudioStoryTrainLora",
                "inputs": {"planner": [LOADER, 0], "model": [LOADER, 1], "vae": [LOADER, 2], "data": [DATA, 0],
                           "steps": steps, "learning_rate": lr, "rank": 4, "alpha": 4.0, "seed": 3,
                           "batch_size": 1, "grad_accum": 1, "schedule": "constant", "warmup_steps": 0,
                           "bf16": False, "gradient_checkpointing": False}},
        SAVE: {"class_type": "AudioStorySaveLora", "inputs": {"lora": [TRAIN, 0], "filename_prefix": prefix}},
        PREVIEW: {"class_type": "PreviewImage", "inputs": {"images": [TRAIN, 1]}},
        LOSSES: {"class_type": "PreviewAny", "inputs": {"source": [TRAIN, 2]}},    # core's node: the LOSS_MAP as JSON
    }


def _losses(entry) -> list[float]:
    return json.loads(entry["outputs"][LOSSES]["text"][0])["loss"]


def _cache_files(c) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of each latent cache file (in ComfyUI's temp folder, which ``--temp-directory T``
    puts at T/temp): a rewrite (atomic: a new file) changes both."""
    files = (c.root / "temp").glob("**/audiostory/latent_cache/*.safetensors")
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def _render_prompt(lora: str, strength: float, seed: int, prefix: str) -> dict:
    """Plan from JSON -> tokens -> 6 sampler steps -> SaveLatent (the latents compared exactly)."""
    api = json.loads((API_DIR / "audiostory_plan_editing.json").read_text())
    api["1"]["inputs"].update({"root": TRAINABLE, "lora": lora, "lora_strength": strength})
    api["4"]["inputs"].update({"steps": 6, "seed": seed})
    for k in ("5", "6"):
        api.pop(k)
    api["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": prefix}}
    return api


def _latent(c, entry):
    from safetensors.torch import load_file

    files = [f for f in _files(c, entry) if f.suffix == ".latent"]
    assert len(files) == 1, entry["outputs"]
    return load_file(str(files[0]))["latent_tensor"]


def _loras(c) -> Path:
    return c.root / "models" / "loras" / "audiostory"


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def build_trainable_root(shared_root: Path, dest: Path) -> Path:
    """``dest``: the shared fixture with a VAE whose encoder fits the DiT (see TRAINABLE)."""
    import torch

    from benchmarks.official_layout import write_vae

    dest.mkdir(parents=True)
    for entry in shared_root.iterdir():
        if entry.name != "Flux_detokenizer":
            (dest / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    flux = dest / "Flux_detokenizer"
    flux.mkdir()
    (flux / "config.json").symlink_to(shared_root / "Flux_detokenizer" / "config.json")
    cfg = json.loads((shared_root / "Flux_detokenizer" / "vae_config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    torch.manual_seed(0)
    write_vae(flux, {**cfg, "encoder_hidden_size": 2 * cfg["decoder_input_channels"]})
    return dest


@pytest.fixture(scope="module")
def trainable(comfy, shared_root):  # noqa: F811
    link = comfy.root / "models" / "audiostory" / TRAINABLE
    if not link.exists():
        build_trainable_root(shared_root, link)
    return comfy


@pytest.fixture(scope="module")
def trained(trainable):
    """A data set with two good clips, a missing file and a broken line; 4 steps; saved as <prefix>_00001."""
    comfy = trainable
    src = comfy.root / "input" / EXAMPLE
    assert (src / "captions.jsonl").is_file(), "the pack did not copy its training example into input/"
    mixed = comfy.root / "input" / "mixed_sounds"
    mixed.mkdir()
    for name in ("rain.wav", "beep.wav"):
        shutil.copy(src / name, mixed / name)
    (mixed / "captions.jsonl").write_text(
        json.dumps({"audio": "rain.wav", "caption": "soft rain"}) + "\n"
        + json.dumps({"audio": "missing.wav", "caption": "nothing"}) + "\n"
        + "{not json\n"
        + json.dumps({"audio": "beep.wav", "caption": "a beep"}) + "\n")
    prefix = f"rain_{uuid.uuid4().hex[:6]}"
    entry = comfy.run(_train_prompt("mixed_sounds", prefix))
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    return entry, prefix


def test_schemas_follow_the_cli_defaults(comfy):  # noqa: F811
    oi = comfy.object_info
    assert oi["AudioStoryTrainingData"]["output"] == ["AUDIOSTORY_TRAINING_DATA", "STRING"]
    assert oi["AudioStoryTrainLora"]["output"] == ["AUDIOSTORY_LORA", "IMAGE", "LOSS_MAP"]
    assert oi["AudioStorySaveLora"]["output_node"] is True
    assert EXAMPLE in oi["AudioStoryTrainingData"]["input"]["required"]["dataset"][1]["options"]
    req = oi["AudioStoryTrainLora"]["input"]["required"]
    assert req["steps"][1]["default"] == 100 and req["learning_rate"][1]["default"] == 1e-4   # TrainConfig's
    assert req["rank"][1]["default"] == 8 and req["schedule"][1]["options"] == ["constant", "cosine"]
    for node in ("AudioStoryTrainingData", "AudioStoryTrainLora", "AudioStorySaveLora"):
        for name, spec in oi[node]["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_data_node_names_each_skipped_line(comfy, trained):  # noqa: F811
    entry, _ = trained
    text = _ui_text(entry, DATA)
    assert text.splitlines()[0] == "mixed_sounds: 2 clips used, 2 skipped", text
    assert "captions.jsonl:2" in text and "missing.wav" in text
    assert "captions.jsonl:3" in text and "not valid JSON" in text
    assert "captions.jsonl:1" not in text and "captions.jsonl:4" not in text


def test_training_writes_one_lora_with_its_settings(comfy, trained):  # noqa: F811
    from safetensors import safe_open

    entry, prefix = trained
    path = _loras(comfy) / f"{prefix}_00001.safetensors"
    assert path.is_file(), _listing(_loras(comfy))
    assert [n for n in _listing(_loras(comfy)) if n.startswith(prefix)] == [path.name]   # no temp file left
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    cfg = json.loads(meta["config"])
    assert meta["format"] == "audiostory-lora/1" and meta["rank"] == "4"
    assert cfg["steps"] == 4 and cfg["lr"] == 1e-2 and cfg["seed"] == 3 and cfg["dataset"] == "mixed_sounds"
    assert cfg["clips"] == 2 and keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert entry["outputs"][SAVE]["text"][0].endswith(path.name)
    assert entry["outputs"][PREVIEW]["images"], "the loss graph IMAGE was not previewed"
    assert "4 steps on 2 clips" in _ui_text(entry, TRAIN)


def test_a_second_run_encodes_no_clip_and_trains_as_the_first(comfy, trained):
    """Steps 4 -> 2 (same seed and learning rate): no VAE encode, no cache file rewritten, and its two losses are
    the first run's first two exactly (constant schedule: a step's loss depends only on the steps before it)."""
    first_entry, _ = trained
    first = _losses(first_entry)
    assert len(first) == 4
    assert comfy.get("/audiostory-test/vae-encodes?reset=1")["encodes"] == 2, "the first run encodes its 2 clips"
    before = _cache_files(comfy)
    assert len(before) == 2, before
    entry = comfy.run(_train_prompt("mixed_sounds", f"again_{uuid.uuid4().hex[:6]}", steps=2))
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    assert comfy.get("/audiostory-test/vae-encodes")["encodes"] == 0, "a cached clip was encoded again"
    assert _cache_files(comfy) == before
    assert _losses(entry) == first[:2]


def test_trained_lora_changes_the_render_and_strength_zero_is_the_base(comfy, trained):  # noqa: F811
    _, prefix = trained
    name = f"{prefix}_00001.safetensors"
    assert name in comfy.get("/object_info/AudioStoryModelLoader")["AudioStoryModelLoader"]["input"][
        "optional"]["lora"][1]["options"]
    runs = {}
    # "base" uses the loader the trainer was given (cached, same inputs): training must not have changed it.
    for key, lora, strength in (("base", "none", 1.0), ("off", name, 0.0), ("on", name, 1.0)):
        entry = comfy.run(_render_prompt(lora, strength, seed=11, prefix=f"latents/{key}_{prefix}"))
        assert entry["status"]["status_str"] == "success", _error_of(entry)
        runs[key] = _latent(comfy, entry)
    assert runs["base"].equal(runs["off"]), "strength 0 must render the base model exactly"
    diff = (runs["on"] - runs["base"]).abs().max().item()
    assert diff > 1e-3, f"the trained LoRA did not change the render (max |diff| {diff})"


def test_training_template_runs_as_shipped(trainable):
    """The template's API twin (root aside: see TRAINABLE) trains on the bundled example and saves its LoRA."""
    comfy = trainable
    api = json.loads((API_DIR / "audiostory_train_lora.json").read_text())
    loader = next(k for k, v in api.items() if v["class_type"] == "AudioStoryModelLoader")
    api[loader]["inputs"]["root"] = TRAINABLE
    before = _listing(_loras(comfy))
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "success", _error_of(entry)
    new = sorted(_listing(_loras(comfy)) - before)
    assert len(new) == 1 and new[0].startswith("audiostory_lora_") and new[0].endswith(".safetensors"), new
    assert _files(comfy, entry), "the loss graph was not previewed"


def test_cancel_during_training_writes_nothing(trainable):
    comfy = trainable
    before = _listing(_loras(comfy))
    prefix = f"cancelled_{uuid.uuid4().hex[:6]}"
    started = comfy.log_text().count(TRAINING_STARTED)
    pid = comfy.submit(_train_prompt(EXAMPLE, prefix, steps=10_000))
    t0 = time.time()
    while time.time() - t0 < 600 and comfy.log_text().count(TRAINING_STARTED) == started:   # clips encoded
        time.sleep(0.2)
    assert comfy.log_text().count(TRAINING_STARTED) > started, "training did not start"
    time.sleep(2.0)                                  # inside the step loop (10,000 steps)
    code, _ = comfy.post("/interrupt", {})
    assert code == 200
    entry = comfy.wait(pid, timeout=120)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    assert _listing(_loras(comfy)) == before
    assert prefix not in comfy.log_text()


def test_a_prefix_with_a_folder_is_refused_before_running(trainable):
    comfy = trainable
    api = _train_prompt(EXAMPLE, "../escape")
    api.pop(PREVIEW), api.pop(LOSSES)   # with a valid output left, ComfyUI would queue the rest and report only the save
    code, r = comfy.post("/prompt", {"prompt": api, "client_id": "t"})
    assert code == 400 and "filename_prefix" in json.dumps(r), r
    for hostile in ("../input", "/etc", "~", str(comfy.root / "input" / EXAMPLE), f"{EXAMPLE}/../{EXAMPLE}",
                    f"{EXAMPLE}/captions.jsonl", "x" * 5000):
        code, r = comfy.post("/prompt", {"prompt": _train_prompt(hostile, "ok"), "client_id": "t"})
        assert code == 400 and "not found" in json.dumps(r), (hostile[:50], r)
    assert comfy.get("/queue")["queue_running"] == []        # nothing ran


def test_data_node_reads_video_lines_captioned_by_the_picked_vlm(trainable, shared_root):
    """A video line without events is skipped (named, saying what to pick) while ``vlm`` is none, and captioned
    scene by scene once a VLM folder is picked; a video line with its own events is used either way."""
    from synthetic_media import write_video
    from tiny_media_models import build_tiny_vlm

    comfy = trainable
    folder = comfy.root / "input" / "video_sounds"
    folder.mkdir()
    write_video(folder / "tones.mp4", cuts=[1.5, 3.0], duration=4.5, shot_tones=[300.0, 520.0, 780.0])
    (folder / "videos.jsonl").write_text(
        json.dumps({"video": "tones.mp4"}) + "\n"
        + json.dumps({"video": "tones.mp4", "instruction": "Two tones.",
                      "events": [{"start": 0.2, "end": 1.3, "caption": "a low hum"},
                                 {"start": 1.7, "end": 2.8, "caption": "a beep"}]}) + "\n")
    build_tiny_vlm(comfy.root / "models" / "audiostory" / "tiny-vlm", shared_root / "Qwen2.5-tiny-Instruct")
    texts = {}
    for vlm in ("none", "tiny-vlm"):
        prompt = {LOADER: {"class_type": "AudioStoryModelLoader",
                           "inputs": {"root": TRAINABLE, "dtype": "auto", "lora": "none", "lora_strength": 1.0}},
                  DATA: {"class_type": "AudioStoryTrainingData",
                         "inputs": {"dataset": "video_sounds", "planner": [LOADER, 0], "vae": [LOADER, 2],
                                    "vlm": vlm}},
                  PREVIEW: {"class_type": "PreviewAny", "inputs": {"source": [DATA, 1]}}}
        entry = comfy.run(prompt)
        assert entry["status"]["status_str"] == "success", _error_of(entry)
        texts[vlm] = _ui_text(entry, DATA)
    assert texts["none"].splitlines()[0] == "video_sounds: 2 clips used, 1 skipped", texts["none"]
    assert "videos.jsonl:1" in texts["none"] and "pick a vlm on the AudioStory Training Data node" in texts["none"]
    assert texts["tiny-vlm"].splitlines()[0] == "video_sounds: 5 clips used, 0 skipped", texts["tiny-vlm"]

"""Every tensor read from a file is shape-checked, and a mismatch names the key and both shapes.

Each loader gets the three wrong shapes that do not fail by themselves: ``[1, in]`` (broadcasts in a
LoRA merge or an addition), the transposed matrix (same element count) and a 1-D vector.
The expected shape in each message is the one the format or the module defines, written here by hand.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from audiostory_core.errors import WeightsMismatchError
from audiostory_core.models.config import locate
from audiostory_core.models.loading import load_models

P = "seedx.llm.base_model.model."


def wrong_shapes(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three shapes: one row of the last-but-one axis, the last two axes swapped, a 1-D vector."""
    return {"[1, in]": t[..., :1, :].clone(), "transposed": t.transpose(-1, -2).contiguous(),
            "1-D": t.reshape(-1)[: t.shape[-1]].clone()}


KINDS = ["[1, in]", "transposed", "1-D"]
KIND_IDS = ["one_row", "transposed", "vector"]


def _rewrite_safetensors(f: Path, key: str, value: torch.Tensor) -> None:
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
    data = load_file(str(f))
    data[key] = value
    save_file(data, str(f), metadata=meta)


def _names(err: WeightsMismatchError, key: str, found: torch.Tensor, expected: str) -> None:
    msg = str(err)
    assert key in msg and str(tuple(found.shape)) in msg and expected in msg, msg


# ---------------------------------------------------------------- LLM base weight and LoRA
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("key,expected", [
    (P + "model.layers.0.mlp.up_proj.weight", "(128, 64)"),                 # frozen base weight (LoRA target)
    (P + "model.layers.0.mlp.up_proj.lora_A.default.weight", "(16, 64)"),   # LoRA A [r, in], r = 16
    (P + "model.layers.0.mlp.up_proj.lora_B.default.weight", "(128, 16)"),  # LoRA B [out, r]
], ids=["base", "lora_A", "lora_B"])
def test_llm_weight_of_the_wrong_shape_is_named(shared_root, tmp_path, key, expected, kind):
    """The official fixture's checkpoint with one LLM tensor replaced (the other folders linked, not copied)."""
    root = tmp_path / "m"
    root.mkdir()
    for part in shared_root.iterdir():
        if part.name != "audiostory":
            (root / part.name).symlink_to(part, target_is_directory=part.is_dir())
    shutil.copytree(shared_root / "audiostory", root / "audiostory")
    f = root / "audiostory" / "pytorch_model.bin"
    sd = torch.load(f, weights_only=True)
    bad = wrong_shapes(sd[key])[kind]
    sd[key] = bad
    torch.save(sd, f)
    with pytest.raises(WeightsMismatchError) as e:
        load_models(locate(root), dit=False, vae=False)
    _names(e.value, key, bad, expected)


# ---------------------------------------------------------------- memory files
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_memory_file_tensor_of_the_wrong_shape_is_named(tmp_path, kind):
    from audiostory_core.stages.plan import StoryPlan
    from audiostory_core.tasks.memory import StoryMemory

    plan = StoryPlan.from_dict({"instruction": "Rain. The total duration is 4.0 seconds.", "reasoning": "r",
                                "events": [{"caption": "rain", "duration": 2}, {"caption": "wind", "duration": 2}]})
    f = StoryMemory().add_chapter(plan, torch.randn(2, 8, 1024), torch.randn(2, 4, 1024)).save(tmp_path / "m.safetensors")
    assert len(StoryMemory.load(f).events) == 2                       # the file as written loads
    bad = wrong_shapes(torch.randn(4, 1024))[kind]
    _rewrite_safetensors(f, "event1.residual", bad)
    with pytest.raises(WeightsMismatchError) as e:
        StoryMemory.load(f)
    _names(e.value, "event1.residual", bad, "(4, 1024)")             # event 0's M, the token width


# ---------------------------------------------------------------- --dump folders (--reuse)
def _dump(folder: Path) -> Path:
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps(
        {"instruction": "Rain. The total duration is 4.0 seconds.", "reasoning": "r",
         "events": [{"caption": "rain", "duration": 2}, {"caption": "wind", "duration": 2}]}))
    save_file({"semantic": torch.randn(2, 8, 1024), "residual": torch.randn(2, 4, 1024),
               "fused": torch.randn(2, 8, 1024)}, str(folder / "tokens.safetensors"))
    save_file({"latents": torch.randn(2, 176, 64)}, str(folder / "latents.safetensors"))
    return folder


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_dump_tensor_of_the_wrong_shape_is_named(tmp_path, kind):
    from audiostory_core.tasks.reroll import read_dump

    d = _dump(tmp_path / "dump")
    assert read_dump(d).tokens.fused.shape == (2, 8, 1024)            # the folder as written loads
    bad = wrong_shapes(torch.randn(2, 8, 1024))[kind]
    _rewrite_safetensors(d / "tokens.safetensors", "fused", bad)
    with pytest.raises(WeightsMismatchError) as e:
        read_dump(d)
    _names(e.value, "fused", bad, "(*, 8, 1024)")                      # the semantic tokens' N, the token width


def test_dump_tokens_must_fit_the_loaded_models(tiny_pipeline):
    """Tokens from another model (another query count) are refused before sampling, naming both shapes."""
    from audiostory_core.stages.event_tokens import EventTokens
    from audiostory_core.stages.plan import StoryPlan
    from audiostory_core.tasks.reroll import reroll

    n = int(tiny_pipeline.models.null_embedding.shape[1])       # the DiT's query count (its CFG negative)
    frames = int(tiny_pipeline.models.dit.config.audio_seq_len)
    plan = StoryPlan.from_dict({"instruction": "Rain. The total duration is 4.0 seconds.", "reasoning": "r",
                                "events": [{"caption": "rain", "duration": 2}, {"caption": "wind", "duration": 2}]})
    other = EventTokens(semantic=torch.randn(2, n + 1, 1024), residual=torch.randn(2, 4, 1024),
                        fused=torch.randn(2, n + 1, 1024), durations=plan.durations)
    with pytest.raises(WeightsMismatchError) as e:
        reroll(tiny_pipeline, plan, other, torch.randn(2, frames, 64), [0], steps=1)
    assert f"fused: file (2, {n + 1}, 1024) vs expected (2, {n}, 1024)" in str(e.value)


# ---------------------------------------------------------------- null-embedding cache
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_cached_null_embedding_of_the_wrong_shape_is_named(tiny_root, tmp_path, monkeypatch, kind):
    monkeypatch.delenv("AUDIOSTORY_CACHE", raising=False)  # then the model folder (a copy) is the cache
    root = tmp_path / "m"
    shutil.copytree(tiny_root, root)
    first = load_models(locate(root), planner=False, vae=False).null_embedding
    cache = next((root / "Flux_detokenizer").glob("null_embedding_*.safetensors"))
    bad = wrong_shapes(first)[kind]
    _rewrite_safetensors(cache, "null_embedding", bad)
    with pytest.raises(WeightsMismatchError) as e:
        load_models(locate(root), planner=False, vae=False)
    _names(e.value, "null_embedding", bad, str(tuple(first.shape)))
    assert "rm '" in str(e.value)


# ---------------------------------------------------------------- audio understanding (Whisper resampler)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_whisper_resampler_weight_of_the_wrong_shape_is_named(shared_pipeline, kind):
    from audiostory_core.models.loading import Checkpoint
    from audiostory_core.tasks.continuation import ResamplerSpec, load_resampler

    planner = shared_pipeline.models.planner
    tensors = dict(Checkpoint(shared_pipeline.models.paths.checkpoint).tensors)
    spec = ResamplerSpec.from_config(planner.config.raw)
    key = "seedx.whisper_resampler_llava.aud_projector.0.weight"
    width = int(planner.llm.get_input_embeddings().weight.shape[1])
    assert tuple(tensors[key].shape) == (spec.tgt_embed_dim, spec.ori_embed_dim)   # Linear(ori -> tgt)
    bad = wrong_shapes(tensors[key])[kind]
    tensors[key] = bad
    with pytest.raises(WeightsMismatchError) as e:
        load_resampler(spec, tensors, width)
    _names(e.value, key, bad, str((spec.tgt_embed_dim, spec.ori_embed_dim)))


# ---------------------------------------------------------------- Whisper, CLAP, VLM folders
@pytest.fixture(scope="module")
def media_models(tmp_path_factory, shared_root):
    from tiny_clap import build_tiny_clap
    from tiny_media_models import build_tiny_vlm, build_tiny_whisper

    base = tmp_path_factory.mktemp("media")
    return {"whisper": build_tiny_whisper(base / "whisper"), "clap": build_tiny_clap(base / "clap"),
            "vlm": build_tiny_vlm(base / "vlm", shared_root / "Qwen2.5-tiny-Instruct")}


def _load(kind: str, folder: Path):
    from audiostory_core.media.captioning import VisionCaptioner
    from audiostory_core.tasks.continuation import WhisperFeatures
    from audiostory_core.tasks.score import ClapScorer

    if kind == "whisper":
        return WhisperFeatures.from_pretrained(folder.name, search_dirs=[folder.parent])
    if kind == "clap":
        return ClapScorer.from_pretrained(folder)
    return VisionCaptioner.from_pretrained(folder.name, search_dirs=[folder.parent])


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("model", ["whisper", "clap", "vlm"])
def test_media_model_weight_of_the_wrong_shape_is_named(media_models, tmp_path, model, kind):
    folder = tmp_path / media_models[model].name
    shutil.copytree(media_models[model], folder)
    f = next(folder.glob("*.safetensors"))
    data = load_file(str(f))
    key = next(k for k, v in sorted(data.items()) if v.dim() == 2 and v.shape[0] != v.shape[1]
               and "embed" not in k and "position" not in k)
    good = data[key]
    bad = wrong_shapes(good)[kind]
    _rewrite_safetensors(f, key, bad)
    with pytest.raises(WeightsMismatchError) as e:
        _load(model, folder)
    msg = str(e.value)
    assert key.split(".", 1)[-1] in msg and str(tuple(bad.shape)) in msg and str(tuple(good.shape)) in msg, msg

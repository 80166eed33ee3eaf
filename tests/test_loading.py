"""Loading the official layout strictly, whatever the folder is called."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from audiostory_core.models.config import find_audiostory_dir, locate, resolve_in_root
from audiostory_core.errors import ModelFilesError, WeightsMismatchError
from audiostory_core.models.loading import load_models


def _copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root, dst, symlinks=False)
    return dst


def test_checkpoint_folder_is_found_by_contents(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    for name in ("audiostory-3B", "audiostory_3b", "whatever"):
        cur = next(p for p in root.iterdir() if (p / "pytorch_model.bin").exists())
        cur.rename(root / name)
        assert find_audiostory_dir(root) == root / name
        assert locate(root).audiostory_dir == root / name


def test_pointing_at_the_checkpoint_folder_itself_uses_its_parent_as_root(tiny_root):
    paths = locate(tiny_root / "AudioStory-3B")
    assert paths.root == tiny_root
    assert paths.qwen_dir == tiny_root / "Qwen2.5-3B-Instruct"


def test_config_paths_resolve_against_the_root_not_the_cwd(tiny_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_in_root(tiny_root, "ckpt/Qwen2.5-3B-Instruct") == tiny_root / "Qwen2.5-3B-Instruct"
    assert resolve_in_root(tiny_root, "google/flan-t5-large") == tiny_root / "flan-t5-large"
    assert resolve_in_root(tiny_root, "ckpt/nothing-here") is None


def test_shared_fixture_layout_is_found(shared_root):
    paths = locate(shared_root)
    assert paths.audiostory_dir.name == "audiostory"
    assert paths.t5_dir.name == "flan-t5-tiny" and paths.tokenizer_dir.name == "tokenizer"


def test_token_ids_follow_the_official_order(shared_pipeline):
    planner = shared_pipeline.models.planner
    tok = planner.tokenizer
    expect = {"</t5>": 503, "<video_padding>": 504, "<timestamp>": 505, "</timestamp>": 506, "<t5>": 507,
              "<t5_00000>": 508, "<t5_00099>": 607, "<aud>": 608, "</aud>": 609, "<aud_00000>": 610,
              "<aud_00500>": 1110, "<|gen|>": 1111, "<|/gen|>": 1112, "<|think|>": 1113, "<|/think|>": 1114}
    assert {t: tok.convert_tokens_to_ids(t) for t in expect} == expect
    assert len(tok) == 1115


def test_missing_checkpoint_file_says_where_it_goes(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    (root / "Flux_detokenizer" / "model.safetensors").unlink()
    with pytest.raises(ModelFilesError, match=r"Flux_detokenizer/model.safetensors"):
        load_models(locate(root))


def test_missing_base_llm_folder_is_named(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    shutil.rmtree(root / "Qwen2.5-3B-Instruct")
    with pytest.raises(ModelFilesError, match="Qwen2.5-3B-Instruct"):
        locate(root)


def _edit_bin(root: Path, fn) -> None:
    f = root / "AudioStory-3B" / "pytorch_model.bin"
    sd = torch.load(f, weights_only=True)
    fn(sd)
    torch.save(sd, f)


def test_missing_key_is_named(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    key = "seedx.llm.base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"
    _edit_bin(root, lambda sd: sd.pop(key))
    with pytest.raises(WeightsMismatchError) as e:
        load_models(locate(root))
    assert key in str(e.value) and e.value.missing == [key]


def test_wrong_shape_is_named(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    _edit_bin(root, lambda sd: sd.__setitem__("tangoflux.fc.0.bias", torch.zeros(7)))
    with pytest.raises(WeightsMismatchError, match=r"fc.0.bias: file \(7,\) vs model \(1024,\)"):
        load_models(locate(root))


def test_unexpected_key_is_named_in_a_warning_and_fatal_when_strict(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    _edit_bin(root, lambda sd: sd.__setitem__("tangoflux.transformer.extra_block.weight", torch.zeros(1)))
    models = load_models(locate(root), planner=False, vae=False)
    assert len(models.warnings) == 1 and "tangoflux.transformer.extra_block.weight" in models.warnings[0]
    with pytest.raises(WeightsMismatchError, match="extra_block"):
        load_models(locate(root), planner=False, vae=False, strict=True)


def test_corrupt_checkpoint_gives_a_clear_error(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path / "m")
    f = root / "AudioStory-3B" / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelFilesError, match="corrupt or truncated"):
        load_models(locate(root))


@pytest.mark.parametrize("layout,base_in_bin", [("peft_new", True), ("peft04", False)])
def test_both_lora_layouts_and_base_weights_from_the_qwen_folder(tiny_pipeline, tmp_path, layout, base_in_bin):
    from tiny_checkpoint import build_tiny_checkpoint

    root = build_tiny_checkpoint(tmp_path / "m", lora_layout=layout, base_in_bin=base_in_bin)
    other = load_models(locate(root), dit=False, vae=False).planner.llm.state_dict()
    ref = tiny_pipeline.models.planner.llm.state_dict()
    assert other.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(other[k], ref[k], rtol=0, atol=1e-6)


def test_lora_is_merged_and_saved_norms_are_used(tiny_root, tiny_pipeline):
    sd = torch.load(tiny_root / "AudioStory-3B" / "pytorch_model.bin", weights_only=True)
    P = "seedx.llm.base_model.model.model.layers.0."
    llm = tiny_pipeline.models.planner.llm.state_dict()
    w = sd[P + "self_attn.q_proj.weight"] + 2.0 * sd[P + "self_attn.q_proj.lora_B.default.weight"] @ sd[
        P + "self_attn.q_proj.lora_A.default.weight"]
    torch.testing.assert_close(llm["model.layers.0.self_attn.q_proj.weight"], w)
    torch.testing.assert_close(llm["model.layers.0.input_layernorm.weight"],
                               sd[P + "input_layernorm.modules_to_save.default.weight"])
    assert not torch.equal(llm["model.layers.0.input_layernorm.weight"], sd[P + "input_layernorm.original_module.weight"])


def test_null_embedding_is_cached_and_t5_not_loaded_again(tiny_root, tmp_path, monkeypatch):
    import audiostory_core.models.null_embedding as ne

    monkeypatch.delenv("AUDIOSTORY_CACHE", raising=False)  # then the model folder (a copy) is the cache
    root = _copy(tiny_root, tmp_path / "m")
    first = load_models(locate(root), planner=False, vae=False).null_embedding
    assert (root / "Flux_detokenizer" / "null_embedding_n4_float32.safetensors").is_file()

    def boom(*a, **k):
        raise AssertionError("T5 was loaded although the cache exists")

    monkeypatch.setattr(ne, "compute_null_embedding", boom)
    again = load_models(locate(root), planner=False, vae=False).null_embedding
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_null_embedding_matches_t5_of_the_empty_string(shared_pipeline, shared_root):
    from transformers import AutoTokenizer, T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(shared_root / "flan-t5-tiny").eval()
    tok = AutoTokenizer.from_pretrained(shared_root / "flan-t5-tiny")
    b = tok([""], max_length=8, padding="max_length", truncation=True, return_tensors="pt")
    assert b.input_ids.tolist() == [[1, 0, 0, 0, 0, 0, 0, 0]]
    with torch.no_grad():
        want = t5(input_ids=b.input_ids, attention_mask=b.attention_mask)[0]
    torch.testing.assert_close(shared_pipeline.models.null_embedding, want)


def test_t5_loaded_straight_into_bf16_gives_the_official_null_embedding(shared_root):
    """The official run loads T5 in fp32, overwrites it with the checkpoint, then casts the whole model;
    loading each tensor straight into bf16 (one copy in memory) must give the same bits."""
    from transformers import AutoTokenizer, T5EncoderModel

    from audiostory_core.models.null_embedding import compute_null_embedding
    from audiostory_core.models.weights import T5_PREFIX, load_torch_checkpoint

    paths = locate(shared_root)
    t5_weights = {k: v for k, v in load_torch_checkpoint(paths.checkpoint).items() if k.startswith(T5_PREFIX)}
    assert t5_weights
    got = compute_null_embedding(paths.t5_dir, 8, torch.bfloat16, t5_weights)

    official = T5EncoderModel.from_pretrained(paths.t5_dir)
    official.load_state_dict({k[len(T5_PREFIX):]: v for k, v in t5_weights.items()}, strict=False)
    official = official.to(torch.bfloat16).eval()
    b = AutoTokenizer.from_pretrained(paths.t5_dir)([""], max_length=8, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        want = official(input_ids=b.input_ids, attention_mask=b.attention_mask)[0]
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_load_reports_its_stages_in_order(tiny_root, tmp_path):
    """T5 and the VAE (the big transient copies) come first; the benchmark reads each stage's peak."""
    from audiostory_core.models.loading import load_stages

    seen: list[str] = []
    load_models(locate(tiny_root), on_stage=seen.append)
    assert seen == load_stages() == ["null_embedding", "vae", "llm", "heads", "dit", "validate"]
    seen.clear()
    load_models(locate(tiny_root), planner=False, vae=False, on_stage=seen.append)
    assert seen == load_stages(planner=False, vae=False) == ["null_embedding", "dit", "validate"]

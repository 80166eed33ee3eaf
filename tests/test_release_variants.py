"""The release as users really have it: each variant is a copy of the official-layout fixture changed
the way real downloads differ. Each one must load, render the same story and report what it found;
what must stay strict (missing, mis-shaped tensors, wrong token order) stays strict."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

from audiostory_core.errors import ModelFilesError, WeightsMismatchError
from audiostory_core.models.config import locate
from audiostory_core.models.loading import load_models
from audiostory_core.progress import Hooks
from hub_cache import fill_hub_cache

STORY = ("A fire truck leaves the station with sirens blaring.", 7.5)  # the fixture plans 2 events
RENDER = dict(steps=2, guidance=4.0, seed=3, noise="seeded")
T5_EMBED = "tangoflux.text_encoder.encoder.embed_tokens.weight"


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module", autouse=True)
def shared_fixture_untouched(shared_root):
    """No test here may write into ../shared (caches go to AUDIOSTORY_CACHE or the copies)."""
    before = _tree_state(shared_root)
    yield
    assert _tree_state(shared_root) == before


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUDIOSTORY_CACHE", str(cache))
    return cache


def copy_root(shared_root: Path, dst: Path) -> Path:
    shutil.copytree(shared_root, dst, ignore=shutil.ignore_patterns("null_embedding_*"))
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    return dst


def edit_bin(root: Path, fn) -> None:
    f = root / "audiostory" / "pytorch_model.bin"
    sd = torch.load(f, weights_only=True)
    fn(sd)
    torch.save(sd, f)


def edit_yaml(root: Path, fn) -> None:
    f = root / "audiostory" / "config.yaml"
    cfg = yaml.safe_load(f.read_text())
    fn(cfg)
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))


# ------------------------------------------------------------------ variants that load and render

def tied_t5_saved_once(root: Path) -> None:
    """safetensors writers (and TangoFlux) store T5's tied embedding only as ``shared.weight``."""
    edit_bin(root, lambda sd: sd.pop(T5_EMBED))


def training_only_keys(root: Path) -> None:
    def add(sd):
        sd["seedx.llm.base_model.model.model.rope_cache"] = torch.zeros(3)
        sd["tangoflux.transformer.extra_block.weight"] = torch.zeros(2, 2)
        sd["ema.step"] = torch.tensor(7)
    edit_bin(root, add)


def resaved_tokenizer(root: Path) -> None:
    """tokenizer.add_tokens(...) then save_pretrained: the tokens are in tokenizer.json, and the folder's
    added_tokens.json (which add_tokens_path names) lists them sorted by id, or in any order."""
    from transformers import AutoTokenizer

    from audiostory_core.stages.grammar import added_tokens

    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    tok.add_tokens(added_tokens())
    shutil.rmtree(root / "tokenizer")
    tok.save_pretrained(str(root / "tokenizer"))
    vocab = tok.get_vocab()
    shuffled = dict(sorted(((t, vocab[t]) for t in added_tokens()), key=lambda kv: hashlib.md5(kv[0].encode()).hexdigest()))
    (root / "tokenizer" / "added_tokens.json").write_text(json.dumps(shuffled))
    # and a stray file in the base model folder, in another order, that the config does not name
    (root / "Qwen2.5-tiny-Instruct" / "added_tokens.json").write_text(json.dumps(dict(reversed(shuffled.items()))))


def hydra_interpolations(root: Path) -> None:
    def interp(cfg):
        cfg["paths"] = {"base": "Qwen2.5-tiny-Instruct", "tok": "tokenizer"}
        cfg["tokenizer"]["pretrained_model_path"] = "${paths.tok}"
        cfg["tokenizer"]["add_tokens_path"] = "${paths.tok}/added_tokens.json"
        cfg["llm_model"]["model"]["pretrained_model_name_or_path"] = "${paths.base}"
        cfg["agent_model"]["model_dims"] = "${seedx_dit_model_cfg.model_dims}"
        cfg["llm_model"]["peft_config"]["alpha32"] = 32
        cfg["llm_model"]["peft_config"]["lora_alpha"] = "${.alpha32}"  # relative to its own mapping
    edit_yaml(root, interp)


VARIANTS = {
    "tied T5 embedding saved once": (tied_t5_saved_once, []),
    "unknown training-only keys": (training_only_keys, ["seedx.llm.base_model.model.model.rope_cache",
                                                        "tangoflux.transformer.extra_block.weight", "ema.step"]),
    "re-saved tokenizer folder": (resaved_tokenizer, []),
    "${} interpolations in config.yaml": (hydra_interpolations, []),
}


@pytest.fixture(scope="module")
def reference_story(shared_pipeline):
    return shared_pipeline.generate(*STORY, **RENDER)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_loads_renders_and_reports(name, shared_root, reference_story, tmp_path, fresh_cache):
    from audiostory_core.pipeline import AudioStoryPipeline

    edit, reported = VARIANTS[name]
    root = copy_root(shared_root, tmp_path / "m")
    edit(root)
    models = load_models(locate(root))
    unknown = [w for w in models.warnings if "belong to no AudioStory module" in w]
    if reported:
        assert len(unknown) == 1 and all(k in unknown[0] for k in reported)
    else:
        assert unknown == []
    story = AudioStoryPipeline(models).generate(*STORY, **RENDER)
    assert [e.caption for e in story.plan.events] == [e.caption for e in reference_story.plan.events]
    torch.testing.assert_close(story.audio, reference_story.audio, rtol=0, atol=0)


def test_tied_t5_embedding_is_used_for_the_null_embedding(shared_root, shared_pipeline, tmp_path, fresh_cache):
    root = copy_root(shared_root, tmp_path / "m")
    tied_t5_saved_once(root)
    models = load_models(locate(root), planner=False, vae=False)
    assert list(fresh_cache.rglob("null_embedding_*.safetensors"))  # computed here, not read from a cache
    torch.testing.assert_close(models.null_embedding, shared_pipeline.models.null_embedding, rtol=0, atol=0)


def test_strict_makes_unknown_keys_fatal_and_names_them(shared_root, tmp_path, fresh_cache):
    root = copy_root(shared_root, tmp_path / "m")
    training_only_keys(root)
    with pytest.raises(WeightsMismatchError) as e:
        load_models(locate(root), strict=True)
    assert "ema.step" in str(e.value) and "tangoflux.transformer.extra_block.weight" in str(e.value)


def test_cli_prints_the_unknown_keys_once(shared_root, tmp_path, fresh_cache, capsys):
    from audiostory_core.cli.common import pipeline

    root = copy_root(shared_root, tmp_path / "m")
    training_only_keys(root)
    args = Namespace(models=str(root), audiostory_dir=None, flux_dir=None, qwen_dir=None, t5_dir=None,
                     tokenizer_dir=None, device="cpu", dtype="fp32", strict=False)
    pipeline(args, planner=False, vae=False)
    err = capsys.readouterr().err
    assert err.count("belong to no AudioStory module") == 1 and "ema.step" in err


def _drop(*keys):
    return lambda sd: [sd.pop(k) for k in keys]


@pytest.mark.parametrize("edit,key", [
    (_drop("tangoflux.text_encoder.shared.weight", T5_EMBED), "shared.weight"),
    (_drop("seedx.projector.0.bias"), "projector.0.bias"),
])
def test_missing_tensors_stay_fatal_even_with_a_tied_partner(shared_root, tmp_path, fresh_cache, edit, key):
    root = copy_root(shared_root, tmp_path / "m")
    edit_bin(root, edit)
    with pytest.raises(WeightsMismatchError, match=key):
        load_models(locate(root), vae=False)


# ------------------------------------------------------------------ tokenizer files

def test_add_tokens_path_in_another_order_is_still_rejected_for_a_plain_tokenizer(shared_root, tmp_path):
    root = copy_root(shared_root, tmp_path / "m")
    f = root / "tokenizer" / "added_tokens.json"
    keys = list(json.loads(f.read_text()))
    f.write_text(json.dumps({k: 0 for k in reversed(keys)}))
    with pytest.raises(ModelFilesError, match=r"added_tokens.json \(add_tokens_path in config.yaml\).*official order"):
        load_models(locate(root), dit=False, vae=False)


def test_missing_tokenizer_config_names_the_file_briefly(shared_root, tmp_path):
    root = copy_root(shared_root, tmp_path / "m")
    (root / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(ModelFilesError) as e:
        load_models(locate(root), dit=False, vae=False)
    assert str(root / "tokenizer" / "tokenizer_config.json") in str(e.value) and len(str(e.value)) < 400


# ------------------------------------------------------------------ generation_config.json

def test_missing_generation_config_falls_back_to_the_qwen_release_with_a_warning(shared_root, shared_pipeline,
                                                                                 tmp_path):
    root = copy_root(shared_root, tmp_path / "m")
    gen_file = root / "Qwen2.5-tiny-Instruct" / "generation_config.json"
    gen_file.unlink()
    models = load_models(locate(root), dit=False, vae=False)
    tok = models.planner.tokenizer
    want_eos = (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"))
    assert models.planner.generation.eos_token_ids == want_eos == shared_pipeline.models.planner.generation.eos_token_ids
    assert models.planner.generation.repetition_penalty == 1.05
    assert models.planner.ids.eos == want_eos
    assert any(str(gen_file) in w for w in models.warnings)


def test_real_qwen_ids_are_the_fallback_when_the_tokenizer_lacks_the_tokens(tmp_path):
    from audiostory_core.models.loading import GenerationSettings

    warnings: list[str] = []
    gen = GenerationSettings.from_dir(tmp_path, warnings)
    assert gen.eos_token_ids == (151645, 151643) and gen.repetition_penalty == 1.05 and len(warnings) == 1


@pytest.mark.parametrize("content,match", [
    ("{not json", "Cannot read"),
    ('["a list"]', "JSON object"),
    ('{"eos_token_id": "x"}', "eos_token_id"),
    ('{"eos_token_id": 2, "repetition_penalty": 0}', "repetition_penalty"),
])
def test_invalid_generation_config_is_a_clear_error(shared_root, tmp_path, content, match):
    root = copy_root(shared_root, tmp_path / "m")
    (root / "Qwen2.5-tiny-Instruct" / "generation_config.json").write_text(content)
    with pytest.raises(ModelFilesError, match=match):
        load_models(locate(root), dit=False, vae=False)


# ------------------------------------------------------------------ config.yaml / config.json checks

@pytest.mark.parametrize("edit,match", [
    (lambda c: c["agent_model"].pop("model_dims"), "lacks 'agent_model.model_dims'"),
    (lambda c: c["train_dataset"]["datapipes"][0].update(num_t5_out_tokens=101), r"num_t5_out_tokens \(N\).*at most 100"),
    (lambda c: c["train_dataset"]["datapipes"][0].update(num_aud_out_tokens=502), r"num_aud_out_tokens \(M\).*at most 501"),
    (lambda c: c["train_dataset"]["datapipes"][0].update(num_aud_out_tokens=0), "positive integer"),
    (lambda c: c["tokenizer"].update(pretrained_model_path="${paths.nowhere}"), r"'\$\{paths.nowhere\}' points at nothing"),
    (lambda c: c["tokenizer"].update(pretrained_model_path="${now:%Y}"), "resolver that is not supported"),
    (lambda c: c.update(a="${b}", b="${a}"), "cycle"),
])
def test_bad_config_yaml_is_a_clear_error(shared_root, tmp_path, edit, match):
    root = copy_root(shared_root, tmp_path / "m")
    edit_yaml(root, edit)
    with pytest.raises(ModelFilesError, match=match):
        locate(root)


def test_env_interpolation_resolves(shared_root, tmp_path, monkeypatch):
    root = copy_root(shared_root, tmp_path / "m")
    edit_yaml(root, lambda c: c["llm_model"]["model"].update(pretrained_model_name_or_path="${oc.env:AS_BASE}"))
    monkeypatch.setenv("AS_BASE", "Qwen2.5-tiny-Instruct")
    assert locate(root).qwen_dir == root / "Qwen2.5-tiny-Instruct"


@pytest.mark.parametrize("field,value,match", [
    ("audio_seq_len", 0, "audio_seq_len"), ("audio_seq_len", -5, "audio_seq_len"),
    ("audio_seq_len", "big", "audio_seq_len"), ("audio_seq_len", 100000, "at most 4096"),
    ("audio_seq_len", 176.5, "audio_seq_len"), ("max_duration", 0, "max_duration"),
    ("max_duration", -1, "max_duration"), ("num_layers", 0, "num_layers"),
])
def test_bad_flux_config_is_a_clear_error(shared_root, tmp_path, field, value, match):
    root = copy_root(shared_root, tmp_path / "m")
    f = root / "Flux_detokenizer" / "config.json"
    cfg = json.loads(f.read_text())
    cfg[field] = value
    f.write_text(json.dumps(cfg))
    with pytest.raises(ModelFilesError, match=match):
        locate(root, flux_dir=root / "Flux_detokenizer")


# ------------------------------------------------------------------ null-embedding cache

def test_cache_env_comes_first(shared_root, tmp_path, fresh_cache):
    root = copy_root(shared_root, tmp_path / "m")
    load_models(locate(root), planner=False, vae=False)
    assert list(fresh_cache.rglob("null_embedding_n8_float32.safetensors"))
    assert not list((root / "Flux_detokenizer").glob("null_embedding_*"))


def test_unwritable_model_folder_falls_back_to_the_user_cache(shared_root, tmp_path, monkeypatch):
    """Root ignores chmod, so creating a file in the model folder fails the way a read-only mount reports it
    (EROFS from the exclusive create every atomic write starts with)."""
    import errno
    import tempfile

    root = copy_root(shared_root, tmp_path / "m")
    monkeypatch.delenv("AUDIOSTORY_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and str(dir).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    first = load_models(locate(root), planner=False, vae=False).null_embedding
    cached = list((tmp_path / "home" / ".cache" / "audiostory").rglob("null_embedding_n8_float32.safetensors"))
    assert len(cached) == 1 and not list((root / "Flux_detokenizer").glob("null_embedding_*"))
    again = load_models(locate(root), planner=False, vae=False).null_embedding
    torch.testing.assert_close(first, again, rtol=0, atol=0)


# ------------------------------------------------------------------ Hugging Face cache and offline download

@pytest.fixture
def offline_hub(shared_root, tmp_path, monkeypatch):
    """A pre-filled cache with the four repos (fixture-sized), offline mode on, and every socket refused."""
    import huggingface_hub.constants as hc

    hub = tmp_path / "hub"
    cfg = yaml.safe_load((shared_root / "audiostory" / "config.yaml").read_text())
    cfg["tokenizer"] = {"pretrained_model_path": "ckpt/Qwen2.5-3B-Instruct"}
    cfg["llm_model"]["model"]["pretrained_model_name_or_path"] = "ckpt/Qwen2.5-3B-Instruct"
    a = shared_root / "audiostory"
    snaps = {"audiostory": fill_hub_cache(hub, "TencentARC/AudioStory-3B", {
        "config.yaml": yaml.safe_dump(cfg), "pytorch_model.bin": a / "pytorch_model.bin", "README.md": "x"})}
    q = shared_root / "Qwen2.5-tiny-Instruct"
    snaps["qwen"] = fill_hub_cache(hub, "Qwen/Qwen2.5-3B-Instruct", {p.name: p for p in q.iterdir()})
    t = shared_root / "flan-t5-tiny"
    snaps["t5"] = fill_hub_cache(hub, "google/flan-t5-large", {p.name: p for p in t.iterdir()})
    flux = json.loads((shared_root / "Flux_detokenizer" / "config.json").read_text())
    flux["text_encoder_name"] = "google/flan-t5-large"  # as TangoFlux ships it
    f = shared_root / "Flux_detokenizer"
    snaps["vae"] = fill_hub_cache(hub, "declare-lab/TangoFlux", {
        "config.json": json.dumps(flux), "vae.safetensors": f / "model.safetensors",
        "vae_config.json": f / "vae_config.json", "tangoflux.safetensors": "not needed"})

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    calls: list[object] = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network use in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return Namespace(hub=hub, snaps=snaps, network_calls=calls)


def test_offline_download_links_the_layout_from_the_cache_without_network(offline_hub, tmp_path, fresh_cache):
    from audiostory_core.models.download import download_all

    root = tmp_path / "models"
    got = download_all(root)
    assert offline_hub.network_calls == []
    assert got["AudioStory-3B"] == offline_hub.snaps["audiostory"]
    bin_ = root / "AudioStory-3B" / "pytorch_model.bin"
    assert bin_.resolve() == (offline_hub.snaps["audiostory"] / "pytorch_model.bin").resolve()  # linked, not copied
    assert (root / "Flux_detokenizer" / "model.safetensors").is_file()  # vae.safetensors renamed
    assert not (root / "Flux_detokenizer" / "tangoflux.safetensors").exists()  # allow_patterns respected
    assert json.loads((root / "Flux_detokenizer" / "config.json").read_text())["text_encoder_name"] == "flan-t5-large"
    models = load_models(locate(root))
    assert models.planner is not None and models.vae is not None and models.warnings == []

    before = {p.name: p.stat().st_ino for p in root.iterdir()}
    download_all(root)  # a second download fetches and rebuilds nothing
    assert {p.name: p.stat().st_ino for p in root.iterdir()} == before
    assert offline_hub.network_calls == []


def test_offline_download_of_a_repo_missing_from_the_cache_names_the_hf_command(offline_hub, tmp_path):
    from audiostory_core.models.download import download_all

    shutil.rmtree(offline_hub.hub / "models--google--flan-t5-large")
    with pytest.raises(ModelFilesError) as e:
        download_all(tmp_path / "models", only=["t5"])
    assert "HF_HUB_OFFLINE" in str(e.value) and "hf download google/flan-t5-large" in str(e.value)
    assert not (tmp_path / "models" / "flan-t5-large").exists()
    assert offline_hub.network_calls == []



def test_download_only_vlm_and_whisper_links_them_next_to_the_root_where_comfyui_looks(offline_hub, shared_root, tmp_path):
    """From ComfyUI's folder, with ComfyUI's Python: the pack's script fetches Whisper and the VLM (from the
    pre-filled cache here, offline) into models/audiostory/, where the nodes and the CLI look for them."""
    import subprocess
    import sys

    from tiny_media_models import build_tiny_vlm, build_tiny_whisper

    from audiostory_core.media.captioning import VisionCaptioner
    from audiostory_core.models.download import download_all
    from audiostory_core.tasks.continuation import WhisperFeatures

    w = build_tiny_whisper(tmp_path / "w")
    fill_hub_cache(offline_hub.hub, "openai/whisper-large-v3", {p.name: p for p in w.iterdir()})
    v = build_tiny_vlm(tmp_path / "v", shared_root / "Qwen2.5-tiny-Instruct")
    fill_hub_cache(offline_hub.hub, "Qwen/Qwen2.5-VL-3B-Instruct", {p.name: p for p in v.iterdir()})
    comfy = tmp_path / "ComfyUI"                       # a ComfyUI folder with this pack in custom_nodes/
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "custom_nodes" / "comfyui-audiostory").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(offline_hub.hub))
    run = subprocess.run([sys.executable, "custom_nodes/comfyui-audiostory/download_models.py", "--only", "whisper",
                          "vlm"], cwd=comfy, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    models = comfy / "models" / "audiostory"
    assert sorted(p.name for p in models.iterdir()) == ["Qwen2.5-VL-3B-Instruct", "whisper-large-v3"]
    WhisperFeatures.from_pretrained("whisper-large-v3", [models])
    VisionCaptioner.from_pretrained("Qwen2.5-VL-3B-Instruct", [models])

    # the library reports progress per component; without a shared folder they go into the root (CLI)
    seen = []
    download_all(tmp_path / "root", only=["whisper"], hooks=Hooks(progress=lambda *a: seen.append(a)))
    assert seen == [("download", 0, 1), ("download", 1, 1)]
    assert (tmp_path / "root" / "whisper-large-v3" / "config.json").is_file()


def test_interrupted_layout_leaves_the_previous_one_intact(offline_hub, tmp_path, monkeypatch):
    import audiostory_core.models.download as dl

    root = tmp_path / "models"
    dl.download_all(root, only=["qwen"])
    before = sorted(p.name for p in (root / "Qwen2.5-3B-Instruct").iterdir())
    # a new revision arrives, and the process is interrupted half-way through linking it
    monkeypatch.setattr(dl, "_same_layout", lambda target, plan: False)
    n = {"links": 0}
    real_link = dl._link

    def link_then_interrupt(src, dst):
        n["links"] += 1
        if n["links"] == 3:
            raise KeyboardInterrupt
        return real_link(src, dst)

    monkeypatch.setattr(dl, "_link", link_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dl.download_all(root, only=["qwen"])
    assert sorted(p.name for p in (root / "Qwen2.5-3B-Instruct").iterdir()) == before
    assert [p.name for p in root.iterdir()] == ["Qwen2.5-3B-Instruct"]  # no partial folder left


def test_revision_pins_each_repo(offline_hub, tmp_path):
    from audiostory_core.models.download import download_all

    commit = offline_hub.snaps["t5"].name
    assert download_all(tmp_path / "m", only=["t5"], revisions={"t5": commit})["flan-t5-large"] == offline_hub.snaps["t5"]
    with pytest.raises(ModelFilesError, match="HF_HUB_OFFLINE"):
        download_all(tmp_path / "m2", only=["t5"], revisions={"t5": "0" * 40})
    with pytest.raises(ModelFilesError, match="Unknown component"):
        download_all(tmp_path / "m3", revisions={"t6": "main"})


def test_a_cache_snapshot_is_a_model_root_and_hub_ids_resolve_from_the_cache(offline_hub, fresh_cache):
    paths = locate(offline_hub.snaps["audiostory"])
    assert paths.qwen_dir == offline_hub.snaps["qwen"]
    assert paths.flux_dir == offline_hub.snaps["vae"]
    assert paths.t5_dir == offline_hub.snaps["t5"]  # text_encoder_name: google/flan-t5-large
    assert paths.vae_weights.name == "vae.safetensors"
    models = load_models(paths)
    assert models.dit is not None and models.vae is not None and offline_hub.network_calls == []

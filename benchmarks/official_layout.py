"""Write random AudioStory weights in the official on-disk layout (for benchmarks and cold-start timing).

The layout is the one the official release uses and :mod:`audiostory_core.models.loading` reads:

    <root>/AudioStory-3B/{config.yaml, pytorch_model.bin}   flat fp32 state dict, peft 0.4.0 key names
    <root>/Flux_detokenizer/{config.json, model.safetensors} DiT hyper-parameters, VAE weights
    <root>/Qwen2.5-3B-Instruct/                             config, generation_config, tokenizer
    <root>/flan-t5-large/                                   T5 (only for the CFG negative)

Weights are random (``randn * 0.02``, norms 1); nothing here is a trained model. The tokenizer is a
byte-level BPE without merges padded with dummy entries to the base vocabulary size, so one ASCII
character is one token and the added AudioStory tokens get the official ids (151665... at real size).
The T5 encoder has flan-t5-large's shape at real size (it is part of the checkpoint and is run once,
for the cached null embedding, so it counts in the first load's memory) and one layer otherwise.

The ``write_*``/``put_*`` functions below are the project's one writer of that layout: the tests' tiny
trained checkpoint (``tests/tiny_checkpoint.py``) writes its folders through them too.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SizeSpec:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    base_vocab: int          # tokenizer length before the 612 AudioStory tokens
    qwen_vocab: int          # embedding rows of the base model (padded)
    n_semantic: int
    n_residual: int
    lora_r: int
    lora_alpha: int
    dit_layers: int
    dit_single_layers: int
    dit_heads: int
    audio_seq_len: int
    vae_config: Optional[dict] = None   # None = default AutoencoderOobleck()
    t5: dict = field(default_factory=lambda: dict(vocab_size=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2))
    # synthetic story
    events: int = 5
    total_seconds: float = 50.0
    reasoning_tokens: int = 150
    caption_tokens: int = 30
    extra: dict = field(default_factory=dict)

    @property
    def vocab(self) -> int:
        return self.base_vocab + 612


SIZES = {
    # Qwen2.5-3B + the 515M TangoFlux DiT + the default Oobleck VAE.
    "real": SizeSpec("real", hidden=2048, layers=36, heads=16, kv_heads=2, ffn=11008, base_vocab=151665,
                     qwen_vocab=151936, n_semantic=64, n_residual=8, lora_r=32, lora_alpha=32,
                     dit_layers=6, dit_single_layers=18, dit_heads=8, audio_seq_len=645,
                     t5=dict(vocab_size=32128, d_kv=64, d_ff=2816, num_layers=24, num_heads=16)),  # flan-t5-large
    # CPU check of the real vocabulary, tokenizer ids, N/M, 645 frames and 10 s events; small nets.
    "medium": SizeSpec("medium", hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, base_vocab=151665,
                       qwen_vocab=151936, n_semantic=64, n_residual=8, lora_r=8, lora_alpha=8,
                       dit_layers=1, dit_single_layers=1, dit_heads=2, audio_seq_len=645,
                       vae_config={"encoder_hidden_size": 4, "downsampling_ratios": [2, 4, 4, 8, 8],
                                   "channel_multiples": [1, 2, 4, 8, 16], "decoder_channels": 4,
                                   "decoder_input_channels": 64, "audio_channels": 2, "sampling_rate": 44100}),
    # CPU in seconds: same code paths, small shapes; 5 events of 5 s (a clip holds 8.17 s).
    "tiny": SizeSpec("tiny", hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, base_vocab=259, qwen_vocab=264,
                     n_semantic=8, n_residual=4, lora_r=4, lora_alpha=8, dit_layers=1, dit_single_layers=1,
                     dit_heads=2, audio_seq_len=176,
                     vae_config={"encoder_hidden_size": 4, "downsampling_ratios": [2, 4, 4, 8, 8],
                                 "channel_multiples": [1, 2, 4, 8, 16], "decoder_channels": 4,
                                 "decoder_input_channels": 64, "audio_channels": 2, "sampling_rate": 44100},
                     total_seconds=25.0, reasoning_tokens=40, caption_tokens=14),
}


def byte_tokenizer(base_vocab: int):
    """Byte-level BPE (no merges) + dummy entries + the 3 Qwen specials = ``base_vocab`` tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for i in range(base_vocab - 3 - len(vocab)):
        vocab[f"<|pad_{i}|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    assert len(tok) == base_vocab, (len(tok), base_vocab)
    return tok


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)


def generation_config(tok) -> dict:
    """Qwen2.5-Instruct's generation_config.json, with this tokenizer's ids."""
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    return {"bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot], "pad_token_id": eot,
            "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}


def write_qwen_folder(qwen_dir: Path, tok, config: dict, weights: Optional[dict] = None) -> None:
    """``Qwen2.5-3B-Instruct/``: config, generation config and tokenizer (without the AudioStory tokens),
    plus ``model.safetensors`` when the base weights live outside the bin."""
    from safetensors.torch import save_file

    tok.save_pretrained(str(qwen_dir))
    (qwen_dir / "added_tokens.json").unlink(missing_ok=True)
    (qwen_dir / "config.json").write_text(json.dumps(config, indent=2))
    if weights is not None:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(qwen_dir / "model.safetensors"),
                  metadata={"format": "pt"})
    (qwen_dir / "generation_config.json").write_text(json.dumps(generation_config(tok)))


def flux_config(layers: int, single_layers: int, heads: int, audio_seq_len: int) -> dict:
    """``Flux_detokenizer/config.json`` as released (TangoFlux's DiT hyper-parameters)."""
    return {"num_layers": layers, "num_single_layers": single_layers, "in_channels": 64, "attention_head_dim": 128,
            "joint_attention_dim": 1024, "num_attention_heads": heads, "audio_seq_len": audio_seq_len,
            "max_duration": 30, "uncondition": False, "text_encoder_name": "ckpt/flan-t5-large"}


def flux_transformer(cfg: dict):
    """The DiT module a ``flux_config`` describes (on the current default device)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(in_channels=64, num_layers=cfg["num_layers"],
                                  num_single_layers=cfg["num_single_layers"], attention_head_dim=128,
                                  num_attention_heads=cfg["num_attention_heads"], joint_attention_dim=1024,
                                  pooled_projection_dim=1024, guidance_embeds=False)


def put_tangoflux_heads(sd: dict, rnd, g: torch.Generator, fc_scale: float) -> None:
    """The DiT's text projection and duration embedder (official key names, ``duration_emebdder`` included)."""
    sd["tangoflux.fc.0.weight"], sd["tangoflux.fc.0.bias"] = rnd(1024, 1024, scale=fc_scale), rnd(1024)
    sd["tangoflux.duration_emebdder.time_positional_embedding.0.weights"] = torch.randn(128, generator=g)
    sd["tangoflux.duration_emebdder.time_positional_embedding.1.weight"] = rnd(1024, 257, scale=0.1)
    sd["tangoflux.duration_emebdder.time_positional_embedding.1.bias"] = rnd(1024)


def write_t5(t5_dir: Path, t5_kwargs: dict, sd: dict) -> None:
    """A flan-t5-shaped encoder (d_model 1024) in ``flan-t5-large/`` and inside the bin, as released."""
    from transformers import T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(d_model=1024, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                 use_cache=False, **t5_kwargs))
    t5.save_pretrained(str(t5_dir), safe_serialization=True)
    _t5_tokenizer().save_pretrained(str(t5_dir))
    for k, v in t5.state_dict().items():
        sd["tangoflux.text_encoder." + k] = v.detach().clone()


def write_vae(flux_dir: Path, vae_config: Optional[dict]) -> None:
    """The Oobleck VAE in ``Flux_detokenizer/model.safetensors`` (+ ``vae_config.json`` when not the default)."""
    from diffusers import AutoencoderOobleck
    from safetensors.torch import save_file

    vae = AutoencoderOobleck(**(vae_config or {}))
    save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, str(flux_dir / "model.safetensors"))
    if vae_config:
        (flux_dir / "vae_config.json").write_text(json.dumps(vae_config))


def audiostory_config(*, tokenizer_path: str, lora_r: int, lora_alpha: int, vocab: int, hidden: int,
                      n_semantic: int, n_residual: int, add_tokens_path: Optional[str] = None,
                      whisper_resampler: Optional[dict] = None) -> dict:
    """``AudioStory-3B/config.yaml`` (Hydra ``_target_`` entries are data here, never instantiated)."""
    tokenizer = {"_target_": "src.models.tokenizer.init_qwen_tokenizer.init_tokenizer",
                 "pretrained_model_path": tokenizer_path}
    if add_tokens_path:
        tokenizer["add_tokens_path"] = add_tokens_path
    agent = {"_target_": "src.models.mllm.modeling_audiostory_llm.AudioStory_llm.from_pretrained"}
    if whisper_resampler:
        agent["whisper_resampler_llava"] = whisper_resampler
    agent.update({"t5_feature_scale": 10.0, "model_dims": hidden})
    return {
        "tokenizer": tokenizer,
        "llm_model": {"_target_": "src.models.mllm.peft_models.get_peft_model_with_resize_embedding",
                      "model": {"_target_": "transformers.AutoModelForCausalLM.from_pretrained",
                                "pretrained_model_name_or_path": "ckpt/Qwen2.5-3B-Instruct"},
                      "peft_config": {"_target_": "peft.LoraConfig", "r": lora_r, "lora_alpha": lora_alpha,
                                      "modules_to_save": ["input_layernorm", "post_attention_layernorm", "norm"],
                                      "target_modules": list(TARGETS), "task_type": "CAUSAL_LM",
                                      "lora_dropout": 0.05},
                      "vocab_size": vocab},
        "agent_model": agent,
        "seedx_dit_model_cfg": {"_target_": "src.models.mllm.modeling_audiostory_unified.AudioStory_unified"},
        "train_dataset": {"datapipes": [{"num_t5_out_tokens": n_semantic, "num_aud_out_tokens": n_residual}]},
    }


def write_audiostory_folder(as_dir: Path, config: dict, sd: dict) -> None:
    """``config.yaml`` and the flat fp32 ``pytorch_model.bin`` (torch.save of the state dict)."""
    (as_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(sd, str(as_dir / "pytorch_model.bin"))


def _random_like_module(module: torch.nn.Module, g: torch.Generator, prefix: str, out: dict,
                        storage_dtype: torch.dtype = torch.float32) -> None:
    """Random values for every tensor of a module built on the meta device (fast at 0.5 B params)."""
    for k, v in module.state_dict().items():
        if "norm" in k and k.endswith("weight"):
            t = torch.ones(v.shape)
        else:
            t = torch.randn(v.shape, generator=g) * 0.02
        out[prefix + k] = t.to(storage_dtype)


def write_random_checkpoint(root: Path, spec: SizeSpec, seed: int = 0,
                            storage_dtype: torch.dtype = torch.float32) -> Path:
    """Write the model root; returns it. Real size: ~15 GB of fp32 in ``pytorch_model.bin``.

    ``storage_dtype=torch.bfloat16`` stores the bin's floating tensors in bf16 (~7.5 GB): the same
    keys and shapes, for machines where holding 15 GB while writing does not fit beside other work.
    The loader casts to the compute dtype either way; values are the fp32 draws rounded once.
    """
    from audiostory_core.stages.grammar import added_tokens

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    qwen_dir, t5_dir, flux_dir, as_dir = (root / "Qwen2.5-3B-Instruct", root / "flan-t5-large",
                                          root / "Flux_detokenizer", root / "AudioStory-3B")
    for d in (qwen_dir, t5_dir, flux_dir, as_dir):
        d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)

    tok = byte_tokenizer(spec.base_vocab)
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    qcfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": spec.hidden,
            "intermediate_size": spec.ffn, "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
            "num_key_value_heads": spec.kv_heads, "vocab_size": spec.qwen_vocab, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
            "bos_token_id": eot, "eos_token_id": im_end, "use_sliding_window": False, "sliding_window": None,
            "torch_dtype": "bfloat16"}
    write_qwen_folder(qwen_dir, tok, qcfg)
    assert len(added_tokens()) == 612

    def rnd(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(storage_dtype)

    P = "seedx.llm.base_model.model."
    sd: dict[str, torch.Tensor] = {}
    h, kvw = spec.hidden, spec.hidden // spec.heads * spec.kv_heads
    shapes = {"q_proj": (h, h), "k_proj": (kvw, h), "v_proj": (kvw, h), "o_proj": (h, h),
              "gate_proj": (spec.ffn, h), "up_proj": (spec.ffn, h), "down_proj": (h, spec.ffn)}
    for i in range(spec.layers):
        L = f"model.layers.{i}."
        for name, shape in shapes.items():
            sub = "self_attn." if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp."
            m = P + L + sub + name
            sd[m + ".weight"] = rnd(*shape)
            if name in ("q_proj", "k_proj", "v_proj"):
                sd[m + ".bias"] = rnd(shape[0])
            sd[m + ".lora_A.default.weight"] = rnd(spec.lora_r, shape[1])
            sd[m + ".lora_B.default.weight"] = rnd(shape[0], spec.lora_r, scale=0.002)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            sd[P + L + norm + ".modules_to_save.default.weight"] = torch.ones(h, dtype=storage_dtype)
            sd[P + L + norm + ".original_module.weight"] = torch.ones(h, dtype=storage_dtype)
    sd[P + "model.norm.modules_to_save.default.weight"] = torch.ones(h, dtype=storage_dtype)
    sd[P + "model.norm.original_module.weight"] = torch.ones(h, dtype=storage_dtype)
    sd[P + "model.embed_tokens.weight"] = rnd(spec.vocab, h)
    sd[P + "lm_head.weight"] = sd[P + "model.embed_tokens.weight"]  # tied: shared storage

    for name in ("projector", "audio_projector"):
        sd[f"seedx.{name}.0.weight"], sd[f"seedx.{name}.0.bias"] = rnd(1024, h), rnd(1024)
        sd[f"seedx.{name}.2.weight"], sd[f"seedx.{name}.2.bias"] = rnd(1024, 1024), rnd(1024)
    for k, v in torch.nn.MultiheadAttention(1024, 8).state_dict().items():
        sd["multihead_attention." + k] = rnd(*v.shape)

    flux_cfg = flux_config(spec.dit_layers, spec.dit_single_layers, spec.dit_heads, spec.audio_seq_len)
    (flux_dir / "config.json").write_text(json.dumps(flux_cfg, indent=2))
    with torch.device("meta"):
        dit = flux_transformer(flux_cfg)
    _random_like_module(dit, g, "tangoflux.transformer.", sd, storage_dtype)
    del dit
    put_tangoflux_heads(sd, rnd, g, fc_scale=0.02)

    torch.manual_seed(seed)
    write_t5(t5_dir, spec.t5, sd)
    write_vae(flux_dir, spec.vae_config)
    write_audiostory_folder(as_dir, audiostory_config(
        tokenizer_path="ckpt/Qwen2.5-3B-Instruct", lora_r=spec.lora_r, lora_alpha=spec.lora_alpha,
        vocab=spec.vocab, hidden=h, n_semantic=spec.n_semantic, n_residual=spec.n_residual), sd)
    return root

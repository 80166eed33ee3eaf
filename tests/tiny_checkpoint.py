"""Build a tiny AudioStory checkpoint in the official on-disk layout, from nothing.

The LLM is over-fitted for a few seconds so that greedy decoding really emits the AudioStory
grammar for ``STORIES``. The checkpoint is then written exactly as the official code would:
a flat ``pytorch_model.bin`` with peft key names (LoRA A/B, ``modules_to_save`` norm copies,
resized tied embeddings), the T5 encoder inside it, the VAE in ``Flux_detokenizer/model.safetensors``.
Merged LoRA reproduces the trained weights: frozen base = trained - alpha/r * B @ A.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from benchmarks.official_layout import (TARGETS, audiostory_config, byte_tokenizer, flux_config, flux_transformer,
                                        put_tangoflux_heads, write_audiostory_folder, write_qwen_folder, write_t5,
                                        write_vae)
from audiostory_core.stages.grammar import (AUD_CLOSE, AUD_OPEN, AUD_QUERY, GEN_CLOSE, GEN_OPEN, T5_CLOSE, T5_OPEN,
                                     T5_QUERY, THINK_CLOSE, added_tokens, build_instruction, build_prompt)

N_SEM, N_RES = 4, 2
LORA_R, LORA_ALPHA = 8, 16
HIDDEN = 64
STORIES = {
    ("Rain on a tin roof, then thunder.", 9.0): (
        "Soft rain first, then a storm, so two events.",
        [("light rain taps a tin roof", 4.0), ("thunder cracks over heavy rain", 5.0)]),
    ("A train arrives and leaves.", 10.0): (
        "The train comes in, stops, then departs: three events.",
        [("a train horn in the distance", 3.0), ("brakes squeal as the train stops", 3.5),
         ("the train pulls away", 3.5)]),
}


def _bytelevel_tokenizer():
    """The byte-level BPE of the benchmark writer without dummy entries: 256 bytes + 3 Qwen specials."""
    return byte_tokenizer(259)


def transcript_text(reasoning: str, events) -> str:
    out = reasoning + THINK_CLOSE
    for cap, d in events:
        out += (GEN_OPEN + f"{cap}<timestamp>{d}</timestamp>" + T5_OPEN
                + "".join(T5_QUERY.format(i) for i in range(N_SEM)) + T5_CLOSE + AUD_OPEN
                + "".join(AUD_QUERY.format(i) for i in range(N_RES)) + AUD_CLOSE + GEN_CLOSE)
    return out + "<|im_end|>"


def _train_llm(tok, vocab: int, seed: int, steps: int = 400):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    seqs = []
    for (desc, total), (reasoning, events) in STORIES.items():
        prompt = tok.encode(build_prompt(build_instruction(desc, total)), add_special_tokens=False)
        body = tok.encode(transcript_text(reasoning, events), add_special_tokens=False)
        seqs.append((prompt, body))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        loss = 0.0
        for prompt, body in seqs:
            ids = torch.tensor([prompt + body])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            loss = loss + model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 2e-3:
            break
    return model.eval(), cfg


def build_tiny_checkpoint(root: Path, *, folder: str = "AudioStory-3B", lora_layout: str = "peft04",
                          base_in_bin: bool = True, seed: int = 0) -> Path:
    """Write a complete model root at ``root`` and return it."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    qwen_dir, tok_dir, t5_dir, flux_dir, as_dir = (root / "Qwen2.5-3B-Instruct", root / "tokenizer",
                                                   root / "flan-t5-large", root / "Flux_detokenizer", root / folder)
    for d in (qwen_dir, tok_dir, t5_dir, flux_dir, as_dir):
        d.mkdir(parents=True)

    base_tok = _bytelevel_tokenizer()
    base_tok.save_pretrained(str(tok_dir))
    (tok_dir / "added_tokens.json").write_text(json.dumps({t: 999999 for t in added_tokens()}))  # ids are wrong, as released
    tok = _bytelevel_tokenizer()
    tok.add_tokens(added_tokens())
    vocab = len(tok)

    model, qcfg = _train_llm(tok, vocab, seed)
    g = torch.Generator().manual_seed(seed + 1)
    P = "seedx.llm.base_model.model."
    sd: dict[str, torch.Tensor] = {}
    base_state: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        module, leaf = k.rsplit(".", 1)
        short = module.split(".")[-1]
        if k == "lm_head.weight":
            continue
        if short in TARGETS and leaf == "weight":
            a = torch.randn(LORA_R, v.shape[1], generator=g) * 0.05
            b = torch.randn(v.shape[0], LORA_R, generator=g) * 0.05
            base = v - (LORA_ALPHA / LORA_R) * (b @ a)
            mid = ".base_layer" if lora_layout == "peft_new" else ""
            if base_in_bin:
                sd[f"{P}{module}{mid}.weight"] = base
            base_state[k] = base
            sd[f"{P}{module}.lora_A.default.weight"] = a
            sd[f"{P}{module}.lora_B.default.weight"] = b
        elif short in TARGETS:  # bias
            mid = ".base_layer" if lora_layout == "peft_new" else ""
            if base_in_bin:
                sd[f"{P}{module}{mid}.bias"] = v
            base_state[k] = v
        elif short.endswith("norm"):
            sd[f"{P}{module}.modules_to_save.default.weight"] = v
            orig = torch.rand(v.shape, generator=g) + 0.5
            sd[f"{P}{module}.original_module.weight"] = orig
            base_state[k] = orig
        else:  # embed_tokens: resized and trained
            sd[P + k] = v
            base_state[k] = torch.randn(vocab - 612 + 5, v.shape[1], generator=g) * 0.02
    sd[P + "lm_head.weight"] = sd[P + "model.embed_tokens.weight"]  # tied: shared storage

    # Base model folder (before AudioStory training: smaller, padded vocabulary).
    qcfg_base = qcfg.to_dict()
    qcfg_base["vocab_size"] = vocab - 612 + 5
    qcfg_base["architectures"] = ["Qwen2ForCausalLM"]
    write_qwen_folder(qwen_dir, base_tok, qcfg_base, weights=base_state)

    def rnd(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    for name in ("projector", "audio_projector"):
        sd[f"seedx.{name}.0.weight"], sd[f"seedx.{name}.0.bias"] = rnd(1024, HIDDEN, scale=0.3), rnd(1024)
        sd[f"seedx.{name}.2.weight"], sd[f"seedx.{name}.2.bias"] = rnd(1024, 1024, scale=0.1), rnd(1024)
    mha = torch.nn.MultiheadAttention(1024, 8)
    for k, v in mha.state_dict().items():
        sd["multihead_attention." + k] = v.detach().clone()
    sd["seedx.whisper_resampler_llava.aud_projector.0.weight"] = rnd(HIDDEN, 32)
    sd["seedx.whisper_resampler_llava.aud_projector.0.bias"] = rnd(HIDDEN)
    sd["seedx.whisper_resampler_llava.aud_projector.2.weight"] = rnd(HIDDEN, HIDDEN)
    sd["seedx.whisper_resampler_llava.aud_projector.2.bias"] = rnd(HIDDEN)
    sd["seedx.input_resampler.latents"] = rnd(1, 4, HIDDEN)
    sd["seedx.output_resampler.latents"] = rnd(1, 4, HIDDEN)

    flux_cfg = flux_config(1, 1, 2, 176)
    (flux_dir / "config.json").write_text(json.dumps(flux_cfg, indent=2))
    torch.manual_seed(seed + 2)
    dit = flux_transformer(flux_cfg)
    for k, v in dit.state_dict().items():
        sd["tangoflux.transformer." + k] = v + rnd(*v.shape, scale=0.02)  # no all-zero (AdaLN-zero) layers
    put_tangoflux_heads(sd, rnd, g, fc_scale=0.03)

    write_t5(t5_dir, dict(vocab_size=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2), sd)
    write_vae(flux_dir, {"encoder_hidden_size": 4, "downsampling_ratios": [2, 4, 4, 8, 8],
                         "channel_multiples": [1, 2, 4, 8, 16], "decoder_channels": 4, "decoder_input_channels": 64,
                         "audio_channels": 2, "sampling_rate": 44100})
    write_audiostory_folder(as_dir, audiostory_config(
        tokenizer_path="ckpt/tokenizer", add_tokens_path="ckpt/tokenizer/added_tokens.json", lora_r=LORA_R,
        lora_alpha=LORA_ALPHA, vocab=vocab, hidden=HIDDEN, n_semantic=N_SEM, n_residual=N_RES,
        whisper_resampler={"token_num": 4, "ori_embed_dim": 32, "tgt_embed_dim": HIDDEN}), sd)
    return root

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
import yaml

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
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)


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
    from diffusers import AutoencoderOobleck, FluxTransformer2DModel
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    qwen_dir, tok_dir, t5_dir, flux_dir, as_dir = (root / "Qwen2.5-3B-Instruct", root / "tokenizer",
                                                   root / "flan-t5-large", root / "Flux_detokenizer", root / folder)
    for d in (qwen_dir, tok_dir, t5_dir, flux_dir, as_dir):
        d.mkdir(parents=True)

    base_tok = _bytelevel_tokenizer()
    base_tok.save_pretrained(str(qwen_dir))
    base_tok.save_pretrained(str(tok_dir))
    (tok_dir / "added_tokens.json").write_text(json.dumps({t: 999999 for t in added_tokens()}))  # ids are wrong, as released
    (qwen_dir / "added_tokens.json").unlink(missing_ok=True)
    tok = _bytelevel_tokenizer()
    tok.add_tokens(added_tokens())
    vocab = len(tok)

    model, qcfg = _train_llm(tok, vocab, seed)
    g = torch.Generator().manual_seed(seed + 1)
    P = "seedx.llm.base_model.model."
    sd: dict[str, torch.Tensor] = {}
    base_state: dict[str, torch.Tensor] = {}
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        module, leaf = k.rsplit(".", 1)
        short = module.split(".")[-1]
        if k == "lm_head.weight":
            continue
        if short in targets and leaf == "weight":
            a = torch.randn(LORA_R, v.shape[1], generator=g) * 0.05
            b = torch.randn(v.shape[0], LORA_R, generator=g) * 0.05
            base = v - (LORA_ALPHA / LORA_R) * (b @ a)
            mid = ".base_layer" if lora_layout == "peft_new" else ""
            if base_in_bin:
                sd[f"{P}{module}{mid}.weight"] = base
            base_state[k] = base
            sd[f"{P}{module}.lora_A.default.weight"] = a
            sd[f"{P}{module}.lora_B.default.weight"] = b
        elif short in targets:  # bias
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
    (qwen_dir / "config.json").write_text(json.dumps(qcfg_base, indent=2))
    save_file({k: v.contiguous() for k, v in base_state.items()}, str(qwen_dir / "model.safetensors"),
              metadata={"format": "pt"})
    im_end, eot = base_tok.convert_tokens_to_ids("<|im_end|>"), base_tok.convert_tokens_to_ids("<|endoftext|>")
    (qwen_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot], "pad_token_id": eot,
        "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}))

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

    flux_cfg = {"num_layers": 1, "num_single_layers": 1, "in_channels": 64, "attention_head_dim": 128,
                "joint_attention_dim": 1024, "num_attention_heads": 2, "audio_seq_len": 176, "max_duration": 30,
                "uncondition": False, "text_encoder_name": "ckpt/flan-t5-large"}
    (flux_dir / "config.json").write_text(json.dumps(flux_cfg, indent=2))
    torch.manual_seed(seed + 2)
    dit = FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
                                 num_attention_heads=2, joint_attention_dim=1024, pooled_projection_dim=1024,
                                 guidance_embeds=False)
    for k, v in dit.state_dict().items():
        sd["tangoflux.transformer." + k] = v + rnd(*v.shape, scale=0.02)  # no all-zero (AdaLN-zero) layers
    sd["tangoflux.fc.0.weight"], sd["tangoflux.fc.0.bias"] = rnd(1024, 1024, scale=0.03), rnd(1024)
    sd["tangoflux.duration_emebdder.time_positional_embedding.0.weights"] = torch.randn(128, generator=g)
    sd["tangoflux.duration_emebdder.time_positional_embedding.1.weight"] = rnd(1024, 257, scale=0.1)
    sd["tangoflux.duration_emebdder.time_positional_embedding.1.bias"] = rnd(1024)

    t5cfg = T5Config(vocab_size=32, d_model=1024, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                     feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    t5 = T5EncoderModel(t5cfg)
    t5.save_pretrained(str(t5_dir), safe_serialization=True)
    _t5_tokenizer().save_pretrained(str(t5_dir))
    for k, v in t5.state_dict().items():
        sd["tangoflux.text_encoder." + k] = v.detach().clone()

    vae_cfg = {"encoder_hidden_size": 4, "downsampling_ratios": [2, 4, 4, 8, 8], "channel_multiples": [1, 2, 4, 8, 16],
               "decoder_channels": 4, "decoder_input_channels": 64, "audio_channels": 2, "sampling_rate": 44100}
    vae = AutoencoderOobleck(**vae_cfg)
    save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, str(flux_dir / "model.safetensors"))
    (flux_dir / "vae_config.json").write_text(json.dumps(vae_cfg))

    config = {
        "tokenizer": {"_target_": "src.models.tokenizer.init_qwen_tokenizer.init_tokenizer",
                      "pretrained_model_path": "ckpt/tokenizer", "add_tokens_path": "ckpt/tokenizer/added_tokens.json"},
        "llm_model": {"_target_": "src.models.mllm.peft_models.get_peft_model_with_resize_embedding",
                      "model": {"_target_": "transformers.AutoModelForCausalLM.from_pretrained",
                                "pretrained_model_name_or_path": "ckpt/Qwen2.5-3B-Instruct"},
                      "peft_config": {"_target_": "peft.LoraConfig", "r": LORA_R, "lora_alpha": LORA_ALPHA,
                                      "modules_to_save": ["input_layernorm", "post_attention_layernorm", "norm"],
                                      "target_modules": list(targets), "task_type": "CAUSAL_LM",
                                      "lora_dropout": 0.05},
                      "vocab_size": vocab},
        "agent_model": {"_target_": "src.models.mllm.modeling_audiostory_llm.AudioStory_llm.from_pretrained",
                        "whisper_resampler_llava": {"token_num": 4, "ori_embed_dim": 32, "tgt_embed_dim": HIDDEN},
                        "t5_feature_scale": 10.0, "model_dims": HIDDEN},
        "seedx_dit_model_cfg": {"_target_": "src.models.mllm.modeling_audiostory_unified.AudioStory_unified"},
        "train_dataset": {"datapipes": [{"num_t5_out_tokens": N_SEM, "num_aud_out_tokens": N_RES}]},
    }
    (as_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(sd, str(as_dir / "pytorch_model.bin"))
    return root

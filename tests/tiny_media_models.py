"""Tiny random Whisper and VLM folders for the dubbing/continuation tests (unit and real-ComfyUI).

Both are saved with ``save_pretrained`` so they load exactly as a downloaded model folder would
(``WhisperFeatures.from_pretrained`` / ``VisionCaptioner.from_pretrained``); each takes about a second.
"""
from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_whisper(out: Path, d_model: int = 32) -> Path:
    """A random Whisper (``d_model`` = the shared checkpoint's ``whisper_resampler_llava`` input width, 32)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    out = Path(out)
    cfg = WhisperConfig(vocab_size=64, d_model=d_model, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        num_mel_bins=80, max_source_positions=1500, max_target_positions=32, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperModel(cfg).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


def build_tiny_vlm(out: Path, tokenizer_dir: Path) -> Path:
    """A random LLaVA (CLIP vision tower + Qwen2 text model) with a processor and a chat template.

    ``tokenizer_dir``: any Qwen2 tokenizer folder (the shared fixture's ``Qwen2.5-tiny-Instruct``).
    """
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                             crop_size={"height": 28, "width": 28}),
                          tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          chat_template=template, num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out

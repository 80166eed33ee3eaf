"""A tiny random CLAP folder (``ClapModel`` + ``ClapProcessor``) built offline, loadable like a downloaded one.

The tokenizer is a byte-level BPE trained here on a few captions and wrapped as ``RobertaTokenizerFast`` (the
real CLAP tokenizer's class); the feature extractor is ``ClapFeatureExtractor`` with a 2 s window so the
test model stays small (the real one has 10 s). Random weights: the scores mean nothing, only the plumbing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

WINDOW_SECONDS = 2
CAPTIONS = ["a dog barks", "rain falls on a tin roof", "a train arrives and leaves", "thunder rolls",
            "a siren wails in the distance", "footsteps on gravel", "a bell rings at the station"]


def build_tiny_clap(out: Path, seed: int = 0, safetensors: bool = True) -> Path:
    """``safetensors=False`` writes ``pytorch_model.bin``, as laion/clap-htsat-unfused ships it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor,
                              ClapTextConfig, RobertaTokenizerFast)

    out = Path(out)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CAPTIONS * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        # from_pretrained of vocab.json + merges.txt loads them in transformers 4 and 5 alike
        tok = RobertaTokenizerFast.from_pretrained(tmp, model_max_length=64)
    fe = ClapFeatureExtractor(feature_size=64, max_length_s=WINDOW_SECONDS, truncation="rand_trunc",
                              padding="repeatpad")
    text = ClapTextConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=70, projection_dim=16,
                          pad_token_id=tok.pad_token_id)
    # spec_size 128 with 64 mel bins: a 256-frame (2.56 s) swin input, enough for the 2 s window
    audio = ClapAudioConfig(spec_size=128, num_mel_bins=64, window_size=4, patch_size=4, patch_stride=[4, 4],
                            depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=16, hidden_size=32,
                            projection_dim=16)
    cfg = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    torch.manual_seed(seed)
    ClapModel(cfg).eval().save_pretrained(out, safe_serialization=safetensors)
    if not safetensors and (out / "model.safetensors").is_file():   # transformers 5 always writes safetensors
        from safetensors.torch import load_file

        torch.save(load_file(str(out / "model.safetensors")), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    ClapProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(out)
    return out

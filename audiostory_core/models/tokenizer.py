"""The AudioStory tokenizer: the Qwen2.5 tokenizer plus 612 added tokens in the official order."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import ModelFilesError
from ..stages.grammar import TokenIds, added_tokens, expected_ids


def build_tokenizer(tokenizer_dir: Path, added_tokens_json: Optional[Path], vocab_size: int,
                    n_semantic: int, n_residual: int, eos: tuple[int, ...] = ()):
    """``AutoTokenizer`` + ``add_tokens(keys of added_tokens.json)`` as non-special tokens.

    The ids are then checked against the grammar and against the checkpoint's vocabulary size,
    so a wrong tokenizer folder fails here and not as garbage audio later.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as e:
        raise ModelFilesError(f"Cannot load the tokenizer from {tokenizer_dir}: {e}. It is the Qwen2.5 "
                              "tokenizer (tokenizer.json / vocab.json + merges.txt, tokenizer_config.json).") from e
    names = added_tokens()
    if added_tokens_json is not None:
        try:
            file_names = list(json.loads(Path(added_tokens_json).read_text()).keys())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFilesError(f"Cannot read {added_tokens_json}: {e}") from e
        if file_names != names:
            raise ModelFilesError(f"{added_tokens_json} does not list the 612 AudioStory tokens in the official "
                                  "order; remove it to use the built-in list.")
    base = len(tok)
    already = [n for n in names if n in tok.get_vocab()]
    if already and len(already) != len(names):
        raise ModelFilesError(f"Tokenizer in {tokenizer_dir} already holds some AudioStory tokens ({already[:3]}...)"
                              " but not all; use the plain Qwen2.5 tokenizer.")
    if not already:
        tok.add_tokens(names)
    else:
        base = tok.convert_tokens_to_ids(names[0])
    got = {t: tok.convert_tokens_to_ids(t) for t in expected_ids(base)}
    bad = {t: (i, expected_ids(base)[t]) for t, i in got.items() if i != expected_ids(base)[t]}
    if bad:
        raise ModelFilesError(f"AudioStory token ids are wrong: {bad} (got, expected).")
    if len(tok) != vocab_size:
        raise ModelFilesError(f"Tokenizer from {tokenizer_dir} has {len(tok)} tokens after adding the AudioStory "
                              f"tokens, but the checkpoint's vocabulary is {vocab_size}. Use the tokenizer of the "
                              "base model named in config.yaml.")
    return tok, TokenIds(base=base, n_semantic=n_semantic, n_residual=n_residual, eos=eos)

"""The AudioStory tokenizer: the Qwen2.5 tokenizer plus 612 added tokens in the official order."""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import ModelFilesError
from ..stages.grammar import TokenIds, added_tokens, expected_ids


@contextmanager
def _without_added_tokens_json(folder: Path) -> Iterator[Path]:
    """The tokenizer folder as ``AutoTokenizer`` should see it: without ``added_tokens.json``.

    The release's ``added_tokens.json`` carries wrong ids (duplicates, ids past the vocabulary); the official
    code adds the tokens itself, in the file's key order. transformers 4.x ignores that file next to a
    ``tokenizer.json``, but 5.x reads it and adds whichever tokens its ids allow, so loading the folder as is
    would make the vocabulary depend on the library version. The other files are linked (or copied) into a
    temporary folder instead; a folder without the file is used directly.
    """
    if not (folder / "added_tokens.json").is_file():
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="audiostory-tokenizer-") as tmp:
        view = Path(tmp)
        for f in folder.iterdir():
            if f.name == "added_tokens.json" or not f.is_file():
                continue
            try:
                (view / f.name).symlink_to(f.resolve())
            except OSError:  # no symlinks here (e.g. Windows without the privilege): the files are small
                shutil.copy2(f, view / f.name)
        yield view


def build_tokenizer(tokenizer_dir: Path, added_tokens_json: Optional[Path], vocab_size: int,
                    n_semantic: int, n_residual: int, eos: tuple[int, ...] = ()):
    """``AutoTokenizer`` + ``add_tokens(keys of added_tokens.json)`` as non-special tokens.

    The ids are then checked against the grammar and against the checkpoint's vocabulary size,
    so a wrong tokenizer folder fails here and not as garbage audio later.
    """
    from transformers import AutoTokenizer

    cfg_file = Path(tokenizer_dir) / "tokenizer_config.json"
    if not cfg_file.is_file():
        raise ModelFilesError(f"{cfg_file} is missing. The tokenizer folder needs the Qwen2.5 tokenizer files "
                              "(tokenizer_config.json, tokenizer.json or vocab.json + merges.txt).")
    try:
        with _without_added_tokens_json(Path(tokenizer_dir)) as src:
            tok = AutoTokenizer.from_pretrained(str(src))
    except Exception as e:
        why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ModelFilesError(f"Cannot load the tokenizer from {tokenizer_dir}: {why}. It is the Qwen2.5 "
                              "tokenizer (tokenizer.json / vocab.json + merges.txt, tokenizer_config.json).") from e
    names = added_tokens()
    vocab = tok.get_vocab()  # one call: it builds a 150k-entry dict each time
    already = [n for n in names if n in vocab]
    if added_tokens_json is not None and not already:
        # The key order of the config's add_tokens_path file assigns the ids (add_tokens(list(keys))).
        # A tokenizer that already holds the tokens (re-saved) is judged by its ids below instead.
        try:
            file_names = list(json.loads(Path(added_tokens_json).read_text()).keys())
        except (OSError, AttributeError, json.JSONDecodeError) as e:
            raise ModelFilesError(f"Cannot read {added_tokens_json} (add_tokens_path in config.yaml): {e}") from e
        if file_names != names:
            raise ModelFilesError(f"{added_tokens_json} (add_tokens_path in config.yaml) does not list the 612 "
                                  "AudioStory tokens in the official order, which assigns their ids; use the "
                                  "file from the release or remove add_tokens_path to use the built-in list.")
    base = len(tok)
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

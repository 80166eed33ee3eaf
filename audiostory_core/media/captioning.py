"""Scene captions for dubbing: a local vision-language model asked for the *sounds* a shot implies.

Any ``transformers`` model that loads with ``AutoModelForImageTextToText`` + ``AutoProcessor`` and has a
chat template works (Qwen2.5-VL-3B-Instruct is the suggested one). The model is looked up as a folder
(absolute, or under ``models/audiostory/``) first, then as a Hugging Face id in the local cache. Captions
are plain strings in the scene list, so users can type or edit them (``--captions captions.json``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..validation import MAX_INSTRUCTION_CHARS, check_text, parse_json
from ..errors import InputError, ModelFilesError
from ..models.download import fetch_command
from ..models.folders import VLM
from ..progress import Hooks, as_hooks
from ..shapes import check_loading_info
from .video import SceneList

DEFAULT_VLM = VLM.default
SOUND_PROMPT = (
    "These frames come from one shot of a video. Describe the SOUNDS this scene would make, for a sound "
    "designer: the sound sources, actions, ambience and music mood, in one sentence of at most 25 words. "
    "Do not describe colours, clothing, faces or camera work. "
    "Example: 'a door creaks open, footsteps on a wooden floor, rain patters on the window'."
)


def resolve_model_dir(name: Union[str, Path], search_dirs: Sequence[Union[str, Path]] = (),
                      what: str = "vision-language model", example: str = "Qwen/Qwen2.5-VL-3B-Instruct") -> str:
    """A local folder for ``name`` (path, or a folder under one of ``search_dirs``) or the name itself
    when it looks like a Hugging Face id (``org/model``); otherwise a :class:`ModelFilesError`."""
    name = str(name).strip()
    if not name:
        raise ModelFilesError(f"No {what} given.")
    p = Path(name).expanduser()
    cands = [p] + [Path(d) / name for d in search_dirs] + [Path(d) / p.name for d in search_dirs]
    for c in cands:
        if (c / "config.json").is_file():
            return str(c)
    looks_like_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None and not p.exists()
    if looks_like_id:
        return name
    where = ", ".join(str(c) for c in dict.fromkeys(cands))
    raise ModelFilesError(
        f"The {what} '{name}' was not found (looked for a folder with config.json at: {where}). "
        f"Download one, e.g. `{fetch_command(example, search_dirs)}`, or pass a Hugging Face id.")



def _load_error(name: str, e: Exception, what: str) -> ModelFilesError:
    return ModelFilesError(f"Cannot load the {what} '{name}': {e}. A folder must hold config.json, the weights "
                           "and the processor files (preprocessor_config.json, tokenizer files, chat template).")


def clean_caption(text: str) -> str:
    """First non-empty line, without quotes or a leading 'Sounds:' label."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    s = re.sub(r"^(sounds?|caption|answer)\s*:\s*", "", lines[0], flags=re.I)
    return s.strip().strip("\"'").strip()


def to_pil(image: Union[np.ndarray, torch.Tensor]):
    """[H, W, 3] uint8 array or float 0..1 tensor (ComfyUI IMAGE item) as a PIL image."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise InputError(f"Keyframes must be [H, W, 3] images, got shape {tuple(image.shape)}.")
    return Image.fromarray(np.ascontiguousarray(image[..., :3]))


@dataclass
class VisionCaptioner:
    """A VLM + processor that turns a scene's keyframes into a sound caption (greedy, deterministic)."""

    model: Any
    processor: Any
    prompt: str = SOUND_PROMPT
    max_new_tokens: int = 60

    @classmethod
    def from_pretrained(cls, name: Union[str, Path] = DEFAULT_VLM, search_dirs: Sequence[Union[str, Path]] = (),
                        device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                        **kw) -> "VisionCaptioner":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..models.dtypes import dtype_kwarg

        src = resolve_model_dir(name, search_dirs)
        local = Path(src).is_dir()
        try:
            processor = AutoProcessor.from_pretrained(src)
            model, info = AutoModelForImageTextToText.from_pretrained(
                src, output_loading_info=True, ignore_mismatched_sizes=True,
                **(dtype_kwarg(dtype) if dtype is not None else {}))
        except OSError as e:
            if not local:
                raise ModelFilesError(
                    f"The vision-language model '{name}' is not a local folder and could not be fetched ({e}). "
                    f"Download it: `{fetch_command(str(name), search_dirs)}`.") from e
            raise _load_error(str(name), e, "vision-language model") from e
        except (ValueError, KeyError) as e:
            raise _load_error(str(name), e, "vision-language model") from e
        check_loading_info(f"Vision-language model weights in {src}", info,
                           hint=f"Download '{name}' again into its folder under models/audiostory/.")
        if getattr(processor, "chat_template", None) is None:
            raise ModelFilesError(f"The processor of '{name}' has no chat template; use an instruction-tuned VLM.")
        return cls(model=model.to(device).eval(), processor=processor, **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def caption(self, images: Sequence[Union[np.ndarray, torch.Tensor]], hint: str = "") -> str:
        """One caption for the images of one scene. ``hint`` (the user's brief) is added to the prompt."""
        if not images:
            raise InputError("A scene needs at least one keyframe to caption.")
        pil = [to_pil(im) for im in images]
        text = self.prompt + (f" The video is about: {hint.strip()}" if hint.strip() else "")
        messages = [{"role": "user", "content": [{"type": "image"} for _ in pil] + [{"type": "text", "text": text}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=pil, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {k: (v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device))
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return clean_caption(self.processor.batch_decode(new, skip_special_tokens=True)[0])

    def caption_scenes(self, scenes: SceneList, hint: str = "", overwrite: bool = False,
                       hooks: Optional[Hooks] = None) -> list[str]:
        """Caption every scene that has no caption yet (or all with ``overwrite``); fills ``scene.caption``."""
        hooks = as_hooks(hooks)
        n = len(scenes.scenes)
        for i, sc in enumerate(scenes.scenes):
            hooks.check()
            if overwrite or not sc.caption:
                sc.caption = self.caption(sc.keyframes, hint) or "ambient room tone"
            hooks.report("captions", i + 1, n)
        return scenes.captions()


# ---------------------------------------------------------------- user-edited captions
def parse_captions(text: str, n_scenes: int) -> list[str]:
    """Captions typed by a user: a JSON list of strings, ``{"scenes": [{"caption": ...}]}``, or one per line."""
    text = check_text(text, "The captions text", MAX_INSTRUCTION_CHARS).strip()
    if not text:
        raise InputError("The captions are empty.")
    caps: list[str]
    if text[:1] in "[{":
        data = parse_json(text, "Captions JSON")
        if isinstance(data, dict):
            data = data.get("scenes", data.get("captions"))
        if not isinstance(data, list):
            raise InputError('Captions JSON must be a list of strings or {"scenes": [{"caption": "..."}]}.')
        caps = [d.get("caption", "") if isinstance(d, dict) else d for d in data]
        if not all(isinstance(c, str) for c in caps):
            raise InputError("Every caption must be a string.")
    else:
        caps = [ln.strip() for ln in text.splitlines() if ln.strip()]
        caps = [re.sub(r"^\s*(\d+[.)]|\[[^\]]*\]|[-*])\s*", "", c) for c in caps]
    caps = [c.strip() for c in caps]
    if len(caps) != n_scenes:
        raise InputError(f"Got {len(caps)} captions for {n_scenes} scenes; give exactly one per scene.")
    empty = [i + 1 for i, c in enumerate(caps) if not c]
    if empty:
        raise InputError(f"Scene(s) {empty} have an empty caption.")
    return caps


def apply_captions(scenes: SceneList, captions: Sequence[str]) -> SceneList:
    if len(captions) != len(scenes.scenes):
        raise InputError(f"Got {len(captions)} captions for {len(scenes.scenes)} scenes.")
    for sc, c in zip(scenes.scenes, captions):
        sc.caption = c.strip()
    return scenes

"""What the AudioStory nodes share on the ComfyUI side: the custom socket types (declared once here),
the model folder, progress/interrupt hooks and the numerics wrapper.

Node ids are a public contract: never rename them, never reorder or remove inputs; append optional
inputs only.
"""
from __future__ import annotations

import functools
import os

import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..audiostory_core.progress import Hooks
from .logic import StageProgress, list_model_roots

MODEL_FOLDER = "audiostory"
folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))

CATEGORY = "audio/AudioStory"

Planner = io.Custom("AUDIOSTORY_PLANNER")
Plan = io.Custom("STORY_PLAN")
Events = io.Custom("AUDIOSTORY_EVENTS")
Memory = io.Custom("STORY_MEMORY")
AudioContext = io.Custom("AUDIOSTORY_AUDIO_CONTEXT")
Scenes = io.Custom("AUDIOSTORY_SCENES")


def reference_numerics(fn):
    """Run a node body outside ``torch.inference_mode`` (with ``no_grad``).

    ComfyUI executes nodes under ``torch.inference_mode()``; tensors created there (the loaded weights
    included) take slightly different CPU kernels (~1e-6 differences). Running the AudioStory stages in
    plain ``no_grad`` mode makes the node path bit-identical to the core library / CLI.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


def interrupt() -> bool:
    """Core ``Hooks.interrupt``: raises ComfyUI's InterruptProcessingException (Cancel) directly."""
    mm.throw_exception_if_processing_interrupted()
    return False


def make_hooks(node_id=None, text=None) -> Hooks:
    progress = StageProgress(lambda total: comfy.utils.ProgressBar(total, node_id=node_id))
    return Hooks(progress=progress, interrupt=interrupt, text=text)


def send_text(node_id):
    def send(text: str) -> None:
        try:
            from server import PromptServer

            if PromptServer.instance is not None and node_id is not None:
                PromptServer.instance.send_progress_text(text, node_id)
        except Exception:  # a UI message must never break generation
            pass
    return send


def llm_dtype(device) -> torch.dtype:
    """The planner LLM is a plain transformers model (no manual cast), so 'auto' asks ComfyUI whether the
    device computes fp16/bf16 well (fp32 on CPU); --fp16/bf16/fp32-text-enc flags are honoured."""
    from comfy.cli_args import args

    if args.fp16_text_enc or args.bf16_text_enc or args.fp32_text_enc:
        return mm.text_encoder_dtype(device)
    if mm.should_use_fp16(device):
        return torch.float16
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def model_folders() -> list[str]:
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def model_roots() -> list[str]:
    return list_model_roots(model_folders())

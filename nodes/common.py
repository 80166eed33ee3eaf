"""What the AudioStory nodes share on the ComfyUI side: the custom socket types (declared once here),
the model folder, progress/interrupt hooks and the numerics wrapper.

Node ids are a public contract: never rename them, never reorder or remove inputs; append optional
inputs only.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..audiostory_core.perf import PerfOptions
from ..audiostory_core.progress import Hooks
from ..audiostory_core.training.lora_files import LORA_FOLDER as LORA_SUBFOLDER
from .dtypes_memory import pick_dtype
from .model_roots import list_model_roots
from .streaming import StageProgress

MODEL_FOLDER = "audiostory"
folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))
LORA_FOLDER = "audiostory_loras"   # models/loras/audiostory/: DiT LoRAs written by `python -m audiostory_core train`
folder_paths.add_model_folder_path(LORA_FOLDER, os.path.join(folder_paths.models_dir, *LORA_SUBFOLDER))
NO_LORA = "none"


def pack_temp_dir() -> Path:
    """The pack's folder under ComfyUI's temp directory (ComfyUI empties it at every start, so nothing kept
    there outlives a restart): mux work files, the training latent cache."""
    return Path(folder_paths.get_temp_directory()) / MODEL_FOLDER

CATEGORY = "audio/AudioStory"

Planner = io.Custom("AUDIOSTORY_PLANNER")
Plan = io.Custom("STORY_PLAN")
Events = io.Custom("AUDIOSTORY_EVENTS")
Memory = io.Custom("STORY_MEMORY")
AudioContext = io.Custom("AUDIOSTORY_AUDIO_CONTEXT")
Scenes = io.Custom("AUDIOSTORY_SCENES")


REFERENCE_TOOLTIP = ("Off (default): the fast paths, same plan and audio within float rounding. On: the official "
                     "computation, step by step (the CLI's --reference).")


def reference_input():
    """The ``reference`` switch every computing node appends as its last input."""
    return io.Boolean.Input("reference", default=False, optional=True, tooltip=REFERENCE_TOOLTIP)


def comfy_low_vram() -> bool:
    """ComfyUI was started with --lowvram or --novram (or chose it for a small GPU)."""
    return mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM)


def node_perf(reference: bool) -> PerfOptions:
    """The speed options of a node run: the defaults, the official computation with ``reference``; under
    ComfyUI's low-VRAM modes no CUDA-graph compile (its graphs keep their memory)."""
    if reference:
        return PerfOptions.reference()
    return PerfOptions.from_flags(compile=False if comfy_low_vram() else None)


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


UNET_FLAGS = ("fp32_unet", "fp64_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet",
              "fp8_e8m0fnu_unet")
TEXT_ENC_FLAGS = ("fp8_e4m3fn_text_enc", "fp8_e5m2_text_enc", "fp16_text_enc", "fp32_text_enc", "bf16_text_enc")


def _flag(names) -> Optional[str]:
    from comfy.cli_args import args

    return next((f"--{n.replace('_', '-')}" for n in names if getattr(args, n, False)), None)


def dit_dtype(forced: Optional[torch.dtype]) -> torch.dtype:
    """The DiT's dtype: the loader's choice, else a --*-unet flag, else bf16 > fp16 > fp32 as the device allows."""
    dev = mm.get_torch_device()
    flag = _flag(UNET_FLAGS)
    return pick_dtype(forced, mm.unet_dtype(dev) if flag else None, mm.should_use_bf16(dev),
                      mm.should_use_fp16(dev), "DiT", flag or "")


def llm_dtype(forced: Optional[torch.dtype]) -> torch.dtype:
    """The planner LLM's dtype: the loader's choice, else a --*-text-enc flag, else bf16 > fp16 > fp32."""
    dev = mm.text_encoder_device()
    flag = _flag(TEXT_ENC_FLAGS)
    return pick_dtype(forced, mm.text_encoder_dtype(dev) if flag else None, mm.should_use_bf16(dev),
                      mm.should_use_fp16(dev), "planner LLM", flag or "")


def vae_dtype(forced: Optional[torch.dtype]) -> torch.dtype:
    return forced or mm.vae_dtype(mm.vae_device(), [torch.float16, torch.bfloat16, torch.float32])


def model_folders() -> list[str]:
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def model_roots() -> list[str]:
    return list_model_roots(model_folders())


def lora_choices() -> list[str]:
    """``none`` then the .safetensors files in models/loras/audiostory/."""
    return [NO_LORA] + [f for f in folder_paths.get_filename_list(LORA_FOLDER) if f.endswith(".safetensors")]

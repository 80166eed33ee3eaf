"""Model loader node: an AudioStory model root -> planner, DiT as a ComfyUI MODEL, Oobleck as a VAE."""
from __future__ import annotations

import logging

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..audiostory_core.errors import ModelFilesError
from ..audiostory_core.models.config import locate
from ..audiostory_core.models.loading import load_models, load_stages
from ..audiostory_core.progress import NO_HOOKS, Hooks
from ..audiostory_core.training.lora_files import MAX_STRENGTH, apply_lora, apply_planner_lora, read_lora
from . import comfy_models as cm
from .download_routes import fetch_hint, missing_message
from .common import (CATEGORY, LORA_FOLDER, NO_LORA, Planner, dit_dtype, llm_dtype, lora_choices, make_hooks,
                     model_folders, model_roots, reference_numerics, vae_dtype)
from .dtypes_memory import DTYPE_CHOICES, dtype_from_choice
from .model_roots import no_roots_message, resolve_model_root
from .values import PlannerHandle


class AudioStoryModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        roots = model_roots()
        return io.Schema(
            node_id="AudioStoryModelLoader",
            display_name="AudioStory Model Loader",
            category=CATEGORY,
            description="Loads an AudioStory model root from models/audiostory/: the LLM planner, the DiT as a "
                        "ComfyUI MODEL and the Oobleck VAE as a ComfyUI VAE, each under ComfyUI's memory manager.",
            inputs=[
                io.Combo.Input("root", options=roots, default=roots[0] if roots else None,
                               tooltip="A folder in models/audiostory/ holding AudioStory-3B/, Flux_detokenizer/, "
                                       "Qwen2.5-3B-Instruct/ and flan-t5-large/."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="auto: bf16 where the device computes it well, else fp16, else fp32 (CPU); ComfyUI's "
                                       "--*-unet / --*-text-enc flags are honoured. fp16 is the official choice."),
                io.Combo.Input("lora", options=lora_choices(), default=NO_LORA, optional=True,
                               tooltip="A LoRA from models/loras/audiostory/ (made with `python -m audiostory_core train`: "
                                       "--mode dit on the DiT, --mode e2e on the planner's LLM, bridge heads and DiT), "
                                       "applied in memory; the files on disk stay as they are."),
                io.Float.Input("lora_strength", default=1.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.05,
                               optional=True, tooltip="1 = as trained, 0 = the base model exactly."),
            ],
            outputs=[
                Planner.Output(display_name="planner", tooltip="LLM, tokenizer, bridge heads and null embedding."),
                io.Model.Output(display_name="model", tooltip="The audio DiT as a flow-matching ComfyUI MODEL."),
                io.Vae.Output(display_name="vae", tooltip="The Oobleck VAE (works with VAEDecodeAudio too)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, root):
        """Only ``root`` is checked here, before anything runs: the folder and every component it needs
        (files only, nothing loaded), with how to fetch what is missing; ``dtype`` keeps ComfyUI's combo check."""
        roots = model_roots()
        if not roots:
            return f"{no_roots_message(model_folders())}\n{fetch_hint()}"
        if root not in roots:
            return f"Model folder {root!r} is not in models/audiostory/; available: {', '.join(roots)}."
        try:
            locate(resolve_model_root(model_folders(), root))
        except ModelFilesError as e:
            return missing_message(root, str(e).split("\n")[0])
        return True

    @classmethod
    @reference_numerics
    def execute(cls, root, dtype, lora=NO_LORA, lora_strength=1.0) -> io.NodeOutput:
        forced = dtype_from_choice(dtype)
        paths = locate(resolve_model_root(model_folders(), root))
        want = {"planner": (llm_dtype(forced), mm.text_encoder_offload_device()),
                "dit": (dit_dtype(forced), mm.unet_offload_device()),
                "vae": (vae_dtype(forced), mm.vae_offload_device())}
        loaded = load_components(paths, want, make_hooks(cls.hidden.unique_id))
        planner, dit, vae = loaded["planner"].planner, loaded["dit"].dit, loaded["vae"].vae
        if lora and lora != NO_LORA:
            lf = read_lora(folder_paths.get_full_path_or_raise(LORA_FOLDER, lora))
            apply_lora(dit, lf, lora_strength)
            if lf.has_planner_part:          # an end-to-end LoRA: the LLM's LoRA and the bridge heads too
                apply_planner_lora(planner, lf, lora_strength)
        llm_p, heads_p = cm.planner_patchers(planner)
        handle = PlannerHandle(planner=planner, null_embedding=loaded["dit"].null_embedding.detach().float().cpu(),
                               audio_seq_len=int(dit.config.audio_seq_len), vae_sample_rate=int(vae.config.sampling_rate),
                               root_name=root, llm_patcher=llm_p, heads_patcher=heads_p)
        return io.NodeOutput(handle, cm.dit_model_patcher(dit, want["dit"][0]), cm.AudioStoryVAE(vae, want["vae"][0]))


def load_components(paths, want: dict, hooks: Hooks = NO_HOOKS) -> dict:
    """Load planner/DiT/VAE with one ``load_models`` call per (dtype, offload device) group, so the
    checkpoint is read once when they share a dtype. Returns {component: loaded result}.

    Every load stage advances one progress bar and is a Cancel point (between stages nothing is half-built).
    """
    groups: dict = {}
    for comp, key in want.items():
        groups.setdefault(key, []).append(comp)
    parts = {key: {c: c in comps for c in ("planner", "dit", "vae")} for key, comps in groups.items()}
    total, done = sum(len(load_stages(**p)) for p in parts.values()), 0

    def on_stage(name: str) -> None:
        nonlocal done
        done += 1
        hooks.report("load", done, total)
        hooks.check()

    hooks.report("load", 0, total)
    loaded = {}
    for (dt, device), comps in groups.items():
        res = load_models(paths, dt, device, on_stage=on_stage, **parts[(dt, device)])
        loaded.update({comp: res for comp in comps})
    for w in dict.fromkeys(w for res in loaded.values() for w in res.warnings):  # unknown keys etc., once each
        logging.warning("AudioStory: %s", w)
    return loaded


NODES = [AudioStoryModelLoader]

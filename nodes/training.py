"""Training nodes: a data set from the input folder, a DiT LoRA trained in ComfyUI, saved into
models/loras/audiostory/ (where the Model Loader's ``lora`` list reads it).

They follow ComfyUI core's training nodes (``comfy_extras/nodes_train.py``): V3 nodes, a ProgressBar per
step, Cancel checked every step, a loss-graph IMAGE, a separate save node and core's ``LOSS_MAP`` value
(so core's "Plot Loss Graph" takes it too). The loop is the CLI's (``audiostory_core.training.trainer``):
the same config, order, noise and loss, so a node run equals ``python -m audiostory_core train`` with the
same settings. No LoRA file is written until the Save node runs, so a cancelled run leaves none (only the
latent cache: each clip's VAE latents, under ComfyUI's temp folder, which ComfyUI empties at every start).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io, ui

from ..audiostory_core.errors import InputError
from ..audiostory_core.media.captioning import VisionCaptioner
from ..audiostory_core.models.folders import VLM
from ..audiostory_core.models.config import HOP
from ..audiostory_core.training.datasets import cached_latents, find_manifest, load_examples
from ..audiostory_core.training.video_rows import CaptionSource
from ..audiostory_core.training.trainer import TrainData, Trainer, conditioning, lora_state, require_peft
from . import comfy_models as cm
from . import model_choices
from .common import CATEGORY, LORA_FOLDER, Planner, make_hooks, pack_temp_dir
from .training_steps import (DEFAULT_SCHEDULE, LIMITS, NO_DATASET, SCHEDULE_CHOICES, TrainedLora, TrainingData,
                             check_prefix, dataset_choices, loss_graph, next_lora_path, report_text,
                             resolve_dataset, train_config)
from .video import load_captioner

log = logging.getLogger("AudioStory")
TRAIN_CATEGORY = f"{CATEGORY}/training"
TrainingDataType = io.Custom("AUDIOSTORY_TRAINING_DATA")
LoraType = io.Custom("AUDIOSTORY_LORA")
LossMap = io.Custom("LOSS_MAP")      # core's type: {"loss": [float per step]}
NO_VLM = "none"
LATENT_CACHE = "latent_cache"        # under pack_temp_dir(): one file per clip, VAE and seed (the CLI's cache)


def latent_cache_dir() -> Path:
    """Where Train LoRA keeps each clip's latents, so a second run (other steps, learning rate, rank) encodes
    no clip again. In ComfyUI's temp folder: emptied at every ComfyUI start, it cannot grow without bound."""
    return pack_temp_dir() / LATENT_CACHE


def _datasets() -> list[str]:
    return dataset_choices(folder_paths.get_input_directory())


def _int_input(name: str, tooltip: str, **extra) -> io.Int.Input:
    lim = LIMITS[name]
    return io.Int.Input(name, default=int(lim.default), min=int(lim.min), max=int(lim.max), step=int(lim.step),
                        tooltip=tooltip, **extra)


def _float_input(name: str, tooltip: str) -> io.Float.Input:
    lim = LIMITS[name]
    return io.Float.Input(name, default=float(lim.default), min=lim.min, max=lim.max, step=lim.step,
                          round=False, tooltip=tooltip)


class AudioStoryTrainingData(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        choices = _datasets() or [NO_DATASET]
        return io.Schema(
            node_id="AudioStoryTrainingData",
            display_name="AudioStory Training Data",
            category=TRAIN_CATEGORY,
            description="Reads a folder of captioned clips from ComfyUI's input folder (a captions.jsonl or .csv "
                        "manifest: audio, caption per line; or video lines, captioned by the vlm or with their own "
                        "events) at the model's sample rate. Bad lines are skipped and listed on the node with the "
                        "reason.",
            inputs=[
                io.Combo.Input("dataset", options=choices, default=choices[0],
                               tooltip="A folder under ComfyUI/input/ holding one .jsonl/.csv manifest (or one "
                                       "manifest of a folder holding several). Paths in it are relative to it."),
                Planner.Input("planner", tooltip="From the AudioStory Model Loader: gives the DiT's clip length "
                                                 "(longer clips are skipped) and the sample rate."),
                io.Vae.Input("vae", tooltip="From the AudioStory Model Loader: clips are resampled to its rate "
                                            "and channels."),
                io.Combo.Input("vlm", options=[NO_VLM] + model_choices.choices(VLM), default=NO_VLM, optional=True,
                               tooltip="For manifest lines {\"video\": ...} without events: the vision-language "
                                       "model that captions them scene by scene, as dubbing does (a folder in "
                                       f"{model_choices.where(VLM)}). none: such lines are skipped and listed."),
            ],
            outputs=[
                TrainingDataType.Output(display_name="data", tooltip="The usable clips, for AudioStory Train LoRA."),
                io.String.Output(display_name="report", tooltip="Clips used and each skipped line with its reason."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, dataset):
        """Only names listed under the input folder pass (never a free path)."""
        if dataset not in _datasets():
            return (f"Data set {str(dataset)[:100]!r} not found: put a folder with a captions.jsonl (audio, caption "
                    "per line) under ComfyUI/input/.")
        return True

    @classmethod
    def fingerprint_inputs(cls, dataset, **kwargs):
        """Re-read when the manifest changes (ComfyUI would otherwise reuse the cached clips)."""
        try:
            m = find_manifest(resolve_dataset(folder_paths.get_input_directory(), dataset))
            st = m.stat()
            return f"{m}:{st.st_mtime_ns}:{st.st_size}"
        except Exception:
            return float("nan")

    @classmethod
    def execute(cls, dataset, planner, vae, vlm=NO_VLM) -> io.NodeOutput:
        path = resolve_dataset(folder_paths.get_input_directory(), dataset)
        if not isinstance(vae, cm.AudioStoryVAE):
            raise InputError("vae must be the AudioStory VAE from the AudioStory Model Loader.")
        sr, channels = int(vae.diffusers_vae.config.sampling_rate), int(vae.diffusers_vae.config.audio_channels)
        with torch.inference_mode(False):
            examples, report = load_examples(path, sr, channels, planner.max_clip_seconds, confine=True,
                                             captions=_caption_source(vlm), hooks=make_hooks(cls.hidden.unique_id))
        text = report_text(dataset, report)
        if not examples:
            raise InputError(f"No usable clip in {dataset}.\n{text}")
        return io.NodeOutput(TrainingData(name=dataset, examples=examples, report=report, sample_rate=sr), text,
                             ui=ui.PreviewText(text))


def _caption_source(vlm: str) -> CaptionSource:
    """The VLM picked on the node, loaded (as the Video Captioner loads it) only for a video line without events."""
    missing = (f"pick a vlm on the AudioStory Training Data node (a folder in {model_choices.where(VLM)}), or "
               "caption the videos first with `python -m audiostory_core caption-videos` into a .jsonl in the data "
               "set's folder and pick that file")
    if not vlm or vlm == NO_VLM:
        return CaptionSource(missing=missing)
    return CaptionSource(load=lambda: load_captioner(vlm, VisionCaptioner.max_new_tokens), missing=missing)


class AudioStoryTrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryTrainLora",
            display_name="AudioStory Train LoRA",
            category=TRAIN_CATEGORY,
            description="Trains a LoRA on the DiT with your clips (the CLI's `train --mode dit`: frozen planner "
                        "conditioning, rectified-flow loss). Cancel stops it between steps; no LoRA file is "
                        "written until AudioStory Save LoRA runs. Each clip is encoded once: its latents are cached in "
                        "ComfyUI's temp folder (emptied when ComfyUI starts), so a rerun with other settings "
                        "starts training at once. Needs the peft library (pip install peft).",
            inputs=[
                Planner.Input("planner", tooltip="From the AudioStory Model Loader (frozen: conditions each clip)."),
                io.Model.Input("model", tooltip="The AudioStory DiT from the Model Loader; a copy is trained, the "
                                                "loaded model stays as it is."),
                io.Vae.Input("vae", tooltip="The AudioStory VAE from the Model Loader (encodes the clips once)."),
                TrainingDataType.Input("data", tooltip="From AudioStory Training Data."),
                _int_input("steps", "Optimiser steps (the CLI's --steps)."),
                _float_input("learning_rate", "AdamW learning rate (the CLI's --lr)."),
                _int_input("rank", "LoRA rank: higher learns more, file grows linearly (--rank)."),
                _float_input("alpha", "LoRA alpha; the applied scale is alpha / rank (--alpha)."),
                _int_input("seed", "Seed of the example order, noise and sigmas: same seed, same LoRA (--seed).",
                           control_after_generate=True),
                _int_input("batch_size", "Clips per micro-step (--batch-size)."),
                _int_input("grad_accum", "Micro-steps per optimiser step (--grad-accum)."),
                io.Combo.Input("schedule", options=list(SCHEDULE_CHOICES), default=DEFAULT_SCHEDULE,
                               tooltip="Learning-rate schedule after the warm-up (--schedule)."),
                _int_input("warmup_steps", "Linear warm-up steps (--warmup)."),
                io.Boolean.Input("bf16", default=False, tooltip="bf16 autocast (weights stay fp32; --bf16)."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Less activation memory, about 30% slower (--gradient-checkpointing)."),
            ],
            outputs=[
                LoraType.Output(display_name="lora", tooltip="The trained LoRA, for AudioStory Save LoRA."),
                io.Image.Output(display_name="loss_graph", tooltip="The loss per step."),
                LossMap.Output(display_name="loss", tooltip="The loss per step (core's LOSS_MAP: Plot Loss Graph "
                                                            "takes it)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, planner, model, vae, data, steps, learning_rate, rank, alpha, seed, batch_size=1, grad_accum=1,
                schedule=DEFAULT_SCHEDULE, warmup_steps=0, bf16=False, gradient_checkpointing=False) -> io.NodeOutput:
        cfg = train_config(steps=steps, learning_rate=learning_rate, rank=rank, alpha=alpha, seed=seed,
                           batch_size=batch_size, grad_accum=grad_accum, schedule=schedule,
                           warmup_steps=warmup_steps, bf16=bf16, gradient_checkpointing=gradient_checkpointing)
        require_peft()
        dit = cm.dit_of(model)
        if dit is None:
            raise InputError("model must be the AudioStory MODEL from the AudioStory Model Loader.")
        if not isinstance(data, TrainingData) or not data.examples:
            raise InputError("data must come from AudioStory Training Data.")
        hooks = make_hooks(cls.hidden.unique_id)
        with torch.inference_mode(False):
            tensors, losses = _train(planner, dit, vae, data, cfg, hooks)
        lora = TrainedLora(tensors=tensors, rank=cfg.rank, alpha=cfg.alpha, targets=tuple(cfg.targets),
                           config={**cfg.resume_key(), "dataset": data.name, "clips": len(data.examples)},
                           losses=losses)
        text = f"{len(losses)} steps on {len(data.examples)} clips; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        return io.NodeOutput(lora, loss_graph(losses), {"loss": list(losses)}, ui=ui.PreviewText(text))


def _train(planner, dit, vae, data: TrainingData, cfg, hooks) -> tuple[dict, list[float]]:
    """Condition and encode the clips, then run the trainer's steps on a copy of the DiT (fp32 weights on
    ComfyUI's device), checking Cancel before each step. Returns the LoRA tensors (CPU) and the losses."""
    pl = planner.planner
    cm.load([planner.llm_patcher, planner.heads_patcher], cm.llm_working_memory(pl.llm, 1024))
    tokens = conditioning(pl, data.examples)
    hooks.check()
    cm.load([vae.patcher])
    cache = latent_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    latents = cached_latents(vae.diffusers_vae, data.examples, int(dit.config.audio_seq_len), HOP, cfg.seed,
                             cache_dir=cache)
    hooks.check()
    device = mm.get_torch_device()
    weights = sum(p.numel() for p in dit.parameters()) * 4
    mm.free_memory(weights * 3, device)      # fp32 copy + activations/grad headroom; evicts other models
    train_dit = copy.deepcopy(dit).to(device=device, dtype=torch.float32)
    try:
        trainer = Trainer(train_dit, TrainData(tokens=tokens, latents=latents,
                                               seconds=[e.seconds for e in data.examples]),
                          cfg, out=folder_paths.get_temp_directory(), hooks=hooks)
        train_dit.train()
        log.info("AudioStory: training a rank-%d LoRA for %d steps on %d clips (%s)", cfg.rank, cfg.steps,
                 len(data.examples), device)
        hooks.report("train", 0, cfg.steps)
        while trainer.step < cfg.steps:
            hooks.check()
            trainer.train_step()
            hooks.report("train", trainer.step, cfg.steps)
        train_dit.eval()
        return lora_state(train_dit), list(trainer.losses)
    finally:
        del train_dit
        mm.soft_empty_cache()


class AudioStorySaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStorySaveLora",
            display_name="AudioStory Save LoRA",
            category=TRAIN_CATEGORY,
            description="Writes the trained LoRA as one .safetensors file (its training settings in the metadata) "
                        "into models/loras/audiostory/, where the Model Loader's lora list finds it.",
            is_output_node=True,
            inputs=[
                LoraType.Input("lora", tooltip="From AudioStory Train LoRA."),
                io.String.Input("filename_prefix", default="audiostory_lora",
                                tooltip="File name start: letters, digits, spaces, _ . - (no folder); a 5-digit "
                                        "counter and .safetensors are added."),
            ],
            outputs=[io.String.Output(display_name="lora_name",
                                      tooltip="The file's name as the Model Loader's lora list shows it.")],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        try:
            check_prefix(filename_prefix)
        except InputError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, lora, filename_prefix) -> io.NodeOutput:
        if not isinstance(lora, TrainedLora):
            raise InputError("lora must come from AudioStory Train LoRA.")
        folder = Path(folder_paths.get_folder_paths(LORA_FOLDER)[0])
        folder.mkdir(parents=True, exist_ok=True)
        path = lora.save(next_lora_path(folder, filename_prefix))
        log.info("AudioStory: wrote LoRA %s", path)
        return io.NodeOutput(path.name, ui=ui.PreviewText(f"saved models/loras/audiostory/{path.name}"))


NODES = [AudioStoryTrainingData, AudioStoryTrainLora, AudioStorySaveLora]

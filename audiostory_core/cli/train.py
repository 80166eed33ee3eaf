"""``train``: LoRA fine-tuning on a folder of captioned clips (or recordings with event lists, or videos);
``caption-videos``: the VLM captions of a data set's videos written once, for review, as a manifest.

Runs in one process or under ``torchrun`` (DDP; the global batch is --batch-size x processes x --grad-accum).
Writes OUT/lora.safetensors, OUT/train_log.csv and OUT/checkpoints/; running the same command again resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..models.folders import VLM

VLM_HELP = "VLM folder or Hugging Face id (as dub --vlm) that captions the video lines without events"


def add_parser(sub, add_model_args) -> None:
    from ..training.trainer import MODES, SCHEDULES, TrainConfig

    d = TrainConfig()
    t = sub.add_parser("train", help="LoRA fine-tuning on your own sounds (needs: pip install peft)")
    add_model_args(t)
    t.add_argument("--data", required=True, help="a .jsonl/.csv manifest (audio, caption) or a folder holding one")
    t.add_argument("--mode", choices=MODES, default=d.mode,
                   help="dit: LoRA on the DiT, conditioned by the frozen planner; e2e: LoRA on the planner's LLM, "
                        "the bridge heads and LoRA on the DiT, trained together (LM + flow loss)")
    t.add_argument("--out", required=True, help="output folder (lora.safetensors, train_log.csv, checkpoints/)")
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per process and micro-step")
    t.add_argument("--grad-accum", type=int, default=d.grad_accum)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    t.add_argument("--warmup", type=int, default=d.warmup_steps, help="linear warm-up steps")
    t.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    t.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha (scale = alpha / rank)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--lm-weight", type=float, default=d.lm_weight, help="e2e: weight of the plan-text LM loss")
    t.add_argument("--flow-weight", type=float, default=d.flow_weight, help="e2e: weight of the flow-matching loss")
    t.add_argument("--llm-rank", type=int, default=d.llm_rank, help="e2e: LoRA rank on the LLM")
    t.add_argument("--llm-alpha", type=float, default=d.llm_alpha, help="e2e: LoRA alpha on the LLM")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (weights stay fp32)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="less activation memory, ~30%% slower")
    t.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: at the end)")
    t.add_argument("--latent-cache", help="folder where the VAE latents of the clips are kept between runs")
    t.add_argument("--restart", action="store_true", help="ignore the checkpoints in --out and start over")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--vlm", help=VLM_HELP + "; loaded only when such a line exists (without it they are skipped)")

    c = sub.add_parser("caption-videos", help="write the VLM captions of a data set's videos as a manifest to "
                                              "review and edit before `train`")
    add_model_args(c)
    c.add_argument("--data", required=True, help="a .jsonl manifest (lines {\"video\": ...}) or a folder holding one")
    c.add_argument("--out", required=True, help="the .jsonl to write (every line of --data, videos captioned)")
    c.add_argument("--vlm", default=VLM.default, help=VLM_HELP)
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.add_argument("--quiet", action="store_true", help="no progress bars")


def train_config(args) -> "TrainConfig":
    from ..training.trainer import TrainConfig

    return TrainConfig(mode=args.mode, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       lr=args.lr, schedule=args.schedule, warmup_steps=args.warmup, rank=args.rank,
                       alpha=args.alpha, seed=args.seed, bf16=args.bf16,
                       gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every,
                       lm_weight=args.lm_weight, flow_weight=args.flow_weight, llm_rank=args.llm_rank,
                       llm_alpha=args.llm_alpha).check()


def progress_hooks(enabled: bool, losses: list):
    """A tqdm bar for the training steps showing the last loss; tqdm itself shows steps/s and the ETA."""
    from tqdm import tqdm

    from ..progress import Hooks

    bar = None

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if not enabled:
            return
        if bar is None:
            bar = tqdm(total=total, initial=done, desc="train", unit="step", file=sys.stderr)
        bar.update(done - bar.n)
        if losses:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")

    def close() -> None:
        if bar is not None:
            bar.close()

    return Hooks(progress=progress), close


def caption_source(args):
    """The VLM of ``--vlm`` for video lines without events, loaded on the first such line (as ``dub`` loads it)."""
    from ..training.video_rows import CaptionSource

    missing = ("pass --vlm NAME (a VLM folder under --models or a Hugging Face id, e.g. --vlm "
               f"{VLM.default}), or write the captions first: python -m audiostory_core caption-videos "
               f"--models {args.models} --data {args.data} --out CAPTIONS.jsonl, then train --data CAPTIONS.jsonl")
    if not args.vlm:
        return CaptionSource(missing=missing)

    def load():
        from ..media.captioning import VisionCaptioner
        from ..pipeline import resolve_device
        from .media import model_search_dirs

        return VisionCaptioner.from_pretrained(args.vlm, model_search_dirs(args), device=resolve_device(args.device))

    return CaptionSource(load=load, missing=missing)


def data_geometry(args) -> tuple[int, int, float]:
    """(VAE rate, VAE channels, longest clip in seconds) of ``--models`` from its configs, loading nothing:
    the data (and the VLM that captions it) is read before the models load."""
    from ..models.loading import vae_rate_channels
    from .common import clip_window, model_paths

    return (*vae_rate_channels(model_paths(args)), clip_window(args))


def cmd_caption_videos(args) -> int:
    from ..training.captions_file import caption_manifest, write_captions
    from ..training.datasets import find_manifest
    from ..validation import check_output_file
    from .common import check_args, tqdm_hooks

    check_args(args)
    manifest = find_manifest(args.data)
    out = check_output_file(args.out, formats=["jsonl"], inputs=[manifest], what="--out")
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {out} exists (captions you may have edited); pass --overwrite to replace it, "
                         "or give another name.")
    _, _, max_clip = data_geometry(args)
    hooks, close = tqdm_hooks(not args.quiet)
    source = caption_source(args)
    try:
        lines, report = caption_manifest(manifest, source, max_clip, out.parent, hooks=hooks)
    finally:
        close()
        source.release()
    print(report.text("lines"), file=sys.stderr)
    if not lines:
        raise InputError(f"No usable line in {manifest} (see the report above); nothing written.")
    write_captions(out, lines)
    print(f"wrote {out} ({len(lines)} lines); review the captions, then: python -m audiostory_core train "
          f"--models {args.models} --data {out} --out RUN", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from ..models.loading import load_models
    from ..models.config import HOP
    from ..pipeline import resolve_device
    from ..training.datasets import cached_latents, load_examples
    from ..training.trainer import TrainData, Trainer, conditioning, e2e_data, require_peft
    from .common import model_paths

    cfg = train_config(args)
    require_peft()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder.")
    dev = resolve_device(args.device)
    if args.dtype not in ("auto", "fp32"):
        raise InputError("Training keeps fp32 weights; use --bf16 for bf16 autocast instead of --dtype.")
    sr, channels, max_clip = data_geometry(args)
    source = caption_source(args)
    try:            # the data first: bad data fails fast, and the VLM is freed before the models load
        examples, report = load_examples(args.data, sr, channels, max_clip, captions=source)
    finally:
        source.release()
    print(report.text(), file=sys.stderr)
    if not examples:
        raise InputError(f"No usable clip in {args.data} (see the report above).")
    import torch

    models = load_models(model_paths(args), torch.float32, dev)
    fc, vae = models.flux_config, models.vae
    if (int(vae.config.sampling_rate), int(vae.config.audio_channels)) != (sr, channels):
        raise InputError(f"The VAE loaded at {vae.config.sampling_rate} Hz, {vae.config.audio_channels} channels; "
                         f"its config said {sr} Hz, {channels}: check the VAE files of --models.")
    latents = cached_latents(vae, examples, fc.audio_seq_len, HOP, cfg.seed,
                             Path(args.latent_cache) if args.latent_cache else None)
    planner = None
    if cfg.mode == "e2e":
        data, planner = e2e_data(examples, latents), models.planner    # the planner is trained too
    else:
        data = TrainData(tokens=conditioning(models.planner, examples), latents=latents,
                         seconds=[e.seconds for e in examples])
    models.planner = models.vae = None          # frozen (dit mode) or held by the trainer (e2e): free the rest
    trainer = Trainer(models.dit, data, cfg, out, planner=planner)
    hooks, close = progress_hooks(not args.quiet and trainer.dist.rank == 0, trainer.losses)
    trainer.hooks = hooks
    if args.restart:
        for old in trainer.checkpoint_dir.glob("step-*.pt"):
            old.unlink()
    try:
        result = trainer.run()
    finally:
        close()
    if result.lora_path is not None:
        print(f"wrote {result.lora_path} (final loss {result.losses[-1]:.4f}, {result.steps_per_s:.2f} steps/s); "
              f"use it with: python -m audiostory_core generate --lora {result.lora_path} ...", file=sys.stderr)
    return 0


COMMANDS = {"train": cmd_train, "caption-videos": cmd_caption_videos}

"""What every CLI command shares: model arguments, the pipeline built from them, tqdm progress."""
from __future__ import annotations

import argparse
import sys

from ..settings import DECODE_KEYS, RENDER_KEYS, SETTINGS, RenderSettings


def tqdm_hooks(enabled: bool = True):
    """Hooks that draw one progress line per stage on stderr: a new stage closes the one before, so
    bars never nest and each finished stage leaves one line."""
    from tqdm import tqdm

    from ..progress import Hooks

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, leave=True, file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.refresh()
        if stage != "plan" and done >= total:
            bar.close()

    def close() -> None:
        for b in bars.values():
            b.close()

    return Hooks(progress=progress), close


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, help="model root (holds AudioStory-3B/, Flux_detokenizer/, ...)")
    p.add_argument("--audiostory-dir", help="override: folder with config.yaml + pytorch_model.bin")
    p.add_argument("--flux-dir", help="override: Flux_detokenizer folder")
    p.add_argument("--qwen-dir", help="override: Qwen2.5-3B-Instruct folder")
    p.add_argument("--t5-dir", help="override: flan-t5-large folder")
    p.add_argument("--tokenizer-dir", help="override: tokenizer folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = fp16 on GPU (as the official code), fp32 on CPU")
    p.add_argument("--strict", action="store_true",
                   help="checkpoint keys that belong to no AudioStory module are an error (default: a warning)")
    add_perf_args(p)


def add_perf_args(p: argparse.ArgumentParser) -> None:
    """Speed and memory switches (:class:`audiostory_core.perf.PerfOptions`): every command that loads models."""
    from ..perf import ATTENTION_CHOICES

    g = p.add_argument_group("speed and memory (default: every fast path; the compiled ones only on CUDA)")
    g.add_argument("--reference", action="store_true",
                   help="the official computation: token-by-token decode, eager DiT, one VAE call per clip")
    g.add_argument("--low-vram", action="store_true",
                   help="load on the host, keep only the running stage's model on the GPU, decode the VAE in chunks")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile + CUDA graphs for the decode and DiT steps (default: on, CUDA only; "
                        "a failure falls back to eager with one warning)")
    g.add_argument("--attention", choices=ATTENTION_CHOICES, default=None,
                   help="DiT attention backend on CUDA (default: auto = SDPA's flash kernel in fp16/bf16; "
                        "sdpa = PyTorch's own choice)")


def perf_options(args):
    """The :class:`PerfOptions` of the parsed speed switches (a contradiction is an InputError)."""
    from ..perf import PerfOptions

    return PerfOptions.from_flags(reference=getattr(args, "reference", False), compile=getattr(args, "compile", None),
                                  attention=getattr(args, "attention", None))


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instruction", help="the story to tell")
    p.add_argument("--duration", type=float, help="total duration in seconds")
    add_decode_args(p)


def add_setting_arg(p: argparse.ArgumentParser, name: str, help: str = "") -> None:
    """``--<name>`` with the type, default, choices and help of :class:`RenderSettings`."""
    s = SETTINGS[name]
    kw = {"type": s.type} if s.type is not str else {}
    if s.choices:
        kw["choices"] = list(s.choices)
    p.add_argument(s.flag, default=s.default, help=help or s.help, **kw)


def add_decode_args(p: argparse.ArgumentParser) -> None:
    """How the planner decodes: every command that plans a story has these."""
    for name in DECODE_KEYS:
        add_setting_arg(p, name)


def add_stems_arg(p: argparse.ArgumentParser, clock: str = "the story's") -> None:
    """``--stems DIR``: every event's clip as its own file at its offset, with label and cue tracks."""
    p.add_argument("--stems", metavar="DIR",
                   help="also write each event's clip (before the crossfade) as eventNN_at_<start>s.wav, "
                        f"stems.json (offsets), labels.txt (Audacity) and cues.vtt (WebVTT), times on {clock} clock")


def write_result_stems(folder: str, clips, plan, sample_rate: int, crossfade: float, crossfade_curve: str,
                       origin: float = 0.0) -> None:
    """Write the stems of one rendered story and say where they went."""
    from ..tasks.stems import write_stems

    written = write_stems(folder, clips, [e.caption for e in plan.events], sample_rate, crossfade,
                          crossfade_curve=crossfade_curve, origin=origin)
    print(f"wrote {len(clips)} stems, labels.txt and cues.vtt into {folder} ({len(written)} files)", file=sys.stderr)


def add_render_args(p: argparse.ArgumentParser, seed_help: str = "") -> None:
    """Sampling, output and progress options: one definition for generate, dub, continue and batch."""
    for name in RENDER_KEYS:
        add_setting_arg(p, name, seed_help if name == "seed" else "")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="apply a LoRA from `train` at a strength (default 1; 0 = off), in memory (repeatable); an "
                        "e2e file also changes the planner (LLM LoRA, bridge heads)")


def settings(args, **overrides) -> RenderSettings:
    """The command's settings (arguments it lacks keep their defaults; ``overrides`` win)."""
    values = {name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None}
    return RenderSettings(**{**values, **overrides})


def add_loudness_args(p: argparse.ArgumentParser) -> None:
    """Output level options (off by default: the reference level is written unchanged)."""
    from ..stages.loudness import DEFAULT_TRUE_PEAK, LOUDNESS_RANGE, TRUE_PEAK_RANGE

    p.add_argument("--loudness", type=float, metavar="LUFS",
                   help=f"normalize the written audio to this EBU R128 integrated loudness ({LOUDNESS_RANGE[0]:g} "
                        f"to {LOUDNESS_RANGE[1]:g}; e.g. -16 streaming, -23 broadcast). Default: the level as generated")
    p.add_argument("--true-peak", type=float, default=DEFAULT_TRUE_PEAK, metavar="dBTP",
                   help=f"true-peak ceiling for --loudness ({TRUE_PEAK_RANGE[0]:g} to {TRUE_PEAK_RANGE[1]:g}; "
                        f"default {DEFAULT_TRUE_PEAK:g}): the gain stops there, even under the target")


def check_loudness(args) -> None:
    if getattr(args, "loudness", None) is not None:
        from ..stages.loudness import check_loudness_args

        check_loudness_args(args.loudness, args.true_peak)


def output_level(args, audio, sample_rate: int):
    """The audio to write: ``--loudness`` applied (with what it did), and a note if it exceeds full scale."""
    from ..stages.loudness import full_scale_note, normalize_loudness

    if getattr(args, "loudness", None) is not None:
        res = normalize_loudness(audio, sample_rate, args.loudness, args.true_peak)
        for note in res.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"loudness {res.loudness_before:.1f} -> {res.loudness_after:.1f} LUFS, true peak "
              f"{res.true_peak_after:.1f} dBTP (gain {res.gain_db:+.1f} dB)", file=sys.stderr)
        audio = res.audio
    note = full_scale_note(audio)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return audio


def pipeline(args, planner=True, dit=True, vae=True):
    """``AudioStoryPipeline.from_pretrained`` with the command's model and speed arguments, then the
    ``--lora`` files on the DiT (and an end-to-end file's LLM LoRA and bridge heads on the planner); load warnings on stderr. Low-VRAM loads on the host and brings each
    stage's model to the device for its stage."""
    from ..pipeline import AudioStoryPipeline
    from ..training.lora_files import apply_lora, apply_planner_lora, read_loras

    loras = read_loras(getattr(args, "lora", None) or [])   # checked before anything loads
    pipe = AudioStoryPipeline.from_pretrained(model_paths(args), args.device, args.dtype, perf=perf_options(args),
                                              low_vram=getattr(args, "low_vram", False), planner=planner, dit=dit,
                                              vae=vae, strict=getattr(args, "strict", False))
    for w in pipe.models.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for lf, strength in loras:
        if pipe.models.dit is not None and lf.pairs:
            apply_lora(pipe.models.dit, lf, strength)
        if pipe.models.planner is not None and lf.has_planner_part:
            apply_planner_lora(pipe.models.planner, lf, strength)
    return pipe


def lead(args) -> str:
    from ..stages.grammar import lead_phrase

    return lead_phrase(args.lead_phrase, getattr(args, "seed", 0))


def check_args(args) -> None:
    """Every plain argument a command has (range, finiteness, device, lead phrase), before anything loads.

    Arguments a command lacks are skipped, so every subcommand can call this first.
    """
    from .. import validation as v

    get = lambda name: getattr(args, name, None)  # noqa: E731
    for name in SETTINGS:
        if get(name) is not None:       # the CLI has no sample rate "0 = VAE rate": say 44100
            v.check_setting(name, get(name), allow_native_rate=False)
    if get("duration") is not None:
        v.check_total_duration(args.duration, "--duration")
    if get("instruction") is not None:
        v.check_instruction(args.instruction)
    if get("device") is not None:
        v.check_device(args.device)
    perf_options(args)      # --reference with --compile/--attention is a contradiction


def model_paths(args):
    """Locate the model files once per command (reads two small configs, loads nothing)."""
    from ..models.config import locate

    if getattr(args, "located", None) is None:
        args.located = locate(args.models, audiostory_dir=args.audiostory_dir, flux_dir=args.flux_dir,
                              qwen_dir=args.qwen_dir, t5_dir=args.t5_dir, tokenizer_dir=args.tokenizer_dir)
    return args.located


def clip_window(args) -> float:
    """Longest clip of this model root in seconds, without loading it."""
    from ..models.config import max_clip_seconds_for

    return max_clip_seconds_for(model_paths(args))


def read_plan(path: str, what: str = "--plan"):
    """A plan JSON file, checked against every plan limit (its size before it is read; loads no model)."""
    from ..stages.plan import StoryPlan
    from ..validation import check_input_file, read_text_file

    return StoryPlan.from_json(read_text_file(check_input_file(path, what), what))

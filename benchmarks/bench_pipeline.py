"""End-to-end benchmark: a 5-event story, the library default (fast paths) vs the official way, same run.

    python benchmarks/bench_pipeline.py --size tiny            # CPU, seconds (CI)
    python benchmarks/bench_pipeline.py --size real            # GPU: Qwen2.5-3B shape, 515M DiT, Oobleck

Random weights cannot plan, so a fixed synthetic story drives the LLM: reasoning (~150 tokens),
then per event ``<|gen|>`` caption ``<timestamp>d</timestamp>`` (~30 tokens) and the query blocks.
Both paths run the real decode work (full forward + logits + penalty + processors + argmax per
token), but the *chosen* token comes from the script:

* default (``PerfOptions()``, what every user gets unless ``--reference``): :func:`generate_plan` with
  ``fast=True, static_cache=True, compile=True`` and a
  :class:`ScriptedTokens` source (forced blocks in one forward; CUDA graphs on CUDA), event tokens
  from the kept states, all events and both CFG halves in one batch (compiled DiT step on CUDA),
  batched + trimmed VAE decode;
* official (``--reference`` computes the same): HF ``generate(output_hidden_states=True)`` with the official logits processors and a
  script processor (token-by-token blocks), states gathered like the official code, one
  ``sample_latents`` call per event (diffusers Euler scheduler, eager), one VAE call per clip.

* default low-VRAM (``--low-vram``): the default path with ``low_vram=True``.

Every column runs in its own process (same weights, same dtype: fp16 on CUDA like the official run,
fp32 on CPU), so its peak memory is its own: host RSS of that process on CPU (weights included),
``max_memory_allocated`` on CUDA. Free decoding is timed on the free steps alone (each step that feeds
one token outside the query blocks). Parity numbers need equal shapes; a shorter output is an error.
The cold start (weights in the official layout on disk -> pipeline ready) is measured in a fresh
subprocess, with its peak host RSS. Prints a markdown table; ``--json`` writes all numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.official_layout import SIZES, SizeSpec, write_random_checkpoint  # noqa: E402
from benchmarks.rss import peak_rss_bytes  # noqa: E402

STAGES = ("plan decode", "tokens", "sampling (all events)", "VAE decode", "stitch", "total")
DESCRIPTION = "A synthetic benchmark story"


# ------------------------------------------------------------------ the synthetic story
def _text(n: int, seed: int) -> str:
    words = ("rain", "door", "wind", "steps", "bell", "train", "crowd", "dog", "sea", "engine", "birds", "night")
    out, i = "", seed
    while len(out) < n:
        out += words[i % len(words)] + " "
        i = i * 7 + 3
    return out[:n].strip().ljust(n, "a")


def story_script(tok, ids, spec: SizeSpec) -> tuple[list[int], dict]:
    """Token ids of the synthetic transcript (the tokenizer maps one ASCII char to one token)."""
    from audiostory_core.stages.grammar import (AUD_CLOSE, AUD_OPEN, AUD_QUERY, GEN_CLOSE, GEN_OPEN, T5_CLOSE, T5_OPEN,
                                         T5_QUERY, THINK_CLOSE)

    dur = spec.total_seconds / spec.events
    ts = f"<timestamp>{dur:.1f}</timestamp>"
    ts_tokens = len(tok.encode(ts, add_special_tokens=False))
    text = _text(spec.reasoning_tokens, 1) + THINK_CLOSE
    for e in range(spec.events):
        text += (GEN_OPEN + _text(spec.caption_tokens - ts_tokens, e + 5) + ts + T5_OPEN
                 + "".join(T5_QUERY.format(i) for i in range(spec.n_semantic)) + T5_CLOSE + AUD_OPEN
                 + "".join(AUD_QUERY.format(i) for i in range(spec.n_residual)) + AUD_CLOSE + GEN_CLOSE)
    text += "<|im_end|>"
    script = tok.encode(text, add_special_tokens=False)
    forced = spec.events * (spec.n_semantic + 1 + spec.n_residual + 1)
    return script, {"tokens": len(script), "forced": forced, "free": len(script) - forced,
                    "event_seconds": dur}


# ------------------------------------------------------------------ helpers
class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def rel_err(a: torch.Tensor, b: torch.Tensor, what: str = "tensors") -> float:
    """||a - b|| / ||b||; different shapes are an error (a path that drops audio must not "match")."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class StepTimes:
    """Wall-clock time of every decode step, to time free decoding on the free steps alone.

    ``mark(token)`` is called when a token is chosen; the interval from choosing token k to choosing
    token k+1 is one step (feed k, forward, logits, penalty, processors, argmax). Steps that feed one
    free token count as free decoding; steps feeding a query token or an opening tag (the fast path
    feeds the whole block after it) and the prefill do not.
    """

    def __init__(self, clock: "Clock", skip: set):
        self.clock, self.skip = clock, skip
        self.marks: list[tuple[float, int]] = []

    def mark(self, token: int) -> None:
        self.marks.append((self.clock.now(), token))

    def free(self) -> tuple[int, float]:
        """(number of free steps, their total seconds)."""
        n, secs = 0, 0.0
        for (t0, tok), (t1, _) in zip(self.marks, self.marks[1:]):
            if tok not in self.skip:
                n, secs = n + 1, secs + (t1 - t0)
        return n, secs


def block_tokens(ids) -> set:
    return set(ids.semantic_block()) | set(ids.residual_block())


class ScriptProcessor:
    """HF logits processor that makes ``generate`` pick the script's token (argmax still computed)."""

    def __init__(self, script: list[int], prompt_len: int, steps: Optional[StepTimes] = None):
        self.script, self.prompt_len, self.steps = script, prompt_len, steps

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        int(torch.argmax(scores[0], dim=-1))
        i = input_ids.shape[1] - self.prompt_len
        out = torch.full_like(scores, -float("inf"))
        out[:, self.script[i]] = 0.0
        if self.steps is not None:
            self.steps.mark(self.script[i])
        return out


def timed_script(script: list[int], steps: StepTimes):
    """A :class:`ScriptedTokens` that marks the time of every token it chooses."""
    from audiostory_core.stages.fast_decode import ScriptedTokens

    class _Timed(ScriptedTokens):
        def __call__(self, scores, generated):
            tok = super().__call__(scores, generated)
            steps.mark(tok)
            return tok

        def choose_block(self, scores, generated):
            out = super().choose_block(scores, generated)
            for tok in out:
                if tok >= 0:
                    steps.mark(tok)
            return out

    return _Timed(script)


class OfficialBlockProcessor:
    """``AutoT5TokenGenerationProcessor`` / ``AutoAudioTokenGenerationProcessor`` of the official code."""

    def __init__(self, block: list[int]):
        self.block = block

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for b in range(input_ids.shape[0]):
            last = int(input_ids[b, -1])
            if last in self.block[:-1]:
                nxt = self.block[self.block.index(last) + 1]
                scores[b, nxt] = scores[b].max() + 10.0
            else:
                scores[b, self.block[1:]] = 0.0
        return scores


# ------------------------------------------------------------------ the two paths
def stitch(vae, clips, clock: Clock, t: dict, decoded_at: float, t0: float) -> torch.Tensor:
    """Every column's last step, timed alike: clips to 32 kHz, 3 s crossfades; records stitch and total."""
    from audiostory_core.stages.audio import crossfade_concat, resample

    sr_vae = int(vae.config.sampling_rate)
    audio = crossfade_concat([resample(c, sr_vae, 32000) for c in clips], 32000, 3.0)
    now = clock.now()
    t["stitch"] = now - decoded_at
    t["total"] = now - t0
    return audio


def run_reference(pipe, script: list[int], spec: SizeSpec, steps: int, clock: Clock) -> dict:
    from transformers import GenerationConfig, LogitsProcessorList

    from audiostory_core.stages.audio import decode_clips
    from audiostory_core.stages.event_tokens import clip_seconds
    from audiostory_core.stages.grammar import build_instruction
    from audiostory_core.stages.plan import plan_from_transcript, prompt_ids_for
    from audiostory_core.stages.sampling import sample_latents

    m = pipe.models
    pl = m.planner
    t = {}
    steps_t = StepTimes(clock, block_tokens(pl.ids))
    t0 = clock.now()
    instruction = build_instruction(DESCRIPTION, spec.total_seconds)
    prompt = prompt_ids_for(pl.tokenizer, instruction)
    ids = torch.tensor([prompt], device=pl.device)
    lp = LogitsProcessorList([OfficialBlockProcessor(pl.ids.semantic_block()),
                              OfficialBlockProcessor(pl.ids.residual_block()),
                              ScriptProcessor(script, len(prompt), steps_t)])
    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=pl.generation.max_new_tokens,
                          repetition_penalty=pl.generation.repetition_penalty,
                          eos_token_id=list(pl.generation.eos_token_ids),
                          pad_token_id=pl.generation.eos_token_ids[-1])
    out = pl.llm.generate(input_ids=ids, inputs_embeds=pl.llm.get_input_embeddings()(ids),
                          attention_mask=torch.ones_like(ids), output_hidden_states=True,
                          return_dict_in_generate=True, logits_processor=lp, generation_config=gc)
    gen = out.sequences[0][len(prompt):].tolist() if out.sequences.shape[1] > len(script) else out.sequences[0].tolist()
    lhs = torch.cat([hs[-1] for hs in out.hidden_states], dim=1)[0, len(prompt):]
    t1 = clock.now()
    t["plan decode"] = t1 - t0
    plan = plan_from_transcript(pl.tokenizer, pl.ids, instruction, gen, spec.total_seconds)
    n, mm = pl.ids.n_semantic, pl.ids.n_residual
    eot = [i for i, x in enumerate(gen) if x == pl.ids.t5_close]
    eoa = [i for i, x in enumerate(gen) if x == pl.ids.aud_close]
    sem_h = torch.stack([lhs[e - n:e] for e in eot])
    res_h = torch.stack([lhs[e - mm:e] for e in eoa])
    sem, res = pl.heads.project(sem_h, res_h)
    fused = pl.heads.fuse(sem, res)
    t2 = clock.now()
    t["tokens"] = t2 - t1
    secs = clip_seconds(plan.durations, 3.0)
    lat = torch.cat([sample_latents(m.dit, fused[i:i + 1], m.null_embedding, [secs[i]], steps=steps,
                                    guidance=4.0, noise="reference") for i in range(len(secs))])
    t3 = clock.now()
    t["sampling (all events)"] = t3 - t2
    clips = decode_clips(m.vae, lat, secs)
    t4 = clock.now()
    t["VAE decode"] = t4 - t3
    audio = stitch(m.vae, clips, clock, t, t4, t0)
    return {"times": t, "ids": gen, "semantic": sem, "latents": lat, "audio": audio, "plan": plan,
            "free_steps": steps_t.free(), "stats": {}}


def run_fast(pipe, script: list[int], spec: SizeSpec, steps: int, clock: Clock) -> dict:
    from audiostory_core.stages.event_tokens import clip_seconds, event_tokens
    from audiostory_core.stages.fast_vae import decode_clips_fast
    from audiostory_core.stages.plan import generate_plan
    from audiostory_core.stages.sampling import sample_latents

    m, perf = pipe.models, pipe.perf
    t, stats = {}, {}
    steps_t = StepTimes(clock, block_tokens(m.planner.ids))
    t0 = clock.now()
    pipe._place("plan")
    res = generate_plan(m.planner, DESCRIPTION, spec.total_seconds, token_source=timed_script(script, steps_t),
                        stats=stats, **perf.plan_kwargs)
    t1 = clock.now()
    t["plan decode"] = t1 - t0
    toks = event_tokens(m.planner, res.plan, res)
    t2 = clock.now()
    t["tokens"] = t2 - t1
    secs = clip_seconds(res.plan.durations, 3.0)
    pipe._place("sample")
    lat = sample_latents(m.dit, toks.fused, m.null_embedding, secs, steps=steps, guidance=4.0, noise="reference",
                         compile=perf.compile_dit, attention_backend=perf.attention_backend)
    t3 = clock.now()
    t["sampling (all events)"] = t3 - t2
    pipe._place("decode")
    chunk = perf.vae_chunk_frames or (128 if pipe.low_vram else None)
    clips = decode_clips_fast(m.vae, lat, secs, batch=1 if pipe.low_vram else perf.vae_batch, trim=perf.vae_trim,
                              chunk_frames=chunk, overlap=perf.vae_overlap_frames)
    t4 = clock.now()
    t["VAE decode"] = t4 - t3
    audio = stitch(m.vae, clips, clock, t, t4, t0)
    return {"times": t, "ids": res.plan.transcript_ids, "semantic": toks.semantic, "latents": lat,
            "audio": audio, "plan": res.plan, "stats": stats, "free_steps": steps_t.free()}


def _timed(fn, repeats: int, device: torch.device) -> dict:
    """Run ``fn`` ``repeats`` times after the caller's warm-up; median times."""
    runs = [fn() for _ in range(repeats)]
    res = runs[-1]
    res["times"] = {k: statistics.median(r["times"][k] for r in runs) for k in STAGES}
    free = [r["free_steps"] for r in runs]
    res["free_tps"] = statistics.median(n / secs for n, secs in free if secs > 0)
    res["free_steps_counted"] = free[-1][0]
    return res


def cold_start(root: Path, device: str, dtype: str) -> dict:
    """Load the pipeline from disk in a fresh process; seconds, peak host RSS and VRAM there."""
    code = f"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {str(ROOT)!r})
import torch
from audiostory_core.pipeline import AudioStoryPipeline
from benchmarks.rss import peak_rss_bytes
t = time.perf_counter()
p = AudioStoryPipeline.from_pretrained({str(root)!r}, device={device!r}, dtype={dtype!r})
if torch.cuda.is_available(): torch.cuda.synchronize()
dt = time.perf_counter() - t
vram = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
print(json.dumps({{"seconds": dt, "peak_rss_gb": peak_rss_bytes() / 2**30,
                   "peak_vram_gb": vram}}))
"""
    env = dict(os.environ)
    env["AUDIOSTORY_CACHE"] = str(root / ".cache")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError("cold-start subprocess failed:\n" + out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ columns, one process each
COLUMNS = {
    "official": "official way (HF generate, one sampling call per event, one VAE call per clip)",
    "default": "library default (PerfOptions(): every fast path, the compiled ones on CUDA)",
    "low_vram": "default low-VRAM",
}
RUNNERS = {"official": run_reference, "default": run_fast, "low_vram": run_fast}
SAVED = ("semantic", "latents", "audio")


def run_column(column: str, root: Path, out: Path, device: str, dtype_name: str, steps: int, repeats: int,
               no_compile: bool) -> None:
    """Child process: load, warm up, time one column, write its numbers and outputs to ``out``.

    One process per column, so its peak memory (host RSS, or VRAM on CUDA) belongs to it alone.
    """
    from safetensors.torch import save_file

    from audiostory_core.models.config import locate
    from audiostory_core.models.loading import load_models
    from audiostory_core.perf import PerfOptions
    from audiostory_core.pipeline import AudioStoryPipeline, resolve_device, resolve_dtype

    warnings.filterwarnings("ignore")
    dev = resolve_device(device)
    dtype = resolve_dtype(dtype_name, dev)
    clock = Clock(dev)
    spec = SIZES[root.name.split("random-", 1)[1]]
    models = load_models(locate(root), dtype, dev)
    fast_perf = PerfOptions.from_flags(compile=False if no_compile else None)
    if column == "default":
        pipe = AudioStoryPipeline(models, perf=fast_perf)
    elif column == "low_vram":
        if dev.type == "cuda":
            for mod in (models.planner.llm, models.dit, models.vae):
                mod.to("cpu")
            torch.cuda.empty_cache()
        pipe = AudioStoryPipeline(models, perf=fast_perf, low_vram=True, device=dev)
    else:
        pipe = AudioStoryPipeline(models, reference=True)
    script, info = story_script(models.planner.tokenizer, models.planner.ids, spec)
    fn = RUNNERS[column]
    fn(pipe, script, spec, steps, clock)                 # warm-up (compilation, allocator, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    res = _timed(lambda: fn(pipe, script, spec, steps, clock), repeats, dev)
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else _own_peak_rss_gb()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: res[k].detach().float().cpu().contiguous() for k in SAVED}
              | {"ids": torch.tensor(res["ids"], dtype=torch.int64)}, str(out / f"{column}.safetensors"))
    (out / f"{column}.json").write_text(json.dumps({
        "times": res["times"], "free_tps": res["free_tps"], "free_steps": res["free_steps_counted"],
        "stats": res["stats"], "mem_gb": mem, "plan_text": res["plan"].text(), "events": len(res["plan"].events),
        "story": info}))


def _own_peak_rss_gb() -> float:
    """This process's own peak RSS in GiB (``VmHWM`` on Linux, see :mod:`benchmarks.rss`)."""
    return peak_rss_bytes() / 2**30


def _column_subprocess(column: str, root: Path, out: Path, args) -> dict:
    from safetensors.torch import load_file

    cmd = [sys.executable, str(Path(__file__).resolve()), "--column", column, "--root", str(root),
           "--column-out", str(out), "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps),
           "--repeats", str(args.repeats)] + (["--no-compile"] if args.no_compile else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark column {column!r} failed:\n" + r.stderr[-4000:])
    res = json.loads((out / f"{column}.json").read_text())
    res.update(load_file(str(out / f"{column}.safetensors")))
    res["ids"] = res["ids"].tolist()
    return res


# ------------------------------------------------------------------ table
def fmt_table(cols: dict, cuda: bool, cold: dict) -> str:
    """Markdown table, one column per run; ratio = official way / library default."""
    names = [c for c in COLUMNS if c in cols]
    head = ["stage"] + [f"{COLUMNS[c].split(' (')[0]} (s)" for c in names] + ["ratio official/default"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "-"

    for k in STAGES:
        row = [k] + [f"{cols[c]['times'][k]:.3f}" for c in names]
        row.append(ratio(cols["official"]["times"][k], cols["default"]["times"][k]))
        lines.append("| " + " | ".join(row) + " |")
    row = ["free decoding (tokens/s, free steps only)"] + [f"{cols[c]['free_tps']:.0f}" for c in names]
    row.append(ratio(cols["default"]["free_tps"], cols["official"]["free_tps"]) + " (default/official)")
    lines.append("| " + " | ".join(row) + " |")
    mem = "peak VRAM of the column (GB)" if cuda else "peak RSS of the column's own process (GB)"
    lines.append("| " + " | ".join([mem] + [f"{cols[c]['mem_gb']:.2f}" for c in names] + ["-"]) + " |")
    lines.append("| " + " | ".join(["cold start, disk -> ready (s)"] + [f"{cold['seconds']:.2f}"] * len(names)
                                   + ["same loader"]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto = fp16 on CUDA (as the official run), fp32 on CPU")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up (median)")
    ap.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: temp dir)")
    ap.add_argument("--no-compile", action="store_true", help="default path without torch.compile / CUDA graphs")
    ap.add_argument("--low-vram", action="store_true", help="also time the default path in low-VRAM mode")
    ap.add_argument("--json", default=None, help="write every number to this file")
    ap.add_argument("--column", choices=sorted(COLUMNS), help=argparse.SUPPRESS)   # child process mode
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--column-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.column:
        run_column(args.column, Path(args.root), Path(args.column_out), args.device, args.dtype, args.steps,
                   args.repeats, args.no_compile)
        return {}

    from audiostory_core.pipeline import resolve_device, resolve_dtype

    spec = SIZES[args.size]
    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    args.device, args.dtype = str(dev), dtype_name
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="audiostory-bench-")
        work = Path(tmp.name)
    root = work / f"random-{spec.name}"
    os.environ.setdefault("AUDIOSTORY_CACHE", str(root / ".cache"))
    try:
        t = time.perf_counter()
        if not (root / "AudioStory-3B" / "pytorch_model.bin").is_file():
            write_random_checkpoint(root, spec)
        write_s = time.perf_counter() - t
        cs = cold_start(root, str(dev), dtype_name)
        out = work / "columns"
        names = ["official", "default"] + (["low_vram"] if args.low_vram else [])
        cols = {c: _column_subprocess(c, root, out, args) for c in names}
        ref, fast = cols["official"], cols["default"]
        cuda = dev.type == "cuda"
        table = fmt_table(cols, cuda, cs)
        parity = {
            "plan_ids_equal": fast["ids"] == ref["ids"],
            "plan_text_equal": fast["plan_text"] == ref["plan_text"],
            "events": fast["events"],
            "semantic_rel_err": rel_err(fast["semantic"], ref["semantic"], "semantic tokens"),
            "latents_rel_err": rel_err(fast["latents"], ref["latents"], "latents"),
            "audio_rel_err": rel_err(fast["audio"], ref["audio"], "audio"),
        }
        if args.low_vram:
            parity["low_vram_latents_rel_err_vs_default"] = rel_err(cols["low_vram"]["latents"], fast["latents"],
                                                                 "latents")
            parity["low_vram_audio_rel_err_vs_default"] = rel_err(cols["low_vram"]["audio"], fast["audio"], "audio")
        name = torch.cuda.get_device_name(dev) if cuda else f"CPU ({os.cpu_count()} cores)"
        info = fast["story"]
        header = (f"AudioStory benchmark, size={spec.name}, device={name}, dtype={dtype_name}, steps={args.steps}, "
                  f"torch {torch.__version__}\nstory: {spec.events} events, {spec.total_seconds:g} s, "
                  f"{info['tokens']} generated tokens ({info['free']} free, {info['forced']} forced; "
                  f"{fast['free_steps']} free decode steps timed); default decode forwards: "
                  f"{fast['stats'].get('forwards')}, block fallbacks: {fast['stats'].get('fallbacks')}; "
                  f"random checkpoint written in {write_s:.1f} s; each column in its own process\n"
                  + "\n".join(f"  {COLUMNS[c]}" for c in names))
        cs_line = (f"cold start: {cs['seconds']:.2f} s, peak host RSS {cs['peak_rss_gb']:.2f} GB"
                   + (f", peak VRAM {cs['peak_vram_gb']:.2f} GB" if cs.get("peak_vram_gb") is not None else ""))
        par_line = ("parity vs the official way: plan ids equal {plan_ids_equal}, plan text equal {plan_text_equal}; "
                    "default: rel. error semantic tokens {semantic_rel_err:.2e}, latents {latents_rel_err:.2e}, "
                    "audio {audio_rel_err:.2e}").format(**parity)
        if args.low_vram:
            par_line += ("\nlow-VRAM vs default: latents {low_vram_latents_rel_err_vs_default:.2e}, "
                         "audio {low_vram_audio_rel_err_vs_default:.2e}").format(**parity)
        report = "\n".join([header, "", table, "", cs_line, par_line])
        print(report, flush=True)
        result = {"size": spec.name, "device": name, "dtype": dtype_name, "steps": args.steps,
                  "columns": {c: {k: v for k, v in cols[c].items() if k in ("times", "free_tps", "free_steps",
                                                                           "mem_gb", "stats")} for c in names},
                  "cold_start": cs, "parity": parity, "story": info, "fast_stats": fast["stats"],
                  "table": table, "report": report}
        if args.json:
            Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=2))
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()

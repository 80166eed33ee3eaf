"""Real-size planning benchmark on CPU: the official way vs the library's default way, side by side.

    python benchmarks/official_layout.py ... (or let this script write the checkpoint; ~16 GB fp32 bin)
    nice -n 19 python benchmarks/bench_real_cpu.py --workdir /tmp/as23 --dtype bf16 --json out.json

The random checkpoint of ``benchmarks/official_layout.py`` (Qwen2.5-3B shape, 515M DiT, Oobleck) drives
the synthetic 5-event story of :mod:`benchmarks.bench_pipeline` (the chosen tokens come from a script,
the decode work is real). Each column runs in its own process, one after the other, so its peak RSS
is its own:

* ``official``: HF ``generate`` with the official logits processors, token by token
  (``PerfOptions.reference()``, what ``--reference`` runs); one VAE call per 645-frame clip;
* ``default``: ``PerfOptions()`` (what every user gets): forced query blocks in one forward, static KV
  cache, batched + trimmed VAE decode. The compiled/CUDA-graph paths are CUDA-only and off here.

Per column: the 5-event plan (wall time, tokens/s, LLM forward passes, split into prefill / free
token steps / forced-block steps), the first event's DiT steps (``--dit-steps`` of the 50, extrapolated
linearly to 50 and labelled so), the VAE decode of the 50 s story's five clips, and the process's
peak RSS. Before any ratio is printed the script asserts that both columns generated the same plan
ids, the same event-token shapes (and values within float rounding), the same DiT latent shape and
the same decoded clip shapes.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_pipeline import (DESCRIPTION, Clock, OfficialBlockProcessor, ScriptProcessor, StepTimes,  # noqa: E402
                                       block_tokens, rel_err, story_script, timed_script)
from benchmarks.official_layout import SIZES, write_random_checkpoint  # noqa: E402
from benchmarks.rss import peak_rss_bytes  # noqa: E402

COLUMNS = ("official", "default")
FULL_STEPS = 50          # the official number of DiT steps
CROSSFADE = 3.0


def _count_forwards(module: torch.nn.Module) -> list[int]:
    """A counter of ``module``'s forward calls (the LLM trunk: one per decode step or block)."""
    n = [0]
    module.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
    return n


def plan_official(pl, script: list[int], total: float, clock: Clock) -> tuple[list[int], torch.Tensor, dict]:
    """HF ``generate`` with the official processors; states gathered like the official code."""
    from transformers import GenerationConfig, LogitsProcessorList

    from audiostory_core.stages.grammar import build_instruction
    from audiostory_core.stages.plan import prompt_ids_for

    steps = StepTimes(clock, block_tokens(pl.ids))
    instruction = build_instruction(DESCRIPTION, total)
    prompt = prompt_ids_for(pl.tokenizer, instruction)
    ids = torch.tensor([prompt], device=pl.device)
    lp = LogitsProcessorList([OfficialBlockProcessor(pl.ids.semantic_block()),
                              OfficialBlockProcessor(pl.ids.residual_block()),
                              ScriptProcessor(script, len(prompt), steps)])
    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=pl.generation.max_new_tokens,
                          repetition_penalty=pl.generation.repetition_penalty,
                          eos_token_id=list(pl.generation.eos_token_ids),
                          pad_token_id=pl.generation.eos_token_ids[-1])
    t0 = clock.now()
    out = pl.llm.generate(input_ids=ids, inputs_embeds=pl.llm.get_input_embeddings()(ids),
                          attention_mask=torch.ones_like(ids), output_hidden_states=True,
                          return_dict_in_generate=True, logits_processor=lp, generation_config=gc)
    wall = clock.now() - t0
    seq = out.sequences[0]
    gen = seq[len(prompt):].tolist() if seq.shape[0] > len(script) else seq.tolist()
    lhs = torch.cat([hs[-1] for hs in out.hidden_states], dim=1)[0, len(prompt):]
    n, m = pl.ids.n_semantic, pl.ids.n_residual
    eot = [i for i, x in enumerate(gen) if x == pl.ids.t5_close]
    eoa = [i for i, x in enumerate(gen) if x == pl.ids.aud_close]
    sem, res = pl.heads.project(torch.stack([lhs[e - n:e] for e in eot]), torch.stack([lhs[e - m:e] for e in eoa]))
    return gen, pl.heads.fuse(sem, res), _split(steps, t0, wall)


def plan_default(pl, script: list[int], total: float, clock: Clock) -> tuple[list[int], torch.Tensor, dict]:
    """The library default (``PerfOptions()``), with the script as token source."""
    from audiostory_core.perf import PerfOptions
    from audiostory_core.stages.event_tokens import event_tokens
    from audiostory_core.stages.plan import generate_plan

    steps = StepTimes(clock, block_tokens(pl.ids))
    stats: dict = {}
    t0 = clock.now()
    res = generate_plan(pl, DESCRIPTION, total, token_source=timed_script(script, steps), stats=stats,
                        **PerfOptions().plan_kwargs)
    wall = clock.now() - t0
    toks = event_tokens(pl, res.plan, res)
    out = _split(steps, t0, wall)
    out["block_fallbacks"] = stats.get("fallbacks")
    return res.plan.transcript_ids, toks.fused, out


def story_info(pl, spec) -> tuple[list[int], dict]:
    """The script and its counts, with the decode steps StepTimes counts as free (the interval after a
    token outside the query blocks) and the others (after a query-block token)."""
    script, info = story_script(pl.tokenizer, pl.ids, spec)
    blocks = block_tokens(pl.ids)
    free = sum(1 for t in script[:-1] if t not in blocks)
    return script, info | {"free_steps": free, "forced_steps": len(script) - 1 - free}


def _split(steps: StepTimes, t0: float, wall: float) -> dict:
    """Where the plan's time went: prefill (to the first token), free token steps, forced-token steps."""
    prefill = steps.marks[0][0] - t0 if steps.marks else wall
    n_free, free_s = steps.free()
    return {"wall": wall, "prefill": prefill, "free_steps": n_free, "free_s": free_s,
            "forced_s": max(0.0, wall - prefill - free_s)}


def bounded_spec(spec, events: int, reasoning: int):
    """The measured story: the first ``events`` events after ``reasoning`` free tokens (0 = the full story)."""
    if not events:
        return spec
    return replace(spec, events=events, reasoning_tokens=reasoning, total_seconds=spec.total_seconds / spec.events * events)


def run_column(column: str, root: Path, out: Path, dtype_name: str, dit_steps: int, size: str, events: int,
               reasoning: int, vae_clips: int) -> None:
    """Child process: load, plan, DiT steps of event 1, VAE decode of the 50 s story; write numbers."""
    from safetensors.torch import save_file

    from audiostory_core.models.config import locate
    from audiostory_core.models.loading import load_models
    from audiostory_core.perf import PerfOptions
    from audiostory_core.stages.audio import decode_clips
    from audiostory_core.stages.event_tokens import clip_seconds
    from audiostory_core.stages.fast_vae import decode_clips_fast
    from audiostory_core.stages.sampling import Denoiser, _scheduler, dit_forward, make_noise

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dev, clock = torch.device("cpu"), Clock(torch.device("cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    full = SIZES[size]
    spec = bounded_spec(full, events, reasoning)
    t = time.perf_counter()
    models = load_models(locate(root), dtype, dev)
    load_s = time.perf_counter() - t
    pl = models.planner
    forwards = _count_forwards(pl.llm.model)
    script, info = story_info(pl, spec)
    with torch.no_grad():                               # warm-up: one forward of a short prompt
        pl.llm.model(input_ids=torch.tensor([script[:8]]))
    forwards[0] = 0
    perf = PerfOptions.reference() if column == "official" else PerfOptions()
    ids, fused, plan = (plan_official if column == "official" else plan_default)(pl, script, spec.total_seconds,
                                                                                 clock)
    plan["forwards"], plan["tokens"] = forwards[0], len(ids)
    # the first event's DiT steps (the official sampler: one event per call; CPU: no compiled path)
    secs = clip_seconds([full.total_seconds / full.events] * full.events, CROSSFADE)
    den = Denoiser(models.dit, fused[:1], models.null_embedding, secs[:1], 4.0,
                   forward=dit_forward(models.dit, perf.compile_dit, perf.attention_backend))
    sched = _scheduler("euler", FULL_STEPS, dev)
    x = make_noise("reference", 1, models.dit.config.audio_seq_len).to(dev)
    t = clock.now()
    with torch.no_grad():
        for tt in sched.timesteps[:dit_steps]:
            x = sched.step(den(x, torch.tensor([tt / 1000])), tt, x).prev_sample
    dit_s = clock.now() - t
    # VAE decode of the 50 s story's five clips, from the same seeded latents in both columns
    n_clips = vae_clips or full.events
    lat = torch.randn(full.events, models.dit.config.audio_seq_len, 64, generator=torch.Generator().manual_seed(1))
    lat, secs = lat[:n_clips], secs[:n_clips]
    t = clock.now()
    with torch.no_grad():
        if perf.reference_vae:
            clips = decode_clips(models.vae, lat, secs)
        else:
            clips = decode_clips_fast(models.vae, lat, secs, batch=perf.vae_batch, trim=perf.vae_trim,
                                      chunk_frames=perf.vae_chunk_frames, overlap=perf.vae_overlap_frames)
    vae_s = clock.now() - t
    out.mkdir(parents=True, exist_ok=True)
    save_file({"fused": fused.float().contiguous(), "latent_after_steps": x.float().contiguous(),
               "ids": torch.tensor(ids, dtype=torch.int64)}
              | {f"clip{i}": c.float().contiguous() for i, c in enumerate(clips)}, str(out / f"{column}.safetensors"))
    (out / f"{column}.json").write_text(json.dumps({
        "load_s": load_s, "plan": plan, "dit_steps": dit_steps, "dit_s": dit_s, "vae_s": vae_s, "vae_clips": n_clips,
        "full_story": story_info(pl, full)[1] | {"events": full.events}, "events": spec.events,
        "vae_audio_s": sum(c.shape[-1] for c in clips) / int(models.vae.config.sampling_rate),
        "peak_rss_gb": peak_rss_bytes() / 2**30, "story": info, "threads": torch.get_num_threads()}))


def _child(column: str, root: Path, out: Path, args) -> dict:
    from safetensors.torch import load_file

    cmd = [sys.executable, str(Path(__file__).resolve()), "--workdir", args.workdir, "--column", column, "--root", str(root),
           "--column-out", str(out), "--dtype", args.dtype, "--dit-steps", str(args.dit_steps),
           "--size", args.size, "--events", str(args.events), "--reasoning", str(args.reasoning),
           "--vae-clips", str(args.vae_clips)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"column {column!r} failed:\n" + r.stderr[-4000:])
    res = json.loads((out / f"{column}.json").read_text())
    res["tensors"] = load_file(str(out / f"{column}.safetensors"))
    res["process_s"] = time.perf_counter() - t
    print(f"column {column} done in {res['process_s']:.0f} s", file=sys.stderr, flush=True)
    return res


def check_same(o: dict, d: dict, spec) -> dict:
    """Both columns computed the same plan and shapes; returns the float differences."""
    a, b = o["tensors"], d["tensors"]
    if not torch.equal(a["ids"], b["ids"]):
        raise AssertionError("the two columns generated different plans")
    if o["plan"]["tokens"] != o["story"]["tokens"]:
        raise AssertionError(f"the plan has {o['plan']['tokens']} tokens, the script {o['story']['tokens']}")
    want = (o["events"], spec.n_semantic, 1024)      # residual fused into the semantic queries
    if tuple(a["fused"].shape) != want or tuple(b["fused"].shape) != want:
        raise AssertionError(f"event tokens: shapes {tuple(a['fused'].shape)}, {tuple(b['fused'].shape)}; "
                             f"expected {want}")
    if tuple(a["latent_after_steps"].shape) != (1, spec.audio_seq_len, 64):
        raise AssertionError(f"DiT latent shape {tuple(a['latent_after_steps'].shape)}")
    clips = sorted(k for k in a if k.startswith("clip"))
    if clips != sorted(k for k in b if k.startswith("clip")) or len(clips) != o["vae_clips"]:
        raise AssertionError("the columns decoded different numbers of clips")
    # the forward-pass identities the extrapolation uses
    if o["plan"]["forwards"] != o["plan"]["tokens"]:
        raise AssertionError(f"official: {o['plan']['forwards']} forwards for {o['plan']['tokens']} tokens")
    if d["plan"]["forwards"] != d["plan"]["tokens"] - d["story"]["forced"]:
        raise AssertionError(f"default: {d['plan']['forwards']} forwards, expected tokens - forced")
    return {"fused_rel_err": rel_err(b["fused"], a["fused"], "event tokens"),
            "dit_latent_rel_err": rel_err(b["latent_after_steps"], a["latent_after_steps"], "DiT latent"),
            "clip_rel_err_max": max(rel_err(b[k], a[k], k) for k in clips)}


def extrapolate(col: dict, default_way: bool) -> dict:
    """The full 5-event plan from the measured story, term by term (labelled 'extrapolated' in the table):
    prefill + free steps x (s per free step) + forced part, the forced part scaled per forced token
    (official: one forward each) or per event (default: one forward per query block)."""
    p, full, part = col["plan"], col["full_story"], col["story"]
    per_free = p["free_s"] / p["free_steps"]
    free_full = full["free_steps"]
    if default_way:
        forced = p["forced_s"] / col["events"] * full["events"]
        forwards = full["tokens"] - full["forced"]
    else:
        forced = p["forced_s"] / part["forced_steps"] * full["forced_steps"]
        forwards = full["tokens"]
    wall = p["prefill"] + free_full * per_free + forced
    return {"wall": wall, "tokens_per_s": full["tokens"] / wall, "forwards": forwards, "free_s": free_full * per_free,
            "forced_s": forced, "prefill": p["prefill"]}


def table(o: dict, d: dict) -> str:
    def row(name, a, b, fmt="{:.1f}", better="lower"):
        r = (a / b if better == "lower" else b / a) if a and b else float("nan")
        return f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {r:.2f}x |"

    po, pd = o["plan"], d["plan"]
    eo, ed = extrapolate(o, False), extrapolate(d, True)
    full = o["full_story"]
    n, k, clips = o["dit_steps"], o["events"], o["vae_clips"]
    lines = ["| measure (bf16, CPU) | official way | default way | speed-up |", "|---|---|---|---|",
             f"| **measured**: story of {k} event(s), {o['story']['tokens']} tokens "
             f"({o['story']['free']} free, {o['story']['forced']} forced) | | | |",
             row("  plan wall (s)", po["wall"], pd["wall"]),
             row("  plan tokens/s", po["tokens"] / po["wall"], pd["tokens"] / pd["wall"], "{:.2f}", "higher"),
             row("  LLM forward passes", po["forwards"], pd["forwards"], "{:.0f}"),
             row("  prefill (s)", po["prefill"], pd["prefill"]),
             row(f"  {po['free_steps']} free token steps (s)", po["free_s"], pd["free_s"]),
             row("  forced query tokens (s)", po["forced_s"], pd["forced_s"]),
             row("  s per free token", po["free_s"] / po["free_steps"], pd["free_s"] / pd["free_steps"], "{:.3f}"),
             f"| **5-event plan** ({full['tokens']} tokens: {full['free']} free, {full['forced']} forced)"
             + (", extrapolated from the measured terms" if k != full["events"] else "") + " | | | |",
             row("  plan wall (s)", eo["wall"], ed["wall"]),
             row("  plan tokens/s", eo["tokens_per_s"], ed["tokens_per_s"], "{:.2f}", "higher"),
             row("  LLM forward passes", eo["forwards"], ed["forwards"], "{:.0f}"),
             row("  free token steps (s)", eo["free_s"], ed["free_s"]),
             row("  forced query tokens (s)", eo["forced_s"], ed["forced_s"]),
             row(f"first event DiT, {n} of {FULL_STEPS} steps, measured (s)", o["dit_s"], d["dit_s"]),
             row(f"first event DiT, {FULL_STEPS} steps (x{FULL_STEPS / n:g}, extrapolated) (s)",
                 o["dit_s"] * FULL_STEPS / n, d["dit_s"] * FULL_STEPS / n),
             f"| VAE: {clips} clip(s) of the 50 s story, audio decoded (s) | {o['vae_audio_s']:.1f} | "
             f"{d['vae_audio_s']:.1f} | - |",
             row(f"VAE decode, {clips} clip(s), measured (s)", o["vae_s"], d["vae_s"]),
             (row("VAE decode of the 50 s story (5 clips, extrapolated x%g) (s)" % (5 / clips),
                  o["vae_s"] * 5 / clips, d["vae_s"] * 5 / clips) if clips != 5 else ""),
             f"| peak RSS of the column process (GB) | {o['peak_rss_gb']:.2f} | {d['peak_rss_gb']:.2f} | - |",
             f"| model load, bin -> compute dtype (s) | {o['load_s']:.0f} | {d['load_s']:.0f} | - |"]
    return "\n".join(x for x in lines if x)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="where the ~16 GB random checkpoint is (or is written)")
    ap.add_argument("--size", choices=sorted(SIZES), default="real", help="tiny: a quick check of the script")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--storage", choices=["fp32", "bf16"], default="fp32",
                    help="dtype of the written random bin: fp32 as released (~15 GB held while writing), or bf16 "
                         "(~7.5 GB) where that does not fit; the compute dtype is --dtype either way")
    ap.add_argument("--dit-steps", type=int, default=2, help="DiT steps measured (of 50; extrapolated linearly)")
    ap.add_argument("--events", type=int, default=0,
                    help="measure only the first N events of the story (0 = all 5) and extrapolate the 5-event plan")
    ap.add_argument("--reasoning", type=int, default=150, help="free reasoning tokens of the measured story")
    ap.add_argument("--vae-clips", type=int, default=0, help="decode only the first N clips (0 = all 5); x5/N")
    ap.add_argument("--json", default=None)
    ap.add_argument("--column", choices=COLUMNS, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--column-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.column:
        run_column(args.column, Path(args.root), Path(args.column_out), args.dtype, args.dit_steps, args.size,
                   args.events, args.reasoning, args.vae_clips)
        return {}
    spec = SIZES[args.size]
    root = Path(args.workdir) / f"random-{spec.name}"
    os.environ.setdefault("AUDIOSTORY_CACHE", str(root / ".cache"))
    if not (root / "AudioStory-3B" / "pytorch_model.bin").is_file():
        write_random_checkpoint(root, spec, storage_dtype=torch.bfloat16 if args.storage == "bf16" else torch.float32)
    out = Path(args.workdir) / "columns"
    cols = {c: _child(c, root, out, args) for c in COLUMNS}      # one process at a time
    o, d = cols["official"], cols["default"]
    parity = check_same(o, d, spec)
    tab = table(o, d)
    info = o["story"]
    report = (f"AudioStory real-size planning benchmark, CPU ({os.cpu_count()} cores, {o['threads']} threads), "
              f"{args.dtype}, torch {torch.__version__}\nmeasured story: {o['events']} of {spec.events} events, "
              f"{info['tokens']} generated tokens ({info['free']} free, {info['forced']} forced); both columns "
              f"generated the same plan ids; default-way block fallbacks: {d['plan'].get('block_fallbacks')}\n\n"
              f"{tab}\n\nsame plan: yes; event tokens rel. diff {parity['fused_rel_err']:.1e}, DiT latent "
              f"{parity['dit_latent_rel_err']:.1e}, decoded clips (max) {parity['clip_rel_err_max']:.1e}")
    print(report, flush=True)
    result = {"columns": {c: {k: v for k, v in cols[c].items() if k != "tensors"} for c in COLUMNS},
              "parity": parity, "table": tab, "dtype": args.dtype, "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

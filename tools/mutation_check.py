"""Mutation check: each listed wrong computation must fail at least one test.

Every mutation is applied to a fresh temporary copy of the repository (tracked and untracked,
not-ignored files), never to the working tree, so an interrupt leaves the sources untouched. Only the
tests that cover the mutation run (``-x``: the first failure kills it). A mutation survives when its
tests pass; a mutation whose source line is no longer found is an error too (update MUTATIONS with the
code). Exit status 0 only when every mutation is killed.

    python tools/mutation_check.py              # all, with a baseline run of the selected tests first
    python tools/mutation_check.py --list
    python tools/mutation_check.py dit-previous-seconds planner-ignores-memory
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]      # pytest arguments: node ids (and -k expressions)
    why: str


T_PARITY = "tests/test_official_parity.py::test_the_dit_is_conditioned_on_event_seconds_plus_the_crossfade_except_the_last"

MUTATIONS: tuple[Mutation, ...] = (
    # ---- the five that the suite missed (issue #19)
    Mutation("dit-previous-seconds", "audiostory_core/pipeline.py",
             "clip_seconds(tokens.durations, crossfade), steps=steps",
             "clip_seconds(tokens.durations[:1] + tokens.durations[:-1], crossfade), steps=steps",
             (T_PARITY,), "the DiT is given the previous event's seconds"),
    Mutation("dit-no-crossfade-tail", "audiostory_core/pipeline.py",
             "clip_seconds(tokens.durations, crossfade), steps=steps",
             "list(tokens.durations), steps=steps",
             (T_PARITY,), "the +3 s extension is dropped from the DiT's duration conditioning only"),
    Mutation("continuation-ignores-audio", "audiostory_core/tasks/continuation.py",
             "pc = ctx.prompt_context(planner.tokenizer, build_instruction(description, duration, lead))",
             "pc = None",
             ("tests/test_continuation.py::test_continuation_feeds_the_input_audio_to_the_planner",),
             "continuation plans without the input audio's Whisper features"),
    Mutation("planner-ignores-memory", "nodes/planner.py",
             "ctx = with_history(pl.tokenizer, pl.ids, memory, build_instruction(instruction, total_duration, lead), ctx)",
             "ctx = ctx",
             ("tests/test_comfyui_native.py::test_planner_node_puts_the_earlier_chapter_before_the_new_instruction",),
             "the Planner node ignores the consistency memory"),
    Mutation("llm-weight-shape-unchecked", "audiostory_core/models/weights.py",
             "                if tuple(t.shape) != tuple(shape):\n"
             "                    wrong.append(f\"{c}: checkpoint",
             "                if False:\n"
             "                    wrong.append(f\"{c}: checkpoint",
             ("tests/test_shape_checks.py", "-k", "llm_weight and base"),
             "an LLM base weight of the wrong shape loads ([1, in] broadcasts in the LoRA merge)"),
    # ---- seven that the suite already caught: kept caught
    Mutation("cfg-formula", "audiostory_core/stages/sampling.py",
             "return uncond + guidance * (cond - uncond)", "return cond + guidance * (cond - uncond)",
             ("tests/test_sampling.py::test_cfg_combines_velocities_as_u_plus_g_c_minus_u",),
             "classifier-free guidance extrapolates from the wrong side"),
    Mutation("fusion-without-attention", "audiostory_core/models/modules.py",
             "return (semantic + attn) / self.t5_feature_scale", "return semantic / self.t5_feature_scale",
             ("tests/test_event_tokens.py::test_fusion_is_the_official_formula",),
             "the residual (consistency) tokens never reach the DiT"),
    Mutation("crossfade-reversed", "audiostory_core/stages/audio.py",
             "fade_out = torch.linspace(1.0, 0.0, n).unsqueeze(0)", "fade_out = torch.linspace(0.0, 1.0, n).unsqueeze(0)",
             ("tests/test_audio.py::test_linear_crossfade_matches_the_official_ramps",),
             "the crossfade fades the outgoing clip in"),
    Mutation("seeded-noise-same-seed", "audiostory_core/stages/sampling.py",
             "(int(seed) + i) % SEED_MODULUS", "int(seed) % SEED_MODULUS",
             ("tests/test_sampling.py::test_seeded_noise_uses_seed_plus_event_index",),
             "every event gets the same noise under noise=seeded"),
    Mutation("reroll-wrong-noise-rows", "audiostory_core/stages/sampling.py",
             "initial_noise=x[idx]", "initial_noise=x[:len(idx)]",
             ("tests/test_reroll.py::test_rerolled_event_is_the_full_render_with_its_own_seed",),
             "a re-rolled event is not the full render of that event"),
    Mutation("batch-resume-ignores-hash", "audiostory_core/tasks/batch.py",
             "return wav.is_file() and plan.is_file() and sha256_file(wav) == entry.get(\"sha256\")",
             "return wav.is_file() and plan.is_file()",
             ("tests/test_batch.py::test_resume_skips_complete_stories_and_renders_changed_or_damaged_ones",),
             "resume keeps a damaged output"),
    Mutation("mux-audio-offset", "audiostory_core/media/mux.py",
             "packets = _encode_audio(oa, data, rate, int(round(t0 * rate)))",
             "packets = _encode_audio(oa, data, rate, 0)",
             ("tests/test_video_dubbing.py::test_soundtrack_starts_at_the_first_frame_of_a_video_that_starts_late",),
             "the new audio ignores the video's start time"),
    # ---- the Timeline after a run (issue #24)
    Mutation("timeline-selection-stays", "nodes/timeline.py",
             'inputs["render_events"] = ""',
             "pass",
             ("tests/test_timeline_browser.py::test_after_a_run_blocks_show_waveforms_scores_a_playhead_and_a_click_"
              "rerolls_one_event",),
             "the selection stays on the Timeline: a click re-runs the first render too"),
    Mutation("timeline-peaks-with-tail", "nodes/peaks.py",
             "peaks = [clip_peaks(c[..., :max(1, round(float(d) * sample_rate))]) for c, d in zip(clips, durations)]",
             "peaks = [clip_peaks(c) for c, d in zip(clips, durations)]",
             ("tests/test_timeline_peaks.py",),
             "a block draws its clip's crossfade tail as if it were the event"),
    Mutation("e2e-heads-ignore-strength", "audiostory_core/training/lora_files.py",
             "p.copy_((p.float() + d.to(p.device, torch.float32) * strength).to(p.dtype))",
             "p.copy_((p.float() + d.to(p.device, torch.float32)).to(p.dtype))",
             ("tests/test_training_e2e.py::test_e2e_file_reproduces_the_trained_models_and_strength_0_is_the_base",),
             "an e2e LoRA's bridge heads are changed at strength 0"),
    Mutation("e2e-lm-loss-unshifted", "audiostory_core/training/trainer.py",
             "logits = llm.lm_head(h[p - 1:-1].to(llm.lm_head.weight.dtype)).float()",
             "logits = llm.lm_head(h[p:].to(llm.lm_head.weight.dtype)).float()",
             ("tests/test_training_e2e.py::test_after_e2e_training_the_planner_emits_the_trained_story",),
             "the LM loss predicts each token from its own position instead of the one before"),
    Mutation("e2e-lm-head-in-bf16", "audiostory_core/training/trainer.py",
             "with torch.autocast(h.device.type, enabled=False):    # fp32 logits: bf16 has 8 mantissa bits",
             "with contextlib.nullcontext():",
             ("tests/test_training_e2e.py::test_e2e_bf16_computes_in_bf16_trains_and_stays_near_fp32",),
             "under --bf16 the LM head's logits are computed in bf16"),
    Mutation("grad-accum-unscaled", "audiostory_core/training/trainer.py",
             "(loss / cfg.grad_accum).backward()",
             "loss.backward()",
             ("tests/test_training.py::test_two_accumulated_micro_batches_equal_one_batch_of_two",),
             "accumulated micro-batches add their gradients instead of averaging them"),
    Mutation("training-clip-from-start", "audiostory_core/training/datasets.py",
             "clip = wave[:, int(round(s * sample_rate)): int(round(t * sample_rate))]",
             "clip = wave[:, : int(round((t - s) * sample_rate))]",
             ("tests/test_training_video.py::test_a_video_line_becomes_one_event_per_scene_with_its_shots_caption_and_tone",),
             "every event of a recording or video trains on the audio's first seconds, not its own span"),
    Mutation("latent-cache-trusts-nan", "audiostory_core/training/datasets.py",
             "            or not torch.isfinite(z).all():",
             "            or False:",
             ("tests/test_training.py::test_a_bad_latent_cache_file_is_encoded_again_and_replaced",),
             "a latent cache file of NaNs is used for training"),
    # ---- training nodes (issue #25)
    Mutation("save-lora-overwrites", "nodes/training_steps.py",
             'return folder / f"{prefix}_{highest + 1:05d}{LORA_SUFFIX}"',
             'return folder / f"{prefix}_{max(highest, 1):05d}{LORA_SUFFIX}"',
             ("tests/test_training_nodes_logic.py::test_next_lora_path_counts_up_and_never_overwrites",),
             "Save LoRA overwrites the newest LoRA of the same prefix"),
)


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def copy_repo(dst: Path) -> Path:
    for f in repo_files():
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
    return dst


def child_env() -> dict[str, str]:
    """The copy lives elsewhere: point it at the shared fixture and ComfyUI the repository itself finds;
    skips must stay skips (a skipped test kills nothing), so fixture-requirement switches are removed."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for k in ("AUDIOSTORY_REQUIRE_FIXTURES",):
        env.pop(k, None)
    env["CI"] = "false"
    shared = REPO.parent / "shared"
    if "AUDIOSTORY_SHARED_FIXTURE" not in env and (shared / "fixtures" / "audiostory-tiny").is_dir():
        env["AUDIOSTORY_SHARED_FIXTURE"] = str(shared / "fixtures" / "audiostory-tiny")
    if "COMFYUI_DIR" not in env and (shared / "vendor" / "ComfyUI").is_dir():
        env["COMFYUI_DIR"] = str(shared / "vendor" / "ComfyUI")
    env.setdefault("AUDIOSTORY_CACHE", tempfile.mkdtemp(prefix="mutation-cache-"))
    return env


def pytest(root: Path, args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfEs", *args]
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def failed_test(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("FAILED "):
            return line[len("FAILED "):].split(" - ")[0]
    return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not first check that the selected tests pass unmutated (when the suite just passed)")
    a = ap.parse_args(argv)
    if a.list:
        for m in MUTATIONS:
            print(f"{m.name:28s} {m.file}: {m.why}")
        return 0
    unknown = sorted(set(a.names) - {m.name for m in MUTATIONS})
    if unknown:
        print(f"unknown mutation(s) {unknown}; see `python tools/mutation_check.py --list`")
        return 2
    chosen = [m for m in MUTATIONS if not a.names or m.name in a.names]
    env = child_env()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        clean = copy_repo(Path(tmp) / "clean")
        if not a.skip_baseline:
            t0 = time.monotonic()
            for m in chosen:            # the selection itself must pass, else a failure proves nothing
                rc, out = pytest(clean, m.tests, env)
                if rc != 0:
                    print(f"BASELINE FAILS for {m.name} ({' '.join(m.tests)}):\n{out[-3000:]}")
                    return 1
            print(f"baseline: the selected tests pass unmutated ({time.monotonic() - t0:.0f} s)")
        print(f"{'mutation':28s} {'result':9s} {'seconds':>7s}  killed by")
        for m in chosen:
            work = Path(tmp) / m.name
            shutil.copytree(clean, work)
            src = work / m.file
            text = src.read_text()
            if text.count(m.old) != 1:
                print(f"{m.name:28s} {'STALE':9s} {0:7.0f}  the line to mutate is not found once in {m.file}; "
                      "update MUTATIONS in tools/mutation_check.py")
                bad += 1
                continue
            src.write_text(text.replace(m.old, m.new))
            t0 = time.monotonic()
            rc, out = pytest(work, m.tests, env)
            dt = time.monotonic() - t0
            if rc == 1:
                print(f"{m.name:28s} {'killed':9s} {dt:7.0f}  {failed_test(out)}")
            else:
                bad += 1
                why = "SURVIVED" if rc == 0 else f"ERROR {rc}"
                print(f"{m.name:28s} {why:9s} {dt:7.0f}  {' '.join(m.tests)}\n{out[-2000:]}")
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(chosen) - bad}/{len(chosen)} mutations killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

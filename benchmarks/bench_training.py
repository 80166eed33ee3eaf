"""LoRA training cost: measured steps/s and peak RSS on CPU at tiny size; at real size, per mode, parameters,
weight / gradient / AdamW-state bytes and activation memory, computed and checked by one measured step.

    PYTHONPATH=. python benchmarks/bench_training.py [--steps 5]
    PYTHONPATH=. python benchmarks/bench_training.py --real-root DIR [--modes dit,e2e] [--gradient-checkpointing]
        [--timed-steps N]      # DIR: any model root (e.g. ../shared/fixtures/audiostory-tiny for the tiny e2e speed)

Tiny size: the ``tiny`` DiT of official_layout.py (random weights, 176 latent frames), batch 1, each setting in
its own process so that the peak RSS (VmHWM) is that setting's. Real size: the DiT is built on the meta device
from the real dims (SIZES["real"]), LoRA layers are injected by peft, and parameter / gradient / AdamW-state
memory is counted from the resulting modules (activations are not included there).

``--real-root`` (a real-size checkpoint such as the random one official_layout.py writes; only read) loads each
mode in its own process with fp32 weights, as ``train`` does (the VAE is not loaded: latents come from the latent
cache in a real run), and takes ONE training step at batch 1 on a one-event plan over the full DiT window:

* computed: parameter counts and bytes of the loaded modules; gradients = trainable bytes; AdamW state = 2 x
  trainable bytes (exp_avg, exp_avg_sq); activations = the bytes of every tensor autograd saves for the backward
  during the step's forward (``torch.autograd.graph.saved_tensors_hooks``; each storage once, the parameters'
  own storages excluded);
* measured: the peak RSS increase of the step over the RSS of the loaded model with its LoRA layers (VmHWM
  restarted after loading, benchmarks/rss.py), to be compared with activations + gradients + AdamW state.

Each mode's process runs with ``MALLOC_MMAP_THRESHOLD_=131072`` (MMAP_THRESHOLD below): glibc then maps every
block over 128 KiB on its own and unmaps it when freed, so RSS follows live tensors. With glibc's default (a
threshold that grows up to 32 MiB as blocks are freed) freed activations stay in the heap and the measured peak
was 2.35x (DiT) and 1.69x (e2e) the computed one, measured on the same checkpoint; that is allocator retention,
not tensors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiostory_core.models.config import FluxConfig  # noqa: E402
from audiostory_core.models.modules import TOKEN_DIM, AudioStoryDiT  # noqa: E402
from benchmarks.official_layout import SIZES  # noqa: E402

MMAP_THRESHOLD = 131072   # bytes; see the module doc
SETTINGS = {"fp32": {}, "bf16 autocast": {"bf16": True}, "grad checkpointing": {"gradient_checkpointing": True}}


def flux_config(size: str) -> FluxConfig:
    s = SIZES[size]
    return FluxConfig(num_layers=s.dit_layers, num_single_layers=s.dit_single_layers,
                      num_attention_heads=s.dit_heads, audio_seq_len=s.audio_seq_len)


def one_setting(name: str, steps: int) -> dict:
    """Train the tiny DiT for ``steps`` steps in this process; steps/s after a warm-up step, peak RSS."""
    from benchmarks.rss import peak_rss_bytes
    from audiostory_core.training.trainer import TrainConfig, TrainData, Trainer

    torch.manual_seed(0)
    fc = flux_config("tiny")
    dit = AudioStoryDiT(fc).eval()
    data = TrainData([torch.randn(SIZES["tiny"].n_semantic, TOKEN_DIM)], [torch.randn(fc.audio_seq_len, 64)], [5.0])
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(dit, data, TrainConfig(steps=1, rank=8, alpha=8.0, **SETTINGS[name]), Path(out))
        tr.run()
        tr.cfg.steps = 1 + steps
        t0 = time.perf_counter()
        tr.run(resume=False)
        dt = time.perf_counter() - t0
    return {"setting": name, "steps_per_s": steps / dt, "peak_rss_mib": peak_rss_bytes() / 2 ** 20}


def real_size_on_paper(ranks=(8, 32)) -> list[dict]:
    """Exact parameter counts of the real DiT and its LoRA (built on the meta device) and the memory they need."""
    from audiostory_core.training.trainer import TrainConfig, add_lora

    rows = []
    for r in ranks:
        with torch.device("meta"):
            dit = AudioStoryDiT(flux_config("real"))
        base = sum(p.numel() for p in dit.parameters())
        lora = sum(p.numel() for p in add_lora(dit, TrainConfig(rank=r, alpha=float(r))))
        rows.append({"rank": r, "dit_params": base, "lora_params": lora,
                     "base_fp32_gib": base * 4 / 2 ** 30, "base_bf16_gib": base * 2 / 2 ** 30,
                     "lora_weights+grads_mib": lora * 8 / 2 ** 20, "adamw_state_mib": lora * 8 / 2 ** 20})
    return rows


class SavedBytes:
    """Bytes of the distinct storages autograd saves while active, parameters' storages excluded."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in self.skip and st.device.type != "meta":
            self.seen[st.data_ptr()] = st.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def real_step(root: str, mode: str, checkpointing: bool, timed_steps: int = 0) -> dict:
    """Load ``root`` for ``mode`` in fp32, take one training step (batch 1, full DiT window); see the module doc.
    ``timed_steps`` more steps after it give steps/s (the first step, with its allocations, is not timed)."""
    from benchmarks.rss import peak_rss_bytes, reset_peak, status_bytes
    from audiostory_core.models.config import locate
    from audiostory_core.models.loading import load_models
    from audiostory_core.models.weights import trim_heap
    from audiostory_core.stages.grammar import build_instruction
    from audiostory_core.stages.plan import StoryEvent, StoryPlan
    from audiostory_core.training.datasets import TrainExample
    from audiostory_core.training.trainer import TrainConfig, TrainData, Trainer, conditioning, e2e_data

    t0 = time.perf_counter()
    e2e = mode == "e2e"
    paths = locate(root)
    # DiT mode: the planner only teacher-forces the conditioning (bf16 is enough) and is dropped before the step
    models = load_models(paths, torch.float32, "cpu", planner=e2e, vae=False)
    fc = models.flux_config
    caption, seconds = "a dog barks twice in a quiet street", float(fc.max_duration)
    ex = TrainExample(StoryPlan(build_instruction(caption, seconds), "", [StoryEvent(caption, seconds)]), 0,
                      torch.zeros(2, 1), caption)
    latents = [torch.randn(fc.audio_seq_len, 64, generator=torch.Generator().manual_seed(0))]
    if e2e:
        data, planner = e2e_data([ex], latents), models.planner
    else:
        frozen = load_models(paths, torch.bfloat16, "cpu", dit=False, vae=False).planner
        data, planner = TrainData(conditioning(frozen, [ex]), latents, [seconds]), None
        del frozen
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(models.dit, data, TrainConfig(mode=mode, steps=1, gradient_checkpointing=checkpointing),
                     Path(out), planner=planner)
        modules = [models.dit] + ([planner.llm, planner.heads] if e2e else [])
        allp = {id(p): p for m in modules for p in m.parameters()}.values()
        total = sum(p.numel() for p in allp)
        weight_bytes = sum(p.numel() * p.element_size() for p in allp)
        trainable = sum(p.numel() for p in tr.params)
        train_bytes = sum(p.numel() * p.element_size() for p in tr.params)
        seq = len(tr.seqs[0].ids) if e2e else 0
        saved = SavedBytes(allp)
        trim_heap()
        base = status_bytes("VmRSS")
        reset_peak()
        tr.model.train()
        t1 = time.perf_counter()
        with saved.hooks():
            tr.train_step()
        step_s = time.perf_counter() - t1
        peak = peak_rss_bytes()
        state = sum(t.numel() * t.element_size() for st in tr.opt.state.values() for t in st.values()
                    if torch.is_tensor(t) and t.dim() > 0)
        t2 = time.perf_counter()
        for _ in range(timed_steps):
            tr.train_step()
        steps_per_s = timed_steps / (time.perf_counter() - t2) if timed_steps else None
    return {"mode": mode, "checkpointing": checkpointing, "total_params": total, "trainable_params": trainable,
            "weight_bytes": weight_bytes, "grad_bytes": train_bytes, "adamw_bytes": state,
            "activation_bytes": saved.total, "base_rss": base, "peak_increase": peak - base,
            "llm_tokens": seq, "dit_frames": fc.audio_seq_len, "load_s": load_s, "step_s": step_s,
            "steps_per_s": steps_per_s, "timed_steps": timed_steps, "threads": torch.get_num_threads()}


def real_table(root: str, modes: list[str], checkpointing: bool, timed_steps: int = 0) -> None:
    """Each mode in its own process (its own peak); the measured table."""
    import os

    env = {**os.environ, "AUDIOSTORY_CACHE": os.environ.get("AUDIOSTORY_CACHE") or tempfile.mkdtemp(),
           "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    rows = []
    for mode in modes:
        cmd = [sys.executable, __file__, "--real-root", root, "--real-one", mode]
        cmd += ["--gradient-checkpointing"] if checkpointing else []
        cmd += ["--timed-steps", str(timed_steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{mode}: the step failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    gib, mib = 2 ** 30, 2 ** 20
    print(f"{root}: one training step on CPU, fp32 weights, batch 1, LoRA rank 8 (LLM rank 8), gradient "
          f"checkpointing {'on' if checkpointing else 'off'}, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}")
    print("| mode | params | trainable | weights GiB | grads MiB | AdamW state MiB | activations MiB (computed) | "
          "computed step total MiB | measured peak RSS increase MiB | measured / computed | LLM tokens | "
          "DiT frames | step s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        comp = r["activation_bytes"] + r["grad_bytes"] + r["adamw_bytes"]
        print(f"| {r['mode']} | {r['total_params']:,} | {r['trainable_params']:,} | {r['weight_bytes'] / gib:.2f} | "
              f"{r['grad_bytes'] / mib:.1f} | {r['adamw_bytes'] / mib:.1f} | {r['activation_bytes'] / mib:.0f} | "
              f"{comp / mib:.0f} | {r['peak_increase'] / mib:.0f} | {r['peak_increase'] / comp:.2f} | "
              f"{r['llm_tokens'] or '-'} | {r['dit_frames']} | {r['step_s']:.3g} |")
    for r in rows:
        if r.get("steps_per_s"):
            print(f"{r['mode']}: {r['steps_per_s']:.2f} steps/s over {r['timed_steps']} steps after the measured one")
    for r in rows:
        print(f"{r['mode']}: loaded-model RSS {r['base_rss'] / gib:.2f} GiB (load {r['load_s']:.0f} s), "
              f"{r['threads']} threads")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--real-root", help="a real-size model root (only read): measure one step per mode")
    ap.add_argument("--modes", default="dit,e2e")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--timed-steps", type=int, default=0,
                    help="with --real-root: this many more steps after the measured one, for steps/s")
    ap.add_argument("--real-one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_setting(a.one, a.steps)))
        return
    if a.real_one:
        print(json.dumps(real_step(a.real_root, a.real_one, a.gradient_checkpointing, a.timed_steps)))
        return
    if a.real_root:
        real_table(a.real_root, a.modes.split(","), a.gradient_checkpointing, a.timed_steps)
        return
    print(f"tiny DiT LoRA training on CPU ({torch.get_num_threads()} threads), batch 1, rank 8, "
          f"{SIZES['tiny'].audio_seq_len} latent frames, {a.steps} timed steps")
    print(f"| setting | steps/s | peak RSS MiB |\n|---|---|---|")
    for name in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {r['setting']} | {r['steps_per_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    print("\nreal size, DiT LoRA mode, on paper (parameters counted on the meta device; activations excluded)")
    print("| LoRA rank | DiT params | LoRA params | frozen DiT fp32 GiB | frozen DiT bf16 GiB | "
          "LoRA weights+grads MiB | AdamW state MiB |\n|---|---|---|---|---|---|---|")
    for r in real_size_on_paper():
        print(f"| {r['rank']} | {r['dit_params']:,} | {r['lora_params']:,} | {r['base_fp32_gib']:.2f} | "
              f"{r['base_bf16_gib']:.2f} | {r['lora_weights+grads_mib']:.1f} | {r['adamw_state_mib']:.1f} |")


if __name__ == "__main__":
    main()

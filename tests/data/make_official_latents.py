"""Write tests/data/official_flux_t5_latents.safetensors with the OFFICIAL sampler (not shipped here).

Inputs: the shared tiny fixture and a checkout of TencentARC/AudioStory at commit 899d4f97 (its
``src/models/detokenizer/modeling_flux.py`` is imported from ``--official``; nothing of it is copied).
The fused event tokens of the fire-truck story come from this library (plan -> tokens); the latents come
from ``Flux_T5.inference_flow_full_tokens`` called one event at a time exactly as ``evaluate/inference.py``
does (50 steps, guidance 4, duration + 3 s crossfade for every clip but the last, seed 0).
See tests/data/README.md for the exact command.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

INSTRUCTION, TOTAL = "A fire truck leaves the station with sirens blaring.", 7.5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of TencentARC/AudioStory (commit 899d4f97)")
    ap.add_argument("--fixture", required=True, help="the shared audiostory-tiny fixture")
    ap.add_argument("--out", default=str(Path(__file__).with_name("official_flux_t5_latents.safetensors")))
    a = ap.parse_args()
    fixture = Path(a.fixture)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from audiostory_core.pipeline import AudioStoryPipeline

    pipe = AudioStoryPipeline.from_pretrained(fixture, device="cpu", dtype="fp32")
    plan = pipe.plan(INSTRUCTION, TOTAL)
    toks = pipe.tokens(plan)
    durations = [float(d) for d in plan.plan.durations]

    spec = importlib.util.spec_from_file_location(
        "official_modeling_flux", Path(a.official) / "src/models/detokenizer/modeling_flux.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = json.loads((fixture / "Flux_detokenizer/config.json").read_text())
    flux = mod.Flux_T5(cfg, text_encoder_dir=str(fixture / cfg["text_encoder_name"]))
    sd = torch.load(fixture / "audiostory/pytorch_model.bin", map_location="cpu", weights_only=True)
    sub = {k[len("tangoflux."):]: v for k, v in sd.items() if k.startswith("tangoflux.")}
    flux.load_state_dict(sub, strict=True)
    flux.eval()

    fused = toks.fused.float()
    n = fused.shape[0]
    lat = []
    for i in range(n):
        d = durations[i] if i == n - 1 else durations[i] + 3.0
        lat.append(flux.inference_flow_full_tokens("", fused[i:i + 1], num_inference_steps=50, guidance_scale=4.0,
                                                   duration=d, disable_progress=True))
    out = {"fused": fused.contiguous(), "latents": torch.cat(lat).contiguous(),
           "seconds": torch.tensor([d + (3.0 if i < n - 1 else 0.0) for i, d in enumerate(durations)])}
    save_file(out, a.out, metadata={"official_commit": "899d4f97f8fa5d747d5c4bf5ba439d1f8487bc07",
                                    "instruction": INSTRUCTION, "total_duration": str(TOTAL)})
    print({k: tuple(v.shape) for k, v in out.items()}, "->", a.out)


if __name__ == "__main__":
    main()

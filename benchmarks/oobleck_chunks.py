"""Chunked vs full decode of a DEFAULT-size Oobleck VAE (the release's config), random weights.

    python benchmarks/oobleck_chunks.py [--frames 72 --chunk 24 --overlaps 32 8]

The tests use the fixture's 4-channel VAE; this checks the claim at the real width (156M parameters).
Prints the relative error of ``decode_chunked`` against one full ``vae.decode`` for each overlap.
Slow on CPU (minutes), so it is a script, not a test.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiostory_core.stages.fast_vae import decode_chunked  # noqa: E402


def main(argv=None) -> list[tuple[int, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=72)
    ap.add_argument("--chunk", type=int, default=24)
    ap.add_argument("--overlaps", type=int, nargs="+", default=[32, 8])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from diffusers import AutoencoderOobleck

    torch.manual_seed(a.seed)
    vae = AutoencoderOobleck().eval()
    z = torch.randn(1, 64, a.frames)
    rows = []
    with torch.no_grad():
        t = time.perf_counter()
        full = vae.decode(z).sample
        print(f"default Oobleck ({sum(p.numel() for p in vae.parameters()) / 1e6:.0f}M params), {a.frames} frames, "
              f"chunks of {a.chunk}; full decode {time.perf_counter() - t:.1f} s", flush=True)
        print("| overlap (frames) | rel. error vs full |\n|---|---|")
        for ov in a.overlaps:
            part = decode_chunked(vae, z, a.chunk, ov)
            assert part.shape == full.shape, (part.shape, full.shape)
            err = float((part - full).norm() / full.norm())
            rows.append((ov, err))
            print(f"| {ov} | {err:.1e} |", flush=True)
    return rows


if __name__ == "__main__":
    main()

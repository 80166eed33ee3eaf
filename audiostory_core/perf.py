"""Speed and memory options of the pipeline. The defaults are the reference computation.

``PerfOptions()`` changes nothing. ``PerfOptions.fast()`` switches every fast path on; the ones
that need CUDA (``torch.compile`` with CUDA graphs) fall back to eager elsewhere by themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union


@dataclass(frozen=True)
class PerfOptions:
    # plan decoding (audiostory_core.stages.fast_decode)
    fast_blocks: bool = False            # forced query blocks in one forward, checked per block
    static_cache: bool = False           # preallocated KV cache
    compile_decode: bool = False         # torch.compile + CUDA graphs for the decode step (CUDA only)
    # sampling (audiostory_core.stages.sampling)
    compile_dit: Union[bool, str] = False   # torch.compile of the DiT step (CUDA only); str = mode
    attention_backend: Optional[str] = None  # diffusers backend name; None = unchanged (SDPA)
    # VAE (audiostory_core.stages.fast_vae); vae_batch=1, no trim, no chunks = the reference decode
    vae_batch: Optional[int] = 1         # clips per VAE call; None = all at once
    vae_trim: bool = False               # skip latent frames past each clip's end
    vae_chunk_frames: Optional[int] = None   # decode in time windows of this many latent frames
    vae_overlap_frames: int = 32

    @classmethod
    def reference(cls) -> "PerfOptions":
        return cls()

    @classmethod
    def fast(cls, **overrides) -> "PerfOptions":
        base = cls(fast_blocks=True, static_cache=True, compile_decode=True, compile_dit=True,
                   vae_batch=None, vae_trim=True)
        return replace(base, **overrides)

    @property
    def reference_vae(self) -> bool:
        return self.vae_batch == 1 and not self.vae_trim and not self.vae_chunk_frames

    @property
    def plan_kwargs(self) -> dict:
        return {"fast": self.fast_blocks, "static_cache": self.static_cache, "compile": self.compile_decode}

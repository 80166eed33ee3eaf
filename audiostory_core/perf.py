"""Speed and memory options of the pipeline. The defaults are the fast paths; one switch is the reference.

``PerfOptions()`` is what every entry point uses unless told otherwise (library, CLI, batch, nodes):

* exact on every device (they equal the reference computation on CPU: same plan ids, states and
  latents within float rounding): forced query blocks in one forward, a static KV cache, batched and
  trimmed VAE decode;
* CUDA only (CPU stays eager): ``torch.compile`` with CUDA graphs for the decode and DiT steps and an
  attention backend (``auto``: SDPA's flash kernel in fp16/bf16). A failure to compile or capture
  falls back to eager once, with one warning (:mod:`audiostory_core.stages.compile_fallback`).

``PerfOptions.reference()`` (``--reference``, ``reference=True``) is the official computation:
token-by-token decode, ``DynamicCache``, eager DiT with SDPA, one VAE call per clip.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

from .errors import InputError
from .stages.sampling import AUTO_ATTENTION

# --attention choices: "auto" (flash kernel on CUDA in fp16/bf16), "sdpa" (PyTorch's default dispatch),
# or a diffusers attention backend name.
ATTENTION_CHOICES = (AUTO_ATTENTION, "sdpa", "_native_flash", "_native_efficient", "_native_cudnn", "flash", "_flash_3",
                     "sage", "xformers")


@dataclass(frozen=True)
class PerfOptions:
    # plan decoding (audiostory_core.stages.fast_decode)
    fast_blocks: bool = True             # forced query blocks in one forward, checked per block
    static_cache: bool = True            # preallocated KV cache
    compile_decode: bool = True          # torch.compile + CUDA graphs for the decode step (CUDA only)
    # sampling (audiostory_core.stages.sampling)
    compile_dit: Union[bool, str] = True     # torch.compile of the DiT step (CUDA only); str = mode
    attention_backend: Optional[str] = AUTO_ATTENTION  # "auto", a diffusers backend name, or None = SDPA unchanged
    # VAE (audiostory_core.stages.fast_vae); vae_batch=1, no trim, no chunks = the reference decode
    vae_batch: Optional[int] = None      # clips per VAE call; None = all at once
    vae_trim: bool = True                # skip latent frames past each clip's end
    vae_chunk_frames: Optional[int] = None   # decode in time windows of this many latent frames
    vae_overlap_frames: int = 32

    @classmethod
    def reference(cls) -> "PerfOptions":
        """The official computation, every speed path off."""
        return cls(fast_blocks=False, static_cache=False, compile_decode=False, compile_dit=False,
                   attention_backend=None, vae_batch=1, vae_trim=False)

    @classmethod
    def fast(cls, **overrides) -> "PerfOptions":
        """The defaults with some options changed (kept for callers of the earlier API)."""
        return replace(cls(), **overrides)

    @classmethod
    def from_flags(cls, reference: bool = False, compile: Optional[bool] = None,
                   attention: Optional[str] = None) -> "PerfOptions":
        """The options of the user-facing switches (CLI flags, node widgets); None = the default."""
        if reference:
            if compile or attention not in (None, "sdpa"):
                raise InputError("--reference runs the official computation; drop --compile/--attention, "
                                 "or drop --reference to use them.")
            return cls.reference()
        if attention is not None and attention not in ATTENTION_CHOICES:
            raise InputError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}; got {attention!r}")
        opts = cls()
        if compile is not None:
            opts = replace(opts, compile_decode=bool(compile), compile_dit=bool(compile))
        if attention is not None:
            opts = replace(opts, attention_backend=None if attention == "sdpa" else attention)
        return opts

    @property
    def is_reference(self) -> bool:
        return self == PerfOptions.reference()

    @property
    def reference_vae(self) -> bool:
        return self.vae_batch == 1 and not self.vae_trim and not self.vae_chunk_frames

    @property
    def plan_kwargs(self) -> dict:
        return {"fast": self.fast_blocks, "static_cache": self.static_cache, "compile": self.compile_decode}

"""Stage 3, sample: flow-matching sampling of the DiT for all events at once.

Reference settings reproduce ``Flux_T5.inference_flow_full_tokens``: diffusers'
``FlowMatchEulerDiscreteScheduler`` with sigmas ``linspace(1, 1/steps, steps)`` then 0, the model
called with ``timestep = t / 1000``, CFG ``u + g (c - u)`` on the batch ``[negative ; positive]``
where the negative is T5("") and both halves share the duration token, and the noise
``manual_seed(0); randn(1, audio_seq_len, 64)`` (CPU, fp32) for every clip.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import InputError
from ..progress import Hooks, as_hooks
from .compile_fallback import EagerFallback, compile_applies, failed
from ..validation import check_finite

SEED_MODULUS = 2 ** 64   # clip i of noise=seeded uses (seed + i) mod 2**64 (torch seeds are 64-bit)
LATENT_CAUSE = ("guidance that is not finite, a broken duration embedding (Flux_detokenizer/config.json "
                "max_duration 0) or DiT/bridge weights that are not finite; with fp16, try --dtype fp32 or bf16")


def reference_sigmas(steps: int) -> np.ndarray:
    """σ = linspace(1, 1/steps, steps); the scheduler appends the final 0."""
    return np.linspace(1.0, 1 / steps, steps)


def make_noise(mode: str, n_events: int, seq_len: int, seed: int = 0, channels: int = 64) -> torch.Tensor:
    """Initial latents [E, T, 64], CPU fp32.

    ``reference``: every clip gets ``torch.manual_seed(0); randn(1, T, 64)`` (the official sampler
    re-seeds on every call). ``seeded``: clip ``i`` uses seed ``(seed + i) mod 2**64``. A private generator
    is used, so the global RNG is left untouched; the values equal those of ``torch.manual_seed``.
    """
    out = []
    for i in range(n_events):
        g = torch.Generator("cpu").manual_seed(0 if mode == "reference" else (int(seed) + i) % SEED_MODULUS)
        out.append(torch.randn(1, seq_len, channels, generator=g))
    return torch.cat(out) if out else torch.empty(0, seq_len, channels)


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    return uncond + guidance * (cond - uncond)


class Denoiser:
    """Velocity of the DiT with classifier-free guidance, for a batch of events."""

    def __init__(self, dit, tokens: torch.Tensor, null_embedding: torch.Tensor, seconds: Sequence[float],
                 guidance: float, forward: Optional[Callable] = None):
        e = tokens.shape[0]
        self.dit, self.guidance, self.cfg = dit, float(guidance), guidance > 1.0
        self.forward = forward if forward is not None else dit
        secs = torch.tensor(list(seconds), dtype=torch.float32)
        if self.cfg:
            neg = null_embedding.to(dit.device, dit.dtype).expand(e, -1, -1)
            cond = torch.cat([neg, tokens.to(dit.device, dit.dtype)])
            secs = torch.cat([secs, secs])
        else:  # the official guidance<=1 path crashes; here it means "positive branch only"
            cond = tokens
        self.context, self.pooled = dit.condition(cond, secs)

    def __call__(self, x: torch.Tensor, timestep_over_1000: torch.Tensor) -> torch.Tensor:
        x_in = torch.cat([x, x]) if self.cfg else x
        v = self.forward(x_in, timestep_over_1000, self.context, self.pooled)
        if self.cfg:
            u, c = v.chunk(2)
            v = cfg_combine(u, c, self.guidance)
        return v


@torch.no_grad()
def sample_latents(dit, tokens: torch.Tensor, null_embedding: torch.Tensor, seconds: Sequence[float], *,
                   steps: int = 50, guidance: float = 4.0, noise: str = "seeded", seed: int = 0,
                   sampler: str = "euler", initial_noise: Optional[torch.Tensor] = None,
                   hooks: Optional[Hooks] = None, compile: Union[bool, str] = False,
                   attention_backend: Optional[str] = None, previous_latents: Optional[torch.Tensor] = None,
                   render_events: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Sample ``[E, audio_seq_len, 64]`` latents (fp32, on the DiT's device) for all events in one batch.

    Speed options (defaults = the reference computation): ``compile`` runs the DiT step through
    ``torch.compile`` (``True`` = ``mode="reduce-overhead"``, i.e. CUDA graphs; a string names the
    mode); it is only applied on CUDA, elsewhere the step stays eager. ``attention_backend`` selects
    a diffusers attention backend (``"native"`` = SDPA, ``"_native_flash"``, ``"flash"``, ``"_flash_3"``,
    ...) for this call only.

    Re-roll: with ``previous_latents`` [E, T, 64] and ``render_events`` (0-based indices), only those
    events are sampled (a batch of ``len(render_events)``, each with its own row of the noise) and the
    other rows are copied from ``previous_latents`` unchanged, bit for bit.

    The settings are trusted: the callers check them first (``AudioStoryPipeline.sample``/``generate``,
    batch's ``check_settings``, the nodes' widget limits).
    """
    hooks = as_hooks(hooks)
    e = tokens.shape[0]
    if len(seconds) != e:
        raise InputError(f"{e} events but {len(seconds)} durations")
    t_len = dit.config.audio_seq_len
    x = initial_noise if initial_noise is not None else make_noise(noise, e, t_len, seed)
    if previous_latents is not None or render_events is not None:
        idx = _render_rows(render_events, previous_latents, e, t_len)
        out = previous_latents.detach().to(dit.device, torch.float32, copy=True)
        if idx:
            out[idx] = sample_latents(dit, tokens[idx], null_embedding, [seconds[i] for i in idx], steps=steps,
                                      guidance=guidance, sampler=sampler, initial_noise=x[idx], hooks=hooks,
                                      compile=compile, attention_backend=attention_backend)
        return out
    x = x.to(dit.device)
    model = Denoiser(dit, tokens, null_embedding, seconds, guidance,
                     forward=dit_forward(dit, compile, attention_backend))
    if sampler == "heun":
        return _heun(model, x, steps, hooks)
    return _loop(model, x, sampler, steps, dit.device, hooks)


def _render_rows(render_events: Optional[Sequence[int]], previous: Optional[torch.Tensor], e: int,
                 t_len: int) -> list[int]:
    """Validated, sorted, unique 0-based rows to re-render (re-roll needs both inputs)."""
    if previous is None or render_events is None:
        raise InputError("A re-roll needs both previous_latents and render_events.")
    if tuple(previous.shape[1:]) != (t_len, 64) or previous.shape[0] != e:
        raise InputError(f"previous_latents must be [{e}, {t_len}, 64] (one row per event), "
                         f"got {tuple(previous.shape)}")
    idx = sorted({int(i) for i in render_events})
    bad = [i + 1 for i in idx if not 0 <= i < e]
    if bad:
        raise InputError(f"events {bad} do not exist; the story has events 1..{e}")
    return idx


def _loop(model: Callable, x: torch.Tensor, sampler: str, steps: int, device, hooks: Hooks) -> torch.Tensor:
    sched = _scheduler(sampler, steps, device)
    total = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        hooks.check()
        v = model(x, torch.tensor([t / 1000], device=device))
        x = sched.step(v, t, x).prev_sample
        hooks.report("sample", i + 1, total)
    check_finite(x, "sampling stage (DiT latents)", LATENT_CAUSE)
    return x.float()


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_dit(dit, compile: Union[bool, str]) -> Optional[Callable]:
    """The DiT forward through ``torch.compile`` (cached per module and mode), or None for eager.

    Only on CUDA: on other devices None is returned and the reference eager forward is used.
    """
    if not compile or not compile_applies(dit.device):
        return None
    mode = "reduce-overhead" if compile is True else str(compile)
    per = _COMPILED.setdefault(dit, {})
    if mode not in per:
        fn = torch.compile(dit.forward, mode=mode, fullgraph=True, dynamic=False)
        cudagraphs = "reduce-overhead" in mode or mode == "max-autotune"

        def step(*args, _fn=fn, _cg=cudagraphs):
            if _cg:
                torch.compiler.cudagraph_mark_step_begin()
            return _fn(*args)

        per[mode] = step
    return per[mode]


AUTO_ATTENTION = "auto"


def resolve_attention(backend: Optional[str], dit) -> Optional[str]:
    """``auto``: diffusers' ``_native_flash`` (SDPA's flash kernel) on CUDA in fp16/bf16, else unchanged."""
    if backend != AUTO_ATTENTION:
        return backend or None
    half = next(dit.parameters()).dtype in (torch.float16, torch.bfloat16)
    return "_native_flash" if dit.device.type == "cuda" and half else None


def dit_forward(dit, compile: Union[bool, str], attention_backend: Optional[str]) -> Optional[Callable]:
    """The DiT step with the requested speed paths, or None for the reference eager forward.

    A failure to compile, capture or run the attention backend falls back to the eager forward
    (once, with one warning naming the cause: :mod:`.compile_fallback`).
    """
    if failed(dit):
        return None
    backend = resolve_attention(attention_backend, dit)
    inner = compiled_dit(dit, compile)
    if inner is None and backend is None:
        return None
    inner = inner or dit

    def fast(*args):
        with _attention(backend):
            return inner(*args)

    what = "the DiT step (" + ", ".join(x for x in ("torch.compile" if inner is not dit else "",
                                                     f"attention {backend}" if backend else "") if x) + ")"
    return EagerFallback(dit, fast, dit, what)


@contextlib.contextmanager
def _attention(backend: Optional[str]):
    if not backend:
        yield
        return
    from diffusers.models.attention_dispatch import attention_backend

    with attention_backend(backend):
        yield


def _scheduler(sampler: str, steps: int, device):
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "euler":
        s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        s.set_timesteps(sigmas=reference_sigmas(steps), device=device)
    elif sampler == "dpmpp":
        s = DPMSolverMultistepScheduler(num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=1.0,
                                        prediction_type="flow_prediction", algorithm_type="dpmsolver++",
                                        solver_order=2)
        s.set_timesteps(steps, device=device)
    else:
        s = UniPCMultistepScheduler(num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=1.0,
                                    prediction_type="flow_prediction")
        s.set_timesteps(steps, device=device)
    return s


def _heun(model: Callable, x: torch.Tensor, steps: int, hooks: Hooks) -> torch.Tensor:
    """Second-order Heun on the reference sigma schedule (2 model calls per step but the last)."""
    sig = torch.tensor(np.append(reference_sigmas(steps), 0.0), dtype=torch.float32)
    x = x.float()
    for i in range(steps):
        hooks.check()
        s, sn = sig[i], sig[i + 1]
        d = model(x, s.reshape(1)).float()
        x_e = x + (sn - s) * d
        if sn > 0:
            d2 = model(x_e, sn.reshape(1)).float()
            x = x + (sn - s) * (d + d2) / 2
        else:
            x = x_e
        hooks.report("sample", i + 1, steps)
    check_finite(x, "sampling stage (DiT latents)", LATENT_CAUSE)
    return x

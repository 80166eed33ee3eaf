"""LoRA training. ``dit`` mode: frozen planner conditioning by teacher forcing, the flow-matching loss, peft
LoRA on the DiT. ``e2e`` mode (the paper's third stage): peft LoRA on the planner's LLM, the bridge heads
(projector, audio_projector, fusion attention) and LoRA on the DiT trained together on
``lm_weight · CE(plan text) + flow_weight · flow loss``, the flow loss flowing back through the fused event
tokens into the heads and the LLM's LoRA.

Determinism: the example order, the noise and σ of every sample are functions of (seed, global sample
position) only, so an interrupted run resumed from a checkpoint, and a run split over ``torchrun`` ranks
(each rank takes its slice of the same global batch), compute the same losses as one uninterrupted process.
Distributed runs use ``torch.distributed`` DDP started by ``torchrun`` (gloo on CPU, nccl on CUDA).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..atomic import atomic_file
from ..errors import InputError
from ..progress import Hooks, as_hooks
from ..stages.event_tokens import event_tokens
from ..stages.plan import StoryPlan, embed_prompt, forced_sequence, prompt_ids_for
from .datasets import TrainExample
from .flow_matching import flow_loss, noised, sample_sigmas, velocity_target
from .lora_files import DIT_TARGETS, save_lora

MODES = ("dit", "e2e")
SCHEDULES = ("constant", "cosine")
PEFT_HINT = "pip install peft, or pip install .[train] in the pack's folder"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.csv"
LORA_FILE = "lora.safetensors"
KEEP_CHECKPOINTS = 2
_SEED_STRIDE = 1_000_003


@dataclass
class TrainConfig:
    """Everything that determines the result; a resumed run must have the same values (``steps`` aside)."""

    mode: str = "dit"
    steps: int = 100
    batch_size: int = 1            # per process and micro-step; global batch = batch_size * world * grad_accum
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2     # AdamW as TangoFlux (weight decay 1e-2, eps 1e-8)
    schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    rank: int = 8
    alpha: float = 8.0
    targets: tuple = DIT_TARGETS
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_every: int = 0            # 0: only at the end
    # e2e mode only: loss weights and the LLM's LoRA (targets: () = the release's own planner LoRA targets)
    lm_weight: float = 1.0
    flow_weight: float = 1.0
    llm_rank: int = 8
    llm_alpha: float = 8.0
    llm_targets: tuple = ()

    def check(self) -> "TrainConfig":
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name, lo in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("rank", 1), ("warmup_steps", 0),
                         ("save_every", 0), ("seed", 0), ("llm_rank", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be a whole number >= {lo}, got {v!r}")
        for name in ("lr", "alpha", "max_grad_norm", "weight_decay", "lm_weight", "flow_weight", "llm_alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.targets:
            raise InputError("targets must name at least one module (e.g. to_q)")
        if self.mode == "e2e" and self.lm_weight == 0 and self.flow_weight == 0:
            raise InputError("lm_weight and flow_weight are both 0: nothing to train")
        return self

    def resume_key(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["llm_targets"] = list(self.llm_targets)
        d.pop("save_every")
        return d


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


@dataclass
class TrainData:
    """What the DiT sees per example: fused event tokens [N, 1024], latents [T, 64], seconds.

    e2e mode computes the tokens in the loop instead (``tokens`` may be empty): it needs each example's
    ``plans`` (whose instruction and events give the plan text the LM learns) and ``events`` (the index of the
    example's event in its plan)."""

    tokens: list[torch.Tensor]
    latents: list[torch.Tensor]
    seconds: list[float]
    plans: Optional[list[StoryPlan]] = None
    events: Optional[list[int]] = None


def e2e_data(examples: Sequence[TrainExample], latents: Sequence[torch.Tensor]) -> TrainData:
    """TrainData for e2e mode: plans and event indices instead of precomputed tokens."""
    return TrainData(tokens=[], latents=list(latents), seconds=[e.seconds for e in examples],
                     plans=[e.plan for e in examples], events=[e.event for e in examples])


@torch.no_grad()
def conditioning(planner, examples: Sequence[TrainExample]) -> list[torch.Tensor]:
    """Fused tokens of each example's event, by teacher forcing its plan through the frozen planner
    (the path of an edited or hand-written plan); each plan is encoded once."""
    per_plan: dict[int, torch.Tensor] = {}
    out = []
    for ex in examples:
        if id(ex.plan) not in per_plan:
            per_plan[id(ex.plan)] = event_tokens(planner, ex.plan).fused.float().cpu()
        out.append(per_plan[id(ex.plan)][ex.event])
    return out


def require_peft():
    try:
        import peft
    except ImportError as e:
        raise InputError(f"Training needs the peft library: {PEFT_HINT}") from e
    return peft


def _inject_lora(model: torch.nn.Module, inject_into: torch.nn.Module, *, rank: int, alpha: float,
                 targets: list[str], seed: int, what: str) -> list[torch.nn.Parameter]:
    """Freeze ``model``, inject fp32 peft LoRA layers into ``inject_into`` (seeded: peft's lora_A init draws
    from the global RNG) and return them, trainable. The DiT and the LLM share this one recipe."""
    peft = require_peft()
    for p in model.parameters():
        p.requires_grad_(False)
    lc = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, init_lora_weights=True)
    torch.manual_seed(seed)
    peft.inject_adapter_in_model(lc, inject_into)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    if not params:
        raise InputError(f"No module of the {what} matches the LoRA targets {targets}.")
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()
    return params


def add_llm_lora(planner, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """peft LoRA on the planner's LLM (the release's planner LoRA targets unless ``llm_targets``) and the bridge
    heads made trainable; every other planner weight frozen. Returns the trainable parameters (LLM LoRA first)."""
    llm, heads = planner.llm, planner.heads
    targets = list(cfg.llm_targets) or list(planner.config.lora.target_modules)
    params = _inject_lora(llm, llm, rank=cfg.llm_rank, alpha=cfg.llm_alpha, targets=targets, seed=cfg.seed + 1,
                          what="LLM")
    for p in heads.parameters():
        p.data = p.data.float()
        p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return params + list(heads.parameters())


def llm_lora_state(llm) -> dict[str, torch.Tensor]:
    """``model.layers.<i>.<module>.lora_A.weight`` / ``lora_B.weight`` of the LLM (the adapter name dropped)."""
    return {n.replace(".default.", "."): p.detach().float().cpu().clone()
            for n, p in llm.named_parameters() if "lora_" in n}


def llm_release_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LLM LoRA under the release checkpoint's peft names (``seedx.llm.base_model.model.<module>.lora_A.default
    .weight``), the layout :func:`audiostory_core.models.weights.llm_state_dict` merges at load time."""
    from ..models.weights import LLM_PREFIX

    out = {}
    for k, v in state.items():
        mod, ab, leaf = k.rsplit(".", 2)
        out[f"{LLM_PREFIX}{mod}.{ab}.default.{leaf}"] = v
    return out


def add_lora(dit, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """Inject peft LoRA layers into the DiT's transformer (base weights frozen); returns the trainable ones."""
    params = _inject_lora(dit, dit.transformer, rank=cfg.rank, alpha=cfg.alpha, targets=list(cfg.targets),
                          seed=cfg.seed, what="DiT")
    if cfg.gradient_checkpointing:
        dit.transformer.enable_gradient_checkpointing()
    return params


def lora_state(dit) -> dict[str, torch.Tensor]:
    """``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (the adapter name dropped)."""
    out = {}
    for n, p in dit.named_parameters():
        if "lora_" in n:
            out[n.replace(".default.", ".")] = p.detach().float().cpu().clone()
    return out


def load_lora_state(dit, state: dict[str, torch.Tensor]) -> None:
    named = {n.replace(".default.", "."): p for n, p in dit.named_parameters() if "lora_" in n}
    if set(named) != set(state):
        raise InputError("The checkpoint's LoRA layers do not match this run's (different targets or rank).")
    with torch.no_grad():
        for k, p in named.items():
            if state[k].shape != p.shape:
                raise InputError(f"Checkpoint tensor {k} is {tuple(state[k].shape)}, expected {tuple(p.shape)}.")
            p.copy_(state[k])


class E2EModel(torch.nn.Module):
    """LLM (with LoRA), bridge heads and DiT (with LoRA) as one module (one DDP wrapper in e2e mode)."""

    def __init__(self, planner, dit):
        super().__init__()
        self.llm, self.heads, self.dit = planner.llm, planner.heads, dit
        self.planner = [planner]   # a list: not a submodule

    def forward(self, seqs, events, x0, noise, sigma, seconds):
        return e2e_terms(self.planner[0], self.dit, seqs, events, x0, noise, sigma, seconds)


@dataclass
class PlanSequence:
    """One plan's teacher-forcing input: prompt + plan text + EOS, and where the LM loss and the queries are."""

    ids: list[int]
    prompt_len: int
    semantic_pos: list[list[int]]
    residual_pos: list[list[int]]


def plan_sequence(planner, plan: StoryPlan) -> PlanSequence:
    """The official prompt for ``plan.instruction``, then the text the planner should emit for ``plan``: its
    reasoning, ``<|/think|>``, each event as ``<|gen|> caption <timestamp>d</timestamp> <t5> q.. </t5> <aud> r..
    </aud> <|/gen|>`` (the grammar :func:`parse_transcript` reads), then the first EOS id (``<|im_end|>``)."""
    prompt = prompt_ids_for(planner.tokenizer, plan.instruction)
    seq = forced_sequence(planner.tokenizer, planner.ids, plan, prompt)
    eos = list(planner.generation.eos_token_ids)
    ids = list(seq.ids) + ([eos[0]] if eos else [])
    return PlanSequence(ids=ids, prompt_len=len(prompt), semantic_pos=seq.semantic_pos,
                        residual_pos=seq.residual_pos)


def e2e_terms(planner, dit, seqs: Sequence[PlanSequence], events: Sequence[int], x0: torch.Tensor,
              noise: torch.Tensor, sigma: torch.Tensor, seconds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, flow loss) of a batch: sample ``i`` is event ``events[i]`` of the plan ``seqs[i]``.

    LM loss: token-mean cross entropy of the plan text given the prompt (each distinct plan once), averaged
    over the batch's samples. Flow loss: the fused tokens of the sample's event (query states -> projector /
    audio_projector -> fusion, the inference path) condition the DiT; the gradient reaches the heads and LLM."""
    llm, dev = planner.llm, dit.device
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    lm, tokens = [], []
    for seq, ev in zip(seqs, events):
        if id(seq) not in done:
            ids = torch.tensor([seq.ids], device=planner.device)
            h = llm.model(inputs_embeds=embed_prompt(llm, ids, None), use_cache=False).last_hidden_state[0]
            p = seq.prompt_len
            with torch.autocast(h.device.type, enabled=False):    # fp32 logits: bf16 has 8 mantissa bits
                logits = llm.lm_head(h[p - 1:-1].to(llm.lm_head.weight.dtype)).float()
            done[id(seq)] = (torch.nn.functional.cross_entropy(logits, ids[0, p:]), h)
        loss, h = done[id(seq)]
        lm.append(loss)
        sem, res = planner.heads.project(h[seq.semantic_pos[ev]][None], h[seq.residual_pos[ev]][None])
        tokens.append(planner.heads.fuse(sem, res)[0])
    context, pooled = dit.condition(torch.stack(tokens), seconds)
    pred = dit(noised(x0, noise, sigma), sigma, context, pooled)
    return torch.stack(lm).mean(), flow_loss(pred, velocity_target(x0, noise))


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); one process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size())

    def all_mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    lora_path: Optional[Path] = None
    steps_per_s: float = 0.0
    lm_losses: list[float] = field(default_factory=list)     # e2e: the two terms, unweighted, per step
    flow_losses: list[float] = field(default_factory=list)


class Trainer:
    """One LoRA training run writing into ``out``: checkpoints/, train_log.csv and lora.safetensors.

    e2e mode needs ``planner`` (trained in place: LoRA injected into its LLM, heads updated) and ``data`` with
    ``plans``/``events`` (:func:`e2e_data`)."""

    def __init__(self, dit, data: TrainData, cfg: TrainConfig, out: Path, hooks: Optional[Hooks] = None,
                 planner=None):
        self.cfg = cfg.check()
        if not data.latents:
            raise InputError("No usable training clip (see the data report above).")
        self.e2e = cfg.mode == "e2e"
        if self.e2e and planner is None:
            raise InputError("e2e mode trains the planner too: pass planner= (the loaded planner).")
        if self.e2e and (data.plans is None or data.events is None or len(data.plans) != len(data.latents)
                         or len(data.events) != len(data.latents)):
            raise InputError("e2e mode needs each example's plan and event (TrainData.plans/events; see e2e_data).")
        self.dit, self.data, self.out, self.hooks = dit, data, Path(out), as_hooks(hooks)
        self.planner = planner if self.e2e else None
        self.device = dit.device
        self.dist = Distributed.from_env(self.device)
        self.params = add_lora(dit, cfg)
        self.model = dit
        if self.e2e:
            self.heads_base = {k: v.detach().float().cpu().clone() for k, v in planner.heads.state_dict().items()}
            self.params = self.params + add_llm_lora(planner, cfg)
            by_plan: dict[int, PlanSequence] = {}
            for plan in data.plans:
                if id(plan) not in by_plan:
                    by_plan[id(plan)] = plan_sequence(planner, plan)
            self.seqs = [by_plan[id(plan)] for plan in data.plans]
            self.model = E2EModel(planner, dit)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)
        self.step = 0
        self.losses: list[float] = []
        self.lm_losses: list[float] = []
        self.flow_losses: list[float] = []

    # ---------------------------------------------------------------- determinism
    def _slots(self, step: int, micro: int) -> list[int]:
        """Global sample positions of this rank's slice of (step, micro)."""
        g = self.cfg.batch_size * self.dist.world
        first = (step * self.cfg.grad_accum + micro) * g + self.dist.rank * self.cfg.batch_size
        return list(range(first, first + self.cfg.batch_size))

    def _example(self, pos: int) -> int:
        n = len(self.data.latents)
        epoch, k = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * _SEED_STRIDE + epoch))
        return int(perm[k])

    def _batch(self, slots: list[int], with_tokens: bool = True):
        idx = [self._example(p) for p in slots]
        x0 = torch.stack([self.data.latents[i] for i in idx])
        noise, sig = [], []
        for p in slots:
            g = torch.Generator().manual_seed((self.cfg.seed * _SEED_STRIDE + p) % 2 ** 63)
            sig.append(sample_sigmas(1, g))
            noise.append(torch.randn(x0.shape[1:], generator=g))
        tok = torch.stack([self.data.tokens[i] for i in idx]) if with_tokens else idx
        secs = torch.tensor([self.data.seconds[i] for i in idx], dtype=torch.float32)
        return x0, torch.stack(noise), torch.cat(sig), tok, secs

    # ---------------------------------------------------------------- one optimiser step
    def _micro_loss(self, step: int, micro: int) -> torch.Tensor:
        if self.e2e:
            return self._micro_terms(step, micro)[0]
        x0, noise, sigma, tok, secs = self._batch(self._slots(step, micro))
        dev = self.device
        x0, noise, sigma = x0.to(dev), noise.to(dev), sigma.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            context, pooled = self.dit.condition(tok, secs)
            pred = self.model(noised(x0, noise, sigma), sigma, context, pooled)
        return flow_loss(pred, velocity_target(x0, noise))

    def _micro_terms(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """e2e: (weighted total, LM loss, flow loss) of one micro-batch."""
        x0, noise, sigma, idx, secs = self._batch(self._slots(step, micro), with_tokens=False)
        dev = self.device
        x0, noise, sigma = x0.to(dev), noise.to(dev), sigma.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            lm, fl = self.model([self.seqs[i] for i in idx], [self.data.events[i] for i in idx], x0, noise, sigma,
                                secs)
        return self.cfg.lm_weight * lm + self.cfg.flow_weight * fl, lm, fl

    def train_step(self) -> float:
        cfg, s = self.cfg, self.step
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(s, cfg)
        self.opt.zero_grad(set_to_none=True)
        total = lm_total = flow_total = 0.0
        for m in range(cfg.grad_accum):
            last = m == cfg.grad_accum - 1
            sync = self.model.no_sync() if (self.dist.world > 1 and not last) else contextlib.nullcontext()
            with sync:
                if self.e2e:
                    loss, lm, fl = self._micro_terms(s, m)
                    lm_total += float(lm.detach()) / cfg.grad_accum
                    flow_total += float(fl.detach()) / cfg.grad_accum
                else:
                    loss = self._micro_loss(s, m)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.opt.step()
        self.step += 1
        loss = self.dist.all_mean(total)
        self.losses.append(loss)
        if self.e2e:
            self.lm_losses.append(self.dist.all_mean(lm_total))
            self.flow_losses.append(self.dist.all_mean(flow_total))
        return loss

    # ---------------------------------------------------------------- e2e state
    def heads_delta(self) -> dict[str, torch.Tensor]:
        """Trained minus released bridge-head parameters (what the LoRA file stores)."""
        return {k: v.detach().float().cpu() - self.heads_base[k] for k, v in self.planner.heads.state_dict().items()}

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR

    def save_checkpoint(self) -> Optional[Path]:
        if self.dist.rank != 0:
            return None
        path = self.checkpoint_dir / f"step-{self.step:07d}.pt"
        state = {"step": self.step, "lora": lora_state(self.dit), "optim": self.opt.state_dict(),
                 "losses": list(self.losses), "config": self.cfg.resume_key()}
        if self.e2e:
            state.update(llm_lora=llm_lora_state(self.planner.llm),
                         heads={k: v.detach().float().cpu().clone() for k, v in self.planner.heads.state_dict().items()},
                         lm_losses=list(self.lm_losses), flow_losses=list(self.flow_losses))
        with atomic_file(path) as f:
            torch.save(state, f)
        for old in sorted(self.checkpoint_dir.glob("step-*.pt"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def latest_checkpoint(self) -> Optional[Path]:
        found = sorted(self.checkpoint_dir.glob("step-*.pt")) if self.checkpoint_dir.is_dir() else []
        return found[-1] if found else None

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint of a run with the same settings (``steps`` may grow)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"Cannot read training checkpoint {path} ({e}); delete it to resume from the one "
                             "before, or start over with a new --out folder.") from e
        mine, theirs = self.cfg.resume_key(), dict(state.get("config") or {})
        theirs = {**TrainConfig().resume_key(), **theirs}     # a setting added since: its default then
        mine.pop("steps"), theirs.pop("steps", None)
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise InputError(f"{path} was written with other settings ({', '.join(diff)}); use the same "
                             "settings to resume, or a new --out folder to start over.")
        load_lora_state(self.dit, state["lora"])
        if self.e2e:
            load_lora_state(self.planner.llm, state["llm_lora"])
            with torch.no_grad():
                for k, v in self.planner.heads.state_dict().items():
                    v.copy_(state["heads"][k])
            self.lm_losses = [float(x) for x in state["lm_losses"]]
            self.flow_losses = [float(x) for x in state["flow_losses"]]
        self.opt.load_state_dict(state["optim"])
        self.step, self.losses = int(state["step"]), [float(x) for x in state["losses"]]

    # ---------------------------------------------------------------- the run
    def run(self, resume: bool = True) -> TrainResult:
        cfg = self.cfg
        if resume and self.latest_checkpoint() is not None:
            self.resume(self.latest_checkpoint())
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / LOG_FILE
        writer = None
        if self.dist.rank == 0:
            if self.step == 0 or not log.is_file():
                log.write_text("step,loss,lr,seconds" + (",lm_loss,flow_loss" if self.e2e else "") + "\n")
            else:   # drop the rows of steps after the checkpoint (they are computed again)
                rows = log.read_text().splitlines()
                keep = [r for r in rows[1:] if r.split(",", 1)[0].isdigit() and int(r.split(",", 1)[0]) <= self.step]
                log.write_text("\n".join(rows[:1] + keep) + "\n")
            f = log.open("a", newline="")
            writer = csv.writer(f)
        t0, first = time.perf_counter(), self.step
        self.model.train()
        try:
            while self.step < cfg.steps:
                self.hooks.check()
                loss = self.train_step()
                if writer is not None:
                    writer.writerow([self.step, f"{loss:.6g}", f"{self.opt.param_groups[0]['lr']:.6g}",
                                     f"{time.perf_counter() - t0:.3f}"]
                                    + ([f"{self.lm_losses[-1]:.6g}", f"{self.flow_losses[-1]:.6g}"] if self.e2e
                                       else []))
                    f.flush()
                self.hooks.report("train", self.step, cfg.steps)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
        finally:
            if writer is not None:
                f.close()
            self.model.eval()
        elapsed = time.perf_counter() - t0
        result = TrainResult(losses=list(self.losses),
                             steps_per_s=(self.step - first) / elapsed if elapsed > 0 else 0.0,
                             lm_losses=list(self.lm_losses), flow_losses=list(self.flow_losses))
        if self.dist.rank == 0:
            self.save_checkpoint()
            extra = {}
            if self.e2e:
                extra = dict(llm=llm_lora_state(self.planner.llm), llm_rank=cfg.llm_rank, llm_alpha=cfg.llm_alpha,
                             llm_targets=list(cfg.llm_targets) or list(self.planner.config.lora.target_modules),
                             heads=self.heads_delta())
            result.lora_path = save_lora(self.out / LORA_FILE, {k: v for k, v in lora_state(self.dit).items()},
                                         rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                                         config=cfg.resume_key(), **extra)
        return result


"""DiT LoRA training: frozen planner conditioning by teacher forcing, the flow-matching loss, peft LoRA.

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
from .datasets import TrainExample
from .flow_matching import flow_loss, noised, sample_sigmas, velocity_target
from .lora_files import DIT_TARGETS, save_lora

MODES = ("dit",)
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

    def check(self) -> "TrainConfig":
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name, lo in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("rank", 1), ("warmup_steps", 0),
                         ("save_every", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be a whole number >= {lo}, got {v!r}")
        for name in ("lr", "alpha", "max_grad_norm", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.targets:
            raise InputError("targets must name at least one module (e.g. to_q)")
        return self

    def resume_key(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
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
    """What the DiT sees per example: fused event tokens [N, 1024], latents [T, 64], seconds."""

    tokens: list[torch.Tensor]
    latents: list[torch.Tensor]
    seconds: list[float]


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


def add_lora(dit, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """Inject peft LoRA layers into the DiT's transformer (base weights frozen); returns the trainable ones."""
    peft = require_peft()
    for p in dit.parameters():
        p.requires_grad_(False)
    lc = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), lora_dropout=0.0,
                         init_lora_weights=True)
    torch.manual_seed(cfg.seed)   # peft's lora_A init draws from the global RNG
    peft.inject_adapter_in_model(lc, dit.transformer)
    params = [p for n, p in dit.named_parameters() if "lora_" in n]
    if not params:
        raise InputError(f"No module of the DiT matches targets {list(cfg.targets)}.")
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()
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


class Trainer:
    """One LoRA training run writing into ``out``: checkpoints/, train_log.csv and lora.safetensors."""

    def __init__(self, dit, data: TrainData, cfg: TrainConfig, out: Path, hooks: Optional[Hooks] = None):
        self.cfg = cfg.check()
        if not data.latents:
            raise InputError("No usable training clip (see the data report above).")
        self.dit, self.data, self.out, self.hooks = dit, data, Path(out), as_hooks(hooks)
        self.device = dit.device
        self.dist = Distributed.from_env(self.device)
        self.params = add_lora(dit, cfg)
        self.model = dit
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(dit, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)
        self.step = 0
        self.losses: list[float] = []

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

    def _batch(self, slots: list[int]):
        idx = [self._example(p) for p in slots]
        x0 = torch.stack([self.data.latents[i] for i in idx])
        noise, sig = [], []
        for p in slots:
            g = torch.Generator().manual_seed((self.cfg.seed * _SEED_STRIDE + p) % 2 ** 63)
            sig.append(sample_sigmas(1, g))
            noise.append(torch.randn(x0.shape[1:], generator=g))
        tok = torch.stack([self.data.tokens[i] for i in idx])
        secs = torch.tensor([self.data.seconds[i] for i in idx], dtype=torch.float32)
        return x0, torch.stack(noise), torch.cat(sig), tok, secs

    # ---------------------------------------------------------------- one optimiser step
    def _micro_loss(self, step: int, micro: int) -> torch.Tensor:
        x0, noise, sigma, tok, secs = self._batch(self._slots(step, micro))
        dev = self.device
        x0, noise, sigma = x0.to(dev), noise.to(dev), sigma.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            context, pooled = self.dit.condition(tok, secs)
            pred = self.model(noised(x0, noise, sigma), sigma, context, pooled)
        return flow_loss(pred, velocity_target(x0, noise))

    def train_step(self) -> float:
        cfg, s = self.cfg, self.step
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(s, cfg)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for m in range(cfg.grad_accum):
            last = m == cfg.grad_accum - 1
            sync = self.model.no_sync() if (self.dist.world > 1 and not last) else contextlib.nullcontext()
            with sync:
                loss = self._micro_loss(s, m)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.opt.step()
        self.step += 1
        loss = self.dist.all_mean(total)
        self.losses.append(loss)
        return loss

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
        mine.pop("steps"), theirs.pop("steps", None)
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise InputError(f"{path} was written with other settings ({', '.join(diff)}); use the same "
                             "settings to resume, or a new --out folder to start over.")
        load_lora_state(self.dit, state["lora"])
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
                log.write_text("step,loss,lr,seconds\n")
            else:   # drop the rows of steps after the checkpoint (they are computed again)
                rows = log.read_text().splitlines()
                keep = [r for r in rows[1:] if r.split(",", 1)[0].isdigit() and int(r.split(",", 1)[0]) <= self.step]
                log.write_text("\n".join(rows[:1] + keep) + "\n")
            f = log.open("a", newline="")
            writer = csv.writer(f)
        t0, first = time.perf_counter(), self.step
        self.dit.train()
        try:
            while self.step < cfg.steps:
                self.hooks.check()
                loss = self.train_step()
                if writer is not None:
                    writer.writerow([self.step, f"{loss:.6g}", f"{self.opt.param_groups[0]['lr']:.6g}",
                                     f"{time.perf_counter() - t0:.3f}"])
                    f.flush()
                self.hooks.report("train", self.step, cfg.steps)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
        finally:
            if writer is not None:
                f.close()
            self.dit.eval()
        elapsed = time.perf_counter() - t0
        result = TrainResult(losses=list(self.losses),
                             steps_per_s=(self.step - first) / elapsed if elapsed > 0 else 0.0)
        if self.dist.rank == 0:
            self.save_checkpoint()
            result.lora_path = save_lora(self.out / LORA_FILE, {k: v for k, v in lora_state(self.dit).items()},
                                         rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                                         config=cfg.resume_key())
        return result


"""The training nodes' steps that need no ComfyUI: data-set choices, widget limits, the socket values,
LoRA file names and the loss graph. Kept apart from ``nodes/training.py`` so they are unit-tested without
a ComfyUI install.

Why a combo and not a path: a prompt may come from anyone who can reach the server, so the data set is a
name picked from the folders under ComfyUI's input directory, checked again when the node runs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..audiostory_core.errors import InputError
from ..audiostory_core.training.datasets import MANIFEST_SUFFIXES, DataReport, TrainExample
from ..audiostory_core.training.lora_files import save_lora
from ..audiostory_core.training.trainer import SCHEDULES, TrainConfig

MAX_DATASETS = 200            # folders listed in the combo
MAX_MANIFESTS_PER_FOLDER = 20
MAX_FOLDER_ENTRIES = 2000     # entries of one folder looked at while listing
MAX_REPORT_LINES = 40         # skipped-file lines shown on the node (the rest counted)
MAX_REPORT_LINE_CHARS = 300
NO_DATASET = "(no data set: put a folder with captions.jsonl under input/)"
MAX_PREFIX_CHARS = 64
MAX_COUNTER = 99999
LORA_SUFFIX = ".safetensors"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")


@dataclass(frozen=True)
class Limit:
    """One numeric widget of the Train node: its default comes from ``TrainConfig``, its bounds from here."""

    default: float
    min: float
    max: float
    step: float


_D = TrainConfig()
# Each training widget declared once: default from TrainConfig (what the CLI uses), bounds for the UI.
LIMITS: dict[str, Limit] = {
    "steps": Limit(_D.steps, 1, 10_000, 1),
    "learning_rate": Limit(_D.lr, 1e-7, 1e-1, 1e-5),
    "rank": Limit(_D.rank, 1, 128, 1),
    "alpha": Limit(_D.alpha, 0.0, 1024.0, 0.5),
    "seed": Limit(_D.seed, 0, 2 ** 31 - 1, 1),
    "batch_size": Limit(_D.batch_size, 1, 16, 1),
    "grad_accum": Limit(_D.grad_accum, 1, 64, 1),
    "warmup_steps": Limit(_D.warmup_steps, 0, 10_000, 1),
}
DEFAULT_SCHEDULE = _D.schedule
SCHEDULE_CHOICES = SCHEDULES


def train_config(*, steps: int, learning_rate: float, rank: int, alpha: float, seed: int, batch_size: int = 1,
                 grad_accum: int = 1, schedule: str = DEFAULT_SCHEDULE, warmup_steps: int = 0, bf16: bool = False,
                 gradient_checkpointing: bool = False) -> TrainConfig:
    """The widgets' values as a checked ``TrainConfig`` (bounds of :data:`LIMITS` enforced here too: an API
    prompt skips the UI)."""
    values = {"steps": steps, "learning_rate": learning_rate, "rank": rank, "alpha": alpha, "seed": seed,
              "batch_size": batch_size, "grad_accum": grad_accum, "warmup_steps": warmup_steps}
    for name, v in values.items():
        lim = LIMITS[name]
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad or not lim.min <= v <= lim.max:
            raise InputError(f"{name} must be between {lim.min:g} and {lim.max:g}, got {v!r}")
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return TrainConfig(mode="dit", steps=int(steps), batch_size=int(batch_size), grad_accum=int(grad_accum),
                       lr=float(learning_rate), schedule=schedule, warmup_steps=int(warmup_steps), rank=int(rank),
                       alpha=float(alpha), seed=int(seed), bf16=bool(bf16),
                       gradient_checkpointing=bool(gradient_checkpointing)).check()


# ---------------------------------------------------------------- data sets under input/
def _manifests(folder: Path) -> list[str]:
    out = []
    try:
        entries = sorted(folder.iterdir())[:MAX_FOLDER_ENTRIES]
    except OSError:
        return []
    for q in entries:
        if q.suffix.lower() in MANIFEST_SUFFIXES and q.is_file() and not q.name.startswith("."):
            out.append(q.name)
            if len(out) >= MAX_MANIFESTS_PER_FOLDER:
                break
    return out


def dataset_choices(input_dir: str | Path) -> list[str]:
    """``folder`` for each folder directly under ``input_dir`` holding one .jsonl/.csv manifest,
    ``folder/manifest`` for each manifest of a folder holding several; sorted, at most :data:`MAX_DATASETS`."""
    root = Path(input_dir)
    if not root.is_dir():
        return []
    choices: list[str] = []
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for folder in folders[:MAX_FOLDER_ENTRIES]:
        found = _manifests(folder)
        if len(found) == 1:
            choices.append(folder.name)
        else:
            choices += [f"{folder.name}/{m}" for m in found]
        if len(choices) >= MAX_DATASETS:
            return choices[:MAX_DATASETS]
    return choices


def resolve_dataset(input_dir: str | Path, choice: str) -> Path:
    """The manifest (or folder) a combo choice names; only a name listed by :func:`dataset_choices` passes,
    so no prompt can point the loader outside the input folder."""
    choices = dataset_choices(input_dir)
    if not isinstance(choice, str) or choice not in choices:
        shown = ", ".join(choices[:10]) or "none"
        raise InputError(f"Data set {str(choice)[:100]!r} is not a folder with a .jsonl/.csv manifest under "
                         f"ComfyUI's input folder; available: {shown}.")
    path = (Path(input_dir) / choice).resolve()
    if Path(input_dir).resolve() not in path.parents:
        raise InputError(f"Data set {choice!r} resolves outside the input folder.")
    return path


def report_text(name: str, report: DataReport) -> str:
    """What the Training Data node shows: counts, then each skipped file with its reason (bounded)."""
    lines = [f"{name}: {len(report.used)} clips used, {len(report.skipped)} skipped"]
    for where, why in report.skipped[:MAX_REPORT_LINES]:
        lines.append(f"  skipped {where}: {why}"[:MAX_REPORT_LINE_CHARS])
    if len(report.skipped) > MAX_REPORT_LINES:
        lines.append(f"  ... and {len(report.skipped) - MAX_REPORT_LINES} more skipped lines")
    return "\n".join(lines)


# ---------------------------------------------------------------- socket values
@dataclass
class TrainingData:
    """AUDIOSTORY_TRAINING_DATA: the clips of a data set at the VAE's rate, and the report of the bad lines."""

    name: str
    examples: list[TrainExample]
    report: DataReport
    sample_rate: int


@dataclass
class TrainedLora:
    """AUDIOSTORY_LORA: the trained A/B pairs (CPU, fp32) with what the LoRA file's metadata records."""

    tensors: dict[str, torch.Tensor]
    rank: int
    alpha: float
    targets: tuple
    config: dict
    losses: list[float] = field(default_factory=list)

    def save(self, path: Path) -> Path:
        """One safetensors file, written atomically by the core writer (config in the metadata)."""
        return save_lora(path, self.tensors, rank=self.rank, alpha=self.alpha, targets=self.targets,
                         config=self.config)


# ---------------------------------------------------------------- LoRA file names
def check_prefix(prefix: Any) -> str:
    """A file-name prefix for a LoRA: letters, digits, space, ``_ . -``; no folder, at most 64 characters."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise InputError("filename_prefix must not be empty.")
    p = prefix.strip()
    if len(p) > MAX_PREFIX_CHARS:
        raise InputError(f"filename_prefix is {len(p)} characters; the limit is {MAX_PREFIX_CHARS}.")
    if "/" in p or "\\" in p or not _PREFIX_RE.match(p) or ".." in p:
        raise InputError(f"filename_prefix {p[:80]!r} may hold only letters, digits, spaces and _ . - "
                         "(no folder: LoRAs are written into models/loras/audiostory/).")
    return p


def next_lora_path(folder: Path, prefix: str) -> Path:
    """``<prefix>_<counter:05>.safetensors`` with the counter one above the highest already in ``folder``."""
    prefix = check_prefix(prefix)
    pat = re.compile(re.escape(prefix) + r"_(\d{5})" + re.escape(LORA_SUFFIX) + "$")
    highest = 0
    if folder.is_dir():
        for q in folder.iterdir():
            m = pat.match(q.name)
            if m:
                highest = max(highest, int(m.group(1)))
    if highest >= MAX_COUNTER:
        raise InputError(f"{folder} already holds {MAX_COUNTER} LoRAs named {prefix!r}; choose another prefix.")
    return folder / f"{prefix}_{highest + 1:05d}{LORA_SUFFIX}"


# ---------------------------------------------------------------- loss graph
def loss_graph(losses: Sequence[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """An IMAGE [1, H, W, 3] in [0, 1]: the loss per step as a line, with min/max labels (PIL, as ComfyUI
    core's training nodes draw theirs; matplotlib is not among ComfyUI's requirements)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 10, 10, height - 24
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    vals = [float(v) for v in losses if math.isfinite(float(v))]
    if vals:
        lo, hi = min(vals), max(vals)
        span = hi - lo if hi > lo else 1.0
        n = len(losses)
        pts = []
        for i, v in enumerate(losses):
            if not math.isfinite(float(v)):
                continue
            x = left + (i / (n - 1) if n > 1 else 0.5) * (right - left)
            y = bottom - ((float(v) - lo) / span if hi > lo else 0.5) * (bottom - top)
            pts.append((x, y))
        if len(pts) > 1:
            draw.line(pts, fill=(30, 90, 200), width=2)
        else:
            x, y = pts[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 200))
        draw.text((4, top), f"{hi:.3g}", fill="black")
        draw.text((4, bottom - 10), f"{lo:.3g}", fill="black")
    draw.text((left, bottom + 6), f"loss over {len(losses)} steps", fill="black")
    import numpy as np

    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]

"""Training data in the shapes people have, checked file by file.

* clips with captions: a JSONL (``{"audio": ..., "caption": ...}`` per line) or a CSV with ``audio,caption``;
* long recordings with an event list: JSONL lines ``{"audio", "instruction", "events": [{start, end, caption}]}``;
* videos: ``{"video": ...}`` (the audio track, captioned scene by scene by the dubbing VLM) or
  ``{"video", "instruction", "events"}`` (the user's events on the video's audio track); see :mod:`.video_rows`.

Audio paths are relative to the manifest. Each clip becomes one event of a plan (a clip alone is a one-event plan
whose instruction is built from its caption, as ``generate --instruction CAPTION --duration D`` would). A line
that cannot be used (unreadable audio or video, no audio track, an event outside the audio, a caption over the
limits, a clip longer than the DiT window, a video to caption and no VLM) is skipped and reported with its line number and the reason; the others are kept.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ..atomic import write_bytes_atomic
from ..errors import AudioStoryError, GenerationInterrupted, InputError, ModelFilesError
from ..progress import Hooks
from ..stages.audio import read_audio, resample
from ..stages.grammar import build_instruction
from ..stages.plan import StoryEvent, StoryPlan
from ..validation import MAX_EVENTS, MIN_EVENT_SECONDS, check_event, check_instruction
from .video_rows import CaptionSource, caption_video, video_audio

LATENT_CHANNELS = 64          # the DiT's in_channels, the Oobleck latent width
MANIFEST_SUFFIXES = (".jsonl", ".csv")
MAX_MANIFEST_BYTES = 64 * 2 ** 20
MAX_ITEMS = 100_000
MAX_JSON_LINE_CHARS = 1_000_000


@dataclass
class TrainExample:
    """One (event conditioning, clip) pair: event ``event`` of ``plan`` is the caption of ``wave``."""

    plan: StoryPlan
    event: int
    wave: torch.Tensor          # [C, S] at the VAE's rate, C = the VAE's channels
    source: str                 # "file.jsonl:3 (clip.wav 1.0-4.0 s)" for reports

    @property
    def seconds(self) -> float:
        return self.plan.events[self.event].duration


@dataclass
class DataReport:
    used: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (where, why)

    def text(self, unit: str = "clips") -> str:
        lines = [f"{len(self.used)} {unit} used, {len(self.skipped)} skipped"]
        lines += [f"  skipped {w}: {why}" for w, why in self.skipped]
        return "\n".join(lines)


def find_manifest(data: Union[str, Path]) -> Path:
    """``data`` is a .jsonl/.csv file, or a folder holding exactly one."""
    p = Path(data)
    if p.is_file():
        if p.suffix.lower() not in MANIFEST_SUFFIXES:
            raise InputError(f"{p} is not a .jsonl or .csv manifest (lines of {{\"audio\", \"caption\"}}).")
        return p
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if q.suffix.lower() in MANIFEST_SUFFIXES and q.is_file())
        if len(found) == 1:
            return found[0]
        raise InputError(f"{p} holds {len(found)} .jsonl/.csv manifests; pass the one to use: --data {p}/NAME.jsonl")
    raise InputError(f"Training data {p} does not exist.")


def manifest_rows(manifest: Path) -> list[tuple[str, object]]:
    """(where, row) per non-empty line: a dict, or the error text of a line that is not valid."""
    size = manifest.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"{manifest} is {size} bytes; the limit is {MAX_MANIFEST_BYTES} (split the data set).")
    text = manifest.read_text(encoding="utf-8", errors="replace")
    rows: list[tuple[str, object]] = []
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"audio", "caption"} <= set(reader.fieldnames):
            raise InputError(f"{manifest} needs a header with the columns audio,caption.")
        for i, r in enumerate(reader, start=2):
            rows.append((f"{manifest.name}:{i}", {"audio": r.get("audio"), "caption": r.get("caption")}))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{manifest.name}:{i}"
            if len(line) > MAX_JSON_LINE_CHARS:
                rows.append((where, f"line longer than {MAX_JSON_LINE_CHARS} characters"))
                continue
            try:
                rows.append((where, json.loads(line)))
            except (json.JSONDecodeError, RecursionError) as e:
                rows.append((where, f"not valid JSON ({e})"))
    if len(rows) > MAX_ITEMS:
        raise InputError(f"{manifest} has {len(rows)} lines; the limit is {MAX_ITEMS}.")
    return rows


def _events(row: dict, where: str, seconds: float) -> tuple[str, list[tuple[float, float, str]]]:
    """(instruction, [(start, end, caption)]) of a row, checked against the audio's length."""
    if "events" in row:
        instr, evs = row.get("instruction"), row["events"]
        check_instruction(instr)
        if not isinstance(evs, list) or not evs:
            raise InputError("'events' must be a non-empty list of {start, end, caption}")
        if len(evs) > MAX_EVENTS:
            raise InputError(f"{len(evs)} events; the limit is {MAX_EVENTS}")
        out = []
        for k, e in enumerate(evs):
            if not isinstance(e, dict):
                raise InputError(f"events[{k}] must be an object with start, end and caption")
            s, t, cap = e.get("start"), e.get("end"), e.get("caption")
            for name, v in (("start", s), ("end", t)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                    raise InputError(f"events[{k}].{name} must be a number of seconds, got {v!r}")
            if not 0 <= s < t:
                raise InputError(f"events[{k}] runs from {s} to {t} s; it needs 0 <= start < end")
            if t > seconds + 1e-6:
                raise InputError(f"events[{k}] ends at {t:g} s but the audio lasts {seconds:.3f} s")
            check_event(cap, float(t - s), f"events[{k}]")
            out.append((float(s), float(t), cap.strip()))
        return instr, out
    cap = row.get("caption")
    check_event(cap, seconds, "line")
    return build_instruction(cap.strip(), round(seconds, 2)), [(0.0, seconds, cap.strip())]


def row_media(row: dict, manifest: Path, confine: bool) -> tuple[str, str, Path]:
    """(kind, name as written, resolved path) of a row's ``audio`` or ``video`` file.

    ``confine``: the file must stay inside the manifest's folder once resolved (symlinks included)."""
    kind = "video" if "video" in row else "audio"
    name = row.get(kind)
    if not isinstance(name, str) or not name.strip() or ("video" in row and "audio" in row):
        raise InputError("each line needs one 'audio' (or 'video') path and a 'caption' (or 'instruction' + "
                         "'events'; a video without events is captioned by the VLM)")
    path = (manifest.parent / name).resolve()
    if confine and manifest.parent.resolve() not in path.parents:
        raise InputError(f"{name} is outside the data set's folder; only files inside it are read")
    return kind, name, path


def read_lines(manifest: Path, report: DataReport, confine: bool,
               work: Callable[[str, dict, str, str, Path], list[tuple[Any, str]]]) -> list:
    """``work(where, row, kind, name, path)`` on every line: the (item, label) pairs it returns are kept (labels
    go to ``report.used``); a line it cannot use goes to ``report.skipped`` with the reason, never silently.
    A VLM that cannot load (:class:`ModelFilesError`) or a Cancel stops the whole read instead."""
    out: list = []
    for where, row in manifest_rows(manifest):
        try:
            if isinstance(row, str):
                raise InputError(row)
            if not isinstance(row, dict):
                raise InputError("each line must be a JSON object")
            items = work(where, row, *row_media(row, manifest, confine))
        except (ModelFilesError, GenerationInterrupted):
            raise
        except AudioStoryError as e:
            report.skipped.append((where, str(e).rstrip(".")))
            continue
        out += [item for item, _ in items]
        report.used += [label for _, label in items]
    return out


def load_examples(data: Union[str, Path], sample_rate: int, channels: int, max_clip_seconds: float,
                  report: Optional[DataReport] = None, confine: bool = False,
                  captions: Optional[CaptionSource] = None,
                  hooks: Optional[Hooks] = None) -> tuple[list[TrainExample], DataReport]:
    """Read the manifest and its audio; bad lines go to the report with the reason, never silently.

    ``confine``: every audio/video path must stay inside the manifest's folder once resolved (symlinks
    included). The ComfyUI node sets it: a manifest uploaded to the server names files, and none outside the
    data set may be read; the CLI reads the user's own manifest wherever it points.
    ``captions``: the VLM for video lines without events (loaded on the first one; see :mod:`.video_rows`)."""
    manifest = find_manifest(data)
    report = report if report is not None else DataReport()
    captions = captions if captions is not None else CaptionSource()

    def examples_of(where: str, row: dict, kind: str, name: str, path: Path) -> list[tuple[TrainExample, str]]:
        if kind == "video":
            wave, sr, seconds = video_audio(path)
        else:
            wave, sr = read_audio(path)
            seconds = wave.shape[-1] / sr
        if wave.shape[-1] == 0:
            raise InputError(f"{name} has no samples")
        if not torch.isfinite(wave).all():
            raise InputError(f"{name} holds samples that are not finite")
        if kind == "video" and "events" not in row:
            instr, events = caption_video(path, captions.get(), max_clip_seconds, hooks)
        else:
            instr, events = _events(row, where, seconds)
        wave = _channels(resample(wave, sr, sample_rate), channels)
        plan = StoryPlan(instruction=instr, reasoning="",
                         events=[StoryEvent(caption=c, duration=round(t - s, 3)) for s, t, c in events],
                         total_duration=round(sum(t - s for s, t, _ in events), 3))
        new = []
        for k, (s, t, c) in enumerate(events):
            if t - s > max_clip_seconds:
                raise InputError(f"event {k + 1} lasts {t - s:.2f} s; one clip holds at most "
                                 f"{max_clip_seconds:.2f} s (cut it in two events)")
            if t - s < MIN_EVENT_SECONDS:
                raise InputError(f"event {k + 1} lasts {t - s:.3f} s (at least {MIN_EVENT_SECONDS} s)")
            clip = wave[:, int(round(s * sample_rate)): int(round(t * sample_rate))]
            ex = TrainExample(plan=plan, event=k, wave=clip, source=f"{where} ({name} {s:g}-{t:g} s)")
            new.append((ex, ex.source))
        return new

    return read_lines(manifest, report, confine, examples_of), report


def _channels(wave: torch.Tensor, channels: int) -> torch.Tensor:
    """Mono is duplicated ("fake stereo", as TangoFlux trains); more channels than the VAE's are averaged."""
    if wave.shape[0] == channels:
        return wave
    mono = wave.mean(0, keepdim=True)
    return mono.expand(channels, -1).contiguous()


# ---------------------------------------------------------------- latents
@torch.no_grad()
def encode_latents(vae, wave: torch.Tensor, frames: int, hop: int, generator: torch.Generator) -> torch.Tensor:
    """[frames, 64] latents of a clip zero-padded to ``frames · hop`` samples (TangoFlux pads to the window).

    The latent is *sampled* from the VAE posterior as TangoFlux does, with ``generator`` so it is reproducible."""
    n = frames * hop
    x = torch.zeros(1, wave.shape[0], n)
    x[0, :, : min(n, wave.shape[-1])] = wave[:, :n]
    p = next(vae.parameters())
    dist = vae.encode(x.to(p.device, p.dtype)).latent_dist
    eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
    z = dist.mean + dist.std * eps
    if tuple(z.shape[1:]) != (LATENT_CHANNELS, frames):
        raise InputError(f"The VAE encodes {n} samples to {list(z.shape[1:])} (channels, frames); the DiT "
                         f"needs [{LATENT_CHANNELS}, {frames}]: this VAE does not belong to this DiT.")
    return z[0].transpose(0, 1).float().cpu()


def latent_cache_key(ex: TrainExample, vae_config: dict, frames: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(ex.wave.numpy().tobytes())
    h.update(json.dumps([vae_config, frames, seed], sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


CACHE_HEADER_BYTES = 4096     # a cache file is one [frames, 64] float32 tensor plus a header far below this


def read_cached_latents(path: Path, frames: int) -> Optional[torch.Tensor]:
    """The latents stored at ``path``, or None when the file is missing, over the size one entry can have,
    unparsable (truncated, foreign) or not a finite float32 [frames, 64] tensor: a cache file is never trusted
    on its name alone, and a bad one is re-encoded and replaced rather than crashing the run or feeding it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    limit = frames * LATENT_CHANNELS * 4 + CACHE_HEADER_BYTES
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            return None
        z = load(raw).get("latents")
    except (OSError, SafetensorError, ValueError, RuntimeError):
        return None
    if z is None or z.dtype != torch.float32 or tuple(z.shape) != (frames, LATENT_CHANNELS) \
            or not torch.isfinite(z).all():
        return None
    return z


def cached_latents(vae, examples: list[TrainExample], frames: int, hop: int, seed: int,
                   cache_dir: Optional[Path] = None) -> list[torch.Tensor]:
    """Latents of every example; with ``cache_dir`` each is stored once (atomic write) and read back later."""
    from safetensors.torch import save

    out = []
    cfg = dict(vae.config)
    for ex in examples:
        key = latent_cache_key(ex, cfg, frames, seed)
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"{key}.safetensors"
            z = read_cached_latents(path, frames)
            if z is not None:
                out.append(z)
                continue
        g = torch.Generator().manual_seed(int(key[:15], 16))
        z = encode_latents(vae, ex.wave, frames, hop, g)
        if path is not None:
            write_bytes_atomic(path, save({"latents": z.contiguous()}))   # unique temp names: ranks may race
        out.append(z)
    return out

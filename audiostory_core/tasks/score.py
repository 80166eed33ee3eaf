"""Per-event CLAP scores: each event's span of the story against its caption, the story against the instruction.

The paper reports text-audio agreement as a CLAP score (cosine similarity of the CLAP text and audio
embeddings; its Table 1: 0.392) but ships no evaluation code. Here CLAP runs through ``transformers``
(``ClapModel`` + ``ClapProcessor``; default ``laion/clap-htsat-unfused`` in ``<models>/clap-htsat-unfused``).

* Audio is mixed to mono and resampled to 48 kHz (what CLAP was trained on) with torchaudio.
* Event ``i`` is heard from where its clip starts in the story for ``duration_i`` seconds (the plan's
  timeline; the same rule as the crossfade join, including its hard join for clips shorter than the fade).
* CLAP's feature extractor crops audio longer than its window (10 s) at a *random* place. To keep scores
  reproducible, longer audio is cut into consecutive windows, each embedded, and the unit embeddings are
  averaged weighted by window length (then normalised again).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..atomic import write_text_atomic
from ..errors import InputError, ModelFilesError
from ..models.download import fetch_command
from ..models.folders import CLAP
from ..shapes import check_loading_info
from ..stages.event_tokens import clip_seconds
from ..stages.plan import StoryPlan
from ..validation import parse_json, read_text_file

CLAP_SAMPLE_RATE = 48000
DEFAULT_CLAP = CLAP.default
KNOWN_CLAP = {"clap-htsat-unfused": "laion/clap-htsat-unfused", "larger_clap_general": "laion/larger_clap_general"}
VAE_SAMPLE_RATE = 44100     # clips are trimmed at this rate before resampling (the span rule follows it)


def locate_clap(models_root: Union[str, Path, None], name: str = DEFAULT_CLAP) -> Path:
    """The CLAP folder: ``name`` itself when it is a folder, else ``<models_root>/<name>``."""
    direct = Path(name).expanduser()
    if direct.is_dir():
        return direct
    if models_root is not None:
        cand = Path(models_root) / name
        if cand.is_dir():
            return cand
    where = Path(models_root) / name if models_root is not None else direct
    repo = KNOWN_CLAP.get(name, "laion/clap-htsat-unfused")
    raise ModelFilesError(f"No CLAP model at {where}. Fetch it with "
                          f"`{fetch_command(repo, [models_root] if models_root is not None else [direct.parent])}`.")


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClapScorer:
    """CLAP text/audio embeddings and their cosine similarity, deterministic for any audio length."""

    def __init__(self, model, processor, device: Union[str, torch.device, None] = None, name: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.name = name

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ClapScorer":
        """Load strictly: a missing or unexpected weight is an error, never random values."""
        from transformers import ClapModel, ClapProcessor

        folder = Path(folder)
        try:
            model, info = ClapModel.from_pretrained(str(folder), output_loading_info=True, torch_dtype=dtype,
                                                    ignore_mismatched_sizes=True)
            processor = ClapProcessor.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise ModelFilesError(f"Cannot load CLAP from {folder}: {e}") from e
        check_loading_info(f"CLAP weights in {folder}", info, unexpected_fatal=True,
                           hint="They do not match its config.json; download the CLAP model again.")
        return cls(model.to(device), processor, device, name=folder.name)

    @property
    def window_samples(self) -> int:
        return int(self.processor.feature_extractor.nb_max_samples)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, D] unit vectors."""
        tok = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        emb = _features(self.model.get_text_features(**tok)).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    @torch.no_grad()
    def audio_embeddings(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mono 48 kHz waves [S] -> [n, D] unit vectors (length-weighted mean over CLAP windows)."""
        win = self.window_samples
        pieces, owner, weight = [], [], []
        for i, w in enumerate(waves):
            if w.dim() != 1 or w.shape[0] == 0:
                raise InputError(f"audio {i} is empty; nothing to score")
            for s in range(0, w.shape[0], win):
                chunk = w[s:s + win]
                pieces.append(chunk.float().cpu().numpy())
                owner.append(i)
                weight.append(chunk.shape[0])
        feats = self.processor.feature_extractor(pieces, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {"input_features": feats["input_features"].to(self.device, dtype)}
        if "is_longer" in feats:
            inputs["is_longer"] = feats["is_longer"].to(self.device)
        emb = torch.nn.functional.normalize(_features(self.model.get_audio_features(**inputs)).float(), dim=-1)
        owner_t, weight_t = torch.tensor(owner), torch.tensor(weight, dtype=torch.float32)
        out = torch.zeros(len(waves), emb.shape[-1])
        out.index_add_(0, owner_t, emb.cpu() * weight_t[:, None])
        return torch.nn.functional.normalize(out, dim=-1)

    def similarity(self, waves: Sequence[torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
        """[n_audio, n_text] cosine similarities."""
        return self.audio_embeddings(waves) @ self.text_embeddings(texts).T


def to_clap_audio(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[C, S] or [S] audio at ``sample_rate`` -> mono [S'] at 48 kHz (torchaudio resampling)."""
    from ..stages.audio import resample

    w = wave.float().cpu()
    if w.dim() == 2:
        w = w.mean(0)
    elif w.dim() != 1:
        raise InputError(f"audio must be [channels, samples] or [samples], got {tuple(wave.shape)}")
    return resample(w.unsqueeze(0), int(sample_rate), CLAP_SAMPLE_RATE)[0]


def event_spans(durations: Sequence[float], crossfade: float, sample_rate: int) -> list[tuple[int, int]]:
    """[start, end) samples of each event in the crossfaded story: its clip's start, for its duration.

    Follows :func:`~audiostory_core.stages.audio.crossfade_concat`: a clip overlaps the previous one by
    the crossfade unless either is shorter than it (then they are joined end to end).
    """
    secs = clip_seconds(list(durations), crossfade)
    lengths = [round(int(s * VAE_SAMPLE_RATE) * sample_rate / VAE_SAMPLE_RATE) for s in secs]
    n = max(0, int(crossfade * sample_rate))
    starts, total = [], 0
    for i, length in enumerate(lengths):
        if i == 0 or n == 0 or total < n or length < n:
            starts.append(total)
            total += length
        else:
            starts.append(total - n)
            total += length - n
    return [(s, s + round(d * sample_rate)) for s, d in zip(starts, durations)]


@dataclass
class StoryScores:
    """CLAP cosine similarities: one per event (clip vs caption) and the story vs the instruction."""

    events: list[float]
    story: Optional[float]
    spans: list[tuple[float, float]] = field(default_factory=list)   # seconds in the story
    model: str = ""

    def below(self, threshold: float) -> list[int]:
        """0-based events scoring under ``threshold``."""
        return [i for i, s in enumerate(self.events) if s < threshold]

    def weakest(self, count: int = 1) -> list[int]:
        """0-based indices of the ``count`` lowest-scoring events."""
        order = sorted(range(len(self.events)), key=lambda i: (self.events[i], i))
        return sorted(order[:max(0, count)])


def score_story(scorer: ClapScorer, plan: StoryPlan, audio: torch.Tensor, sample_rate: int,
                crossfade: float = 3.0) -> StoryScores:
    """Score every event's span against its caption and the whole story against the instruction."""
    if not plan.events:
        raise InputError("The plan has no events to score.")
    w = to_clap_audio(audio, sample_rate)
    spans = event_spans(plan.durations, crossfade, CLAP_SAMPLE_RATE)
    need = spans[-1][1]
    tolerance = int(0.1 * CLAP_SAMPLE_RATE)
    if w.shape[0] + tolerance < need:
        raise InputError(f"The audio is {w.shape[0] / CLAP_SAMPLE_RATE:.2f} s long but the plan's events need "
                         f"{need / CLAP_SAMPLE_RATE:.2f} s (crossfade {crossfade:g} s): score the story rendered "
                         "from this plan, with the same crossfade.")
    clips = [w[s:min(e, w.shape[0])] for s, e in spans]
    sim = scorer.similarity(clips, [e.caption for e in plan.events])
    events = [float(sim[i, i]) for i in range(len(clips))]
    story = None
    if plan.instruction.strip():
        story = float(scorer.similarity([w], [plan.instruction])[0, 0])
    secs = [(s / CLAP_SAMPLE_RATE, e / CLAP_SAMPLE_RATE) for s, e in spans]
    return StoryScores(events=events, story=story, spans=secs, model=scorer.name)


def scores_table(plan: StoryPlan, scores: StoryScores, threshold: Optional[float] = None) -> str:
    """A fixed-width table: event, time span, score (marked when under ``threshold``), caption."""
    rows = ["  #  span (s)       CLAP   caption"]
    for i, (ev, sc, (a, b)) in enumerate(zip(plan.events, scores.events, scores.spans)):
        mark = " <" if threshold is not None and sc < threshold else "  "
        rows.append(f"{i + 1:3d}  {a:5.1f}-{b:<6.1f} {sc:+.3f}{mark} {ev.caption}")
    story = "   -  " if scores.story is None else f"{scores.story:+.3f}"
    rows.append(f"story              {story}   {plan.instruction}")
    return "\n".join(rows)


def write_scores(plan_path: Union[str, Path], scores: StoryScores, crossfade: float) -> Path:
    """Add the scores to a plan JSON file (atomically), keeping every other field as it was.

    Each event gets ``"clap_score"``; the plan gets ``"scores": {model, story, events, crossfade}``.
    ``StoryPlan.from_json`` ignores both, so the file still loads as a plan.
    """
    path = Path(plan_path)
    d = parse_json(read_text_file(path, "the plan"), f"The plan {path}")
    if not isinstance(d, dict) or len(d.get("events") or []) != len(scores.events):
        raise InputError(f"{path} does not hold the {len(scores.events)} events that were scored.")
    for ev, sc in zip(d["events"], scores.events):
        ev["clap_score"] = round(sc, 6)
    d["scores"] = {"model": scores.model, "sample_rate": CLAP_SAMPLE_RATE, "crossfade": crossfade,
                   "story": None if scores.story is None else round(scores.story, 6),
                   "events": [round(s, 6) for s in scores.events]}
    return write_text_atomic(path, json.dumps(d, indent=2, ensure_ascii=False))


SELECT_MODES = ("weakest", "below_threshold")


def select_events(scores: StoryScores, mode: str = "weakest", threshold: float = 0.25, count: int = 1) -> list[int]:
    """Events to re-roll (0-based): the ``count`` weakest, or every event under ``threshold``."""
    if mode == "weakest":
        return scores.weakest(count)
    if mode == "below_threshold":
        return scores.below(threshold)
    raise InputError(f"select must be one of {SELECT_MODES}, got {mode!r}")

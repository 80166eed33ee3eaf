"""Batch rendering: many stories from one JSONL file, loaded models reused, resumable, sharded by rank.

Why a module of its own: the CLI (``python -m audiostory_core batch``, also under ``torchrun``) and the
ComfyUI batch node share the same parsing, rendering, manifest and resume rules.

* **Stories file.** One JSON object per line (:data:`STORY_KEYS`); blank lines and ``#`` comments are
  ignored. Every line is checked before anything renders; malformed lines and duplicate ids are reported
  with their line numbers and recorded as failures, the others still render.
* **Rendering** is the computation of :meth:`AudioStoryPipeline.generate`, stage by stage. Planning and
  event tokens run per story; stories that share ``steps``/``guidance``/``sampler`` are sampled as one
  DiT batch (their events concatenated, up to ``max_batch`` stories), each story keeping its own noise.
  With ``max_batch=1`` every story takes exactly the single-story path (bit-identical to ``generate``).
* **Outputs.** ``OUT/<id>.plan.json`` then ``OUT/<id>.wav`` (each written atomically), then one line in
  this rank's append-only ``OUT/manifest.rank<R>.jsonl`` (flushed and fsynced). :func:`merge_manifest`
  writes ``OUT/manifest.jsonl``: one entry per line of the stories file.
* **Resume.** A story is complete when its manifest entry says ``ok`` for the same settings
  (``spec``), both files exist and the wav's sha256 equals the recorded one; complete stories are skipped.
* **Ranks.** Story ``i`` (file order, valid stories only) belongs to rank ``i % world_size``: the same
  split on every rank and every rerun, with or without a shared output folder.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch

from .. import validation
from ..atomic import append_durably, write_text_atomic
from ..errors import AudioStoryError, GenerationInterrupted, InputError
from ..progress import Hooks
from ..settings import RenderSettings
from ..validation import check_settings

MANIFEST = "manifest.jsonl"
SHARD_GLOB = "manifest.rank*.jsonl"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


STORY_KEYS = ("id", "instruction", "duration", "plan") + tuple(RenderSettings.__dataclass_fields__)


@dataclass
class StoryJob:
    id: str
    line: int
    instruction: str
    duration: Optional[float]
    settings: RenderSettings
    plan: Optional[dict] = None

    @property
    def spec(self) -> str:
        """Hash of everything that determines the output: a rerun with other settings renders again."""
        d = {"instruction": self.instruction, "duration": self.duration, "plan": self.plan,
             "settings": asdict(self.settings)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def sampling_key(self) -> tuple:
        """Stories with equal keys can share one DiT batch (the noise stays per story)."""
        s = self.settings
        return (s.steps, float(s.guidance), s.sampler)


@dataclass
class LineError:
    line: int
    error: str
    id: Optional[str] = None

    def __str__(self) -> str:
        return f"line {self.line}" + (f" (id {self.id!r})" if self.id else "") + f": {self.error}"


@dataclass
class ParsedStories:
    jobs: list[StoryJob]
    errors: list[LineError]


# ---------------------------------------------------------------------------------------------- parsing
def _plan_object(v: Any, base_dir: Optional[Path]) -> dict:
    """A plan given inline (JSON object) or as a path to a plan JSON (relative to the stories file)."""
    from ..stages.plan import StoryPlan

    if isinstance(v, str):
        p = Path(v)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        v = validation.parse_json(validation.read_text_file(p, "'plan'"), f"'plan' {str(p)!r}")
    StoryPlan.from_dict(v)   # structure errors now, clip-length errors at render time
    return v


def parse_story(obj: Any, line: int, defaults: RenderSettings, base_dir: Optional[Path] = None) -> StoryJob:
    """One JSONL object -> :class:`StoryJob`; raises :class:`InputError`/:class:`PlanError` with the reason."""
    if not isinstance(obj, dict):
        raise InputError(f"a story must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(STORY_KEYS))
    if unknown:
        raise InputError(f"unknown key(s) {unknown}; allowed: {', '.join(STORY_KEYS)}")
    sid = obj.get("id")
    if not isinstance(sid, str) or not ID_PATTERN.match(sid):
        raise InputError(f"'id' must be a string of letters, digits, '.', '_' or '-' (a file name, at most "
                         f"128 characters, not starting with '.' '-' '_'), got {sid!r}")
    from .. import validation as v

    plan = _plan_object(obj["plan"], base_dir) if obj.get("plan") is not None else None
    instruction = obj.get("instruction", "")
    duration = obj.get("duration")
    if plan is None or instruction:
        instruction = v.check_instruction(instruction, "'instruction'" if plan is None else "instruction")
    if plan is None and duration is None:
        raise InputError("'duration' (total seconds) is missing")
    if duration is not None:
        duration = v.check_total_duration(duration, "'duration'")
    overrides = {k: obj[k] for k in RenderSettings.__dataclass_fields__ if k in obj}
    settings = check_settings(replace(defaults, **overrides))
    return StoryJob(id=sid, line=line, instruction=instruction, duration=duration, settings=settings, plan=plan)


def parse_stories(lines: Iterable[str], defaults: RenderSettings = RenderSettings(),
                  base_dir: Optional[Path] = None) -> ParsedStories:
    """Check every line up front: a malformed line (not UTF-8, not JSON, over a limit, bad values) and a
    later line reusing an id fail on their own; every other story renders."""
    jobs: list[StoryJob] = []
    errors: list[LineError] = []
    for n, raw in enumerate(lines, start=1):
        try:
            text = validation.check_json_text(raw, "the line").strip()
        except InputError as e:
            errors.append(LineError(n, str(e)))
            continue
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            errors.append(LineError(n, f"not valid JSON at column {e.colno}: {e.msg}"))
            continue
        try:
            jobs.append(parse_story(obj, n, defaults, base_dir))
        except AudioStoryError as e:
            errors.append(LineError(n, str(e), obj.get("id") if isinstance(obj, dict) and
                                    isinstance(obj.get("id"), str) else None))
    first: dict[str, StoryJob] = {}
    unique: list[StoryJob] = []
    for j in jobs:   # case-folded: OUT/A.wav and OUT/a.wav are one file on macOS and Windows
        kept = first.setdefault(j.id.casefold(), j)
        if kept is j:
            unique.append(j)
        else:
            errors.append(LineError(j.line, f"duplicate id {j.id!r}: line {kept.line} already uses it (that story "
                                            "renders); give each story its own id", j.id))
    jobs = unique
    errors.sort(key=lambda e: e.line)
    return ParsedStories(jobs, errors)


def read_stories(path: Union[str, Path], defaults: RenderSettings = RenderSettings()) -> ParsedStories:
    """The stories file, line by line as bytes: a line that is not UTF-8 fails on its own."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError(f"Cannot read the stories file {path}: {e.strerror or e}") from None
    parsed = parse_stories(lines, defaults, path.parent)
    if not parsed.jobs and not parsed.errors:
        raise InputError(f"{path} holds no story. Write one JSON object per line, e.g.\n"
                         '  {"id": "storm", "instruction": "A thunderstorm rolls over a farm.", "duration": 30}')
    return parsed


def shard(jobs: list[StoryJob], rank: int, world_size: int) -> list[StoryJob]:
    """Story ``i`` goes to rank ``i % world_size``: deterministic, independent of what is already done."""
    return [j for i, j in enumerate(jobs) if i % world_size == rank]


# ---------------------------------------------------------------------------------------------- manifest
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_paths(out_dir: Path, story_id: str) -> tuple[Path, Path]:
    return out_dir / f"{story_id}.wav", out_dir / f"{story_id}.plan.json"


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue   # a line cut by a crash: the story is simply not complete
        if isinstance(d, dict) and isinstance(d.get("id"), str):
            out.append(d)
    return out


def read_entries(out_dir: Path) -> dict[str, dict]:
    """The latest manifest entry of every story id, from the merged manifest and every rank's shard."""
    latest: dict[str, dict] = {}
    files = [out_dir / MANIFEST] + sorted(out_dir.glob(SHARD_GLOB))
    for f in files:
        for d in _read_jsonl(f):
            old = latest.get(d["id"])
            if old is None or float(d.get("finished_at", 0)) >= float(old.get("finished_at", 0)):
                latest[d["id"]] = d
    return latest


def is_complete(job: StoryJob, entry: Optional[dict], out_dir: Path) -> bool:
    """Output, plan and an ``ok`` entry for these settings exist, and the wav still has its recorded hash."""
    if not entry or entry.get("status") != "ok" or entry.get("spec") != job.spec:
        return False
    wav, plan = output_paths(out_dir, job.id)
    return wav.is_file() and plan.is_file() and sha256_file(wav) == entry.get("sha256")


class ManifestShard:
    """This rank's append-only log; every line is flushed and fsynced before the next story starts."""

    def __init__(self, out_dir: Path, rank: int):
        self.path = out_dir / f"manifest.rank{rank}.jsonl"

    def append(self, entry: dict) -> None:
        append_durably(self.path, json.dumps(entry, ensure_ascii=False) + "\n")


def merge_manifest(out_dir: Path, parsed: ParsedStories, new_entries: Iterable[dict] = ()) -> list[dict]:
    """Write ``OUT/manifest.jsonl``: one entry per line of the stories file, in file order.

    ``new_entries`` are the entries gathered from every rank of this run (needed when the ranks do not
    share the output folder); the shards found in ``out_dir`` and the previous manifest are read too.
    A story without a current entry is ``pending`` (not rendered yet, e.g. after Ctrl-C).
    """
    latest = read_entries(out_dir)
    for d in new_entries:
        old = latest.get(d["id"])
        if old is None or float(d.get("finished_at", 0)) >= float(old.get("finished_at", 0)):
            latest[d["id"]] = d
    rows: list[dict] = []
    for j in parsed.jobs:
        e = latest.get(j.id)
        if e is None or e.get("spec") != j.spec:
            e = {"id": j.id, "line": j.line, "status": "pending", "spec": j.spec}
        rows.append({**e, "line": j.line})
    for err in parsed.errors:
        rows.append({"id": err.id, "line": err.line, "status": "failed", "error": err.error, "stage": "parse"})
    rows.sort(key=lambda r: r["line"])
    write_text_atomic(out_dir / MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


# ---------------------------------------------------------------------------------------------- rendering
@dataclass
class _Prepared:
    job: StoryJob
    plan: Any                 # StoryPlan
    tokens: Any               # EventTokens
    problems: list[str]
    seconds: float            # wall time spent on this story so far
    latents: Optional[torch.Tensor] = None
    batch_stories: int = 1    # stories in the DiT batch that sampled this one


@dataclass
class BatchReport:
    """What one rank did in this run."""

    rendered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)   # this run's manifest entries (ok and failed)
    interrupted: bool = False


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _error_text(e: BaseException) -> str:
    if _is_oom(e):
        return f"out of memory ({type(e).__name__}): lower --max-batch or the story's events; {e}"
    return str(e) if isinstance(e, AudioStoryError) else f"{type(e).__name__}: {e}"


class BatchRunner:
    """Renders this rank's stories with one loaded :class:`AudioStoryPipeline`.

    ``stop()`` is polled between stories and inside every token/step loop (via :class:`Hooks`); when it
    returns True the story in flight is abandoned (nothing of it is written) and :meth:`run` returns
    with ``interrupted=True``. ``on_story(done, total, story_id)`` reports progress over stories.
    """

    def __init__(self, pipe, out_dir: Union[str, Path], *, rank: int = 0, world_size: int = 1,
                 max_batch: int = 1, stop: Optional[Callable[[], bool]] = None,
                 on_story: Optional[Callable[[int, int, str], None]] = None,
                 step_hook: Optional[Callable[[str, int, int], None]] = None):
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        self.pipe, self.out_dir = pipe, Path(out_dir)
        self.rank, self.world_size, self.max_batch = rank, world_size, max_batch
        self.stop = stop or (lambda: False)
        self.on_story = on_story or (lambda done, total, sid: None)
        self.hooks = Hooks(progress=step_hook, interrupt=self.stop)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_log = ManifestShard(self.out_dir, rank)

    # ------------------------------------------------------------------ driver
    def run(self, jobs: list[StoryJob]) -> BatchReport:
        """Render every story of ``jobs`` that belongs to this rank and is not complete yet."""
        mine = shard(jobs, self.rank, self.world_size)
        previous = read_entries(self.out_dir)
        report = BatchReport()
        pending = []
        for j in mine:
            if is_complete(j, previous.get(j.id), self.out_dir):
                report.skipped.append(j.id)
            else:
                pending.append(j)
        self._done, self._total = len(report.skipped), len(mine)
        self.on_story(self._done, self._total, "")
        groups: dict[tuple, list[StoryJob]] = {}
        for j in pending:
            groups.setdefault(j.sampling_key, []).append(j)
        try:
            for group in groups.values():
                for i in range(0, len(group), self.max_batch):
                    if self.stop():
                        raise GenerationInterrupted("interrupted by the user")
                    self._render_chunk(group[i:i + self.max_batch], report)
        except GenerationInterrupted:
            report.interrupted = True
        return report

    def _render_chunk(self, chunk: list[StoryJob], report: BatchReport) -> None:
        if len(chunk) == 1:
            self._render_alone(chunk[0], report)
            return
        ready = []
        for job in chunk:
            t0 = time.perf_counter()
            try:
                ready.append(self._prepare(job, t0))
            except GenerationInterrupted:
                raise
            except Exception as e:   # a bad plan or OOM fails this story only
                self._fail(job, "plan", e, time.perf_counter() - t0, report)
        if not ready:
            return
        self._sample(ready, report)
        for p in ready:
            if p.latents is None:
                continue
            t0 = time.perf_counter()
            try:
                self._finish(p, t0, report)
            except GenerationInterrupted:
                raise
            except Exception as e:
                self._fail(p.job, "decode", e, p.seconds + time.perf_counter() - t0, report)

    # ------------------------------------------------------------------ one story: exactly generate()
    def _render_alone(self, job: StoryJob, report: BatchReport) -> None:
        from ..stages.grammar import lead_phrase
        from ..stages.plan import StoryPlan

        s, t0 = job.settings, time.perf_counter()
        try:
            res = self.pipe.generate(job.instruction, job.duration or 0.0,
                                     plan=StoryPlan.from_dict(job.plan) if job.plan is not None else None,
                                     **s.render_kwargs(), max_new_tokens=s.max_new_tokens,
                                     lead=lead_phrase(s.lead_phrase, s.seed), hooks=self.hooks)
            self._write(job, res.plan, res.audio, res.sample_rate, res.problems, t0, 0.0, 1, report)
        except GenerationInterrupted:
            raise
        except Exception as e:   # a bad plan or OOM fails this story only
            self._fail(job, "render", e, time.perf_counter() - t0, report)

    # ------------------------------------------------------------------ several stories, one DiT batch
    def _prepare(self, job: StoryJob, t0: float) -> _Prepared:
        """Plan and event tokens with the checks of :meth:`AudioStoryPipeline.generate`."""
        from ..stages.grammar import lead_phrase
        from ..stages.plan import StoryPlan
        from ..validation import total_mismatch

        pipe, s = self.pipe, job.settings
        if job.plan is not None:
            story = StoryPlan.from_dict(job.plan)
            source = story
        else:
            result = pipe.plan(job.instruction, job.duration, s.max_new_tokens, lead_phrase(s.lead_phrase, s.seed),
                               self.hooks)
            story, source = result.plan, result
        problems = list(story.problems) + pipe.check_plan(story, s.crossfade)
        problems += total_mismatch(story.durations, job.duration or story.total_duration, s.crossfade)
        toks = pipe.tokens(source, self.hooks)
        return _Prepared(job, story, toks, problems, time.perf_counter() - t0)

    def _sample(self, ready: list[_Prepared], report: BatchReport) -> None:
        t0 = time.perf_counter()
        try:
            if len(ready) == 1:
                self._sample_one(ready[0])
            else:
                self._sample_together(ready)
        except GenerationInterrupted:
            raise
        except Exception as e:
            if len(ready) > 1 and _is_oom(e):   # too big together: each story alone
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for p in ready:
                    self._sample([p], report)
                return
            for p in ready:
                self._fail(p.job, "sample", e, p.seconds + (time.perf_counter() - t0) / len(ready), report)
            return
        share = (time.perf_counter() - t0) / len(ready)
        for p in ready:
            p.seconds += share
            p.batch_stories = len(ready)

    def _sample_one(self, p: _Prepared) -> None:
        s = p.job.settings
        p.latents = self.pipe.sample(p.tokens, crossfade=s.crossfade, steps=s.steps, guidance=s.guidance,
                                     noise=s.noise, seed=s.seed, sampler=s.sampler, hooks=self.hooks)

    def _sample_together(self, ready: list[_Prepared]) -> None:
        """One DiT batch for several stories: events concatenated, each story with its own noise."""
        from ..stages.event_tokens import clip_seconds
        from ..stages.sampling import make_noise, sample_latents

        pipe, s0 = self.pipe, ready[0].job.settings
        dit = pipe.models.dit
        t_len = dit.config.audio_seq_len
        tokens, seconds, noise, sizes = [], [], [], []
        for p in ready:
            s = p.job.settings
            tokens.append(p.tokens.fused)
            seconds += clip_seconds(p.tokens.durations, s.crossfade)
            noise.append(make_noise(s.noise, p.tokens.fused.shape[0], t_len, s.seed))
            sizes.append(p.tokens.fused.shape[0])
        pipe._place("sample")
        lat = sample_latents(dit, torch.cat(tokens), pipe.models.null_embedding, seconds, steps=s0.steps,
                             guidance=s0.guidance, sampler=s0.sampler, initial_noise=torch.cat(noise),
                             hooks=self.hooks, compile=pipe.perf.compile_dit,
                             attention_backend=pipe.perf.attention_backend)
        for p, part in zip(ready, lat.split(sizes)):
            p.latents = part

    def _finish(self, p: _Prepared, t0: float, report: BatchReport) -> None:
        s = p.job.settings
        audio, _, sr = self.pipe.decode(p.latents, p.plan.durations, crossfade=s.crossfade,
                                        sample_rate=s.sample_rate, crossfade_curve=s.crossfade_curve,
                                        hooks=self.hooks)
        self._write(p.job, p.plan, audio, sr, p.problems, t0, p.seconds, p.batch_stories, report)

    def _write(self, job: StoryJob, plan, audio: torch.Tensor, sr: int, problems: list[str], t0: float,
               earlier: float, batch_stories: int, report: BatchReport) -> None:
        """Plan, then wav (each atomically), then the manifest line: an entry always has both files."""
        from ..stages.audio import write_audio

        wav, plan_path = output_paths(self.out_dir, job.id)
        write_text_atomic(plan_path, plan.to_json())
        write_audio(wav, audio, sr, "wav")
        seconds = earlier + time.perf_counter() - t0
        entry = {"id": job.id, "line": job.line, "status": "ok", "seconds": round(seconds, 3),
                 "audio_seconds": round(audio.shape[-1] / sr, 3), "sample_rate": sr, "events": len(plan.events),
                 "batch_stories": batch_stories, "problems": list(problems), "sha256": sha256_file(wav),
                 "wav": wav.name, "plan": plan_path.name, "spec": job.spec, "rank": self.rank,
                 "finished_at": time.time()}
        self.shard_log.append(entry)
        report.rendered.append(job.id)
        report.entries.append(entry)
        self._advance(job.id)

    def _fail(self, job: StoryJob, stage: str, e: BaseException, seconds: float, report: BatchReport) -> None:
        if _is_oom(e) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        entry = {"id": job.id, "line": job.line, "status": "failed", "stage": stage, "error": _error_text(e),
                 "seconds": round(seconds, 3), "spec": job.spec, "rank": self.rank, "finished_at": time.time()}
        self.shard_log.append(entry)
        report.failed.append(job.id)
        report.entries.append(entry)
        self._advance(job.id)

    def _advance(self, story_id: str) -> None:
        self._done += 1
        self.on_story(self._done, self._total, story_id)

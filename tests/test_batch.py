"""Batch rendering: JSONL checks, resume, fault tolerance, Ctrl-C, and torchrun with two CPU ranks (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiostory_core.stages.audio import read_audio
from audiostory_core.settings import RenderSettings
from audiostory_core.tasks.batch import BatchRunner, merge_manifest, parse_stories, read_entries, read_stories, shard

REPO = Path(__file__).resolve().parents[1]
STORM = "A thunderstorm rolls over a quiet farm at night."   # the shared fixture's trained instructions
TRUCK = "A fire truck leaves the station with sirens blaring."
CAFE = "A busy morning in a small city cafe."


def _env() -> dict:
    """One thread per process (2 shared cores); AUDIOSTORY_CACHE comes from conftest (a temp folder)."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _shard_lines(out: Path) -> list[dict]:
    return [json.loads(l) for f in sorted(out.glob("manifest.rank*.jsonl")) for l in f.read_text().splitlines()]


def _reference(pipe, story: dict, defaults: dict):
    """What a single ``generate`` renders for this line (the same settings and seed)."""
    from audiostory_core.stages.plan import StoryPlan

    s = {**defaults, **story}
    plan = StoryPlan.from_dict(s["plan"]) if "plan" in s else None
    return pipe.generate(s.get("instruction", ""), s.get("duration", 0.0), plan=plan, steps=s["steps"],
                         guidance=s.get("guidance", 4.0), seed=s.get("seed", 0), noise=s.get("noise", "seeded"),
                         sampler=s.get("sampler", "euler"), sample_rate=s.get("sample_rate", 32000),
                         max_new_tokens=1600)


# ---------------------------------------------------------------------------------------------- parsing
def test_every_line_is_checked_up_front_with_its_line_number(tmp_path):
    plan = {"instruction": "x", "reasoning": "", "events": [{"caption": "rain", "duration": 3.0}]}
    (tmp_path / "edited.json").write_text(json.dumps(plan))
    lines = [
        json.dumps({"id": "a", "instruction": STORM, "duration": 12, "seed": 5, "sampler": "heun"}),
        "",
        "# a comment",
        '{"id": "b", "instruction": "x", "duration": }',
        json.dumps({"id": "../evil", "instruction": "x", "duration": 3}),
        json.dumps({"id": "c", "instruction": "x", "durration": 3}),
        json.dumps({"id": "d", "instruction": "x"}),
        json.dumps({"id": "e", "instruction": "x", "duration": 3, "sampler": "ddim"}),
        json.dumps({"id": "f", "plan": "edited.json"}),
        json.dumps({"id": "A", "instruction": "x", "duration": 3}),
        json.dumps({"id": "g", "plan": {"events": []}}),
        json.dumps({"id": "h", "instruction": "x", "duration": 3, "steps": 0}),
    ]
    parsed = parse_stories(lines, RenderSettings(steps=7), tmp_path)
    assert [j.id for j in parsed.jobs] == ["a", "f"]       # line 1 keeps its id; line 10 ("A") fails alone
    f = parsed.jobs[1]
    assert f.plan == plan and f.line == 9 and f.settings.steps == 7
    errors = {e.line: e.error for e in parsed.errors}
    assert sorted(errors) == [4, 5, 6, 7, 8, 10, 11, 12]
    assert "not valid JSON" in errors[4]
    assert "'id' must be" in errors[5]
    assert "unknown key(s) ['durration']" in errors[6]
    assert "'duration'" in errors[7] and "missing" in errors[7]
    assert "'sampler'" in errors[8] and "must be one of" in errors[8]
    assert "duplicate id 'A': line 1 already uses it" in errors[10]
    assert "events" in errors[11]
    assert "'steps'" in errors[12]


def test_per_line_settings_override_the_defaults_and_change_the_spec():
    parsed = parse_stories([json.dumps({"id": "a", "instruction": STORM, "duration": 12, "seed": 5}),
                            json.dumps({"id": "b", "instruction": STORM, "duration": 12})],
                           RenderSettings(seed=1, guidance=3.0))
    a, b = parsed.jobs
    assert (a.settings.seed, b.settings.seed, a.settings.guidance) == (5, 1, 3.0)
    assert a.spec != b.spec and a.sampling_key == b.sampling_key


def test_shards_split_every_story_once_in_the_same_way():
    jobs = parse_stories([json.dumps({"id": f"s{i}", "instruction": "x", "duration": 3}) for i in range(7)]).jobs
    parts = [shard(jobs, r, 3) for r in range(3)]
    assert [[j.id for j in p] for p in parts] == [["s0", "s3", "s6"], ["s1", "s4"], ["s2", "s5"]]
    assert shard(jobs, 0, 1) == jobs


# ---------------------------------------------------------------------------------------------- in-process
def test_resume_skips_complete_stories_and_renders_changed_or_damaged_ones(shared_pipeline, tmp_path):
    stories = [{"id": "storm", "instruction": STORM, "duration": 12.0},
               {"id": "truck", "instruction": TRUCK, "duration": 7.5},
               {"id": "toolong", "plan": {"instruction": "x", "reasoning": "",
                                          "events": [{"caption": "rain", "duration": 60.0}]}}]
    f = _write_jsonl(tmp_path / "s.jsonl", stories)
    out = tmp_path / "out"

    def run():
        parsed = parse_stories(f.read_text().splitlines(), RenderSettings(steps=2))
        report = BatchRunner(shared_pipeline, out, max_batch=2).run(parsed.jobs)
        return report, merge_manifest(out, parsed, report.entries)

    report, rows = run()
    assert report.rendered == ["storm", "truck"] and report.failed == ["toolong"]
    bad = rows[2]
    assert bad["status"] == "failed" and bad["line"] == 3 and "longer than one clip" in bad["error"]

    report, _ = run()                      # nothing new, the failed story is tried again
    assert report.rendered == [] and sorted(report.skipped) == ["storm", "truck"] and report.failed == ["toolong"]

    wav = out / "truck.wav"
    wav.write_bytes(wav.read_bytes()[:-4] + b"\0\0\0\0")       # damaged output: hash mismatch
    stories[0]["seed"] = 9                                      # changed settings: another story
    _write_jsonl(f, stories)
    report, rows = run()
    assert sorted(report.rendered) == ["storm", "truck"]
    assert read_entries(out)["storm"]["spec"] == parse_stories(f.read_text().splitlines(),
                                                               RenderSettings(steps=2)).jobs[0].spec


def test_the_default_batch_equals_the_reference_batch(shared_pipeline, tmp_path):
    """Batches of stories under the default fast paths (cross-story sampling) render what ``--reference``
    renders one story at a time: identical plans, audio within float rounding."""
    from audiostory_core.pipeline import AudioStoryPipeline

    f = _write_jsonl(tmp_path / "s.jsonl", [{"id": "storm", "instruction": STORM, "duration": 12.0, "seed": 1},
                                            {"id": "truck", "instruction": TRUCK, "duration": 7.5}])
    jobs = parse_stories(f.read_text().splitlines(), RenderSettings(steps=4)).jobs
    official = AudioStoryPipeline(shared_pipeline.models, reference=True)
    ref = BatchRunner(official, tmp_path / "ref", max_batch=1).run(jobs)
    fast = BatchRunner(shared_pipeline, tmp_path / "fast", max_batch=2).run(jobs)
    assert ref.rendered == fast.rendered == ["storm", "truck"]
    assert {e["batch_stories"] for e in fast.entries} == {2}
    for sid in ("storm", "truck"):
        assert (tmp_path / "fast" / f"{sid}.plan.json").read_text() == \
            (tmp_path / "ref" / f"{sid}.plan.json").read_text()
        a, _ = read_audio(tmp_path / "fast" / f"{sid}.wav")
        b, _ = read_audio(tmp_path / "ref" / f"{sid}.wav")
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4, sid


def test_an_out_of_memory_story_is_recorded_and_a_batch_too_big_together_splits(shared_pipeline, tmp_path,
                                                                                monkeypatch):
    import audiostory_core.stages.sampling as sampling

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")

    monkeypatch.setattr(sampling, "sample_latents", oom)   # the cross-story batch path only
    jobs = parse_stories([json.dumps({"id": "storm", "instruction": STORM, "duration": 12.0}),
                          json.dumps({"id": "truck", "instruction": TRUCK, "duration": 7.5})],
                         RenderSettings(steps=2)).jobs
    report = BatchRunner(shared_pipeline, tmp_path / "a", max_batch=2).run(jobs)
    assert report.rendered == ["storm", "truck"] and not report.failed     # each story alone instead

    real = shared_pipeline.sample

    def sample(tokens, **kw):
        if tokens.fused.shape[0] == 2:     # the truck story (2 events) does not fit
            oom()
        return real(tokens, **kw)

    monkeypatch.setattr(shared_pipeline, "sample", sample)
    report = BatchRunner(shared_pipeline, tmp_path / "b").run(jobs)
    assert report.rendered == ["storm"] and report.failed == ["truck"]
    entry = read_entries(tmp_path / "b")["truck"]
    assert entry["stage"] == "render" and entry["error"].startswith("out of memory")


# ---------------------------------------------------------------------------------------------- processes
def test_ctrl_c_stops_after_the_current_step_and_a_rerun_resumes(shared_root, tmp_path):
    stories = [{"id": f"s{i}", "instruction": ins, "duration": d, "seed": i}
               for i, (ins, d) in enumerate([(STORM, 12.0), (TRUCK, 7.5), (CAFE, 14.0), (STORM, 12.0)])]
    f = _write_jsonl(tmp_path / "s.jsonl", stories)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "audiostory_core", "batch", "--models", str(shared_root), "--stories", str(f),
           "--out-dir", str(out), "--steps", "30", "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "manifest.rank0.jsonl"
    deadline = time.time() + 240
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)         # during the second story
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "stopping after the current step" in err and "run the same command again to resume" in err
    done = {e["id"]: e for e in _shard_lines(out)}
    assert 1 <= len(done) < 4, "the interrupt came too late to test anything"
    assert {p.name for p in out.iterdir()} == ({"manifest.jsonl", "manifest.rank0.jsonl"}
                                               | {f"{i}.wav" for i in done} | {f"{i}.plan.json" for i in done})
    rows = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * len(done) + ["pending"] * (4 - len(done))
    before = {i: ((out / f"{i}.wav").stat().st_mtime_ns, (out / f"{i}.wav").read_bytes()) for i in done}

    rerun = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    ids = [e["id"] for e in _shard_lines(out)]
    assert sorted(ids) == ["s0", "s1", "s2", "s3"]             # every story rendered exactly once
    for i, (mtime, data) in before.items():
        assert (out / f"{i}.wav").stat().st_mtime_ns == mtime and (out / f"{i}.wav").read_bytes() == data
    assert f"{4 - len(done)} rendered, {len(done)} already complete" in rerun.stderr


@pytest.fixture(scope="module")
def torchrun_stories(tmp_path_factory, shared_root):
    """Six lines over the fixture's trained instructions: one malformed, one edited plan, two samplers."""
    from audiostory_core.pipeline import AudioStoryPipeline

    pipe = AudioStoryPipeline.from_pretrained(shared_root, device="cpu", dtype="fp32")
    edited = json.loads(pipe.plan(TRUCK, 7.5).plan.to_json())
    edited["events"][0]["caption"] = "a bell rings in the fire station"
    stories = [{"id": "storm", "instruction": STORM, "duration": 12.0, "seed": 1},
               {"id": "truck", "instruction": TRUCK, "duration": 7.5, "noise": "reference"},
               {"id": "cafe", "instruction": CAFE, "duration": 14.0, "seed": 7},
               '{"id": "broken", "instruction": "A busy morning in a small city cafe.", "duration": }',
               {"id": "storm-hifi", "instruction": STORM, "duration": 12.0, "seed": 2, "sampler": "dpmpp",
                "sample_rate": 44100},
               {"id": "truck-edited", "plan": edited, "seed": 3}]
    path = _write_jsonl(tmp_path_factory.mktemp("batch") / "stories.jsonl", stories)
    return path, [s for s in stories if isinstance(s, dict)], pipe


def _torchrun(root: Path, stories: Path, out: Path, max_batch: int) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "audiostory_core", "batch",
           "--models", str(root), "--stories", str(stories), "--out-dir", str(out), "--steps", "6",
           "--max-batch", str(max_batch), "--quiet"]
    return subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("max_batch", [1, 3], ids=["one-story-per-batch", "cross-story-batches"])
def test_torchrun_two_cpu_ranks_render_like_single_generate_and_resume(shared_root, torchrun_stories, tmp_path,
                                                                       max_batch):
    path, stories, pipe = torchrun_stories
    out = tmp_path / "out"
    run = _torchrun(shared_root, path, out, max_batch)
    assert run.returncode != 0, "a rejected line must make the batch exit non-zero"   # rank 0 exits 3
    assert "line 4: not valid JSON" in run.stderr
    rows = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in rows] == [(1, "ok"), (2, "ok"), (3, "ok"), (4, "failed"),
                                                        (5, "ok"), (6, "ok")]
    assert "not valid JSON" in rows[3]["error"]
    assert {r["rank"] for r in rows if r["status"] == "ok"} == {0, 1}
    together = {r["id"]: r["batch_stories"] for r in rows if r["status"] == "ok"}   # rank 0: 3 euler stories
    assert together == ({"storm": 3, "cafe": 3, "truck-edited": 3, "truck": 1, "storm-hifi": 1} if max_batch == 3
                        else dict.fromkeys(together, 1))
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(f"{s['id']}.wav" for s in stories)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the ranks ran with OMP_NUM_THREADS=1: same kernels, same rounding
    try:
        for s in stories:
            ref = _reference(pipe, s, {"steps": 6})
            assert (out / f"{s['id']}.plan.json").read_text() == ref.plan.to_json(), s["id"]
            assert next(r for r in rows if r["id"] == s["id"])["problems"] == ref.problems
            audio, sr = read_audio(out / f"{s['id']}.wav")
            assert sr == ref.sample_rate and audio.shape == ref.audio.shape
            if max_batch == 1:
                assert torch.equal(audio, ref.audio.float()), s["id"]
            else:
                assert (audio - ref.audio).abs().max().item() <= 1e-4, s["id"]
    finally:
        torch.set_num_threads(threads)

    if max_batch == 1:
        return   # the rerun is checked once, below
    logs = {p.name: p.read_text() for p in out.glob("manifest.rank*.jsonl")}
    wavs = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    again = _torchrun(shared_root, path, out, max_batch)
    assert "rank 0: 0 rendered, 3 already complete" in again.stderr
    assert "rank 1: 0 rendered, 2 already complete" in again.stderr
    assert {p.name: p.read_text() for p in out.glob("manifest.rank*.jsonl")} == logs
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")} == wavs


def test_torchrun_environment_is_read_and_checked():
    from audiostory_core.cli.batch import rank_device, rank_info
    from audiostory_core.errors import InputError

    assert rank_info({}) == rank_info({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    info = rank_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.distributed) == (3, 4, 1, True)
    with pytest.raises(InputError, match="inconsistent torchrun environment"):
        rank_info({"RANK": "4", "WORLD_SIZE": "4"})
    if not torch.cuda.is_available():
        assert rank_device("auto", info).type == "cpu"     # no CUDA: every rank on the CPU


def test_a_non_utf8_line_and_a_duplicate_id_fail_alone(tmp_path):
    """Read from a file as a user writes it: line 2 holds a Latin-1 byte, line 4 reuses line 1's id.
    Every other story is a job; the two bad lines are errors naming their problem."""
    stories = tmp_path / "stories.jsonl"
    stories.write_bytes(b"\n".join([
        json.dumps({"id": "rain", "instruction": "Rain on a roof.", "duration": 5}).encode(),
        b'{"id": "caf\xe9", "instruction": "A caf\xe9 at noon.", "duration": 5}',
        json.dumps({"id": "sea", "instruction": "Waves on a beach.", "duration": 5}).encode(),
        json.dumps({"id": "rain", "instruction": "Another rain.", "duration": 5}).encode(),
        json.dumps({"id": "wind", "instruction": "Wind in pines.", "duration": 5}).encode(),
    ]) + b"\n")
    parsed = read_stories(stories)
    assert [(j.id, j.line, j.instruction) for j in parsed.jobs] == [
        ("rain", 1, "Rain on a roof."), ("sea", 3, "Waves on a beach."), ("wind", 5, "Wind in pines.")]
    errors = {e.line: e.error for e in parsed.errors}
    assert sorted(errors) == [2, 4]
    assert "not UTF-8" in errors[2]
    assert "duplicate id 'rain': line 1 already uses it" in errors[4]


def test_a_huge_or_deeply_nested_line_fails_alone_without_being_parsed():
    lines = ["[" * 100000 + "]" * 100000,
             json.dumps({"id": "big", "instruction": "x" * (5 * 2 ** 20), "duration": 5}),
             json.dumps({"id": "ok", "instruction": "Rain on a roof.", "duration": 5})]
    parsed = parse_stories(lines)
    assert [j.id for j in parsed.jobs] == ["ok"]
    errors = {e.line: e.error for e in parsed.errors}
    assert "nests 100000 levels deep; the limit is 32" in errors[1]
    assert "the limit is 4194304 bytes" in errors[2]

"""Stems and cue sheets: the stems laid back at their offsets give the mixed story; labels and cues match the plan.

The re-mix here is written independently of ``crossfade_concat``: every stem is added into a silent
buffer at the offset ``stems.json`` gives, with the linear ramps of the official ``smooth_concatenate``
(``linspace`` 1->0 over the fade on the outgoing clip, 0->1 on the incoming one) applied by hand.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audiostory_core.cli.main import main
from audiostory_core.stages.audio import crossfade_concat
from audiostory_core.tasks.stems import story_stems, write_stems

INSTRUCTION = "A train arrives and leaves."


def remix(folder, index: dict) -> np.ndarray:
    """Lay the stems one after another at their offsets: where a stem starts before the story so far ends, the
    story fades out (1->0) and the stem fades in (0->1) over that overlap, read from the offsets alone."""
    events = index["events"]
    stems = [sf.read(str(folder / e["file"]), dtype="float32", always_2d=True)[0].T.astype(np.float64)
             for e in events]
    out = np.zeros((stems[0].shape[0], 0))
    for e, s in zip(events, stems):
        start, overlap = e["offset"], out.shape[1] - e["offset"]
        out = np.concatenate([out, np.zeros((out.shape[0], start + s.shape[1] - out.shape[1]))], axis=1)
        s = s.copy()
        if overlap > 0:
            out[:, start:start + overlap] *= np.linspace(1.0, 0.0, overlap)
            s[:, :overlap] *= np.linspace(0.0, 1.0, overlap)
        out[:, start:] += s
    return out


def read_audacity_labels(path) -> list[tuple[float, float, str]]:
    """Audacity's label format parsed by hand: start<TAB>end<TAB>label per line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        start, end, label = line.split("\t")
        rows.append((float(start), float(end), label))
    return rows


def test_cli_stems_remix_to_the_story_and_cues_match_the_plan(tiny_root, tmp_path):
    webvtt = pytest.importorskip("webvtt", reason="pip install webvtt-py (requirements-standalone.txt)")
    out, dump, stems = tmp_path / "story.wav", tmp_path / "dump", tmp_path / "stems"
    assert main(["generate", "--models", str(tiny_root), "--instruction", INSTRUCTION, "--duration", "10",
                 "--out", str(out), "--steps", "3", "--dump", str(dump), "--stems", str(stems), "--quiet"]) == 0
    plan = json.loads((dump / "plan.json").read_text())
    index = json.loads((stems / "stems.json").read_text())
    story, sr = sf.read(str(out), dtype="float32", always_2d=True)
    assert index["sample_rate"] == sr == 32000 and len(index["events"]) == len(plan["events"]) == 3

    mixed = remix(stems, index)
    assert mixed.shape == story.T.shape
    np.testing.assert_allclose(mixed, story.T, atol=1e-5)

    # each cue spans its plan event: starts at the sum of the earlier durations, lasts its duration
    starts = np.cumsum([0.0] + [e["duration"] for e in plan["events"]])
    captions = [e["caption"] for e in plan["events"]]
    labels = read_audacity_labels(stems / "labels.txt")
    assert [c for _, _, c in labels] == captions
    np.testing.assert_allclose([s for s, _, _ in labels], starts[:-1], atol=1 / sr)
    np.testing.assert_allclose([e for _, e, _ in labels], starts[1:], atol=1 / sr)
    cues = webvtt.read(str(stems / "cues.vtt"))
    assert [c.text for c in cues] == captions
    np.testing.assert_allclose([_seconds(c.start) for c in cues], starts[:-1], atol=1e-3)
    np.testing.assert_allclose([_seconds(c.end) for c in cues], starts[1:], atol=1e-3)
    # the file names carry the offsets too
    assert [e["file"] for e in index["events"]] == [f"event{i + 1:02d}_at_{s:.3f}s.wav"
                                                    for i, s in enumerate(starts[:-1])]


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_offsets_follow_the_hard_join_of_a_clip_shorter_than_the_fade(tmp_path):
    """A 1 s middle clip under a 2 s fade is joined without overlap, as ``crossfade_concat`` does."""
    sr, fade = 100, 2.0
    torch.manual_seed(0)
    clips = [torch.randn(2, 500), torch.randn(2, 100), torch.randn(2, 400)]
    write_stems(tmp_path, clips, ["a", "b", "c"], sr, fade)
    index = json.loads((tmp_path / "stems.json").read_text())
    # b starts where a ends (hard join); c overlaps the last 2 s (200 samples) of a + b
    assert [e["offset"] for e in index["events"]] == [0, 500, 400]
    np.testing.assert_allclose(remix(tmp_path, index), crossfade_concat(clips, sr, fade).numpy(), atol=1e-6)


def test_dubbing_cues_are_on_the_video_clock():
    """``origin`` (the video's first-frame time) shifts every cue; the offsets in samples do not move."""
    base = story_stems([300, 300, 200], ["x", "y", "z"], 100, 1.0)
    shifted = story_stems([300, 300, 200], ["x", "y", "z"], 100, 1.0, origin=1.5)
    assert [s.offset for s in shifted] == [s.offset for s in base] == [0, 200, 400]
    assert [(s.start, s.end) for s in shifted] == [(1.5, 3.5), (3.5, 5.5), (5.5, 7.5)]


def test_captions_are_escaped_and_kept_on_one_line(tmp_path):
    webvtt = pytest.importorskip("webvtt", reason="pip install webvtt-py (requirements-standalone.txt)")
    caps = ["rain <heavy> & wind\non the roof", "a\tdoor --> slams"]
    write_stems(tmp_path, [torch.zeros(1, 300), torch.zeros(1, 300)], caps, 100, 1.0)
    assert [c.text for c in webvtt.read(str(tmp_path / "cues.vtt"))] == [
        "rain &lt;heavy&gt; &amp; wind on the roof", "a door --&gt; slams"]
    assert [c for _, _, c in read_audacity_labels(tmp_path / "labels.txt")] == [
        "rain <heavy> & wind on the roof", "a door --> slams"]


def test_a_failed_stem_write_leaves_no_partial_set(tmp_path):
    clips = [torch.zeros(1, 300), torch.tensor([[float("nan")] * 300])]
    with pytest.raises(Exception, match="non-finite"):
        write_stems(tmp_path, clips, ["ok", "broken"], 100, 1.0)
    assert list(tmp_path.iterdir()) == []


def test_stems_folder_that_is_a_file_is_refused_before_any_work(tiny_root, tmp_path, capsys):
    blocker = tmp_path / "stems"
    blocker.write_text("not a folder")
    out = tmp_path / "story.wav"
    assert main(["generate", "--models", str(tiny_root), "--instruction", INSTRUCTION, "--duration", "10",
                 "--out", str(out), "--stems", str(blocker), "--quiet"]) == 2
    assert "--stems" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("n, orig, target", [(132300, 44100, 32000), (44101, 44100, 32000), (7, 44100, 48000),
                                             (1000, 32000, 32000)])
def test_clip_lengths_the_save_node_cuts_are_the_lengths_resample_gives(n, orig, target):
    from audiostory_core.stages.audio import resample, resampled_length

    assert resampled_length(n, orig, target) == resample(torch.zeros(1, n), orig, target).shape[-1]

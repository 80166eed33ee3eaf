"""The per-event payloads the Timeline widget draws (nodes/peaks.py): bounded, and the values a hand-made
wave has (expected numbers written here, not computed by the module)."""
from __future__ import annotations

import json

import torch

from nodes.peaks import PEAK_PAIRS, PEAKS_KEY, SCORES_KEY, clip_peaks, peaks_ui, scores_ui


def test_peaks_are_each_buckets_min_and_max_over_all_channels():
    wave = torch.tensor([[0.0, 0.5, -0.25, 0.0], [0.1, 0.0, 0.0, -0.75]])
    assert clip_peaks(wave, pairs=2) == [0.0, 0.5, -0.75, 0.0]
    assert clip_peaks(wave[0], pairs=4) == [0.0, 0.0, 0.5, 0.5, -0.25, -0.25, 0.0, 0.0]
    assert clip_peaks(wave, pairs=10) == clip_peaks(wave, pairs=4)           # never more pairs than samples


def test_decode_payload_is_bounded_and_covers_each_event_without_its_tail():
    sr = 100
    loud_tail = torch.zeros(1, 700)          # 4 s event + 3 s crossfade tail: only the tail is loud
    loud_tail[:, 400:] = 0.9
    quiet = torch.full((1, 500), 0.2)
    ui = peaks_ui(["a", "b"], [4.0, 5.0], [loud_tail, quiet], sr)
    (payload,) = ui[PEAKS_KEY]
    assert payload["events"] == [["a", 4.0], ["b", 5.0]]
    assert [len(p) for p in payload["peaks"]] == [2 * PEAK_PAIRS, 2 * PEAK_PAIRS]
    assert max(payload["peaks"][0]) == 0.0 and set(payload["peaks"][1]) == {0.2}
    long = torch.randn(2, 30 * 44100)
    assert len(json.dumps(peaks_ui(["x"] * 100, [30.0] * 100, [long] * 100, 44100))) < 2_000_000


def test_scores_payload():
    ui = scores_ui(["a", "b"], [4.0, 5.0], [0.123456, -0.5], 0.25)
    assert ui[SCORES_KEY] == [{"events": [["a", 4.0], ["b", 5.0]], "scores": [0.1235, -0.5], "story": 0.25}]

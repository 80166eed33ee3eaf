"""The AudioStory Timeline in the real ComfyUI frontend (headless Chromium, Playwright): every gesture
changes exactly what it shows, and what it shows is what ``/prompt`` receives.

The editing tests' graph is Timeline -> PreviewAny (core), so a run needs no model. Expected values are
measured in the page (the block's pixel width, the track's pixels per second) or written here by hand (the
0.1 s snap, the caption limit message of ``validation.py``). The last test runs the shipped "Timeline"
template on the tiny checkpoint (plus a Score node): waveforms and CLAP scores in the blocks, the playhead,
click-to-play, and a re-roll of the selected block, observed through the server's files, its history and a
DiT spy (``tests/dit_spy.py``), none of which the widget computes. Screenshots go to ``$AUDIOSTORY_ARTIFACTS``.
"""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from test_browser import BUILD, ROOT, wb
from test_browser import artifacts, browser_page, hub, server  # noqa: F401  (module fixtures: one server, one page)

PLAN = {"instruction": "A quiet farm at night.", "reasoning": "",
        "events": [{"caption": "crickets chirp softly", "duration": 4.0},
                   {"caption": "a dog barks in the distance", "duration": 5.0},
                   {"caption": "an owl hoots", "duration": 3.0}]}

SETUP_JS = """(plan) => {
  const g = window.app.graph;
  g.clear();
  const t = LiteGraph.createNode("AudioStoryTimeline");
  t.pos = [40, 60];
  g.add(t);
  t.setSize([1000, 300]);
  const p = LiteGraph.createNode("PreviewAny");
  p.pos = [1100, 60];
  g.add(p);
  t.connect(1, p, 0);
  t.widgets.find(w => w.name === "plan_json").value = JSON.stringify(plan, null, 2);
  window.app.canvas.ds.scale = 1;
  window.app.canvas.ds.offset = [0, 0];
  window.app.canvas.setDirty(true, true);
  return t.id;
}"""
VALUE_JS = """(id) => JSON.parse(window.app.graph.getNodeById(id).widgets.find(w => w.name === "plan_json").value)"""
ERROR_JS = """(id) => window.app.graph.getNodeById(id).widgets.find(w => w.name === "plan_json")
    .timeline.errorEl.textContent"""
WIDGET_JS = """([id, name]) => window.app.graph.getNodeById(id).widgets.find(w => w.name === name).value"""


@pytest.fixture()
def timeline(browser_page):  # noqa: F811
    page = browser_page.page
    browser_page.close_dialogs()
    node = page.evaluate(SETUP_JS, PLAN)
    page.wait_for_selector(".as-tl-block[data-index='2']", timeout=30_000)
    last = None
    for _ in range(50):             # until the node's layout has settled (the blocks fit its width)
        page.wait_for_timeout(300)
        now = page.locator(".as-tl-track").get_attribute("data-px-per-second")
        if now == last:
            break
        last = now
    return page, node


def block(page, i: int):
    return page.locator(f".as-tl-block[data-index='{i}']")


def test_dragging_an_edge_by_measured_pixels_changes_the_duration(timeline, artifacts):  # noqa: F811
    page, node = timeline
    pps = float(page.locator(".as-tl-track").get_attribute("data-px-per-second"))
    width0 = block(page, 1).bounding_box()["width"]
    assert width0 == pytest.approx(5.0 * pps, abs=1.5)          # the block's width is its duration
    edge = block(page, 1).locator(".as-tl-edge").bounding_box()
    x, y = edge["x"] + edge["width"] / 2, edge["y"] + edge["height"] / 2
    dx = round(1.5 * pps) + 2                                     # 1.5 s and a bit: snaps to 1.5 s
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx / 2, y, steps=3)
    page.mouse.move(x + dx, y, steps=3)
    page.mouse.up()
    page.wait_for_timeout(300)
    expected = round(5.0 + round(dx / pps / 0.1) * 0.1, 3)
    assert expected == 6.5
    plan = page.evaluate(VALUE_JS, node)
    assert [e["duration"] for e in plan["events"]] == [4.0, 6.5, 3.0]
    pps = float(page.locator(".as-tl-track").get_attribute("data-px-per-second"))   # the view may rescale
    assert block(page, 1).bounding_box()["width"] == pytest.approx(6.5 * pps, abs=1.5)
    assert "total 13.5 s" in page.locator(".as-tl-total").inner_text()
    page.screenshot(path=str(artifacts / "timeline_drag.png"))


def test_a_caption_edit_lands_in_the_plan_that_prompt_receives(timeline, artifacts):  # noqa: F811
    page, node = timeline
    block(page, 0).dblclick()
    page.locator(".as-tl-edit").fill("rain on a tin roof")
    page.keyboard.press("Enter")
    with page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as req:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    sent = req.value.post_data_json["prompt"][str(node)]["inputs"]["plan_json"]
    assert [e["caption"] for e in json.loads(sent)["events"]] == [
        "rain on a tin roof", "a dog barks in the distance", "an owl hoots"]
    assert "1. rain on a tin roof" in block(page, 0).inner_text()
    page.screenshot(path=str(artifacts / "timeline_caption.png"))


def test_selection_by_click_and_shift_click_sets_the_reroll_events(timeline, browser_page):  # noqa: F811
    page, node = timeline
    since = browser_page.mark()
    block(page, 1).click()
    assert page.evaluate(WIDGET_JS, [node, "render_events"]) == "2"
    block(page, 2).click(modifiers=["Shift"])
    assert page.evaluate(WIDGET_JS, [node, "render_events"]) == "2,3"
    page.keyboard.press("ArrowLeft")        # keyboard: the selection moves to event 2 alone
    assert page.evaluate(WIDGET_JS, [node, "render_events"]) == "2"
    page.keyboard.press("Delete")           # Delete removes the selected event
    assert [e["caption"] for e in page.evaluate(VALUE_JS, node)["events"]] == ["crickets chirp softly",
                                                                               "an owl hoots"]
    assert not browser_page.about_pack(since), browser_page.about_pack(since)   # no console error, no 404


def test_a_limit_violation_shows_inline_and_prompt_refuses_it_with_the_same_message(timeline, artifacts):  # noqa: F811
    page, node = timeline
    block(page, 2).dblclick()
    page.locator(".as-tl-edit").fill("x" * 1001)
    page.keyboard.press("Enter")
    message = "events[2].caption has 1001 characters; the limit is 1000."
    try:
        page.wait_for_function(f"(m) => ({ERROR_JS})({node}) === m", arg=message, timeout=30_000)
    finally:
        page.screenshot(path=str(artifacts / "timeline_limit_error.png"))
    assert page.evaluate(ERROR_JS, node) == message
    assert "error" in block(page, 2).get_attribute("class")
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as resp:
        page.evaluate("() => window.app.queuePrompt(0, 1).catch(() => null)")
    body = resp.value.json()
    assert resp.value.status == 400
    details = [e.get("details", "") for e in body["node_errors"][str(node)]["errors"]]
    assert message in " ".join(details), details
    page.keyboard.press("Escape")


STEPS = 4                          # sampler steps in the run test (the DiT spy sees each one)
RUN_SETUP_JS = """([plan, steps]) => {
  const g = window.app.graph, by = (c) => g._nodes.filter((n) => n.comfyClass === c);
  const widget = (n, name) => n.widgets.find((w) => w.name === name);
  const t = by("AudioStoryTimeline")[0], decode = by("AudioStoryDecode")[0], tokens = by("AudioStoryEventTokens")[0];
  widget(t, "plan_json").value = JSON.stringify(plan, null, 2);
  widget(t, "render_events").value = "";
  for (const s of by("AudioStorySampler")) widget(s, "steps").value = steps;
  const score = LiteGraph.createNode("AudioStoryScore");
  score.pos = [t.pos[0], t.pos[1] + t.size[1] + 400];
  g.add(score);
  decode.connect(0, score, 0);
  tokens.connect(0, score, 1);
  const shown = LiteGraph.createNode("PreviewAny");
  shown.pos = [score.pos[0] + 400, score.pos[1]];
  g.add(shown);
  score.connect(0, shown, 0);
  window.app.canvas.ds.scale = 1;
  window.app.canvas.ds.offset = [40 - t.pos[0], 120 - t.pos[1]];
  window.app.canvas.setDirty(true, true);
  return {timeline: t.id, save: by("AudioStorySaveAudio")[0].id, score: score.id};
}"""
PLAYER_JS = """(id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === "audioUI").element"""
# Opaque-enough pixels of each block's waveform canvas (null: the block has none).
WAVE_PIXELS_JS = """() => Array.from(document.querySelectorAll('.as-tl-block')).map((b) => {
  const c = b.querySelector('canvas.as-tl-wave');
  if (!c) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 40) n++;
  return n;
})"""
# The playhead's x (px from the track's left edge) and the player's own time, read together.
HEAD_JS = """(id) => {
  const a = (%s)(id), head = document.querySelector('[data-testid=audiostory-playhead]');
  const track = document.querySelector('.as-tl-track').getBoundingClientRect();
  const r = head.getBoundingClientRect();
  return {x: r.left + r.width / 2 - track.left, t: a.currentTime, paused: a.paused, shown: r.height > 0};
}""" % PLAYER_JS


def _stems(server, run: int) -> list[np.ndarray]:  # noqa: F811
    """The clips the save node wrote as stems in run ``run`` (1-based counter), in event order."""
    import soundfile as sf

    (folder,) = (server.root / "output").rglob(f"timeline_{run:05}_stems")
    index = json.loads(next(folder.glob("*stems.json")).read_text())
    return [sf.read(str(folder / e["file"]), dtype="float32")[0] for e in index["events"]]


def _run_and_wait(page, server, run: int) -> None:  # noqa: F811
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    t0 = time.time()
    def busy() -> bool:
        queue = server.get("/queue")
        return bool(queue["queue_running"] or queue["queue_pending"])

    while busy() or not list((server.root / "output").rglob(f"timeline_{run:05}_stems/*stems.json")):
        assert time.time() - t0 < 900, f"run {run} did not finish in 900 s:\n{server.log.read_text()[-3000:]}"
        page.wait_for_timeout(1000)


def _score_table(server, score_id) -> str:  # noqa: F811
    history = server.get("/history")
    texts = [e["outputs"][str(score_id)]["text"][0] for e in history.values() if str(score_id) in e.get("outputs", {})]
    return texts[-1]


def test_after_a_run_blocks_show_waveforms_scores_a_playhead_and_a_click_rerolls_one_event(
        server, browser_page, artifacts):  # noqa: F811
    page = browser_page.page
    browser_page.close_dialogs()
    ui = json.loads((ROOT / "workflows" / BUILD.ui_file_name("audiostory_timeline")).read_text())
    since = browser_page.mark()
    wb.load_workflow(page, ui)
    browser_page.close_dialogs()
    ids = page.evaluate(RUN_SETUP_JS, [PLAN, STEPS])
    page.wait_for_selector(".as-tl-block[data-index='2']", timeout=30_000)
    assert page.evaluate(WAVE_PIXELS_JS) == [None, None, None]          # before a run: no waveform
    spy = page.evaluate("async () => (await fetch('/audiostory-test/dit-batches?reset=1')).json()")
    assert spy["installed"], spy

    # run 1: every event is rendered (3 events x 2 CFG rows per DiT call); every block draws its clip
    _run_and_wait(page, server, 1)
    assert page.evaluate("async () => (await fetch('/audiostory-test/dit-batches?reset=1')).json()")["batches"] \
        == [6] * STEPS
    page.wait_for_function(f"() => ({WAVE_PIXELS_JS})().every((n) => n !== null)", timeout=60_000)
    page.screenshot(path=str(artifacts / "timeline_waveforms.png"))
    pixels = page.evaluate(WAVE_PIXELS_JS)
    areas = page.evaluate("() => Array.from(document.querySelectorAll('canvas.as-tl-wave')).map(c => c.width * c.height)")
    assert all(n > 0.02 * a for n, a in zip(pixels, areas)), (pixels, areas)
    # each block's CLAP score is the Score node's table line for that event (its history on the server)
    table = _score_table(server, ids["score"])
    expected = [float(m) for m in re.findall(r"^\s*\d+\s+[\d.]+-[\d.]+\s+([+-]\d\.\d{3})", table, re.M)]
    shown = [float(page.locator(f".as-tl-block[data-index='{i}'] .as-tl-score").inner_text().split()[1])
             for i in range(3)]
    assert len(expected) == 3 and shown == pytest.approx(expected, abs=0.0015), (shown, table)

    # the playhead follows the save node's player while it plays
    page.wait_for_function(f"(id) => !!({PLAYER_JS})(id).currentSrc", arg=ids["save"], timeout=30_000)
    page.evaluate(f"async (id) => {{ const a = ({PLAYER_JS})(id); a.currentTime = 0; await a.play(); }}", ids["save"])
    page.wait_for_timeout(600)
    one = page.evaluate(HEAD_JS, ids["save"])
    page.wait_for_timeout(900)
    two = page.evaluate(HEAD_JS, ids["save"])
    page.evaluate(f"(id) => ({PLAYER_JS})(id).pause()", ids["save"])
    pps = float(page.locator(".as-tl-track").get_attribute("data-px-per-second"))
    assert one["shown"] and not one["paused"] and two["t"] > one["t"] > 0, (one, two)
    assert two["x"] > one["x"]
    for h in (one, two):            # where the player is: its currentTime on the ruler (one frame of slack)
        assert h["x"] == pytest.approx(h["t"] * pps, abs=0.1 * pps + 2), (h, pps)

    # a click on block 2 selects it for the re-roll and plays the story from its start (4.0 s)
    block(page, 1).click()
    assert page.evaluate(WIDGET_JS, [ids["timeline"], "render_events"]) == "2"
    page.wait_for_timeout(300)
    at = page.evaluate(HEAD_JS, ids["save"])
    page.screenshot(path=str(artifacts / "timeline_playing.png"))
    page.evaluate(f"(id) => ({PLAYER_JS})(id).pause()", ids["save"])
    assert not at["paused"] and 4.0 <= at["t"] < 5.0, at

    # run 2: only event 2 is rendered again (one event: 2 rows per DiT call); the other clips are the same
    _run_and_wait(page, server, 2)
    assert page.evaluate("async () => (await fetch('/audiostory-test/dit-batches')).json()")["batches"] \
        == [2] * STEPS
    first, second = _stems(server, 1), _stems(server, 2)
    assert len(first) == len(second) == 3
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[2], second[2])
    assert first[1].shape == second[1].shape and not np.array_equal(first[1], second[1])
    page.wait_for_function(f"() => ({WAVE_PIXELS_JS})().every((n) => n > 0)", timeout=60_000)
    page.screenshot(path=str(artifacts / "timeline_rerolled.png"))
    _after_a_reload_the_last_run_is_drawn_until_the_plan_changes(page, server, ids["timeline"], artifacts)
    assert not browser_page.about_pack(since), browser_page.about_pack(since)
    assert not [m for m in browser_page.console[since[0]:] if "pageerror" in m], browser_page.console[since[0]:]


SCORES_JS = """() => Array.from(document.querySelectorAll('.as-tl-block'))
  .map((b) => b.querySelector('.as-tl-score')?.textContent ?? null)"""


def _timeline_of(workflow: dict, node_id) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def _fresh_page_with(page, server, workflow) -> None:  # noqa: F811
    """Reload the page (this page's run results are gone with it) and load ``workflow`` as a file drop does."""
    wb.open_comfy(page, server.base)
    wb.load_workflow(page, workflow)
    page.wait_for_selector(".as-tl-block[data-index='2']", timeout=30_000)


def _after_a_reload_the_last_run_is_drawn_until_the_plan_changes(page, server, timeline_id, artifacts):  # noqa: F811
    """The run's waveforms and scores are saved with the workflow: after a page reload (the frontend restores the
    open workflow) and in a fresh page that loads the saved file they are drawn again; once the plan changes they
    are gone, and a reload of that workflow shows none."""
    pixels, scores = page.evaluate(WAVE_PIXELS_JS), page.evaluate(SCORES_JS)
    assert all(n > 0 for n in pixels) and all(scores), (pixels, scores)
    saved = page.evaluate("() => window.app.graph.serialize()")
    assert len(json.dumps(_timeline_of(saved, timeline_id)["properties"])) < 100_000     # bounded: 3 events here
    wb.open_comfy(page, server.base)            # a page reload: the frontend restores the open workflow
    page.wait_for_selector(".as-tl-block[data-index='2']", timeout=30_000)
    page.wait_for_function(f"() => ({WAVE_PIXELS_JS})().every((n) => n > 0)", timeout=30_000)
    assert page.evaluate(SCORES_JS) == scores
    page.screenshot(path=str(artifacts / "timeline_reloaded.png"))
    _fresh_page_with(page, server, saved)       # the saved workflow in a fresh page
    page.wait_for_function(f"() => ({WAVE_PIXELS_JS})().every((n) => n > 0)", timeout=30_000)
    assert page.evaluate(WAVE_PIXELS_JS) == pixels and page.evaluate(SCORES_JS) == scores
    # a plan change (event 3 lasts 3.5 s instead of 3.0 s): no block shows the old run, and the workflow no longer
    # carries it (a reload shows none, even for the blocks whose events are unchanged)
    page.evaluate("""(id) => {
      const w = window.app.graph.getNodeById(id).widgets.find((x) => x.name === "plan_json");
      const plan = JSON.parse(w.value);
      plan.events[2].duration = 3.5;
      w.value = JSON.stringify(plan, null, 2);
    }""", timeline_id)
    page.wait_for_function("() => document.querySelectorAll('.as-tl-block').length === 3")
    assert page.evaluate(WAVE_PIXELS_JS) == [None] * 3 and page.evaluate(SCORES_JS) == [None] * 3
    edited = page.evaluate("() => window.app.graph.serialize()")
    assert set(_timeline_of(edited, timeline_id)["properties"]) < set(_timeline_of(saved, timeline_id)["properties"])
    _fresh_page_with(page, server, edited)
    page.wait_for_timeout(1500)                 # the limits fetch and the first draw
    assert page.evaluate(WAVE_PIXELS_JS) == [None] * 3 and page.evaluate(SCORES_JS) == [None] * 3


def test_an_invalid_selection_is_refused_by_the_timeline_not_routed(server):  # noqa: F811
    """The /prompt hook hands only a valid selection on; a bad one stays on the Timeline, whose check refuses it."""
    api = json.loads((ROOT / "workflows" / "api" / "audiostory_timeline.json").read_text())
    tid = next(k for k, n in api.items() if n["class_type"] == "AudioStoryTimeline")
    api[tid]["inputs"]["plan_json"] = json.dumps(PLAN)
    api[tid]["inputs"]["render_events"] = "9"
    code, body = server.post("/prompt", {"prompt": api})
    assert code == 400, body
    details = " ".join(e.get("details", "") for e in body["node_errors"][tid]["errors"])
    assert "render_events" in details and "9" in details, body

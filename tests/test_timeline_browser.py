"""The AudioStory Timeline in the real ComfyUI frontend (headless Chromium, Playwright): every gesture
changes exactly what it shows, and what it shows is what ``/prompt`` receives.

The graph is Timeline -> PreviewAny (core), so a run needs no model. Expected values are measured in the
page (the block's pixel width, the track's pixels per second) or written here by hand (the 0.1 s snap,
the caption limit message of ``validation.py``). Screenshots go to ``$AUDIOSTORY_ARTIFACTS``.
"""
from __future__ import annotations

import json

import pytest

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

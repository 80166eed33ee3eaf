"""The pack as a user sees it: the real ComfyUI frontend in headless Chromium (Playwright, Debian's chromium).

A real ComfyUI (CPU, ``tests/comfy_server.py``) runs with this pack, the shared tiny checkpoint and the tiny
Whisper/VLM. Every shipped UI workflow is loaded onto the canvas as a file drop does
(``app.loadGraphData``): no missing-node/missing-model dialog, every widget holds the value of its API twin,
every title bar sits on the canvas (not under the top bar or the sidebar) in the opening view, text is
drawn at "fit view" in a 1920x1080 window, nothing the pack serves answers 404 and the console shows no
error about the pack. Then the text-to-long-audio workflow is run with the Run button and the save node
must show an audio player for the file it wrote. Screenshots go to ``$AUDIOSTORY_ARTIFACTS`` (else pytest's
tmp dir); the path is printed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

import comfy_server
from comfy_server import PACK
from conftest import need

ROOT = Path(__file__).resolve().parents[1]
wb = comfy_server.tool("workflow_browser")
BUILD = comfy_server.tool("build_workflows")
NAMES = sorted(BUILD.workflows())
CHROMIUM = os.environ.get("AUDIOSTORY_CHROMIUM", wb.CHROMIUM)
OPEN_WINDOW, FIT_WINDOW = BUILD.OPEN_VIEW, (1920, 1080)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    out = Path(os.environ.get("AUDIOSTORY_ARTIFACTS") or tmp_path_factory.mktemp("browser-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {out}")
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory, shared_root) -> Path:
    """The network, replaced: a Hugging Face cache pre-filled with tiny Whisper and VLM under their real repo ids
    (the server runs with HF_HUB_OFFLINE=1 on it)."""
    from hub_cache import fill_hub_cache
    from tiny_media_models import build_tiny_vlm, build_tiny_whisper

    tmp = tmp_path_factory.mktemp("hub")
    w = build_tiny_whisper(tmp / "whisper")
    v = build_tiny_vlm(tmp / "vlm", shared_root / "Qwen2.5-tiny-Instruct")
    fill_hub_cache(tmp / "hub", "openai/whisper-large-v3", {p.name: p for p in w.iterdir()})
    fill_hub_cache(tmp / "hub", "Qwen/Qwen2.5-VL-3B-Instruct", {p.name: p for p in v.iterdir()})
    return tmp / "hub"


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_root, hub):
    need(Path(CHROMIUM).is_file() or shutil.which(CHROMIUM) is not None, f"Chromium at {CHROMIUM}",
         "apt-get install -y chromium, or set AUDIOSTORY_CHROMIUM")
    need(importlib.util.find_spec("playwright") is not None, "Playwright's Python package", "pip install playwright")
    yield from comfy_server.serve(tmp_path_factory.mktemp("comfy-browser"), shared_root, wb.apply_settings,
                                  env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)},
                                  extra_nodes=[Path(__file__).with_name("dit_spy.py")])   # DiT calls, for the timeline test


class Page:
    """One browser page on the server, recording console errors and failed requests."""

    def __init__(self, page):
        self.page, self.console, self.failed = page, [], []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text} @ {m.location.get('url', '')}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def dialogs(self) -> list[str]:
        return self.page.evaluate("""() => Array.from(document.querySelectorAll('.p-dialog, [role=dialog]'))
            .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 300))""")

    def close_dialogs(self) -> None:
        """Escape, then the close (x) button of any dialog still open: the template browser of frontend
        1.35 ignores Escape, and a dialog left open would catch the next test's clicks."""
        self.page.keyboard.press("Escape")
        self.page.wait_for_timeout(300)
        for button in self.page.locator("[role=dialog] button:has(i.pi-times)").all():
            if button.is_visible():
                button.click()
        self.page.wait_for_timeout(300)

    def mark(self) -> tuple[int, int]:
        return len(self.console), len(self.failed)

    def about_pack(self, since: tuple[int, int] = (0, 0)) -> list[str]:
        """Console errors and failed requests (since ``mark()``) that name the pack or its files."""
        words = ("audiostory", PACK.lower())
        seen = self.console[since[0]:] + self.failed[since[1]:]
        return [m for m in seen if any(w in m.lower() for w in words)]


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = wb.launch(p, CHROMIUM)
        page = ctx.new_page()
        page.set_viewport_size({"width": OPEN_WINDOW[0], "height": OPEN_WINDOW[1]})
        pg = Page(page)
        wb.open_comfy(page, server.base)
        yield pg
        ctx.close()


def _visible_on_canvas(page, x: float, y: float) -> bool:
    return page.evaluate("([x, y]) => { const e = document.elementFromPoint(x, y); "
                         "return !!e && e === window.app.canvas.canvas; }", [x, y])


def outside_their_groups(state: dict) -> list[str]:
    """Titles of nodes (Notes aside) not drawn wholly inside one group, title bar included."""
    out = []
    for n in state["nodes"]:
        if n["type"] in BUILD.FRONTEND_ONLY_NODES:
            continue
        x0, y0, x1, y1 = n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]
        if not any(g[0] <= x0 and g[1] <= y0 and x1 <= g[0] + g[2] and y1 <= g[1] + g[3]
                   for g in (gr["bounding"] for gr in state["groups"])):
            out.append(n["title"])
    return out


def test_missing_node_dialog_is_detected(browser_page):
    """Control for the check below: an unknown node type does raise the frontend's dialog."""
    wf = json.loads((ROOT / "workflows" / BUILD.ui_file_name(NAMES[0])).read_text())
    wf["nodes"][0]["type"] = "AudioStoryNoSuchNode"
    wb.load_workflow(browser_page.page, wf)
    shown = browser_page.dialogs()
    browser_page.close_dialogs()
    assert shown and any("AudioStoryNoSuchNode" in d for d in shown), shown
    assert not browser_page.dialogs()


def test_wire_check_sees_wires_across_titles(browser_page):
    """Control for the wire check below: without its reroutes, "Text to long audio" draws the wires into
    the second row straight across the titles of "3 · Event tokens" and "4 · Sample"."""
    name = "audiostory_text_to_long_audio"
    wf = json.loads((ROOT / "workflows" / BUILD.ui_file_name(name)).read_text())
    assert wf["extra"].get("reroutes")
    for key in ("reroutes", "linkExtensions"):
        wf["extra"].pop(key)
    wb.load_workflow(browser_page.page, wf)
    crossed = {h["group"] for h in wb.wires_over_titles(browser_page.page)["hits"]}
    assert {"3 · Event tokens", "4 · Sample"} <= crossed, crossed


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_as_shipped(server, browser_page, artifacts, name):
    page = browser_page.page
    page.set_viewport_size({"width": OPEN_WINDOW[0], "height": OPEN_WINDOW[1]})
    ui = json.loads((ROOT / "workflows" / BUILD.ui_file_name(name)).read_text())
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    since = browser_page.mark()
    state = wb.load_workflow(page, ui)
    page.screenshot(path=str(artifacts / f"{name}_open.png"))
    dialogs = browser_page.dialogs()
    browser_page.close_dialogs()
    assert not dialogs, f"{name}: dialog after loading: {dialogs}"
    # the API twin is what the frontend's own "Export (API)" writes from the UI file, _meta.title included
    exported = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert exported == api, f"{name}: the API twin differs from the frontend's export"

    # every widget holds its API twin's value, and a combo value is one of its options
    by_id = {str(n["id"]): n for n in state["nodes"]}
    for key, node in api.items():
        shown = by_id[key]
        assert shown["type"] == node["class_type"] and not shown["has_errors"]
        widgets = {w["name"]: w for w in shown["widgets"]}
        for inp, value in node["inputs"].items():
            if isinstance(value, list):
                continue
            assert inp in widgets, f"{name}: node {key} ({shown['title']}) has no widget {inp}"
            assert widgets[inp]["value"] == value, \
                f"{name}: node {key} widget {inp} shows {widgets[inp]['value']!r}, expected {value!r}"
            if widgets[inp]["options"] is not None:
                assert value in widgets[inp]["options"], f"{name}: {inp}={value!r} is not offered"
    # titles as written, nothing clipped, every title bar on the canvas in the opening view
    ds = ui["extra"]["ds"]
    assert state["scale"] == pytest.approx(ds["scale"]) and state["offset"] == pytest.approx(ds["offset"])
    s, (ox, oy) = state["scale"], state["offset"]
    for n in state["nodes"]:
        want = next(u for u in ui["nodes"] if u["id"] == n["id"])
        assert n["title"] == want.get("title", n["title"])
        if n["type"] not in BUILD.FRONTEND_ONLY_NODES and n["type"] != "LoadVideo":   # its preview grows with the file
            assert n["size"][0] >= n["min_size"][0] - 0.5 and n["size"][1] >= n["min_size"][1] - 0.5, \
                f"{name}: {n['title']} is drawn {n['size']} but needs {n['min_size']}"
        x, y = (n["pos"][0] + ox) * s, (n["pos"][1] - 15 + oy) * s
        right = (n["pos"][0] + n["size"][0] + ox) * s
        for px in (x + 4, right - 4):
            assert 0 < px < OPEN_WINDOW[0] and 0 < y < OPEN_WINDOW[1], f"{name}: {n['title']} is off screen"
            assert _visible_on_canvas(page, px, y), f"{name}: the title of {n['title']} is covered at ({px}, {y})"
    for g in state["groups"]:
        gx, gy = (g["bounding"][0] + ox) * s, (g["bounding"][1] + 12 + oy) * s
        assert _visible_on_canvas(page, gx + 4, gy), f"{name}: group {g['title']} is covered"
    assert not outside_their_groups(state), f"{name}: outside their group: {outside_their_groups(state)}"
    # no wire over a group's title bar, as the frontend drew them (its own hit test on each drawn path)
    wires = wb.wires_over_titles(page)
    assert wires["drawn"] >= len(ui["links"]) and wires["sane"] == wires["drawn"], wires
    assert not wires["hits"], f"{name}: wires over group titles: {wires['hits']}"
    # as drawn (the frontend may grow a node to fit its widgets): no two nodes overlap
    rects = [(n["title"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in state["nodes"]]
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2], f"{name}: {a[0]} overlaps {b[0]}"
    # readable at fit view in a full-HD window: the frontend draws text above its low-quality threshold
    page.set_viewport_size({"width": FIT_WINDOW[0], "height": FIT_WINDOW[1]})
    page.wait_for_timeout(200)
    scale = wb.fit_view(page)
    page.screenshot(path=str(artifacts / f"{name}_fit_view.png"))
    assert scale > state["low_quality_threshold"], \
        f"{name}: fit view draws at {scale:.2f}, below the text threshold {state['low_quality_threshold']:.2f}"
    page.set_viewport_size({"width": OPEN_WINDOW[0], "height": OPEN_WINDOW[1]})
    assert not browser_page.about_pack(since), browser_page.about_pack(since)
    assert not [m for m in browser_page.console[since[0]:] if "pageerror" in m], browser_page.console[since[0]:]


def test_templates_show_readable_names_and_thumbnails(server, browser_page, artifacts):
    page = browser_page.page
    since = browser_page.mark()
    listed = page.evaluate("async () => (await (await fetch('/workflow_templates')).json())")
    assert sorted(listed[PACK]) == sorted(BUILD.ui_file_name(n)[:-5] for n in NAMES)
    for name in listed[PACK]:
        status = page.evaluate("async (u) => (await fetch(u)).status",
                               f"/api/workflow_templates/{PACK}/{name}.jpg")
        assert status == 200, f"{name}.jpg: {status}"
    # the template browser: the pack's cards in order, "Text to long audio" first, every title whole on its card
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(PACK, exact=True).first.click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts / "templates.png"))
    cards = page.evaluate("""(names) => {
        const fits = e => !!e && e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight;
        return Array.from(document.querySelectorAll('[role=dialog] h3'))
          .filter(h => names.includes(h.textContent.trim()) && h.offsetParent !== null)
          .map(h => ({title: h.textContent.trim(), title_fits: fits(h),
                      description: h.parentElement.querySelector('p')?.textContent,
                      description_fits: fits(h.parentElement.querySelector('p'))})); }""", listed[PACK])
    browser_page.close_dialogs()
    assert [c["title"] for c in cards] == BUILD.template_order(), cards
    assert cards[0]["title"] == "AudioStory - Text to long audio"
    assert all(c["title_fits"] and c["description_fits"] for c in cards), [c for c in cards if not c["title_fits"]
                                                                           or not c["description_fits"]]
    # each description says what the template does and needs, not its title again
    assert [c["description"] for c in cards] == [c["description"] for c in BUILD.template_cards()]
    assert all("Needs:" in c["description"] and c["title"].split(" - ")[1] not in c["description"] for c in cards)
    assert not browser_page.about_pack(since), browser_page.about_pack(since)


def test_run_button_plays_the_story_on_the_save_node(server, browser_page, artifacts):
    page = browser_page.page
    name = "audiostory_text_to_long_audio"
    ui = json.loads((ROOT / "workflows" / BUILD.ui_file_name(name)).read_text())
    since = browser_page.mark()
    wb.load_workflow(page, ui)
    browser_page.close_dialogs()
    page.get_by_role("button", name="Run", exact=True).first.click()
    prefix = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())["6"]["inputs"]["filename_prefix"]
    stem = Path(prefix).name
    try:
        page.wait_for_function(
            """(stem) => Array.from(document.querySelectorAll('audio'))
                 .some(a => decodeURIComponent(a.src || a.currentSrc || '').includes(stem))""",
            arg=stem, timeout=900_000, polling=1000)
    finally:
        page.screenshot(path=str(artifacts / f"{name}_after_run.png"))
    src = page.evaluate("""(stem) => Array.from(document.querySelectorAll('audio')).map(a => a.src)
        .find(s => decodeURIComponent(s).includes(stem))""", stem)
    status = page.evaluate("async (u) => (await fetch(u)).status", src)
    assert status == 200, f"the player's file {src} answers {status}"
    written = list((server.root / "output").rglob(f"{stem}*.wav"))
    assert written, "the save node wrote no file"
    assert any(f.name in src for f in written), (src, written)

    # the Planner shows the finished event list, every line whole on screen, no word split over two lines
    shown = page.evaluate(SHOWN_PLAN_JS)
    assert shown is not None, "the Planner shows no plan text"
    lines = shown["text"].splitlines()
    assert lines[0].endswith(" s:") and [ln.split(".")[0] for ln in lines[1:4]] == ["1", "2", "3"], lines
    assert all("\u2013" in ln for ln in lines[1:4]), lines
    assert shown["split_words"] == [], shown["split_words"]
    assert shown["visible_lines"] >= 4, shown
    after = page.evaluate(wb.DESCRIBE_JS)      # the Planner grew to show it, still inside its group
    assert not outside_their_groups(after), outside_their_groups(after)
    assert not browser_page.about_pack(since), browser_page.about_pack(since)


# In the page: the Planner's plan text, the words the browser drew over two lines, and how many lines show.
SHOWN_PLAN_JS = """() => {
  const box = Array.from(document.querySelectorAll('.audiostory-plan-text')).find(b => b.offsetParent !== null);
  if (!box || !box.firstChild) return null;
  const node = box.firstChild, text = node.textContent, split = [], tops = new Set();
  for (const m of text.matchAll(/\\S+/g)) {
    const r = document.createRange();
    r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
    const rects = Array.from(r.getClientRects()).filter(q => q.width > 0);
    if (new Set(rects.map(q => Math.round(q.top))).size > 1) split.push(m[0]);
    rects.forEach(q => { if (q.bottom <= box.getBoundingClientRect().bottom + 1) tops.add(Math.round(q.top)); });
  }
  return {text, split_words: split, visible_lines: tops.size};
}"""


def test_models_download_from_the_menu_with_progress_into_models_audiostory(server, browser_page, artifacts, hub):
    """Extensions > AudioStory > Download models: tick Whisper and the VLM, press Download; the dialog shows
    the progress and the files land in models/audiostory/ (from the pre-filled cache, offline). The route takes
    keys of the fixed list only."""
    page = browser_page.page
    models = server.root / "models" / "audiostory"
    for name in ("whisper-large-v3", "Qwen2.5-VL-3B-Instruct"):        # the tiny ones prepare_base put there
        shutil.rmtree(models / name)
    post = """async (body) => { const r = await fetch('/api/audiostory/models/download', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
        return [r.status, await r.json()]; }"""
    code, body = page.evaluate(post, {"keys": ["openai/whisper-large-v3"]})      # a repo id is not a key
    assert code == 400 and "choose from" in body["error"] and "whisper" in body["error"]
    code, body = page.evaluate(post, {"keys": "whisper"})
    assert code == 400
    assert not (models / "whisper-large-v3").exists()

    since = browser_page.mark()
    page.evaluate("() => window.app.extensionManager.command.execute('AudioStory.DownloadModels')")
    dialog = page.locator("#audiostory-model-download")
    dialog.wait_for(state="visible", timeout=30_000)
    for box in dialog.locator("input[type=checkbox]").all():
        box.uncheck()
    for key in ("whisper", "vlm"):
        assert "missing" in dialog.locator(f"label:has(input[value={key}])").inner_text()
        dialog.locator(f"input[value={key}]").check()
    dialog.get_by_role("button", name="Download").click()
    page.wait_for_function("() => /Done: 2 of 2/.test(document.querySelector("
                           "'#audiostory-model-download [data-role=progress]').textContent)", timeout=120_000)
    page.screenshot(path=str(artifacts / "model_download_done.png"))
    shown = dialog.locator("[data-role=progress]").inner_text()
    assert "whisper: linked into" in shown and "vlm: linked into" in shown, shown
    assert page.evaluate("() => { const b = document.querySelector('#audiostory-model-download progress'); "
                         "return [b.value, b.max]; }") == [2, 2]
    assert "(present)" in dialog.locator("label:has(input[value=whisper])").inner_text()
    for name, repo in (("whisper-large-v3", "openai/whisper-large-v3"), ("Qwen2.5-VL-3B-Instruct",
                                                                          "Qwen/Qwen2.5-VL-3B-Instruct")):
        cfg = models / name / "config.json"
        assert cfg.is_file(), f"{cfg} was not written"
        assert str(cfg.resolve()).startswith(str(hub / f"models--{repo.replace('/', '--')}")), cfg.resolve()
    dialog.get_by_role("button", name="Close").click()
    assert not browser_page.about_pack(since), browser_page.about_pack(since)

"""Drive the ComfyUI frontend in headless Chromium (Playwright) for the browser test and the thumbnails.

Debian's ``chromium`` is used through ``executable_path`` (Playwright's own browser download is not needed).
"""
from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
# Settings of a user who closed the first-run template browser; the minimap would cover the canvas.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}

# In the page: load a workflow as a file drop would, and describe what the canvas now shows.
LOAD_JS = """async (wf) => {
  await window.app.loadGraphData(wf, true, true, null);
  await new Promise(r => setTimeout(r, 300));
  return true;
}"""
DESCRIBE_JS = """() => {
  const c = window.app.canvas, g = window.app.graph;
  const nodes = g._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title, pos: Array.from(n.pos), size: Array.from(n.size),
    min_size: Array.from(n.computeSize()), has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value,
      options: (w.options && Array.isArray(w.options.values)) ? w.options.values : null})),
  }));
  return {scale: c.ds.scale, offset: Array.from(c.ds.offset), nodes,
          groups: g._groups.map(gr => ({title: gr.title, bounding: Array.from(gr._bounding || gr.bounding)})),
          low_quality: c.low_quality ?? c._isLowQuality ?? null,
          low_quality_threshold: c._lowQualityZoomThreshold ?? null};
}"""
# In the page: the wires the frontend drew that pass over a group's title bar. Hit-tested exactly as the
# frontend hit-tests a click on a wire (LGraphCanvas: ``ctx.isPointInStroke`` on each rendered path, graph
# coordinates times the device pixel ratio), on a 4 px grid over each title bar. ``drawn``/``sane``: how
# many wire segments were drawn, and how many of them contain their own midpoint (a control of the method).
WIRES_OVER_TITLES_JS = """() => {
  const c = window.app.canvas, g = window.app.graph;
  c.setDirty(true, true); c.draw(true, true);
  const ctx = c.ctx, dpr = Math.max(window.devicePixelRatio ?? 1, 1), saved = ctx.lineWidth;
  ctx.lineWidth = c.connections_width;
  const hits = []; let drawn = 0, sane = 0;
  for (const seg of c.renderedPaths) {
    if (!seg.path) continue;
    drawn++;
    if (seg._pos && ctx.isPointInStroke(seg.path, seg._pos[0] * dpr, seg._pos[1] * dpr)) sane++;
    for (const gr of g._groups) {
      const [x, y, w] = Array.from(gr._bounding || gr.bounding), th = gr.titleHeight ?? gr.font_size * 1.4;
      let hit = null;
      for (let px = x; px <= x + w && !hit; px += 4)
        for (let py = y; py <= y + th && !hit; py += 4)
          if (ctx.isPointInStroke(seg.path, px * dpr, py * dpr)) hit = [px, py];
      if (hit) hits.push({segment: String(seg.id), reroute: seg.constructor?.name === "Reroute", group: gr.title, at: hit});
    }
  }
  ctx.lineWidth = saved;
  return {hits, drawn, sane};
}"""
FIT_VIEW_JS = """async () => {
  window.app.canvas.fitViewToSelectionAnimated({duration: 1});
  await new Promise(r => setTimeout(r, 400));
  return window.app.canvas.ds.scale;
}"""


def apply_settings(base_url: str, settings: dict = SETTINGS) -> None:
    """Server-side user settings (``POST /settings/<id>``), read by the frontend at start."""
    for key, value in settings.items():
        req = urllib.request.Request(f"{base_url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).close()


def launch(playwright, chromium: str = CHROMIUM, user_data_dir: str | None = None):
    """A persistent headless context with a fresh profile (``user_data_dir``)."""
    profile = user_data_dir or tempfile.mkdtemp(prefix="audiostory-chromium-")
    return playwright.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                         args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 900})


def open_comfy(page, base_url: str, timeout_ms: int = 120_000) -> None:
    page.goto(base_url)
    page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph",
                           timeout=timeout_ms)
    page.wait_for_timeout(1500)


def load_workflow(page, workflow: dict) -> dict:
    page.evaluate(LOAD_JS, workflow)
    return page.evaluate(DESCRIBE_JS)


def wires_over_titles(page) -> dict:
    """``{"hits": [...], "drawn": n, "sane": n}`` for the workflow on the canvas (see WIRES_OVER_TITLES_JS)."""
    return page.evaluate(WIRES_OVER_TITLES_JS)


def fit_view(page) -> float:
    return page.evaluate(FIT_VIEW_JS)


GRAPH_RECT_JS = """() => {
  const c = window.app.canvas, g = window.app.graph, s = c.ds.scale, o = c.ds.offset;
  const boxes = g._nodes.map(n => [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30])
    .concat(g._groups.map(gr => Array.from(gr._bounding || gr.bounding)));
  const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
  const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
  return [(x0 + o[0]) * s, (y0 + o[1]) * s, (x1 - x0) * s, (y1 - y0) * s];
}"""


def render_thumbnails(base_url: str, ui_files: list[Path], chromium: str = CHROMIUM,
                      window: tuple[int, int] = (2400, 1350), thumb: tuple[int, int] = (640, 480)) -> list[Path]:
    """``<name>.jpg`` next to each UI file: the graph at fit view in a large window (so the frontend draws
    its text) with the frontend's menus hidden (focus mode: no tab bar), cropped to the graph at the card's
    4:3 aspect and scaled down."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    apply_settings(base_url)
    written = []
    with sync_playwright() as p:
        ctx = launch(p, chromium)
        page = ctx.new_page()
        page.set_viewport_size({"width": window[0], "height": window[1]})
        open_comfy(page, base_url)
        page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        page.wait_for_timeout(500)
        for path in ui_files:
            load_workflow(page, json.loads(Path(path).read_text()))
            page.evaluate("() => { window.app.canvas.show_info = false; }")
            fit_view(page)
            x, y, w, h = page.evaluate(GRAPH_RECT_JS)
            aspect = thumb[0] / thumb[1]
            cw, ch = max(w + 16, (h + 16) * aspect), max(h + 16, (w + 16) / aspect)
            cx, cy = x + w / 2, y + h / 2
            clip = {"x": max(0, cx - cw / 2), "y": max(0, cy - ch / 2), "width": min(cw, window[0]),
                    "height": min(ch, window[1])}
            png = Path(tempfile.mkdtemp()) / "shot.png"
            page.screenshot(path=str(png), clip=clip)
            img = Image.open(png).convert("RGB").resize(thumb, Image.LANCZOS)
            out = Path(path).with_suffix(".jpg")
            img.save(out, "JPEG", quality=85, optimize=True)
            written.append(out)
        ctx.close()
    return written

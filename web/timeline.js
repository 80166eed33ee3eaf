// AudioStory for ComfyUI: the story plan on a timeline ("AudioStory Timeline" node).
//
// The node's plan_json input is drawn by this DOM widget; the widget's value IS the plan JSON string, so
// the workflow saves it, /prompt receives it and what runs is what the timeline shows. Limits (DiT clip
// window, snap, event/caption/total limits) come from the pack (GET /audiostory/timeline), and inline
// errors are the message /prompt itself gives (POST /audiostory/timeline/check): nothing is re-typed here.
// Plain DOM: blocks are <div>s laid out by CSS, coloured by ComfyUI's palette variables; after a run each
// block gets a <canvas> with its clip's waveform (peaks sent by AudioStoryDecode in its UI output) and its CLAP
// score (AudioStoryScore), shown only while the plan still has the rendered events (nodes/peaks.py); the last
// run's are kept in the node's properties, so a saved or reloaded workflow draws them again. A playhead
// follows the audio player of AudioStorySaveAudio (web/audiostory.js); a click on a block selects it and plays
// the story from the block's start (shift-click only toggles the selection).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "AudioStoryTimeline";
const WIDGET_TYPE = "AUDIOSTORY_TIMELINE";
const MIN_VIEW_SECONDS = 8;
const PLAYER_NODE = "AudioStorySaveAudio";
const KEPT_RESULTS = 8;          // runs remembered (per plan) for timelines showing an older plan
const SAVED_RUN = "audiostory_last_run";   // node.properties key: {events, peaks, scores} of its plan's last run
let limitsPromise = null;
const timelines = new Set();     // live widgets, re-drawn when a run's results arrive
const results = new Map();       // events key -> {peaks, scores}: the latest run's, per plan
let lastPlayerNode = null;       // id of the save node that ran last; else the graph's first save node plays

function limits() {
  limitsPromise ??= api.fetchApi("/audiostory/timeline").then((r) => r.json());
  return limitsPromise;
}

const CSS = `
.as-tl { font: 12px sans-serif; color: var(--input-text, #ddd); display: flex; flex-direction: column; gap: 4px;
  outline: none; user-select: none; box-sizing: border-box; height: 100%; }
.as-tl:focus-visible { box-shadow: 0 0 0 2px var(--p-primary-color, #4a9eff); }
.as-tl-bar { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
.as-tl-bar button { background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 1px 6px; cursor: pointer; font-size: 12px; }
.as-tl-total { margin-left: auto; opacity: .85; }
.as-tl-scroll { position: relative; overflow-x: auto; overflow-y: hidden; flex: 1; min-height: 70px;
  background: var(--comfy-input-bg, #1b1b1b); border: 1px solid var(--border-color, #444); border-radius: 4px; }
.as-tl-ruler { position: relative; height: 16px; border-bottom: 1px solid var(--border-color, #444); }
.as-tl-tick { position: absolute; top: 0; height: 100%; border-left: 1px solid var(--border-color, #555);
  padding-left: 2px; font-size: 10px; opacity: .8; }
.as-tl-track { position: relative; height: 46px; margin-top: 4px; }
.as-tl-block { position: absolute; top: 0; height: 40px; box-sizing: border-box; overflow: hidden;
  background: var(--comfy-menu-bg, #333); border: 1px solid var(--border-color, #666); border-radius: 4px;
  padding: 2px 10px 2px 4px; cursor: pointer; white-space: nowrap; text-overflow: ellipsis; }
.as-tl-block.selected { border: 2px solid var(--p-primary-color, #4a9eff); }
.as-tl-block.error { border: 2px solid var(--error-text, #ff4444); background: rgba(255, 60, 60, .18); }
.as-tl-block .as-tl-dur { display: block; font-size: 10px; opacity: .75; }
.as-tl-fade { position: absolute; top: 0; height: 40px; pointer-events: none; border-radius: 0 4px 4px 0;
  background: repeating-linear-gradient(135deg, transparent 0 4px, var(--border-color, #777) 4px 5px); opacity: .6; }
.as-tl-edge { position: absolute; right: 0; top: 0; width: 8px; height: 100%; cursor: ew-resize;
  background: var(--border-color, #777); opacity: .6; }
.as-tl-edit { position: absolute; top: 0; height: 40px; z-index: 2; box-sizing: border-box; font-size: 12px;
  background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); border: 2px solid var(--p-primary-color, #4a9eff); }
.as-tl-wave { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; z-index: 0; }
.as-tl-block > span { position: relative; z-index: 1; }
.as-tl-score { position: absolute !important; right: 10px; bottom: 2px; font-size: 10px; padding: 0 3px;
  border-radius: 3px; background: var(--comfy-input-bg, #222); opacity: .9; }
.as-tl-edge { z-index: 2; }
.as-tl-head { position: absolute; top: 0; width: 2px; margin-left: -1px; height: 100%; z-index: 3; pointer-events: none;
  background: var(--p-primary-color, #4a9eff); display: none; }
.as-tl-error { color: var(--error-text, #ff4444); min-height: 14px; white-space: normal; }
`;

function addStyle() {
  if (document.getElementById("audiostory-timeline-css")) return;
  const s = document.createElement("style");
  s.id = "audiostory-timeline-css";
  s.textContent = CSS;
  document.head.appendChild(s);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// The crossfade of the AudioStoryEventTokens node this timeline feeds (its clips overlap by that much).
function crossfadeOf(node, fallback) {
  for (const out of node.outputs ?? []) {
    for (const id of out.links ?? []) {
      const link = node.graph?.links?.[id] ?? node.graph?.links?.get?.(id);
      const target = link && node.graph.getNodeById(link.target_id);
      const w = target?.widgets?.find((x) => x.name === "crossfade");
      if (w && typeof w.value === "number") return w.value;
    }
  }
  return fallback;
}

// What a run's payload (and a plan) is matched on: its events' captions and durations, in order.
function eventsKey(pairs) {
  return JSON.stringify(pairs.map(([c, d]) => [String(c ?? ""), Number(d)]));
}

function planKey(plan) {
  return eventsKey(plan.events.map((e) => [e.caption, e.duration]));
}

function remember(key, part, value) {
  const r = results.get(key) ?? {};
  results.delete(key);
  results.set(key, { ...r, [part]: value });
  while (results.size > KEPT_RESULTS) results.delete(results.keys().next().value);
}

// Per-event peaks and scores cut to the pack's limits (a run's message and a loaded workflow are both input).
function cleanPeaks(peaks, events, l) {
  return (Array.isArray(peaks) ? peaks : []).slice(0, Math.min(events, l.max_events))
    .map((a) => (Array.isArray(a) ? a.slice(0, 2 * l.peak_pairs).map(Number) : []));
}

function cleanScores(scores, events, l) {
  return (Array.isArray(scores) ? scores : []).slice(0, Math.min(events, l.max_events)).map(Number);
}

// A run's UI output, as ComfyUI's "executed" message carries it (also for cached nodes): keep the per-event
// peaks and scores (bounded by the pack's limits), note which save node has the audio, re-draw the timelines.
async function onExecuted(detail) {
  const out = detail?.output;
  if (!out || typeof out !== "object") return;
  const l = await limits();
  const valid = (p) => p && Array.isArray(p.events) && p.events.length <= l.max_events;
  for (const p of (Array.isArray(out[l.peaks_key]) ? out[l.peaks_key] : []).slice(-1).filter(valid)) {
    remember(eventsKey(p.events), "peaks", cleanPeaks(p.peaks, p.events.length, l));
  }
  for (const p of (Array.isArray(out[l.scores_key]) ? out[l.scores_key] : []).slice(-1).filter(valid)) {
    remember(eventsKey(p.events), "scores", cleanScores(p.scores, p.events.length, l));
  }
  const id = detail.display_node ?? detail.node;
  const node = app.graph?.getNodeById?.(id) ?? app.graph?.getNodeById?.(Number(id));
  if (out.audio && node?.comfyClass === PLAYER_NODE) lastPlayerNode = node.id;
  for (const t of timelines) t.render(t.pps);
}

// The <audio> element of the save node's player (the frontend's AUDIO_UI widget), if there is one.
function playerElement() {
  const nodes = (app.graph?._nodes ?? []).filter((n) => n.comfyClass === PLAYER_NODE);
  const node = nodes.find((n) => n.id === lastPlayerNode) ?? nodes[0];
  const el = node?.widgets?.find((w) => w.name === "audioUI")?.element;
  return el instanceof HTMLMediaElement ? el : null;
}

// A colour of ComfyUI's palette (read at draw time, so a palette switch applies at the next draw).
function paletteColour(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function drawPeaks(canvas, peaks, scale) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pairs = peaks.length / 2;
  ctx.clearRect(0, 0, w, h);
  if (!pairs || !(scale > 0)) return;
  ctx.fillStyle = paletteColour("--p-primary-color", "#4a9eff");
  ctx.globalAlpha = 0.55;
  const y = (v) => h / 2 - (Math.max(-1, Math.min(1, v / scale)) * h) / 2;
  const bar = w / pairs;
  for (let k = 0; k < pairs; k++) {
    const top = y(peaks[2 * k + 1]), bottom = y(peaks[2 * k]);
    ctx.fillRect(k * bar, top, Math.max(1, bar), bottom - top);
  }
}

class Timeline {
  constructor(node, inputName, initial) {
    this.node = node;
    this.value = initial ?? "";
    this.selected = new Set();
    this.focus = 0;
    this.limits = null;
    this.error = null;
    this.root = el("div", "as-tl");
    this.root.tabIndex = 0;
    this.root.dataset.testid = "audiostory-timeline";
    const bar = el("div", "as-tl-bar");
    this.buttons = {};
    for (const [key, label, title] of [["add", "+ Event", "Add an event after the selection"],
      ["del", "Delete", "Delete the selected events (Delete key)"], ["left", "◀ Move", "Move the event earlier"],
      ["right", "Move ▶", "Move the event later"]]) {
      const b = el("button", "", label);
      b.title = title;
      b.dataset.action = key;
      b.addEventListener("click", (e) => { e.stopPropagation(); this.action(key); });
      bar.appendChild(b);
      this.buttons[key] = b;
    }
    this.totalEl = el("span", "as-tl-total");
    bar.appendChild(this.totalEl);
    this.scroll = el("div", "as-tl-scroll");
    this.ruler = el("div", "as-tl-ruler");
    this.track = el("div", "as-tl-track");
    this.scroll.append(this.ruler, this.track);
    this.errorEl = el("div", "as-tl-error");
    this.errorEl.setAttribute("role", "alert");
    this.root.append(bar, this.scroll, this.errorEl);
    this.root.addEventListener("keydown", (e) => this.key(e));
    for (const t of ["pointerdown", "wheel", "contextmenu"]) this.root.addEventListener(t, (e) => e.stopPropagation());
    // Re-lay the blocks when the node is resized (the view fits the story to the node's width).
    this.width = 0;
    new ResizeObserver(() => {
      if (this.scroll.clientWidth !== this.width && !this.dragging) { this.width = this.scroll.clientWidth; this.render(); }
    }).observe(this.scroll);
    this.head = el("div", "as-tl-head");
    this.head.dataset.testid = "audiostory-playhead";
    limits().then((l) => { this.limits = l; this.render(); this.check(); });
  }

  // The playhead at the player's time (hidden when there is no player with audio).
  movePlayhead() {
    const a = playerElement();
    const show = a && a.currentSrc && this.pps && this.head.isConnected;   // the track holds it when there is a plan
    this.head.style.display = show ? "block" : "none";
    if (!show) return;
    this.head.style.left = `${a.currentTime * this.pps}px`;
    this.head.dataset.seconds = String(a.currentTime);
  }

  // Media events do not bubble: the page-level capture listener calls this for every <audio>.
  onMedia(e) {
    if (e.target !== playerElement()) return;
    this.movePlayhead();
    if (e.type === "play" && !this.animating) {
      this.animating = true;
      const step = () => {
        this.movePlayhead();
        const a = playerElement();
        if (a && !a.paused && this.root.isConnected) requestAnimationFrame(step);
        else this.animating = false;
      };
      requestAnimationFrame(step);
    }
  }

  // Play the save node's story from ``seconds`` (a click on a block); nothing before a run.
  playFrom(seconds) {
    const a = playerElement();
    if (!a || !a.currentSrc) return;
    a.currentTime = seconds;
    a.play().catch(() => {});   // refused autoplay: the seek stays
  }

  plan() {
    try {
      const p = JSON.parse(this.value);
      return p && Array.isArray(p.events) ? p : null;
    } catch {
      return null;
    }
  }

  // Write the edited plan back as the widget value (what the workflow saves and /prompt receives).
  commit(plan) {
    this.value = JSON.stringify(plan, null, 2);
    this.node.graph?.setDirtyCanvas?.(true, true);
    this.render();
    this.check();
  }

  setSelection(indices) {
    const n = this.plan()?.events.length ?? 0;
    this.selected = new Set([...indices].filter((i) => i >= 0 && i < n));
    const w = this.node.widgets?.find((x) => x.name === "render_events");
    if (w) {
      w.value = [...this.selected].sort((a, b) => a - b).map((i) => i + 1).join(",");
      w.callback?.(w.value);
    }
    this.render();
  }

  snap(seconds) {
    const s = this.limits.snap_seconds;
    const v = Math.round(seconds / s) * s;
    return Math.round(Math.min(this.limits.clip_seconds, Math.max(this.limits.min_event_seconds, v)) * 1000) / 1000;
  }

  pxPerSecond(total) {
    const width = Math.max(200, (this.scroll.clientWidth || 600) - 4);
    return width / Math.max(MIN_VIEW_SECONDS, Math.ceil(total + this.crossfade()));
  }

  crossfade() {
    return crossfadeOf(this.node, this.limits?.default_crossfade ?? 0);
  }

  // The last run's peaks and scores for ``plan``: this page's, else the ones saved on the node (a reloaded
  // workflow). They stay in the node's properties (saved with the workflow) while they belong to its plan and
  // are dropped once the plan changes, so a reload draws them again but never a stale waveform.
  lastRun(plan) {
    const key = planKey(plan);
    const props = (this.node.properties ??= {});
    const saved = props[SAVED_RUN];
    if (!results.has(key) && saved?.events === key) {
      const n = plan.events.length;
      if (saved.peaks) remember(key, "peaks", cleanPeaks(saved.peaks, n, this.limits));
      if (saved.scores) remember(key, "scores", cleanScores(saved.scores, n, this.limits));
    }
    const run = results.get(key);
    if (run ? this.savedRun !== run : SAVED_RUN in props) {
      if (run) props[SAVED_RUN] = { events: key, ...run };
      else delete props[SAVED_RUN];
      this.savedRun = run;
      // The frontend keeps the open workflow (restored on reload) as of its last noticed change: note this one.
      app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
    }
    return run ?? {};
  }

  render(pps) {
    const plan = this.plan();
    this.track.replaceChildren();
    this.ruler.replaceChildren();
    if (!plan || !this.limits) {
      this.totalEl.textContent = plan ? "" : "not a plan JSON";
      return;
    }
    const durs = plan.events.map((e) => Number(e.duration) || 0);
    const total = durs.reduce((a, b) => a + b, 0);
    this.pps = pps ?? this.pxPerSecond(total);
    this.track.dataset.pxPerSecond = String(this.pps);
    const span = Math.max(MIN_VIEW_SECONDS, Math.ceil(total + this.crossfade()));
    const inner = `${span * this.pps}px`;
    this.ruler.style.width = inner;
    this.track.style.width = inner;
    const step = span > 120 ? 10 : span > 40 ? 5 : span > 15 ? 2 : 1;
    for (let t = 0; t <= span; t += step) {
      const tick = el("div", "as-tl-tick", `${t}s`);
      tick.style.left = `${t * this.pps}px`;
      this.ruler.appendChild(tick);
    }
    const cf = this.crossfade();
    const run = this.lastRun(plan);
    const scale = (run.peaks ?? []).flat().reduce((m, v) => (Number.isFinite(v) ? Math.max(m, Math.abs(v)) : m), 0);
    let start = 0;
    plan.events.forEach((ev, i) => {
      if (i < plan.events.length - 1 && cf > 0) {
        const fade = el("div", "as-tl-fade");
        fade.style.left = `${(start + durs[i]) * this.pps}px`;
        fade.style.width = `${cf * this.pps}px`;
        fade.title = `${cf} s crossfade into event ${i + 2}`;
        this.track.appendChild(fade);
      }
      const b = el("div", "as-tl-block");
      b.dataset.index = String(i);
      b.style.left = `${start * this.pps}px`;
      b.style.width = `${durs[i] * this.pps}px`;
      b.title = `${i + 1}. ${ev.caption} (${durs[i]} s, starts at ${start.toFixed(1)} s)`;
      const peaks = run.peaks?.[i];
      if (peaks?.length) {
        const c = el("canvas", "as-tl-wave");
        c.width = Math.max(1, Math.round(durs[i] * this.pps));
        c.height = 40;
        drawPeaks(c, peaks, scale);
        b.appendChild(c);
      }
      b.append(el("span", "as-tl-cap", `${i + 1}. ${ev.caption}`), el("span", "as-tl-dur", `${durs[i]} s`));
      const score = run.scores?.[i];
      if (Number.isFinite(score)) {
        b.appendChild(el("span", "as-tl-score", `CLAP ${score.toFixed(3)}`));
        b.title += ` · CLAP ${score.toFixed(3)}`;
      }
      if (this.selected.has(i)) b.classList.add("selected");
      if (this.error && this.error.event === i) {
        b.classList.add("error");
        b.title = this.error.error;
      }
      const edge = el("div", "as-tl-edge");
      edge.title = "Drag to change the duration";
      edge.addEventListener("pointerdown", (e) => this.dragEdge(e, i));
      b.appendChild(edge);
      const at = start;
      b.addEventListener("click", (e) => this.click(e, i, at));
      b.addEventListener("dblclick", (e) => { e.stopPropagation(); this.editCaption(i); });
      this.track.appendChild(b);
      start += durs[i];
    });
    this.track.appendChild(this.head);
    this.movePlayhead();
    this.totalEl.textContent = `${plan.events.length} events · total ${total.toFixed(1)} s`;
    this.errorEl.textContent = this.error?.error ?? "";
  }

  // Click: select the event (for the re-roll) and play the story from its start; shift-click: toggle it in the
  // selection, without playing. A click that ends an edge drag does neither.
  click(e, i, seconds) {
    e.stopPropagation();
    if (performance.now() - (this.dragEnded ?? -1e9) < 250) return;
    this.focus = i;
    if (e.shiftKey) {
      const s = new Set(this.selected);
      s.has(i) ? s.delete(i) : s.add(i);
      this.setSelection(s);
    } else {
      this.setSelection([i]);
      this.playFrom(seconds);
    }
    this.root.focus();
  }

  dragEdge(e, i) {
    e.stopPropagation();
    e.preventDefault();
    const plan = this.plan();
    if (!plan || !this.limits) return;
    const pps = this.pps;             // keep the scale while dragging: N px = N / pps seconds
    this.dragging = true;
    const x0 = e.clientX;
    const d0 = Number(plan.events[i].duration);
    // Listen on the window: every render replaces the blocks (and this edge) under the pointer.
    const move = (ev) => {
      plan.events[i].duration = this.snap(d0 + (ev.clientX - x0) / pps);
      this.value = JSON.stringify(plan, null, 2);
      this.render(pps);
    };
    const up = (ev) => {
      move(ev);
      window.removeEventListener("pointermove", move, true);
      window.removeEventListener("pointerup", up, true);
      this.dragging = false;
      this.dragEnded = performance.now();
      this.commit(plan);
    };
    window.addEventListener("pointermove", move, true);
    window.addEventListener("pointerup", up, true);
  }

  editCaption(i) {
    const plan = this.plan();
    if (!plan) return;
    const block = this.track.querySelector(`.as-tl-block[data-index="${i}"]`);
    const input = el("input", "as-tl-edit");
    input.value = plan.events[i].caption ?? "";
    input.style.left = block.style.left;
    input.style.width = `${Math.max(160, parseFloat(block.style.width))}px`;
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      input.remove();
      if (keep && input.value !== plan.events[i].caption) {
        plan.events[i].caption = input.value;
        this.commit(plan);
      }
      this.root.focus();
    };
    input.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter") finish(true);
      if (e.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    input.addEventListener("pointerdown", (e) => e.stopPropagation());
    this.track.appendChild(input);
    input.focus();
    input.select();
  }

  action(key) {
    const plan = this.plan();
    if (!plan) return;
    const sel = [...this.selected].sort((a, b) => a - b);
    const at = sel.length ? sel[sel.length - 1] : plan.events.length - 1;
    if (key === "add") {
      plan.events.splice(at + 1, 0, { caption: "new event", duration: this.snap(4) });
      this.focus = at + 1;
      this.commit(plan);
      this.setSelection([at + 1]);
    } else if (key === "del" && sel.length && sel.length < plan.events.length) {
      plan.events = plan.events.filter((_, i) => !this.selected.has(i));
      this.focus = Math.min(sel[0], plan.events.length - 1);
      this.selected = new Set();
      this.commit(plan);
      this.setSelection([]);
    } else if ((key === "left" || key === "right") && sel.length === 1) {
      const i = sel[0], j = key === "left" ? i - 1 : i + 1;
      if (j < 0 || j >= plan.events.length) return;
      [plan.events[i], plan.events[j]] = [plan.events[j], plan.events[i]];
      this.focus = j;
      this.commit(plan);
      this.setSelection([j]);
    }
  }

  key(e) {
    const n = this.plan()?.events.length ?? 0;
    if (!n) return;
    const handled = () => { e.preventDefault(); e.stopPropagation(); };
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      handled();
      if (e.altKey) return this.action(e.key === "ArrowLeft" ? "left" : "right");
      this.focus = Math.max(0, Math.min(n - 1, this.focus + (e.key === "ArrowRight" ? 1 : -1)));
      if (e.shiftKey) this.setSelection(new Set([...this.selected, this.focus]));
      else this.setSelection([this.focus]);
    } else if (e.key === "Enter") {
      handled();
      this.editCaption(this.focus);
    } else if (e.key === "Delete" || e.key === "Backspace") {
      handled();
      this.action("del");
    }
  }

  // The message /prompt would refuse this plan with, shown inline and on the block it names.
  async check() {
    const text = this.value;
    try {
      const r = await api.fetchApi("/audiostory/timeline/check", { method: "POST", body: text });
      const res = await r.json();
      if (text !== this.value) return;      // edited again meanwhile
      this.error = res.ok ? null : res;
    } catch (err) {
      this.error = { error: `cannot check the plan: ${err}`, event: null };
    }
    this.render(this.pps);
  }
}

api.addEventListener("executed", (e) => { onExecuted(e.detail).catch(() => {}); });
for (const type of ["play", "pause", "timeupdate", "seeked", "loadedmetadata", "emptied"]) {
  document.addEventListener(type, (e) => { for (const t of timelines) t.onMedia(e); }, true);
}

app.registerExtension({
  name: "AudioStory.Timeline",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const req = nodeData.input?.required;
    if (req?.plan_json) req.plan_json = [WIDGET_TYPE, req.plan_json[1] ?? {}];
  },
  getCustomWidgets() {
    return {
      [WIDGET_TYPE](node, inputName, inputData) {
        addStyle();
        const tl = new Timeline(node, inputName, inputData?.[1]?.default);
        const widget = node.addDOMWidget(inputName, WIDGET_TYPE, tl.root, {
          getValue: () => tl.value,
          setValue: (v) => { tl.value = typeof v === "string" ? v : ""; tl.selected = new Set(); tl.render(); tl.check(); },
          getMinHeight: () => 150,
        });
        widget.timeline = tl;
        timelines.add(tl);
        const removed = node.onRemoved;
        node.onRemoved = function () { timelines.delete(tl); return removed?.apply(this, arguments); };
        node.setSize?.([Math.max(node.size?.[0] ?? 0, 640), Math.max(node.size?.[1] ?? 0, 260)]);
        return { widget };
      },
    };
  },
});

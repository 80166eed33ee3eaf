// AudioStory for ComfyUI: fetch the known models from the UI (Extensions > AudioStory > Download models).
//
// A small dialog lists the components the pack knows (the server's fixed list, nodes/download_routes.py),
// which ones are already in models/audiostory/, and starts a download of the ticked ones on the server.
// It polls the server for progress; the server fetches only that fixed list, into the Hugging Face cache
// (resumable), and links the files into models/audiostory/. When it is done the loader's folder list is
// refreshed.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const COMMAND = "AudioStory.DownloadModels";
const ROUTE = "/audiostory/models";
const DIALOG_ID = "audiostory-model-download";
const POLL_MS = 1000;

function el(tag, props = {}, children = []) {
  const { dataset, ...rest } = props;
  const e = Object.assign(document.createElement(tag), rest);
  Object.assign(e.dataset, dataset ?? {});
  for (const c of children) e.append(c);
  return e;
}

async function getStatus() {
  const r = await api.fetchApi(ROUTE);
  if (!r.ok) throw new Error(`${ROUTE}: ${r.status}`);
  return r.json();
}

function describeJob(job) {
  if (!job || job.state === "idle") return "";
  const lines = [];
  if (job.state === "running") {
    const files = job.files && job.files[1] ? `, ${job.files[0]} of ${job.files[1]} files` : "";
    lines.push(`Downloading ${job.done} of ${job.total} done${job.current ? ` (now: ${job.current}${files})` : ""}`);
  } else if (job.state === "done") {
    lines.push(`Done: ${job.done} of ${job.total} components in models/audiostory/.`);
  } else if (job.state === "error") {
    lines.push(`Failed: ${job.error}`);
  }
  return lines.concat(job.log || []).join("\n");
}

function render(dialog, status) {
  const list = dialog.querySelector("[data-role=components]");
  const ticked = new Set(Array.from(list.querySelectorAll("input:checked")).map((i) => i.value));
  const fresh = list.childElementCount === 0;
  list.replaceChildren(...status.components.map((c) => {
    const box = el("input", { type: "checkbox", value: c.key });
    box.checked = fresh ? !c.present && !c.optional : ticked.has(c.key);
    return el("label", { style: "display:block;margin:2px 0" }, [
      box, ` ${c.key}: ${c.repo} `,
      el("span", { style: "opacity:.7", textContent: c.present ? "(present)" : `(missing: ${c.note})` }),
    ]);
  }));
  const job = status.job || {};
  const bar = dialog.querySelector("progress");
  bar.max = Math.max(job.total || 1, 1);
  bar.value = job.done || 0;
  dialog.querySelector("[data-role=progress]").textContent = describeJob(job);
  const start = dialog.querySelector("[data-role=start]");
  start.disabled = !status.allowed || job.state === "running";
  dialog.querySelector("[data-role=why]").textContent = status.allowed ? "" : status.why_not;
}

async function poll(dialog) {
  while (document.body.contains(dialog)) {
    let status;
    try {
      status = await getStatus();
    } catch (e) {
      dialog.querySelector("[data-role=progress]").textContent = String(e);
      return;
    }
    render(dialog, status);
    if (status.job?.state !== "running") {
      if (status.job?.state === "done") await app.refreshComboInNodes?.();
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function start(dialog) {
  const keys = Array.from(dialog.querySelectorAll("[data-role=components] input:checked")).map((i) => i.value);
  if (!keys.length) return;
  const r = await api.fetchApi(`${ROUTE}/download`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ keys }),
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    dialog.querySelector("[data-role=progress]").textContent = body.error || `${r.status}`;
    return;
  }
  render(dialog, await r.json());
  await poll(dialog);
}

async function openDialog() {
  document.getElementById(DIALOG_ID)?.remove();
  const dialog = el("div", {
    id: DIALOG_ID, role: "dialog",
    style: "position:fixed;top:80px;left:50%;transform:translateX(-50%);z-index:10000;min-width:520px;"
      + "max-width:760px;padding:16px;border-radius:8px;background:var(--comfy-menu-bg,#222);"
      + "color:var(--fg-color,#ddd);border:1px solid var(--border-color,#555);font:14px sans-serif",
  }, [
    el("h3", { textContent: "AudioStory: download models", style: "margin:0 0 8px" }),
    el("div", { textContent: "Into ComfyUI's models/audiostory/ (through the Hugging Face cache: an interrupted "
      + "download resumes). The model root is about 20 GB.", style: "margin-bottom:8px;opacity:.8" }),
    el("div", { dataset: { role: "components" } }),
    el("div", { dataset: { role: "why" }, style: "color:#e88;margin:6px 0" }),
    el("progress", { style: "width:100%;margin:8px 0", value: 0, max: 1 }),
    el("pre", { dataset: { role: "progress" }, style: "white-space:pre-wrap;max-height:240px;overflow:auto;margin:0" }),
    el("div", { style: "margin-top:10px;display:flex;gap:8px;justify-content:flex-end" }, [
      el("button", { textContent: "Download", dataset: { role: "start" }, onclick: () => start(dialog) }),
      el("button", { textContent: "Close", onclick: () => dialog.remove() }),
    ]),
  ]);
  document.body.append(dialog);
  await poll(dialog);   // shows a download already running on the server, and what is present
  return dialog;
}

app.registerExtension({
  name: "AudioStory.ModelDownload",
  commands: [{ id: COMMAND, label: "Download models", icon: "pi pi-download", function: openDialog }],
  menuCommands: [{ path: ["Extensions", "AudioStory"], commands: [COMMAND] }],
});

// AudioStory for ComfyUI: the Planner's streamed plan and, after a run, its event list, readable on the node.
//
// The server sends the plan text with ComfyUI's progress-text message. The frontend shows such text in a
// "$$node-text-preview" widget whose CSS breaks lines anywhere inside a word (Tailwind `break-all`: "lo|ud")
// and that is two lines tall. For the nodes below this extension adds that widget itself when the node
// starts to run, before the first text arrives; the frontend then fills this one (it looks the widget up
// by name). Lines break between words, and the node grows to show the finished event list. The widget is
// not serialized, so saved workflows and widget values are unchanged.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STREAMING_NODES = ["AudioStoryPlanner"];
const WIDGET = "$$node-text-preview";      // the frontend's name for its progress-text widget
const MIN_H = 200;                          // px: the event list of a typical story without scrolling
const MAX_H = 320;

function addTextWidget(node) {
  const box = document.createElement("div");
  box.className = "audiostory-plan-text";
  Object.assign(box.style, {
    whiteSpace: "pre-wrap", wordBreak: "normal", overflowWrap: "break-word", overflowY: "auto",
    font: "12px monospace", padding: "6px 8px", boxSizing: "border-box", maxHeight: `${MAX_H}px`,
    color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)", borderRadius: "6px",
  });
  let value = "";
  const widget = node.addDOMWidget(WIDGET, "audiostoryPlanText", box, {
    getValue: () => value,
    setValue: (v) => {
      value = typeof v === "string" ? v : String(v ?? "");
      box.textContent = value;
      box.scrollTop = box.scrollHeight;
    },
    getMinHeight: () => MIN_H,
    getMaxHeight: () => MAX_H,
    serialize: false,
  });
  widget.serialize = false;
  const need = node.computeSize();
  if (node.size[1] < need[1]) node.setSize([Math.max(node.size[0], need[0]), need[1]]);
  node.setDirtyCanvas?.(true, true);
  return widget;
}

app.registerExtension({
  name: "AudioStory.PlanText",
  setup() {
    api.addEventListener("executing", (e) => {
      const id = e.detail?.display_node ?? e.detail?.node ?? e.detail;
      if (id == null) return;
      const node = app.graph?.getNodeById?.(id);
      if (!node || !STREAMING_NODES.includes(node.comfyClass ?? node.type)) return;
      if (!node.widgets?.some((w) => w.name === WIDGET)) addTextWidget(node);
    });
  },
});

// AudioStory for ComfyUI: the pack's template cards in a useful order, each with a description.
//
// ComfyUI lists a pack's templates in the order its server's directory listing happens to return them
// (glob order), and frontend 1.35 shows a custom-node template's file name as both its title and its
// description. This extension sorts the pack's list by template_cards.json (written by
// tools/build_workflows.py: "Text to long audio" first) when the frontend fetches it, and writes each
// card's description (what the template does, what it needs) under its title. Other packs' cards are
// untouched; with a frontend that draws cards differently the descriptions simply do not appear.
import { api } from "../../scripts/api.js";

const CARDS_URL = new URL("./template_cards.json", import.meta.url);
let cards = null;

async function loadCards() {
  if (cards === null) {
    try {
      cards = await (await fetch(CARDS_URL)).json();
    } catch {
      cards = [];
    }
  }
  return cards;
}

const fetchTemplates = api.getWorkflowTemplates.bind(api);
api.getWorkflowTemplates = async function () {
  const [lists, known] = await Promise.all([fetchTemplates(), loadCards()]);
  const names = known.map((c) => c.name);
  const rank = (name) => (names.includes(name) ? names.indexOf(name) : names.length);
  for (const [pack, list] of Object.entries(lists ?? {})) {
    if (Array.isArray(list) && list.some((n) => names.includes(n))) {
      lists[pack] = [...list].sort((a, b) => rank(a) - rank(b));
    }
  }
  return lists;
};

// A card holds a title (h3) and a description (p) that repeats the file name: write ours there.
function describeCards(root) {
  if (!cards?.length) return;
  for (const h of root.querySelectorAll?.("h3") ?? []) {
    const card = cards.find((c) => c.name === h.textContent.trim());
    const p = h.parentElement?.querySelector("p");
    if (card && p && p.textContent !== card.description) {
      p.textContent = card.description;
      p.title = card.description;
    }
  }
}

loadCards().then(() => {
  new MutationObserver(() => {
    // only inside open dialogs (the template browser is one)
    for (const dialog of document.querySelectorAll("[role=dialog]")) describeCards(dialog);
  }).observe(document.body, { childList: true, subtree: true });
});

// The models section: the owner's finished students (id, name, arch, classes, params,
// size, metrics), each with its "try it" box. Cards are kept by id across refreshes so
// that a prediction on screen survives a new model arriving.

import { getJson } from "./api.js";
import { byId, fill, h, keepChildren, say } from "./dom.js";
import { bytes, count, percent, shortId, when } from "./format.js";
import { predictBox } from "./predict_box.js";

const PAGE_SIZE = 100;
const MAX_CLASS_NAMES = 12;
const cards = new Map(); // model id -> element

export async function refreshModels() {
  const body = await getJson(`/api/v1/models?page_size=${PAGE_SIZE}`);
  const list = byId("models-list");
  for (const id of [...cards.keys()]) if (!body.models.some((m) => m.id === id)) cards.delete(id);
  for (const model of body.models) if (!cards.has(model.id)) cards.set(model.id, modelCard(model));
  keepChildren(list, body.models.map((model) => cards.get(model.id)));
  const status = byId("models-status");
  if (body.models.length === 0) say(status, "No models yet: each job that succeeds leaves one.");
  else say(status, `${body.models.length}${body.next_page_token ? " newest" : ""} models.`);
}

export function clearModels() {
  cards.clear();
  fill(byId("models-list"));
  say(byId("models-status"), "Enter your API key above to see your models.");
}

function modelCard(model) {
  const titleId = `model-${model.id}`;
  const article = h(
    "article",
    { class: "model", dataset: { modelId: model.id }, "aria-labelledby": titleId },
    h("h3", { id: titleId }, model.name || shortId(model.id)),
    h("p", { class: "muted" }, `${model.arch} · ${model.id}`),
    h(
      "dl",
      { class: "facts" },
      fact("Classes", classNames(model.classes)),
      fact("Parameters", count(model.params)),
      fact("Size", bytes(model.size_bytes)),
      model.metrics?.accuracy != null && fact("Accuracy", percent(model.metrics.accuracy)),
      model.serving_backend && fact("Served by", model.serving_backend),
      fact("Created", when(model.created_at)),
    ),
    predictBox(model),
  );
  return h("li", {}, article);
}

function classNames(classes = []) {
  const shown = classes.slice(0, MAX_CLASS_NAMES).join(", ");
  return classes.length > MAX_CLASS_NAMES ? `${shown}, … (${classes.length})` : shown;
}

function fact(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}

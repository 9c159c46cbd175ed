// A model's "try it" box: drop (or choose) PNG or JPEG images, POST them as multipart
// `files` to /predict?k=3, and show each image's top labels with their scores.

import { request } from "./api.js";
import { fill, h } from "./dom.js";
import { percent } from "./format.js";

const TOP_K = 3;

export function predictBox(model) {
  const inputId = `try-${model.id}`;
  const input = h("input", {
    type: "file",
    id: inputId,
    accept: "image/png,image/jpeg",
    multiple: true,
  });
  const results = h("div", { class: "predictions", "aria-live": "polite" });
  const zone = h(
    "div",
    { class: "drop-zone", dataset: { modelId: model.id } },
    h("label", { for: inputId }, "Try it: drop PNG or JPEG images here, or choose them"),
    input,
  );
  input.addEventListener("change", () => {
    predict(model, [...input.files], results);
    input.value = ""; // choosing the same file again predicts again
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    predict(model, [...(event.dataTransfer?.files ?? [])], results);
  });
  return h("div", { class: "try-it" }, zone, results);
}

async function predict(model, files, results) {
  if (files.length === 0) return;
  const body = new FormData();
  for (const file of files) body.append("files", file, file.name);
  fill(results, h("p", { class: "muted" }, `Predicting ${files.length} image(s)…`));
  try {
    const response = await request(`/api/v1/models/${encodeURIComponent(model.id)}/predict?k=${TOP_K}`, {
      method: "POST",
      body,
    });
    const { predictions } = await response.json();
    fill(results, files.map((file, i) => predictionView(file, predictions[i])));
  } catch (error) {
    fill(results, h("p", { class: "error", role: "alert" }, error.message));
  }
}

function predictionView(file, prediction) {
  const preview = h("img", { class: "preview", alt: `the image ${file.name}` });
  // The preview's object URL lives as long as the image needs it.
  const url = URL.createObjectURL(file);
  preview.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  preview.src = url;
  const topK = prediction.top_k ?? [{ label: prediction.label, score: prediction.score }];
  return h(
    "figure",
    { class: "prediction", dataset: { label: prediction.label ?? "" } },
    preview,
    h(
      "figcaption",
      {},
      h("span", { class: "file-name" }, file.name),
      prediction.values
        ? h("p", {}, `values: ${prediction.values.map((v) => v.toFixed(3)).join(", ")}`)
        : h(
            "ol",
            { class: "top-k" },
            topK.map((entry) =>
              h("li", {}, h("strong", { class: "label" }, entry.label), ` ${percent(entry.score)}`),
            ),
          ),
    ),
  );
}

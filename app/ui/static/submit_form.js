// The submit section: a JSON editor prefilled from the examples that the OpenAPI
// document gives for POST /api/v1/jobs, and the API's field errors beside it.

import { ApiError, postJson } from "./api.js";
import { byId, fill, h, say } from "./dom.js";
import { shortId } from "./format.js";
import { upsertJob } from "./job_store.js";

const JOBS_PATH = "/api/v1/jobs";

export function initSubmitForm({ onSubmitted }) {
  const form = byId("submit-form");
  const select = byId("example");
  const editor = byId("spec");
  let examples = {};
  loadExamples()
    .then((found) => {
      examples = found;
      fill(
        select,
        Object.entries(found).map(([name, example]) =>
          h("option", { value: name }, example.summary ? `${name}: ${example.summary}` : name),
        ),
      );
      if (!editor.value.trim()) showExample(editor, examples[select.value]);
    })
    .catch((error) => say(byId("submit-status"), `No examples: ${error.message}`, "error"));
  select.addEventListener("change", () => showExample(editor, examples[select.value]));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await submit(editor, onSubmitted);
    } finally {
      button.disabled = false;
    }
  });
}

// The request body's examples from the OpenAPI document (served without a key).
async function loadExamples() {
  const response = await fetch("/openapi.json");
  if (!response.ok) throw new Error(`GET /openapi.json answered ${response.status}`);
  const openapi = await response.json();
  const content = openapi.paths?.[JOBS_PATH]?.post?.requestBody?.content?.["application/json"];
  return content?.examples ?? {};
}

function showExample(editor, example) {
  if (example) editor.value = JSON.stringify(example.value, null, 2);
}

async function submit(editor, onSubmitted) {
  const status = byId("submit-status");
  showErrors(editor, null);
  let spec;
  try {
    spec = JSON.parse(editor.value);
  } catch (error) {
    showErrors(editor, "The spec is not valid JSON:", [{ field: "JSON", message: error.message }]);
    say(status, "");
    return;
  }
  say(status, "Submitting…");
  try {
    const job = await postJson(JOBS_PATH, spec);
    upsertJob(job);
    say(status, `Submitted job ${job.name || ""} ${shortId(job.id)}: ${job.state}.`, "ok");
    onSubmitted(job);
  } catch (error) {
    say(status, "");
    if (!(error instanceof ApiError)) showErrors(editor, `The request failed: ${error.message}`);
    else if (error.fieldErrors.length === 0) showErrors(editor, error.message);
    else showErrors(editor, `The API refused this spec (${error.status}):`, error.fieldErrors);
  }
}

// What is wrong, then each field's message, next to the editor; null clears them.
function showErrors(editor, heading, errors = []) {
  const box = byId("spec-errors");
  editor.setAttribute("aria-invalid", String(Boolean(heading)));
  if (!heading) {
    fill(box);
    box.hidden = true;
    return;
  }
  box.hidden = false;
  fill(
    box,
    h("p", {}, heading),
    errors.length > 0 &&
      h(
        "ul",
        {},
        errors.map((e) =>
          h("li", { dataset: { field: e.field } }, h("code", {}, e.field), `: ${e.message}`),
        ),
      ),
  );
}

// How a job's status reads: its state as a badge, and its progress as a bar with words
// (stage, epoch/epochs, fraction, loss, ETA). Built once per place that shows them, then
// updated in place as events arrive.

import { h } from "./dom.js";
import { decimal, duration, percent, stageLine } from "./format.js";

export function progressView(label) {
  const bar = h("progress", { max: "1", value: "0", "aria-label": label });
  const words = h("span", { class: "progress-words" });
  const el = h("div", { class: "progress" }, bar, words);
  return { el, update: (job) => updateProgress(bar, words, job) };
}

function updateProgress(bar, words, job) {
  const p = job.progress ?? {};
  const fraction = job.state === "SUCCEEDED" ? 1 : (p.fraction ?? 0);
  bar.value = fraction;
  bar.dataset.fraction = String(fraction);
  const parts = [];
  if (job.state === "SUCCEEDED") parts.push("done");
  else if (job.state === "QUEUED") parts.push("waiting for a worker");
  else {
    if (p.stage && p.stage !== "done") parts.push(stageLine(p));
    parts.push(percent(fraction, 0));
    if (p.loss != null) parts.push(`loss ${decimal(p.loss)}`);
    if (p.eta_seconds != null && job.state === "RUNNING") parts.push(`ETA ${duration(p.eta_seconds)}`);
  }
  words.textContent = parts.join(" · ");
}

export function setState(el, state) {
  el.textContent = state;
  el.dataset.state = state;
}

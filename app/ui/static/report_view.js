// A finished job's report: teacher vs student vs scratch baseline (accuracy, params,
// size, latency), compression and speedup, the gain over the baseline in words, the
// one-line summary, and a size search's candidates. Shows whatever the report has and
// leaves out what it lacks; a job without a report shows its final metrics.

import { h } from "./dom.js";
import { bytes, count, decimal, millis, percent, points, versus } from "./format.js";

const COLUMNS = [
  ["teacher", "Teacher"],
  ["student", "Student"],
  ["baseline", "Student from scratch"],
];
// [key, row title, the cell from one network's figures]
const ROWS = [
  ["model", "Model", (f) => modelName(f)],
  ["accuracy", "Accuracy", (f) => (f.accuracy == null ? note(f.accuracy_note) : percent(f.accuracy))],
  ["interval", "95% interval", (f) => interval(f.accuracy_ci95)],
  ["params", "Parameters", (f) => count(f.params)],
  ["size", "Size (weights file)", (f) => bytes(f.size_bytes)],
  ["latency", "Latency (batch 1)", (f) => millis(f.latency_ms)],
];
const CANDIDATE_COLUMNS = ["#", "Model", "Accuracy", "Parameters", "Size", "Latency", "Outcome"];

export function reportView(job) {
  const report = job.report;
  if (report && (report.teacher || report.student)) return fullReport(report);
  // Until the final answer arrives, job.metrics are the last epoch's, not the evaluation's.
  if (job.state === "SUCCEEDED" && job.finished_at && job.metrics) return metricsOnly(job.metrics);
  return h("p", { class: "muted" }, reportPending(job));
}

function reportPending(job) {
  if (job.state === "FAILED") return "The job failed: no report.";
  if (job.state === "CANCELLED") return "The job was cancelled: no report.";
  if (job.state === "SUCCEEDED") return "Loading the report…";
  return "The report comes when the job succeeds.";
}

function fullReport(report) {
  return [
    report.summary ? h("p", { class: "summary" }, report.summary) : null,
    report.eval_note ? h("p", { class: "muted eval-note" }, `Small evaluation set: ${report.eval_note}.`) : null,
    figuresTable(report),
    headlines(report),
    report.candidates ? candidatesTable(report) : null,
  ];
}

function figuresTable(report) {
  const columns = COLUMNS.filter(([key]) => report[key]);
  const caption = ["Measured"];
  if (report.eval_samples) caption.push(`on ${count(report.eval_samples)} evaluation images`);
  if (report.latency_device) caption.push(`(latency on ${report.latency_device})`);
  const head = h("tr", {}, h("td"), columns.map(([, title]) => h("th", { scope: "col" }, title)));
  const rows = ROWS.map(([key, title, cell]) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, title),
      columns.map(([who]) => figureCell(`${who}.${key}`, cell(report[who]))),
    ),
  );
  return table(caption.join(" "), head, rows);
}

function headlines(report) {
  const items = [];
  if (report.compression != null) {
    items.push(["Compression", `${versus(report.compression, "fewer", "more")} parameters than the teacher`]);
  }
  if (report.speedup != null) {
    items.push(["Speedup", `${versus(report.speedup, "faster", "slower")} than the teacher`]);
  }
  if (report.gain_over_baseline != null) {
    const gain = points(report.gain_over_baseline);
    items.push(["Gain", `${gain} over the same student trained from scratch`]);
  }
  const serving = report.student?.serving;
  if (serving?.backend) {
    items.push(["Served by", `${serving.backend}, ${millis(serving.latency_ms)} per image`]);
  }
  const int8 = report.student?.int8;
  if (int8) {
    const figures = [`accuracy ${percent(int8.accuracy)}`, millis(int8.latency_ms), bytes(int8.size_bytes)];
    items.push(["int8", figures.join(", ")]);
  }
  if (report.strategy) items.push(["Strategy", report.strategy.replaceAll("_", " ")]);
  return h(
    "dl",
    { class: "headlines" },
    items.map(([term, text]) => [
      h("dt", {}, term),
      h("dd", { dataset: { headline: term.toLowerCase() } }, text),
    ]),
  );
}

function candidatesTable(report) {
  const caption = `Size search: the candidates${report.chosen_reason ? ` (${report.chosen_reason})` : ""}`;
  const head = h("tr", {}, CANDIDATE_COLUMNS.map((title) => h("th", { scope: "col" }, title)));
  const rows = report.candidates.map((c, i) =>
    h(
      "tr",
      { class: i === report.chosen ? "chosen" : null },
      h("td", {}, String(i)),
      h("td", {}, modelName({ ...c.model, ...c }) ?? "–"),
      h("td", {}, percent(c.accuracy)),
      h("td", {}, count(c.params)),
      h("td", {}, bytes(c.size_bytes)),
      h("td", {}, millis(c.latency_ms)),
      h("td", {}, i === report.chosen ? "chosen" : (c.skipped ?? "trained")),
    ),
  );
  return table(caption, head, rows, "candidates");
}

function metricsOnly(metrics) {
  const rows = [
    ["accuracy", "Accuracy", metrics.accuracy, percent],
    ["loss", "Loss", metrics.loss, decimal],
    ["samples", "Evaluation images", metrics.eval_samples, count],
  ]
    .filter(([, , value]) => value != null)
    .map(([key, title, value, show]) =>
      h("tr", {}, h("th", { scope: "row" }, title), figureCell(`student.${key}`, show(value))),
    );
  const head = h("tr", {}, h("td"), h("th", { scope: "col" }, "Student"));
  return table("The trained model on its evaluation set", head, rows);
}

function table(caption, headRow, bodyRows, extraClass = "") {
  return h(
    "table",
    { class: `figures ${extraClass}`.trim() },
    h("caption", {}, caption),
    h("thead", {}, headRow),
    h("tbody", {}, bodyRows),
  );
}

function figureCell(name, content) {
  return h("td", { dataset: { figure: name } }, content ?? "–");
}

function modelName(figures) {
  if (!figures.arch) return null;
  return figures.width == null ? figures.arch : `${figures.arch} ×${figures.width}`;
}

// Why a figure is missing (a teacher that predicts other classes than the evaluation set).
function note(text) {
  return text ? h("span", { class: "muted" }, text) : null;
}

// An accuracy's 95% interval (the report's accuracy_ci95), as percentages.
function interval(bounds) {
  if (!bounds) return "–"; // as format.js shows a missing figure
  return `${percent(bounds[0])} – ${percent(bounds[1])}`;
}

// A job's events as the panel shows them: its stages (from progress and metric events:
// epochs done, the latest metrics) and the event log itself. Events are drawn once per
// frame: a long job's history arrives as hundreds of events in one read.

import { fill, h } from "./dom.js";
import { decimal, duration, percent, stageLine } from "./format.js";

const MAX_LOG_ITEMS = 1000;
const HIDDEN_METRICS = new Set(["stage", "epoch", "lr"]);

export function jobEventsView(stagesBody, log) {
  let stages = new Map(); // stage name -> {epoch, epochs, fraction, metrics}
  let stageSeconds = {};
  let pending = [];
  let frame = null;

  const flush = () => {
    frame = null;
    const batch = pending;
    pending = [];
    // Every event is tracked (no short-circuit); the table is drawn once for the batch.
    const moved = batch.map((event) => trackStage(stages, event)).includes(true);
    if (moved) renderStages(stagesBody, stages, stageSeconds);
    appendLog(log, batch);
  };
  return {
    reset() {
      if (frame !== null) cancelAnimationFrame(frame);
      frame = null;
      pending = [];
      stages = new Map();
      stageSeconds = {};
      fill(stagesBody);
      fill(log);
    },
    add(event) {
      pending.push(event);
      frame ??= requestAnimationFrame(flush);
    },
    // The report's seconds per stage, once the job has one.
    setStageSeconds(seconds) {
      stageSeconds = seconds ?? {};
      renderStages(stagesBody, stages, stageSeconds);
    },
  };
}

function trackStage(stages, { event, data }) {
  if (event !== "progress" && event !== "metric") return false;
  if (!data?.stage || data.stage === "done") return false;
  const stage = stages.get(data.stage) ?? { epoch: 0, epochs: null, fraction: 0, metrics: null };
  if (event === "progress") {
    stage.epochs = data.epochs ?? stage.epochs;
    stage.epoch = data.epoch ?? stage.epoch;
    stage.fraction = data.fraction ?? stage.fraction;
  } else {
    stage.epoch = Math.max(stage.epoch, data.epoch ?? 0);
    stage.metrics = data;
  }
  stages.set(data.stage, stage);
  return true;
}

function renderStages(body, stages, seconds) {
  const names = [...stages.keys()];
  fill(
    body,
    names.map((name, i) => {
      const stage = stages.get(name);
      // A later stage has begun: this one is over, whatever its last event said.
      const over = i < names.length - 1 || stage.fraction >= 1;
      return h(
        "tr",
        { dataset: { stage: name } },
        h("th", { scope: "row" }, name),
        h("td", {}, stage.epochs ? `${stage.epoch}/${stage.epochs}` : String(stage.epoch)),
        h("td", {}, over ? "done" : percent(stage.fraction, 0)),
        h("td", {}, metricsText(stage.metrics)),
        h("td", {}, seconds[name] == null ? "" : duration(seconds[name])),
      );
    }),
  );
}

function metricsText(metrics) {
  if (!metrics) return "";
  return Object.entries(metrics)
    .filter(([key, value]) => !HIDDEN_METRICS.has(key) && typeof value === "number")
    .map(([key, value]) => `${key} ${/accuracy|agreement/.test(key) ? percent(value) : decimal(value)}`)
    .join(", ");
}

function appendLog(log, events) {
  // Follow the end only if the reader was there: one reading scrolled up stays put.
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  log.append(...events.map(logItem));
  while (log.children.length > MAX_LOG_ITEMS) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function logItem(event) {
  return h(
    "li",
    { dataset: { eventId: event.id ?? "", type: event.event } },
    h("span", { class: "event-id" }, `#${event.id ?? "?"}`),
    " ",
    h("span", { class: "event-type" }, event.event),
    " ",
    describe(event),
  );
}

function describe({ event, data }) {
  if (typeof data !== "object" || data === null) return String(data);
  switch (event) {
    case "state":
      return describeState(data);
    case "progress":
      return data.message ?? describeProgress(data);
    case "metric":
      return `${data.stage}${data.epoch == null ? "" : ` epoch ${data.epoch}`} · ${metricsText(data)}`;
    case "log":
      return `${data.level && data.level !== "info" ? `[${data.level}] ` : ""}${data.message ?? ""}`;
    default:
      return JSON.stringify(data);
  }
}

function describeProgress(data) {
  const parts = [stageLine(data), percent(data.fraction, 0)];
  if (data.loss != null) parts.push(`loss ${decimal(data.loss)}`);
  return parts.filter(Boolean).join(" · ");
}

function describeState(data) {
  const where = [];
  if (data.attempt) where.push(`attempt ${data.attempt}`);
  if (data.worker) where.push(`on ${data.worker}`);
  const why = data.error?.message ?? data.message;
  return [data.state, where.length ? `(${where.join(" ")})` : "", why ?? ""].filter(Boolean).join(" ");
}

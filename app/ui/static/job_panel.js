// The job panel: one job's state and live progress, its stages, report, plots and event
// log, with Cancel and Delete (the API's problem detail shown when it refuses).

import { request } from "./api.js";
import { byId, fill, h, say } from "./dom.js";
import { shortId, when } from "./format.js";
import { jobEventsView } from "./job_events_view.js";
import {
  applyEvent,
  getJob,
  isFinished,
  onJobsChange,
  reloadJob,
  removeJob,
  upsertJob,
} from "./job_store.js";
import { watchJob } from "./job_streams.js";
import { progressView, setState } from "./job_status.js";
import { plotsView } from "./plots_view.js";
import { reportView } from "./report_view.js";

// A running job's plots are redrawn as epochs end, at most this often.
const PLOT_REDRAW_MS = 5_000;

let current = null; // {id, unsubscribe, reportKey, phase, plotsAt}
let panel, progress, eventsView, plots, onSelect;

export function initJobPanel({ onSelectionChange }) {
  panel = byId("job-panel");
  onSelect = onSelectionChange;
  progress = progressView("Progress of the selected job");
  byId("job-progress").replaceWith(progress.el);
  eventsView = jobEventsView(byId("stages-body"), byId("events-log"));
  plots = plotsView(byId("plots-body"));
  byId("cancel-job").addEventListener("click", () => act(cancel));
  byId("delete-job").addEventListener("click", () => act(remove));
  byId("close-job").addEventListener("click", closeJob);
  byId("reload-plots").addEventListener("click", () => current && loadPlots());
  onJobsChange((change) => {
    if (current && (change.listed || change.id === current.id)) render();
  });
}

export async function openJob(id) {
  closeJob();
  current = { id, unsubscribe: () => {}, reportKey: null, phase: null, plotsAt: 0 };
  panel.hidden = false;
  say(byId("job-action-status"), "");
  onSelect(id);
  if (!getJob(id)) {
    try {
      await reloadJob(id);
    } catch (error) {
      if (current?.id === id) closeJob();
      throw error;
    }
  }
  if (current?.id !== id) return;
  render();
  current.unsubscribe = watchJob(
    id,
    (event) => {
      // The store moves the job's state and progress (its row too); the panel adds the log.
      applyEvent(id, event);
      eventsView.add(event);
      if (event.event === "metric" && Date.now() - current.plotsAt > PLOT_REDRAW_MS) loadPlots();
    },
    (error) => say(byId("job-action-status"), error.message, "error"),
  );
  byId("job-title").focus();
}

export function closeJob() {
  if (!current) return;
  current.unsubscribe();
  current = null;
  plots.clear();
  eventsView.reset();
  panel.hidden = true;
  onSelect(null);
}

function render() {
  const job = getJob(current.id);
  if (!job) return;
  byId("job-title").textContent = `Job ${job.name || shortId(job.id)}`;
  setState(byId("job-state"), job.state);
  fill(
    byId("job-meta"),
    meta("Id", job.id),
    meta("Kind", job.kind),
    meta("Created", when(job.created_at)),
    job.started_at && meta("Started", when(job.started_at)),
    job.finished_at && meta("Finished", when(job.finished_at)),
    meta("Attempts", `${job.attempts} of ${job.max_attempts}`),
    job.model_id && meta("Model", job.model_id),
  );
  const error = byId("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  progress.update(job);
  renderReport(job);
  // Plots on opening, when the job starts, and once it is over (its last epochs drawn).
  const phase = job.state === "QUEUED" ? "waiting" : isFinished(job) ? "over" : "running";
  if (current.phase !== phase) {
    current.phase = phase;
    loadPlots();
  }
}

function loadPlots() {
  current.plotsAt = Date.now();
  plots.load(getJob(current.id));
}

// The report only changes when the job finishes (and its final answer, with finished_at,
// arrives): rebuilding it on every progress event would reset a reader's scroll.
function renderReport(job) {
  const key = `${job.state}:${job.finished_at ?? ""}:${Boolean(job.report)}`;
  if (key === current.reportKey) return;
  current.reportKey = key;
  fill(byId("report-body"), reportView(job));
  eventsView.setStageSeconds(job.report?.stages);
}

function meta(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}

async function act(action) {
  const id = current?.id;
  if (!id) return;
  const status = byId("job-action-status");
  try {
    say(status, await action(id), "ok");
  } catch (error) {
    say(status, error.message, "error");
  }
}

async function cancel(id) {
  const response = await request(`/api/v1/jobs/${encodeURIComponent(id)}:cancel`, { method: "POST" });
  const job = await response.json();
  upsertJob(job);
  return `Cancel requested: the job is ${job.state}.`;
}

async function remove(id) {
  await request(`/api/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  closeJob();
  removeJob(id);
  say(byId("jobs-status"), `Job ${shortId(id)} deleted (its model stays).`, "ok");
  return "";
}

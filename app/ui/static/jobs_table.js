// The jobs section: the owner's jobs, newest first, each row updated in place as its
// events arrive (so that focus and the selected row survive updates).

import { byId, h, keepChildren, say } from "./dom.js";
import { getJob, hasMoreJobs, jobList, onJobsChange } from "./job_store.js";
import { progressView, setState } from "./job_status.js";
import { shortId } from "./format.js";

const SIGNED_OUT = "Enter your API key above to see your jobs.";
const rows = new Map(); // job id -> {el, openButton, update}

export function initJobsTable({ onOpen }) {
  const body = byId("jobs-body");
  onJobsChange((change) => {
    if (change.cleared) renderAll(body, onOpen, SIGNED_OUT);
    else if (change.listed || change.removed || !rows.has(change.id)) renderAll(body, onOpen);
    else rows.get(change.id).update();
  });
}

export function markSelected(jobId) {
  for (const [id, row] of rows) {
    row.el.classList.toggle("selected", id === jobId);
    if (id === jobId) row.openButton.setAttribute("aria-current", "true");
    else row.openButton.removeAttribute("aria-current");
  }
}

function renderAll(body, onOpen, emptyText = "No jobs yet: submit one with the editor.") {
  const jobs = jobList();
  for (const id of [...rows.keys()]) if (!jobs.some((job) => job.id === id)) rows.delete(id);
  for (const job of jobs) if (!rows.has(job.id)) rows.set(job.id, jobRow(job.id, onOpen));
  keepChildren(body, jobs.map((job) => rows.get(job.id).el));
  for (const job of jobs) rows.get(job.id).update();
  const status = byId("jobs-status");
  if (jobs.length === 0) say(status, emptyText);
  else say(status, hasMoreJobs() ? `The newest ${jobs.length} jobs.` : `${jobs.length} jobs.`);
}

function jobRow(id, onOpen) {
  const openButton = h("button", { type: "button", class: "link", onclick: () => onOpen(id) });
  const kind = h("span", { class: "muted" });
  const state = h("span", { class: "state" });
  const progress = progressView(`Progress of job ${shortId(id)}`);
  const el = h(
    "tr",
    { dataset: { jobId: id } },
    h("td", {}, openButton, " ", kind),
    h("td", {}, state),
    h("td", {}, progress.el),
  );
  const update = () => {
    const job = getJob(id);
    if (!job) return;
    openButton.textContent = job.name || shortId(job.id);
    openButton.setAttribute("aria-label", `Open job ${job.name || ""} ${shortId(job.id)}`.trim());
    kind.textContent = `${job.kind} · ${shortId(job.id)}`;
    setState(state, job.state);
    progress.update(job);
  };
  return { el, openButton, update };
}

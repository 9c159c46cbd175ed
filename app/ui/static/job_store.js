// The jobs this page knows, newest first: loaded from GET /api/v1/jobs and kept current
// by the event streams of the newest unfinished jobs; a periodic re-list catches the
// rest (jobs submitted elsewhere, states of jobs without a stream).

import { getJson } from "./api.js";
import { FINISHED_STATES, watchJob } from "./job_streams.js";

const PAGE_SIZE = 100;
// Streams for list rows; the job panel may hold one more, under the browser's six.
const MAX_LIVE_ROWS = 3;
const PROGRESS_FIELDS = ["stage", "epoch", "epochs", "step", "steps", "fraction", "eta_seconds", "loss"];

const jobs = new Map(); // id -> the API's Job, patched by its events
const lastApplied = new Map(); // id -> the last event id applied (streams may replay)
const live = new Map(); // id -> unsubscribe from its stream
const listeners = new Set();
let order = []; // ids, newest first
let more = false; // whether the API has older jobs than the page shows

export function onJobsChange(listener) {
  listeners.add(listener);
}

export function jobList() {
  return order.map((id) => jobs.get(id));
}

export function hasMoreJobs() {
  return more;
}

export function getJob(id) {
  return jobs.get(id);
}

export function isFinished(job) {
  return FINISHED_STATES.has(job?.state);
}

export async function refreshJobs() {
  const body = await getJson(`/api/v1/jobs?page_size=${PAGE_SIZE}`);
  order = body.jobs.map((job) => job.id);
  for (const id of jobs.keys()) if (!order.includes(id)) forget(id);
  for (const job of body.jobs) jobs.set(job.id, job);
  more = Boolean(body.next_page_token);
  followUnfinished();
  emit({ listed: true });
}

export async function reloadJob(id) {
  const job = await getJson(`/api/v1/jobs/${encodeURIComponent(id)}`);
  upsertJob(job);
  return job;
}

// A job as the API answered it (after submit, cancel or a reload).
export function upsertJob(job) {
  const known = jobs.get(job.id);
  if (!order.includes(job.id)) order.unshift(job.id);
  jobs.set(job.id, known ? { ...known, ...job } : job);
  followUnfinished();
  emit({ id: job.id });
}

export function removeJob(id) {
  order = order.filter((other) => other !== id);
  forget(id);
  emit({ id, removed: true });
}

export function clearJobs() {
  for (const id of [...jobs.keys()]) forget(id);
  order = [];
  more = false;
  emit({ listed: true, cleared: true });
}

// One of the job's events (from any stream that shows it): its state and progress move.
export function applyEvent(id, event) {
  const job = jobs.get(id);
  // A finished job no longer changes: a replay of its history must not move it back.
  if (!job || isFinished(job)) return;
  if (event.id !== null && event.id <= (lastApplied.get(id) ?? 0)) return;
  if (event.id !== null) lastApplied.set(id, event.id);
  if (event.event === "progress") {
    job.progress = Object.fromEntries(PROGRESS_FIELDS.map((f) => [f, event.data[f] ?? null]));
    if (event.data.stage) job.stage = event.data.stage;
  } else if (event.event === "metric") {
    job.metrics = event.data;
  } else if (event.event === "state") {
    job.state = event.data.state;
    // The final job carries what events do not: report, model id, error, times.
    if (FINISHED_STATES.has(job.state)) reloadJob(id).catch(() => {});
  }
  emit({ id, event });
}

function followUnfinished() {
  const wanted = order.filter((id) => !isFinished(jobs.get(id))).slice(0, MAX_LIVE_ROWS);
  for (const [id, unsubscribe] of live) {
    if (!wanted.includes(id)) {
      unsubscribe();
      live.delete(id);
    }
  }
  for (const id of wanted) {
    if (!live.has(id)) live.set(id, watchJob(id, (event) => applyEvent(id, event)));
  }
}

function forget(id) {
  live.get(id)?.();
  live.delete(id);
  jobs.delete(id);
  lastApplied.delete(id);
}

function emit(change) {
  for (const listener of listeners) listener(change);
}

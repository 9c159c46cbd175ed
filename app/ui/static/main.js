// The dashboard's entry point: wires the sections together and keeps the job list fresh.
// Everything shown comes through the authenticated API (api.js); the page needs no key.

import { apiKey, onUnauthorized } from "./api.js";
import { byId, say } from "./dom.js";
import { closeJob, initJobPanel, openJob } from "./job_panel.js";
import { clearJobs, jobList, onJobsChange, refreshJobs } from "./job_store.js";
import { stopAllStreams } from "./job_streams.js";
import { initJobsTable, markSelected } from "./jobs_table.js";
import { initKeyForm, keyAccepted, keyRefused } from "./key_form.js";
import { clearModels, refreshModels } from "./models_view.js";
import { initSubmitForm } from "./submit_form.js";

// Streams move the newest unfinished jobs; this re-list catches everything else.
const RELIST_MS = 5000;
const HASH_PREFIX = "#job/";

let relistTimer = null;
const modelsAsked = new Set(); // model ids of finished jobs the models list was refreshed for

async function start() {
  const wanted = jobInHash(); // before stop(), which closes the panel and clears the hash
  stop();
  try {
    await Promise.all([refreshJobs(), refreshModels()]);
  } catch (error) {
    if (error.status !== 401) say(byId("jobs-status"), error.message, "error");
    return;
  }
  keyAccepted();
  // What the models list already shows; later model ids mean jobs that just succeeded.
  for (const job of jobList()) if (job.model_id) modelsAsked.add(job.model_id);
  relistTimer = setInterval(relist, RELIST_MS);
  if (wanted) openJob(wanted).catch(showOpenError);
}

// A job's panel is linkable: /ui#job/<id> opens it once the key is accepted.
function jobInHash() {
  const { hash } = location;
  return hash.startsWith(HASH_PREFIX) ? decodeURIComponent(hash.slice(HASH_PREFIX.length)) : "";
}

function stop() {
  clearInterval(relistTimer);
  relistTimer = null;
  closeJob();
  stopAllStreams();
  clearJobs();
  clearModels();
  modelsAsked.clear();
}

async function relist() {
  if (document.hidden || !apiKey.get()) return;
  try {
    await refreshJobs();
  } catch (error) {
    if (error.status !== 401) say(byId("jobs-status"), `Could not refresh: ${error.message}`, "error");
  }
}

// A job that succeeded left a model: show it in the models list.
function refreshModelsForNewJobs() {
  if (relistTimer === null) return; // start() is loading both lists
  const fresh = jobList().filter((job) => job.model_id && !modelsAsked.has(job.model_id));
  if (fresh.length === 0) return;
  for (const job of fresh) modelsAsked.add(job.model_id);
  refreshModels().catch((error) => say(byId("models-status"), error.message, "error"));
}

function selectionChanged(jobId) {
  markSelected(jobId);
  const address = jobId ? `${HASH_PREFIX}${encodeURIComponent(jobId)}` : location.pathname;
  history.replaceState(null, "", address);
}

function showOpenError(error) {
  say(byId("jobs-status"), error.message, "error");
}

onUnauthorized((error) => {
  stop();
  keyRefused(error);
});
initJobsTable({ onOpen: (id) => openJob(id).catch(showOpenError) });
initJobPanel({ onSelectionChange: selectionChanged });
initSubmitForm({ onSubmitted: (job) => openJob(job.id).catch(showOpenError) });
onJobsChange(refreshModelsForNewJobs);
initKeyForm({ onKey: start, onNoKey: stop });

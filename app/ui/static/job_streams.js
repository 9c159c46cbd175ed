// One event stream per job, shared by whoever shows that job (its list row, the job
// panel): a browser keeps at most six connections per host, and each open stream holds
// one. A late subscriber first gets the events seen so far, then the live ones.

import { EventStream } from "./sse.js";

export const FINISHED_STATES = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
// A job with a long history replays it all; past this many the oldest are dropped.
const MAX_BUFFERED = 5000;

const streams = new Map(); // job id -> {stream, events, listeners, finished}

// Calls listener(event) for each of the job's events; returns the unsubscribe function.
export function watchJob(jobId, listener, onError = () => {}) {
  let entry = streams.get(jobId);
  if (!entry) entry = open(jobId);
  entry.listeners.add(listener);
  entry.errorListeners.add(onError);
  for (const event of entry.events) listener(event);
  return () => {
    entry.listeners.delete(listener);
    entry.errorListeners.delete(onError);
    if (entry.listeners.size === 0) {
      entry.stream.stop();
      streams.delete(jobId);
    }
  };
}

export function stopAllStreams() {
  for (const entry of streams.values()) entry.stream.stop();
  streams.clear();
}

function open(jobId) {
  const entry = {
    events: [],
    listeners: new Set(),
    errorListeners: new Set(),
    finished: false,
    stream: null,
  };
  entry.stream = new EventStream(`/api/v1/jobs/${encodeURIComponent(jobId)}/events`, {
    onEvent: (event) => deliver(entry, event),
    // The API ends a job's stream after its final state; any other end is a drop.
    shouldResume: () => !entry.finished,
    onError: (error) => {
      for (const listener of entry.errorListeners) listener(error);
    },
  });
  streams.set(jobId, entry);
  entry.stream.start();
  return entry;
}

function deliver(entry, event) {
  if (event.event === "state" && FINISHED_STATES.has(event.data?.state)) entry.finished = true;
  entry.events.push(event);
  if (entry.events.length > MAX_BUFFERED) entry.events.shift();
  for (const listener of entry.listeners) listener(event);
}

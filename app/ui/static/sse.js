// Server-Sent Events read with fetch() and a stream reader: EventSource cannot send the
// Authorization header. When the connection drops, the stream resumes where it stopped
// by sending the last event's id as Last-Event-ID, as the API promises.

import { ApiError, authHeaders, errorFrom } from "./api.js";

const DEFAULT_RETRY_MS = 2000;

// One event block ("id: 3\nevent: state\ndata: {...}") as {id, event, data, retry}.
export function parseBlock(block) {
  const fields = { id: null, event: "message", data: null, retry: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue; // a comment: keep-alives
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") data.push(value);
    else if (name === "id") fields.id = value;
    else if (name === "event") fields.event = value;
    else if (name === "retry" && /^\d+$/.test(value)) fields.retry = Number(value);
  }
  if (data.length) fields.data = data.join("\n");
  return fields;
}

export class EventStream {
  // onEvent({id, event, data}) for each event (data parsed as JSON when it is);
  // shouldResume() says whether a stream that the server ended should be reopened;
  // onError(ApiError) when the API refuses the stream (retrying would not help).
  constructor(url, { onEvent, shouldResume = () => true, onError = () => {} }) {
    this.url = url;
    this.onEvent = onEvent;
    this.shouldResume = shouldResume;
    this.onError = onError;
    this.lastEventId = null;
    this.retryMs = DEFAULT_RETRY_MS;
    this.controller = new AbortController();
    this.stopped = false;
  }

  start() {
    this.#run();
    return this;
  }

  stop() {
    this.stopped = true;
    this.controller.abort();
  }

  async #run() {
    while (!this.stopped) {
      try {
        await this.#readOnce();
        if (!this.shouldResume()) return;
      } catch (error) {
        if (this.stopped) return;
        // A 4xx (no key, no such job) will not mend itself; network errors and 5xx might.
        if (error instanceof ApiError && error.status < 500) {
          this.onError(error);
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, this.retryMs));
    }
  }

  async #readOnce() {
    const headers = { Accept: "text/event-stream" };
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    const response = await fetch(this.url, {
      headers: authHeaders(headers),
      signal: this.controller.signal,
      cache: "no-store",
    });
    if (!response.ok) throw await errorFrom(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Joined before normalising: a CRLF may be split between two chunks.
      buffer = (buffer + value).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.#dispatch(parseBlock(buffer.slice(0, end)));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  #dispatch(block) {
    if (block.retry !== null) this.retryMs = block.retry;
    if (block.id !== null) this.lastEventId = block.id;
    if (block.data === null || this.stopped) return;
    let data = block.data;
    try {
      data = JSON.parse(block.data);
    } catch {
      // Not JSON: handed on as text.
    }
    this.onEvent({ id: block.id === null ? null : Number(block.id), event: block.event, data });
  }
}

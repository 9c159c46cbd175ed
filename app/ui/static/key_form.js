// The API key: typed once, kept in sessionStorage for the tab's life, and sent as
// `Authorization: Bearer <key>` by api.js. A refused key shows the API's own 401 message.

import { apiKey } from "./api.js";
import { byId, say } from "./dom.js";

// onKey() runs with a key to try; onNoKey() when there is none (on load, or forgotten).
export function initKeyForm({ onKey, onNoKey }) {
  const form = byId("key-form");
  const input = byId("api-key");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    apiKey.set(key);
    input.value = "";
    say(keyStatus(), "Checking the key…");
    onKey();
  });
  byId("forget-key").addEventListener("click", () => {
    apiKey.clear();
    onNoKey();
    say(keyStatus(), "Key forgotten. Enter a key to see your jobs and models.");
    input.focus();
  });
  if (apiKey.get()) {
    say(keyStatus(), "Using the key saved in this tab…");
    onKey();
  } else {
    onNoKey();
    say(keyStatus(), "Enter your API key (stillhouse keys create --owner NAME).");
  }
}

export function keyAccepted() {
  say(keyStatus(), "Key accepted: these are your jobs and models.", "ok");
  document.body.dataset.auth = "accepted";
}

export function keyRefused(error) {
  apiKey.clear();
  say(keyStatus(), `The API refused the key (${error.status}): ${error.message}`, "error");
  document.body.dataset.auth = "refused";
}

function keyStatus() {
  return byId("key-status");
}

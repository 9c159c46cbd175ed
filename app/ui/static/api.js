// The one door to the API: every request carries the key from sessionStorage, and an
// error answer becomes an ApiError that keeps the API's own words (problem+json).

const KEY_ITEM = "stillhouse.apiKey";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `the API answered ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem ?? {};
    // Field problems: [{field, message}], as the API names them.
    this.fieldErrors = Array.isArray(problem?.errors) ? problem.errors : [];
  }
}

// Kept for the browser tab's life only: a key in localStorage would outlive the session.
export const apiKey = {
  get: () => sessionStorage.getItem(KEY_ITEM) ?? "",
  set: (key) => sessionStorage.setItem(KEY_ITEM, key),
  clear: () => sessionStorage.removeItem(KEY_ITEM),
};

const unauthorizedListeners = new Set();

// Called with the ApiError of any 401, wherever it happened.
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

export function authHeaders(extra = {}) {
  return { ...extra, Authorization: `Bearer ${apiKey.get()}` };
}

export async function errorFrom(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    // Not JSON (a proxy's error page, say): the status alone must do.
  }
  const error = new ApiError(response.status, problem);
  if (response.status === 401) {
    for (const listener of unauthorizedListeners) listener(error);
  }
  return error;
}

export async function request(path, { method = "GET", headers = {}, body, signal } = {}) {
  const response = await fetch(path, { method, headers: authHeaders(headers), body, signal });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export async function postJson(path, data) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data),
  });
  return response.json();
}

export async function getBlob(path) {
  return (await request(path)).blob();
}

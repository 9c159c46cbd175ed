// Building elements without innerHTML: text from the API is always set as text.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...present(children));
  return el;
}

export function fill(el, ...children) {
  el.replaceChildren(...present(children));
  return el;
}

// Children set only when they differ: moving a node out of the document takes its focus,
// so a periodic refresh must not re-append an unchanged list.
export function keepChildren(el, nodes) {
  const same = el.children.length === nodes.length && nodes.every((node, i) => el.children[i] === node);
  if (!same) el.replaceChildren(...nodes);
  return el;
}

export function byId(id) {
  return document.getElementById(id);
}

// A status line: text with a tone ("ok", "error" or none) that CSS colours.
export function say(el, text, tone = "") {
  el.textContent = text;
  el.dataset.tone = tone;
}

function present(children) {
  return children.flat(Infinity).filter((child) => child != null && child !== false);
}

// Building the page without innerHTML: every text a run, a log or a user wrote is set as
// text, so nothing it holds can become markup or script.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

export function announce(text) {
  // For screen readers: what changed without their moving there.
  const region = document.getElementById("announce");
  if (region) region.textContent = text;
}

const TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function moment(iso) {
  if (!iso) return "";
  return TIME.format(new Date(iso));
}

export function took(startedIso, finishedIso, now = Date.now()) {
  if (!startedIso) return "";
  const end = finishedIso ? Date.parse(finishedIso) : now;
  const seconds = Math.max(0, (end - Date.parse(startedIso)) / 1000);
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

export function badge(word) {
  // The word is always shown: colour only repeats what it says.
  return h("span", { class: `badge s-${word}` }, word.replace("_", " "));
}

// The marker a live page shows beside its heading, and the `onState` that keeps it true
// (for `follow`).
export function liveMarker() {
  const element = h("span", { class: "live", "aria-live": "polite" }, "");
  const onState = (state) => {
    element.textContent = state === "live" ? "● live" : "reconnecting…";
    element.className = `live ${state}`;
  };
  return { element, onState };
}

// A task of a run: what it did (status, attempts, outputs), its log and its artifacts.
// The log opens at its end, a range of bytes at a time, so a 100 MB log costs the page a
// few hundred KB; earlier output is fetched on demand. While the attempt runs the log
// follows its output, and the run's events tell of a new attempt or a new status.

import { ApiError, api, follow, session } from "../api.js";
import { PLAIN, renderLine } from "../ansi.js";
import { announce, badge, h, liveMarker, moment, replace, took } from "../dom.js";

const CHUNK = 256 * 1024;
// Lines kept on the page while a log is followed; older ones are dropped (and can be
// fetched again), so a task that prints for hours does not grow the page without end.
export const MAX_LINES = 50000;
const NEWLINE = 10;
const BLOCK = 200; // lines laid out together (task.css's estimate of a block's height)

function stylesheet() {
  if (!document.querySelector('link[href="pages/task.css"]')) {
    document.head.append(h("link", { rel: "stylesheet", href: "pages/task.css" }));
  }
}

export function bytes(count) {
  if (count < 1024) return `${count} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = count;
  let unit = -1;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

// The API with the bearer header, answering the raw response (a log's bytes and headers,
// an artifact's body); an error answer is thrown as the API's error.
async function raw(path, { query = {}, headers = {}, signal } = {}) {
  const target = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) target.searchParams.set(name, String(value));
  const response = await fetch(target, {
    headers: { Authorization: `Bearer ${session.token}`, ...headers },
    signal,
    cache: "no-store",
  });
  if (response.ok) return response;
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401) {
    session.clear();
    window.dispatchEvent(new Event("runsvc:signed-out"));
  }
  throw new ApiError(response.status, body);
}

function concat(first, second) {
  if (!first.length) return second;
  if (!second.length) return first;
  const joined = new Uint8Array(first.length + second.length);
  joined.set(first);
  joined.set(second, first.length);
  return joined;
}

// The log opens at its end; on a window too short for the facts above it and the whole
// box, the page scrolls just enough to show the box's last lines (never past its top).
function revealEnd(box) {
  const bounds = box.getBoundingClientRect();
  const hidden = bounds.bottom - window.innerHeight;
  if (hidden > 0) window.scrollBy(0, Math.min(hidden, bounds.top));
}

// The lines of a log shown on the page, from a byte offset on: whole lines are added at
// the end as output arrives and at the start when earlier output is fetched. A line cut
// by where a range starts is held back until the bytes before it come. Lines are kept in
// blocks that the browser lays out only when they are scrolled into view (the CSS's
// content-visibility): laying out 10,000 lines at once took most of a large log's time.
export class LogView {
  constructor(box, onChange) {
    this.box = box;
    this.onChange = onChange;
    this.decoder = new TextDecoder();
    this.reset();
  }

  reset() {
    replace(this.box);
    this.from = 0; // where `head` starts
    this.head = new Uint8Array(0); // the cut line before the first one shown
    this.sizes = []; // each shown line's bytes, newline included
    this.tail = new Uint8Array(0); // the last line, while it has no newline yet
    this.tailLine = null;
    this.state = PLAIN; // colours at the end of the last whole line
    this.end = 0;
  }

  get earlier() {
    return this.from + this.head.length;
  }

  atBottom() {
    return this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 8;
  }

  // The first bytes of the log shown, starting at byte `from`.
  start(from, data) {
    this.reset();
    this.from = from;
    this.end = from;
    this.append(this.cut(data));
    this.box.scrollTop = this.box.scrollHeight;
  }

  // Bytes of a range that starts mid-log: the part before the first newline is the end
  // of a line whose start is not here yet.
  cut(data) {
    if (this.from === 0) {
      this.head = new Uint8Array(0);
      return data;
    }
    const newline = data.indexOf(NEWLINE);
    if (newline < 0) {
      this.head = data;
      return new Uint8Array(0);
    }
    this.head = data.slice(0, newline + 1);
    return data.subarray(newline + 1);
  }

  // Whole lines (`data` ends with a newline) as elements, coloured from `state` on; the
  // bytes of each, and the colours at the end.
  lines(data, state) {
    const sizes = [];
    for (let begin = 0, newline = data.indexOf(NEWLINE); newline >= 0; newline = data.indexOf(NEWLINE, begin)) {
      sizes.push(newline + 1 - begin);
      begin = newline + 1;
    }
    // Decoded at once: a newline byte is never part of another character, so the text
    // splits where the bytes do.
    const texts = this.decoder.decode(data).split("\n");
    texts.pop();
    const elements = texts.map((text) => {
      const element = document.createElement("div");
      element.className = "line";
      state = renderLine(element, text, state);
      return element;
    });
    return { elements, sizes, state };
  }

  blocks(elements) {
    const fragment = document.createDocumentFragment();
    for (let index = 0; index < elements.length; index += BLOCK) {
      const block = document.createElement("div");
      block.className = "block";
      block.append(...elements.slice(index, index + BLOCK));
      fragment.append(block);
    }
    return fragment;
  }

  append(data) {
    const stick = this.atBottom();
    this.end += data.length;
    const joined = concat(this.tail, data);
    const whole = joined.lastIndexOf(NEWLINE) + 1;
    const { elements, sizes, state } = this.lines(joined.subarray(0, whole), this.state);
    this.state = state;
    for (const size of sizes) this.sizes.push(size); // a spread could pass too many arguments
    this.tail = joined.slice(whole);
    if (this.tailLine) this.tailLine.remove();
    this.tailLine = null;
    const last = this.box.lastElementChild;
    let index = 0;
    if (last && last.childElementCount < BLOCK) {
      index = BLOCK - last.childElementCount;
      last.append(...elements.slice(0, index));
    }
    this.box.append(this.blocks(elements.slice(index)));
    if (this.tail.length) {
      this.tailLine = document.createElement("div");
      this.tailLine.className = "line";
      renderLine(this.tailLine, this.decoder.decode(this.tail), this.state);
      this.box.append(this.tailLine);
    }
    this.trim();
    if (stick) this.box.scrollTop = this.box.scrollHeight;
    this.onChange();
  }

  // Whole lines before the first one shown (their bytes end where it starts), fetched
  // from byte `from`: added above without moving what the reader is looking at.
  prepend(from, data) {
    this.from = from;
    // What colour was set before this range is not known: it starts plain.
    const { elements, sizes } = this.lines(this.cut(concat(data, this.head)), PLAIN);
    const height = this.box.scrollHeight;
    this.box.prepend(this.blocks(elements));
    this.sizes = sizes.concat(this.sizes);
    this.box.scrollTop += this.box.scrollHeight - height;
    this.onChange();
  }

  trim() {
    let extra = this.sizes.length - MAX_LINES;
    if (extra <= 0) return;
    const dropped = this.sizes.splice(0, extra).reduce((sum, size) => sum + size, 0);
    while (extra > 0) {
      const block = this.box.firstElementChild;
      const count = block.childElementCount;
      if (count <= extra) {
        block.remove();
        extra -= count;
      } else {
        for (; extra > 0; extra -= 1) block.firstElementChild.remove();
      }
    }
    this.from = this.earlier + dropped;
    this.head = new Uint8Array(0);
  }
}

// One attempt's log: its end first, then (while it runs) its output as it comes.
class LogPane {
  constructor(task, attempt, { onEnded }) {
    this.taskId = task.id;
    this.attempt = attempt;
    this.onEnded = onEnded;
    this.aborter = new AbortController();
    this.following = false;
    this.earlierButton = h("button", { type: "button", class: "earlier", hidden: true }, "");
    this.earlierButton.addEventListener("click", () => this.loadEarlier());
    this.status = h("p", { class: "log-status", role: "status" }, "");
    this.box = h("div", {
      class: "log",
      tabindex: "0",
      role: "log",
      "aria-live": "off",
      "aria-label": `Log of attempt ${attempt}`,
      "data-attempt": String(attempt),
    });
    this.view = new LogView(this.box, () => this.showEarlier());
    this.element = h("div", { class: "log-pane" }, this.earlierButton, this.box, this.status);
  }

  query(extra = {}) {
    return { attempt: this.attempt, ...extra };
  }

  showEarlier() {
    const earlier = this.view.earlier;
    this.earlierButton.hidden = earlier === 0;
    this.earlierButton.textContent = `${bytes(earlier)} earlier — load more`;
  }

  async open(running) {
    let response;
    try {
      response = await raw(`/api/v1/tasks/${this.taskId}/logs`, {
        query: this.query(),
        headers: { Range: `bytes=-${CHUNK}` },
        signal: this.aborter.signal,
      });
    } catch (failure) {
      if (failure.name === "AbortError") return;
      if (failure.status === 404) {
        this.status.textContent = "No output yet: this attempt has not started.";
        return;
      }
      throw failure;
    }
    const data = new Uint8Array(await response.arrayBuffer());
    const range = /bytes (\d+)-(\d+)\/(\d+)/.exec(response.headers.get("Content-Range") || "");
    this.view.start(range ? Number(range[1]) : 0, data);
    this.status.textContent = this.box.childElementCount ? "" : "No output.";
    revealEnd(this.box);
    if (running) await this.follow();
  }

  async follow() {
    this.following = true;
    this.status.textContent = "Following the output…";
    try {
      const response = await raw(`/api/v1/tasks/${this.taskId}/logs`, {
        query: this.query({ follow: "true", offset: this.view.end }),
        signal: this.aborter.signal,
      });
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        this.view.append(value);
      }
    } catch (failure) {
      if (failure.name === "AbortError") return;
      this.status.textContent = `The log stopped: ${failure.message}`;
      this.following = false;
      return;
    }
    this.following = false;
    this.status.textContent = this.box.childElementCount ? "" : "No output.";
    announce("The attempt ended.");
    this.onEnded();
  }

  async loadEarlier() {
    const end = this.view.from;
    const start = Math.max(0, end - CHUNK);
    this.earlierButton.disabled = true;
    try {
      const response = await raw(`/api/v1/tasks/${this.taskId}/logs`, {
        query: this.query(),
        headers: { Range: `bytes=${start}-${end - 1}` },
        signal: this.aborter.signal,
      });
      this.view.prepend(start, new Uint8Array(await response.arrayBuffer()));
      announce(`Loaded ${bytes(end - start)} of earlier output.`);
    } catch (failure) {
      if (failure.name !== "AbortError") this.status.textContent = failure.message;
    } finally {
      this.earlierButton.disabled = false;
    }
  }

  close() {
    this.aborter.abort();
  }
}

async function download(task, key, problem) {
  problem.textContent = "";
  try {
    const path = key.split("/").map(encodeURIComponent).join("/");
    const response = await raw(`/api/v1/tasks/${task.id}/artifacts/${path}`);
    const link = h("a", { href: URL.createObjectURL(await response.blob()), download: key.split("/").pop(), hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    // The click has handed the file over by the time this runs; the memory can go.
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  } catch (failure) {
    problem.textContent = failure.message;
  }
}

async function artifacts(task) {
  let listing;
  try {
    listing = await api.get(`/api/v1/tasks/${task.id}/artifacts`);
  } catch (failure) {
    return h("p", { class: "error", role: "alert" }, failure.message);
  }
  if (!listing.artifacts.length) return h("p", { class: "empty" }, "No artifacts.");
  return h(
    "table",
    { class: "artifacts" },
    h("caption", { class: "visually-hidden" }, "Artifacts"),
    h("thead", {}, h("tr", {}, ["File", "Size", "Stored", ""].map((title) => h("th", { scope: "col" }, title)))),
    h(
      "tbody",
      {},
      listing.artifacts.map((artifact) => {
        const problem = h("span", { class: "error", role: "alert" });
        return h(
          "tr",
          { "data-artifact": artifact.key },
          h("td", { class: "path" }, artifact.key),
          h("td", {}, bytes(artifact.size)),
          h("td", {}, moment(artifact.last_modified)),
          h(
            "td",
            {},
            h("button", { type: "button", "aria-label": `Download ${artifact.key}`, onclick: () => download(task, artifact.key, problem) }, "Download"),
            " ",
            problem,
          ),
        );
      }),
    ),
  );
}

function facts(task, attempt) {
  const rows = [
    ["Status", badge(task.status)],
    ["Attempt", `${attempt} of ${task.attempt}`],
    ["Exit code", task.exit_code ?? "—"],
    ["Executor", task.executor || "—"],
    ["Started", task.started_at ? h("time", { datetime: task.started_at }, moment(task.started_at)) : "—"],
    ["Took", took(task.started_at, task.finished_at) || "—"],
  ];
  if (task.item !== null && task.item !== undefined) rows.push(["Item", task.item]);
  if (task.reason) rows.push(["Reason", task.reason]);
  if (task.error) rows.push(["Error", h("span", { class: "error" }, task.error)]);
  return h(
    "dl",
    { class: "facts" },
    rows.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", { "data-fact": term.toLowerCase() }, value))),
  );
}

function outputs(task) {
  const entries = Object.entries(task.outputs || {});
  if (!entries.length) return null;
  return h(
    "section",
    { "aria-labelledby": "outputs-title" },
    h("h2", { id: "outputs-title" }, "Outputs"),
    h("dl", { class: "outputs" }, entries.map(([name, value]) => h("div", {}, h("dt", {}, name), h("dd", {}, value)))),
  );
}

function items(run, task) {
  return h(
    "ul",
    { class: "items" },
    task.children.map((child) =>
      h("li", {}, h("a", { href: `#/runs/${run.id}/tasks/${encodeURIComponent(child)}` }, child), " ", badge(run.tasks[child]?.status || "notstarted")),
    ),
  );
}

export async function render(main, { params, query, go }) {
  stylesheet();
  const [runId, name] = params;
  let run = await api.get(`/api/v1/runs/${runId}`);
  let task = run.tasks[name];
  if (!task) throw new Error(`Run ${run.name} #${run.counter} has no task ${name}.`);
  // Without an attempt in the URL the page shows the latest, and moves to a new one.
  const pinned = Number(query.get("attempt")) || null;
  let shown = pinned || task.attempt;
  let pane = null;

  const marker = liveMarker();
  const live = marker.element;
  const heading = h("h1", {}, name, " ", badge(task.status));
  const summary = h("div", {}, facts(task, shown));
  const outputSlot = h("div", {}, outputs(task));
  const attemptPicker = h("select", { id: "attempt", name: "attempt" });
  attemptPicker.addEventListener("change", () => go(`/runs/${runId}/tasks/${encodeURIComponent(name)}`, { attempt: attemptPicker.value }));
  const logSlot = h("div", {});
  const artifactSlot = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  const itemSlot = h("div", {}, items(run, task));

  function pickerOptions() {
    replace(
      attemptPicker,
      Array.from({ length: task.attempt }, (_, index) => index + 1).map((number) =>
        h("option", { value: number, selected: number === shown }, number === task.attempt ? `${number} (latest)` : String(number)),
      ),
    );
  }

  const crumbs = h(
    "nav",
    { class: "crumbs", "aria-label": "Breadcrumb" },
    h("a", { href: `#/runs?group=${encodeURIComponent(run.group)}` }, run.group),
    " / ",
    h("a", { href: `#/runs/${runId}` }, `${run.name} #${run.counter}`),
    " / ",
    name,
  );

  if (task.children.length) {
    // A foreach task runs nothing itself: its items have the logs.
    replace(
      main,
      crumbs,
      h("div", { class: "heading" }, heading, live),
      summary,
      outputSlot,
      h("h2", {}, "Items"),
      itemSlot,
    );
  } else {
    pickerOptions();
    replace(
      main,
      crumbs,
      h("div", { class: "heading" }, heading, live),
      summary,
      outputSlot,
      h(
        "section",
        { "aria-labelledby": "log-title" },
        h("div", { class: "log-heading" }, h("h2", { id: "log-title" }, "Log"), h("label", { for: "attempt" }, "Attempt "), attemptPicker),
        logSlot,
      ),
      h("section", { "aria-labelledby": "artifacts-title" }, h("h2", { id: "artifacts-title" }, "Artifacts"), artifactSlot),
    );
  }

  async function refresh() {
    run = await api.get(`/api/v1/runs/${runId}`);
    task = run.tasks[name];
    replace(heading, name, " ", badge(task.status));
    replace(summary, facts(task, shown));
    replace(outputSlot, outputs(task));
    replace(itemSlot, items(run, task));
    if (!task.children.length) {
      pickerOptions();
      replace(artifactSlot, await artifacts(task));
    }
  }

  function openLog() {
    if (pane) pane.close();
    pane = new LogPane(task, shown, { onEnded: () => refresh() });
    replace(logSlot, pane.element);
    const running = shown === task.attempt && task.status === "running";
    pane.open(running).catch((failure) => {
      pane.status.textContent = failure.message;
    });
  }

  if (!task.children.length) {
    openLog();
    replace(artifactSlot, await artifacts(task));
  }

  let pending = null;
  const stop = follow(
    { after: run.position, run: runId },
    (event) => {
      if (event.data.task !== name && !task.children.includes(event.data.task)) return;
      if (pending) return;
      pending = setTimeout(async () => {
        pending = null;
        const before = { attempt: task.attempt, status: task.status };
        await refresh();
        if (before.status !== task.status) announce(`The task is now ${task.status}.`);
        if (task.children.length) return;
        const started = task.status === "running" && !(pane && pane.following);
        if (!pinned && (task.attempt !== before.attempt || (started && shown === task.attempt))) {
          shown = task.attempt;
          pickerOptions();
          replace(summary, facts(task, shown));
          if (started || task.attempt !== before.attempt) openLog();
        }
      }, 150);
    },
    marker.onState,
  );
  return () => {
    clearTimeout(pending);
    stop();
    if (pane) pane.close();
  };
}

// A run's tasks laid out by waves (the order the scheduler can reach them in), one card
// per task, with its dependencies drawn as lines. The run page updates it in place on
// every change, so a comment being typed into a card keeps its text and its focus; the
// history page draws a past state with the same cards, without actions.

import { badge, h, replace, took } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const FINAL = new Set(["success", "failed", "skipped", "stopped", "cancelled"]);

let styles = null;

// The pages' own stylesheet, loaded once: the lines are measured after it applies.
export function pageStyles() {
  if (!styles) {
    styles = new Promise((resolve) => {
      const link = h("link", { rel: "stylesheet", href: "pages/run.css" });
      link.addEventListener("load", resolve);
      link.addEventListener("error", resolve);
      document.head.append(link);
    });
  }
  return styles;
}

// Each task's wave, counted from 0 as `runsvc/cli/screen.py` does: 1 + its deepest
// parent's; foreach items share the wave of the task they were expanded from.
export function waves(run) {
  const level = new Map();
  function of(name, trail) {
    if (level.has(name)) return level.get(name);
    const task = run.tasks[name];
    let found;
    if (task.parent && run.tasks[task.parent]) {
      found = of(task.parent, new Set([...trail, name]));
    } else {
      // `trail` guards against a cycle, which validation refuses anyway.
      const parents = task.depends.map((d) => d.task).filter((p) => run.tasks[p] && !trail.has(p));
      found = 1 + Math.max(-1, ...parents.map((p) => of(p, new Set([...trail, name]))));
    }
    level.set(name, found);
    return found;
  }
  for (const name of Object.keys(run.tasks)) of(name, new Set());
  return level;
}

export function taskHref(runId, name) {
  return `#/runs/${runId}/tasks/${encodeURIComponent(name)}`;
}

function after(task) {
  if (!task.depends.length) return null;
  const parts = task.depends.map((d) =>
    d.on.length === 1 && d.on[0] === "success" ? d.task : `${d.task} (on ${d.on.join(", ")})`,
  );
  return h("p", { class: "after" }, `after ${parts.join(", ")}`);
}

function attemptAndTime(task) {
  const parts = [];
  if (task.attempt > 0) parts.push(`attempt ${task.attempt}`);
  if (task.executor) parts.push(`on ${task.executor}`);
  if (task.exit_code !== null && task.exit_code !== undefined) parts.push(`exit ${task.exit_code}`);
  const duration = h(
    "span",
    { class: "took", "data-started": task.started_at || null, "data-running": task.finished_at ? null : "1" },
    took(task.started_at, task.finished_at),
  );
  return h("p", { class: "meta" }, parts.join(" · "), parts.length && task.started_at ? " · " : "", duration);
}

function counts(run, parent) {
  const byStatus = new Map();
  for (const child of parent.children) {
    const status = run.tasks[child]?.status || "notstarted";
    byStatus.set(status, (byStatus.get(status) || 0) + 1);
  }
  return h(
    "p",
    { class: "counts", "aria-label": "Items by status" },
    [...byStatus].map(([status, count]) => h("span", { class: "count" }, `${count} `, badge(status))),
  );
}

function itemRow(run, runId, child) {
  const task = run.tasks[child];
  return h(
    "li",
    { "data-task": child },
    h("a", { href: taskHref(runId, child) }, task.item ?? child),
    " ",
    badge(task.status),
    task.attempt > 1 ? ` attempt ${task.attempt}` : "",
    task.started_at ? ` ${took(task.started_at, task.finished_at)}` : "",
    task.error ? h("span", { class: "error" }, ` ${task.error}`) : "",
  );
}

// A foreach of a thousand items is one card: counts by status, and the items in a
// scrolling list built only while it is open. `memory` keeps which lists are open and
// where each was scrolled to across updates.
function items(run, runId, parent, memory) {
  const list = h("ul", { class: "items" });
  const details = h(
    "details",
    { class: "items-box", open: memory.open.has(parent.name) },
    h("summary", {}, `${parent.children.length} items`),
    list,
  );
  const fill = () => {
    if (details.open) {
      replace(list, parent.children.filter((c) => run.tasks[c]).map((c) => itemRow(run, runId, c)));
      // Once the card is in the page again: a detached list cannot scroll.
      queueMicrotask(() => (list.scrollTop = memory.scrolled.get(parent.name) || 0));
    } else {
      replace(list);
    }
  };
  details.addEventListener("toggle", () => {
    if (details.open) memory.open.add(parent.name);
    else memory.open.delete(parent.name);
    fill();
    memory.resized();
  });
  list.addEventListener("scroll", () => memory.scrolled.set(parent.name, list.scrollTop), { passive: true });
  fill();
  return [counts(run, parent), details];
}

function approval(task) {
  if (!task.approved_by) return null;
  return h(
    "p",
    { class: "approved" },
    `approved by ${task.approved_by}`,
    task.approval_comment ? `: “${task.approval_comment}”` : "",
  );
}

function cardBody(run, runId, task, memory) {
  return [
    h(
      "div",
      { class: "card-head" },
      h("a", { class: "task-name", href: taskHref(runId, task.name) }, task.name),
      badge(task.status),
    ),
    attemptAndTime(task),
    task.reason ? h("p", { class: "reason" }, task.reason) : null,
    task.error ? h("p", { class: "error" }, task.error) : null,
    approval(task),
    task.children.length ? items(run, runId, task, memory) : null,
    after(task),
  ];
}

// `actions(task)` gives the controls of a task's card (or null); giving the same element
// again leaves it where it is, untouched.
export function createDag({ runId, actions = () => null, label = "Tasks by wave" }) {
  const lines = document.createElementNS(SVG, "svg");
  lines.setAttribute("class", "dag-lines");
  lines.setAttribute("aria-hidden", "true");
  const inner = h("div", { class: "dag-inner" }, lines);
  const element = h("div", { class: "dag", role: "region", "aria-label": label, tabindex: "0" }, inner);
  const columns = new Map();
  const cards = new Map();
  const memory = { open: new Set(), scrolled: new Map(), resized: () => draw() };
  let current = null;

  function column(wave) {
    if (!columns.has(wave)) {
      const list = h("ol", { class: "wave-tasks" });
      const section = h("section", { class: "wave", "aria-label": `Wave ${wave + 1}` }, h("h3", {}, `Wave ${wave + 1}`), list);
      columns.set(wave, { section, list });
    }
    return columns.get(wave);
  }

  function card(task) {
    let entry = cards.get(task.name);
    if (!entry) {
      const body = h("div", { class: "card-body" });
      const slot = h("div", { class: "card-actions" });
      const item = h("li", { class: "card", "data-task": task.name }, body, slot);
      entry = { item, body, slot };
      cards.set(task.name, entry);
    }
    entry.item.className = `card t-${task.status}`;
    replace(entry.body, cardBody(current, runId, task, memory));
    const control = actions(task);
    if (control) {
      if (entry.slot.firstChild !== control) replace(entry.slot, control);
    } else if (entry.slot.firstChild) {
      replace(entry.slot);
    }
    return entry.item;
  }

  function sameChildren(parent, wanted) {
    const have = parent.children;
    return have.length === wanted.length && wanted.every((node, i) => have[i] === node);
  }

  function update(run) {
    current = run;
    const level = waves(run);
    const byWave = new Map();
    for (const task of Object.values(run.tasks)) {
      if (task.parent) continue;
      const wave = level.get(task.name);
      if (!byWave.has(wave)) byWave.set(wave, []);
      byWave.get(wave).push(card(task));
    }
    for (const name of [...cards.keys()]) {
      if (!run.tasks[name] || run.tasks[name].parent) cards.delete(name);
    }
    const order = [...byWave.keys()].sort((a, b) => a - b);
    for (const wave of order) {
      const { list } = column(wave);
      // Moving a node out of the page takes its focus away: only when the order changed.
      if (!sameChildren(list, byWave.get(wave))) replace(list, byWave.get(wave));
    }
    const sections = [lines, ...order.map((wave) => column(wave).section)];
    if (!sameChildren(inner, sections)) replace(inner, sections);
    draw();
  }

  function draw() {
    if (!current || !element.isConnected) return;
    const box = inner.getBoundingClientRect();
    lines.setAttribute("width", String(inner.scrollWidth));
    lines.setAttribute("height", String(inner.scrollHeight));
    lines.setAttribute("viewBox", `0 0 ${inner.scrollWidth} ${inner.scrollHeight}`);
    const paths = [];
    for (const task of Object.values(current.tasks)) {
      const to = cards.get(task.name);
      if (!to) continue;
      for (const dependency of task.depends) {
        const from = cards.get(dependency.task);
        if (!from) continue;
        paths.push(edge(from.item.getBoundingClientRect(), to.item.getBoundingClientRect(), box, task.status));
      }
    }
    lines.replaceChildren(...paths);
  }

  function edge(from, to, box, status) {
    const path = document.createElementNS(SVG, "path");
    let d;
    if (to.left >= from.right - 1) {
      // Waves side by side: from the parent's right edge to the child's left.
      const x1 = from.right - box.left;
      const y1 = from.top + Math.min(from.height / 2, 24) - box.top;
      const x2 = to.left - box.left;
      const y2 = to.top + Math.min(to.height / 2, 24) - box.top;
      const bend = Math.max(12, (x2 - x1) / 2);
      d = `M${x1} ${y1} C${x1 + bend} ${y1} ${x2 - bend} ${y2} ${x2} ${y2}`;
    } else {
      // Waves stacked (a narrow screen): from the parent's bottom to the child's top.
      const x1 = from.left + from.width / 2 - box.left;
      const y1 = from.bottom - box.top;
      const x2 = to.left + to.width / 2 - box.left;
      const y2 = to.top - box.top;
      const bend = Math.max(12, (y2 - y1) / 2);
      d = `M${x1} ${y1} C${x1} ${y1 + bend} ${x2} ${y2 - bend} ${x2} ${y2}`;
    }
    path.setAttribute("d", d);
    path.setAttribute("class", `edge${FINAL.has(status) || status === "running" ? " reached" : ""}`);
    return path;
  }

  // Durations of running tasks (and of whatever else holds such a span: the run's own)
  // move on without any event.
  function tick(...others) {
    for (const holder of [element, ...others]) {
      for (const span of holder.querySelectorAll(".took[data-running][data-started]")) {
        span.textContent = took(span.dataset.started, null);
      }
    }
  }

  const resized = new ResizeObserver(() => draw());
  resized.observe(inner);
  return { element, update, tick, stop: () => resized.disconnect() };
}

// A run's history: its events as a timeline, read a page at a time as the reader scrolls
// (a run may have a hundred thousand), each one opening the run as it was at that version;
// and the audit: the hash chain and the stored state checked by the server.

import { api } from "../api.js";
import { createDag, pageStyles } from "../dag.js";
import { badge, h, moment, replace } from "../dom.js";
import { runHeading } from "./run.js";

const PAGE = 200;
// Short enough to leave the table room beside the run as of a version; the full moment
// is in the cell's title.
const WHEN = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

function taskChange(data) {
  const parts = [`${data.task} → ${data.status.replace("_", " ")}`];
  if (data.attempt) parts.push(` (attempt ${data.attempt})`);
  if (data.executor && data.status === "running") parts.push(` on ${data.executor}`);
  if (data.exit_code !== null && data.exit_code !== undefined) parts.push(`, exit ${data.exit_code}`);
  if (data.error) parts.push(`: ${data.error}`);
  if (data.next_attempt_at) parts.push(`, retry at ${moment(data.next_attempt_at)}`);
  if (data.message) parts.push(` — ${data.message}`);
  return parts.join("");
}

// What an event changed, in a line.
export function describe(event) {
  const data = event.data || {};
  switch (event.type) {
    case "run_created": {
      const count = (data.config?.tasks || []).length;
      const from = data.recreated_from ? `, recreated from ${data.recreated_from}` : "";
      return `created ${data.name} #${data.counter} in ${data.group} with ${count} task${count === 1 ? "" : "s"}${from}`;
    }
    case "run_phase_changed":
      return ["phase → ", badge(data.phase)];
    case "run_result_changed":
      return ["result → ", badge(data.result)];
    case "run_stop_requested":
      return `stop requested${data.reason ? `: ${data.reason}` : ""}`;
    case "task_status_changed":
      return taskChange(data);
    case "task_expanded":
      return `${data.task} expanded into ${data.children.length} item${data.children.length === 1 ? "" : "s"}`;
    case "task_approved":
      return [`${data.task} approved by ${data.approver}`, data.comment ? h("q", { class: "comment" }, data.comment) : null];
    case "run_output_deleted":
      return `output deleted (logs ${data.logs ? "yes" : "no"}, artifacts ${data.artifacts ? "yes" : "no"})`;
    default:
      return event.type;
  }
}

function row(event, choose) {
  return h(
    "tr",
    { "data-version": event.version },
    h(
      "td",
      {},
      h(
        "button",
        {
          type: "button",
          class: "version",
          "aria-label": `Show the run as of version ${event.version}`,
          onclick: () => choose(event.version, event.recorded_at),
        },
        String(event.version),
      ),
    ),
    h(
      "td",
      { class: "when" },
      h("time", { datetime: event.recorded_at, title: moment(event.recorded_at) }, WHEN.format(new Date(event.recorded_at))),
    ),
    h("td", { class: "actor" }, `${event.actor.kind}:${event.actor.id}`),
    h("td", { class: "type" }, event.type),
    h("td", { class: "what" }, describe(event)),
  );
}

export async function render(main, { params }) {
  const [runId] = params;
  await pageStyles();
  const run = await api.get(`/api/v1/runs/${runId}`);
  const [crumb, name] = runHeading(run);

  const verdict = h("div", { class: "verdict", "aria-live": "polite" });
  const verify = h("button", { type: "button" }, "Verify");
  verify.addEventListener("click", async () => {
    verify.disabled = true;
    replace(verdict, "Verifying…");
    try {
      const report = await api.get(`/api/v1/runs/${runId}/verify`);
      if (report.ok) {
        verdict.className = "verdict ok";
        replace(verdict, `✓ Verified: hash chain intact, ${report.events} events, state reproduced.`);
      } else {
        verdict.className = "verdict bad";
        replace(
          verdict,
          h("p", {}, `✗ Verification failed (${report.events} events):`),
          h("ul", {}, report.problems.map((p) => h("li", {}, p))),
        );
      }
    } catch (failure) {
      verdict.className = "verdict bad";
      replace(verdict, failure.message);
    } finally {
      verify.disabled = false;
    }
  });

  const rows = h("tbody", {});
  const table = h(
    "table",
    { class: "events" },
    h("caption", { class: "visually-hidden" }, "The run's events, oldest first"),
    h(
      "thead",
      {},
      h("tr", {}, ["Version", "Time", "Actor", "Type", "What changed"].map((t) => h("th", { scope: "col" }, t))),
    ),
    rows,
  );
  const status = h("p", { class: "history-status", "aria-live": "polite" });
  const more = h("button", { type: "button" }, "Load more");
  const problem = h("p", { class: "error", role: "alert" });
  const asOf = h("section", { class: "as-of", "aria-labelledby": "as-of-title", hidden: true });
  replace(
    main,
    crumb,
    h("h1", {}, h("a", { href: `#/runs/${runId}` }, name), " — history"),
    h("div", { class: "run-bar" }, verify, verdict),
    h(
      "div",
      { class: "history-layout" },
      h(
        "section",
        { "aria-label": "Events" },
        h("div", { class: "events-scroll" }, table),
        status,
        more,
        problem,
      ),
      asOf,
    ),
  );

  let chosen = 0;
  let shown = null;
  async function choose(version, recordedAt) {
    chosen = version;
    for (const tr of rows.querySelectorAll("tr.chosen")) tr.classList.remove("chosen");
    rows.querySelector(`tr[data-version="${version}"]`)?.classList.add("chosen");
    asOf.hidden = false;
    replace(asOf, h("h2", { id: "as-of-title" }, `As of version ${version}`), h("p", {}, "Loading…"));
    try {
      const state = await api.get(`/api/v1/runs/${runId}/state`, { at_version: version });
      if (chosen !== version) return;
      if (shown) shown.stop();
      const dag = createDag({ runId, label: `Tasks as of version ${version}` });
      shown = dag;
      replace(
        asOf,
        h("h2", { id: "as-of-title" }, `As of version ${version}`),
        h("p", { class: "facts" }, "phase ", badge(state.phase), " result ", badge(state.result), ` · after the event of ${moment(recordedAt)}`),
        dag.element,
      );
      dag.update(state);
    } catch (failure) {
      replace(asOf, h("h2", { id: "as-of-title" }, `As of version ${version}`), h("p", { class: "error" }, failure.message));
    }
    asOf.scrollIntoView({ block: "nearest" });
  }

  // `after` is the last version shown; `done` once a page said nothing follows.
  let after = 0;
  let done = false;
  let loading = false;
  async function load() {
    if (loading) return;
    loading = true;
    more.disabled = true;
    problem.textContent = "";
    try {
      const page = await api.get(`/api/v1/runs/${runId}/events`, { after_version: after, limit: PAGE });
      rows.append(...page.events.map((event) => row(event, choose)));
      if (page.events.length) after = page.events.at(-1).version;
      done = page.next_after_version === undefined;
      status.textContent = done ? `All ${after} events shown.` : `${after} events shown; more follow.`;
      // At the end, the same button asks for what was written since (a live run).
      more.textContent = done ? "Check for newer events" : "Load more";
    } catch (failure) {
      problem.textContent = failure.message;
    } finally {
      loading = false;
      more.disabled = false;
    }
  }
  more.addEventListener("click", load);

  await load();
  // Scrolling to the end of the table reads the next page, as the button would.
  const watcher = new IntersectionObserver((entries) => {
    if (!done && entries.some((entry) => entry.isIntersecting)) load();
  });
  watcher.observe(more);
  return () => {
    watcher.disconnect();
    if (shown) shown.stop();
  };
}

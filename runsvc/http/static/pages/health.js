// The health page: projections and how far behind the log they are, the newest index
// dump, the executors seen recently and the websocket subscribers, re-read every 5 s
// while the page is open.

import { api } from "../api.js";
import { badge, h, moment, replace } from "../dom.js";

const EVERY_MS = 5000;
const CLOCK = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

function stylesheet(href) {
  if (!document.querySelector(`link[href="${href}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href }));
  }
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s ago`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
}

function panel(id, title, ...body) {
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), ...body);
}

function facts(rows) {
  return h(
    "dl",
    { class: "facts" },
    rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
  );
}

function table(caption, headings, rows) {
  return h(
    "table",
    {},
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, headings.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, rows),
  );
}

function service(status) {
  return panel(
    "health-service",
    "Service",
    facts([
      ["Version", status.version],
      ["Log head", h("span", { "data-head": "" }, String(status.head))],
      ["Websocket subscribers", `${status.websocket_subscribers} of ${status.max_subscribers} (this process)`],
    ]),
  );
}

function projections(status) {
  return panel(
    "health-projections",
    "Projections",
    table(
      "Projections and their lag",
      ["Projection", "Position", "Behind the head"],
      status.projections.map((projection) =>
        h(
          "tr",
          { "data-projection": projection.name },
          h("th", { scope: "row" }, projection.name),
          h("td", {}, String(projection.position)),
          h(
            "td",
            {},
            h("span", { class: "lag" }, `${projection.lag} event${projection.lag === 1 ? "" : "s"}`),
            " ",
            projection.lag === 0 ? badge("caught_up") : badge("behind"),
          ),
        ),
      ),
    ),
  );
}

function snapshot(status) {
  const dump = status.snapshot;
  return panel(
    "health-snapshot",
    "Index dumps",
    facts([
      ["Newest", dump.created_at ? `${ago(dump.age_s)} (${moment(dump.created_at)})` : "none yet"],
      ["Rows", dump.rows === null ? "—" : String(dump.rows)],
      ["At position", dump.position === null ? "—" : String(dump.position)],
      ["Failed in a row", dump.failures ? badge("failed") : "0", dump.failures ? ` ${dump.failures}` : ""],
    ]),
    dump.last_error ? h("p", { class: "error" }, `Last error: ${dump.last_error}`) : null,
  );
}

function executors(status) {
  const now = Date.parse(status.now);
  const minutes = Math.round(status.executors_within_s / 60);
  return panel(
    "health-executors",
    `Executors seen in the last ${minutes} minutes`,
    status.executors.length
      ? table(
          "Executors seen recently",
          ["Executor", "Labels", "Last seen", "Running"],
          status.executors.map((executor) =>
            h(
              "tr",
              { "data-executor": executor.name },
              h("th", { scope: "row" }, executor.name),
              h(
                "td",
                {},
                Object.keys(executor.labels).length
                  ? Object.entries(executor.labels).map(([key, value]) => h("code", { class: "label" }, `${key}=${value}`))
                  : h("span", { class: "empty" }, "none"),
              ),
              h(
                "td",
                {},
                h("time", { datetime: executor.last_seen, title: moment(executor.last_seen) }, ago((now - Date.parse(executor.last_seen)) / 1000)),
              ),
              h("td", {}, String(executor.running)),
            ),
          ),
        )
      : h("p", { class: "empty" }, "None: no executor claimed work or renewed a lease lately."),
  );
}

export async function render(main) {
  stylesheet("pages/health.css");
  const updated = h("span", { class: "updated", id: "health-updated" }, "");
  const problem = h("p", { class: "error", role: "alert" });
  const panels = h("div", { class: "panels" });
  replace(main, h("div", { class: "heading" }, h("h1", {}, "Health"), updated), problem, panels);

  let timer = null;
  let stopped = false;
  const abort = new AbortController();

  async function refresh() {
    try {
      const status = await api.get("/api/v1/status", {}, { signal: abort.signal });
      replace(panels, service(status), projections(status), snapshot(status), executors(status));
      replace(problem);
      updated.textContent = `updated ${CLOCK.format(new Date())}`;
    } catch (failure) {
      if (stopped) return;
      // The last figures stay up; this says they are getting old.
      problem.textContent = `Could not refresh: ${failure.message}`;
    }
    if (!stopped) timer = setTimeout(refresh, EVERY_MS);
  }

  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    abort.abort();
  };
}

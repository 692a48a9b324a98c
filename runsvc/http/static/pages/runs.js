// The runs page: a group's runs newest first, a keyset page at a time (the cursor is in
// the URL, so a page can be shared), filters, the groups below, and live updates: any
// change to a run of the group re-reads the page shown.

import { api, follow, head } from "../api.js";
import { announce, badge, h, liveMarker, moment, replace, took } from "../dom.js";

const PHASES = ["queued", "running", "finished", "cancelled", "setuperror"];
const RESULTS = ["unknown", "success", "failed", "stopped"];
const PAGE = 50;

function filtersOf(query) {
  const get = (name) => query.get(name) || "";
  return {
    group: get("group") || "/",
    name: get("name"),
    phase: get("phase"),
    result: get("result"),
    created_after: get("created_after"),
    created_before: get("created_before"),
    cursor: get("cursor"),
  };
}

function groupPath(group) {
  // The breadcrumb of a group: / acme / shop, each a link.
  const parts = group.split("/").filter(Boolean);
  const links = [h("a", { href: "#/runs?group=/" }, "all groups")];
  parts.forEach((part, index) => {
    const path = `/${parts.slice(0, index + 1).join("/")}`;
    links.push(" / ", h("a", { href: `#/runs?group=${encodeURIComponent(path)}` }, part));
  });
  return h("nav", { class: "crumbs", "aria-label": "Group" }, links);
}

// A control under its label, tied to it by id: the label alone names it (a label around
// a select would add the chosen option to its name).
function field(label, control) {
  const id = `filter-${control.name}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

function select(name, label, values, current) {
  return field(
    label,
    h(
      "select",
      { name },
      h("option", { value: "" }, "any"),
      values.map((value) => h("option", { value, selected: value === current }, value)),
    ),
  );
}

function localInput(iso) {
  // <input type=datetime-local> speaks local time without a zone.
  if (!iso) return "";
  const date = new Date(iso);
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function filterForm(filters, go) {
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter runs" },
    field("Name", h("input", { name: "name", value: filters.name, size: 12 })),
    select("phase", "Phase", PHASES, filters.phase),
    select("result", "Result", RESULTS, filters.result),
    field(
      "Created after",
      h("input", { name: "created_after", type: "datetime-local", value: localInput(filters.created_after) }),
    ),
    field(
      "before",
      h("input", { name: "created_before", type: "datetime-local", value: localInput(filters.created_before) }),
    ),
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const time = (name) => (data.get(name) ? new Date(data.get(name)).toISOString() : "");
    go("/runs", {
      group: filters.group === "/" ? "" : filters.group,
      name: data.get("name").trim(),
      phase: data.get("phase"),
      result: data.get("result"),
      created_after: time("created_after"),
      created_before: time("created_before"),
    });
  });
  return form;
}

function table(runs) {
  if (!runs.length) return h("p", { class: "empty" }, "No runs match.");
  return h(
    "table",
    { class: "runs" },
    h("caption", { class: "visually-hidden" }, "Runs, newest first"),
    h(
      "thead",
      {},
      h("tr", {}, ["Run", "Group", "Phase", "Result", "Created", "Took"].map((t) => h("th", { scope: "col" }, t))),
    ),
    h(
      "tbody",
      {},
      runs.map((run) =>
        h(
          "tr",
          { "data-run": run.id },
          h("td", {}, h("a", { href: `#/runs/${run.id}` }, `${run.name} #${run.counter}`)),
          h("td", {}, run.group),
          h("td", {}, badge(run.phase)),
          h("td", {}, badge(run.result)),
          h("td", {}, h("time", { datetime: run.created_at }, moment(run.created_at))),
          h("td", {}, took(run.started_at, run.finished_at)),
        ),
      ),
    ),
  );
}

export async function render(main, { query, go }) {
  const filters = filtersOf(query);
  const marker = liveMarker();
  const live = marker.element;
  const groups = h("ul", { class: "groups", "aria-label": "Groups below" });
  const list = h("div", { class: "list" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  replace(
    main,
    h("div", { class: "heading" }, h("h1", {}, "Runs"), live),
    groupPath(filters.group),
    h("div", { class: "runs-layout" }, h("aside", {}, h("h2", {}, "Groups"), groups), h("section", {}, filterForm(filters, go), list, pager)),
  );

  const params = { ...filters, group: filters.group === "/" ? "" : filters.group, limit: PAGE };
  async function load() {
    const page = await api.get("/api/v1/runs", params);
    replace(list, table(page.runs));
    const links = [];
    if (filters.cursor) links.push(h("a", { href: `#/runs?${without(query, "cursor")}` }, "Newest"));
    if (page.next_cursor) {
      const next = new URLSearchParams(query);
      next.set("cursor", page.next_cursor);
      links.push(h("a", { href: `#/runs?${next}`, rel: "next" }, "Older runs"));
    }
    replace(pager, links);
  }

  const from = await head();
  const [, below] = await Promise.all([load(), api.get("/api/v1/groups", { under: filters.group })]);
  replace(
    groups,
    below.groups.map((path) =>
      h("li", {}, h("a", { href: `#/runs?group=${encodeURIComponent(path)}` }, path.slice(path.lastIndexOf("/") + 1))),
    ),
    below.more ? h("li", {}, "…") : null,
    below.groups.length ? null : h("li", { class: "empty" }, "none"),
  );

  // A burst of changes (a run's many tasks ending) makes one re-read, not one each.
  let pending = null;
  const stop = follow(
    {
      after: from,
      group: params.group || undefined,
      types: "run_created,run_phase_changed,run_result_changed",
    },
    () => {
      if (pending) return;
      pending = setTimeout(async () => {
        pending = null;
        await load();
        announce("The runs were updated.");
      }, 250);
    },
    marker.onState,
  );
  return () => {
    clearTimeout(pending);
    stop();
  };
}

function without(query, name) {
  const copy = new URLSearchParams(query);
  copy.delete(name);
  return copy.toString();
}

// The schedules page: every schedule (of a group, when the address names one) with its
// timetable, next fire time and the last run it made; and one schedule's page with its
// recent runs and its history. A submitter may pause, resume and run a schedule now.
// Both follow the schedules' events and re-read what they show.

import { api, follow, head } from "../api.js";
import { announce, badge, h, liveMarker, moment, replace } from "../dom.js";

const TYPES = [
  "schedule_created",
  "schedule_changed",
  "schedule_paused",
  "schedule_resumed",
  "schedule_deleted",
  "schedule_fired",
  "schedule_skipped",
].join(",");
const PAGE = 200;

function stylesheet(href) {
  if (!document.querySelector(`link[href="${href}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href }));
  }
}

function when(schedule) {
  return [h("code", { class: "cron" }, schedule.cron), " in ", h("span", { class: "tz" }, schedule.timezone)];
}

// The next fire time in the viewer's local time; the instant (UTC) in the title.
function next(schedule) {
  if (schedule.paused) return badge("paused");
  if (!schedule.next_fire_at) return "—";
  return h("time", { datetime: schedule.next_fire_at, title: schedule.next_fire_at }, moment(schedule.next_fire_at));
}

function policies(schedule) {
  const catchup = schedule.catchup === "all" ? `all (up to ${schedule.catchup_limit})` : schedule.catchup;
  return [h("span", { class: "policy" }, `overlap ${schedule.overlap}`), " · ", h("span", { class: "policy" }, `catch-up ${catchup}`)];
}

function firing(fired) {
  return [
    h("a", { href: `#/runs/${fired.run_id}`, "data-run": fired.run_id }, h("time", { datetime: fired.fire_at }, moment(fired.fire_at))),
    fired.manual ? h("span", { class: "manual" }, " (manual)") : null,
  ];
}

function lastRun(schedule) {
  const [latest] = schedule.recent_runs;
  return latest ? firing(latest) : h("span", { class: "empty" }, "none yet");
}

// Pause or Resume, and Run now, for a submitter. Each button's name says which schedule
// it acts on (a screen reader lists the buttons of a whole table); `data-action` lets a
// re-read table give the focus back to the same button.
function actionButtons(schedule, act) {
  const named = (label, action, perform) =>
    h(
      "button",
      { type: "button", "data-action": action, onclick: (event) => act(event.currentTarget, label, perform) },
      label,
      h("span", { class: "visually-hidden" }, ` ${schedule.name}`),
    );
  const path = `/api/v1/schedules/${schedule.id}`;
  const toggle = schedule.paused
    ? named("Resume", "toggle", async () => ({
        text: `${schedule.name} resumed.`,
        schedule: await api.patch(path, { paused: false }),
      }))
    : named("Pause", "toggle", async () => ({
        text: `${schedule.name} paused.`,
        schedule: await api.patch(path, { paused: true }),
      }));
  const now = named("Run now", "trigger", async () => {
    const run = await api.post(`${path}/trigger`);
    return { text: `${schedule.name}: run ${run.name} #${run.counter} created.`, run };
  });
  return [toggle, now];
}

// What changed between two reads, in words for a screen reader. What this page did itself
// is announced by the action (a pause is known from its answer; a manual run is left out).
function changes(before, after) {
  const was = new Map(before.map((s) => [s.id, s]));
  const said = [];
  for (const schedule of after) {
    const old = was.get(schedule.id);
    was.delete(schedule.id);
    if (!old) {
      said.push(`${schedule.name} created`);
      continue;
    }
    if (old.paused !== schedule.paused) said.push(`${schedule.name} ${schedule.paused ? "paused" : "resumed"}`);
    const seen = new Set(old.recent_runs.map((fired) => fired.run_id));
    if (schedule.recent_runs.some((fired) => !fired.manual && !seen.has(fired.run_id))) said.push(`${schedule.name} fired`);
    if (schedule.skipped > old.skipped) said.push(`${schedule.name} skipped a firing`);
    if (old.version !== schedule.version && old.cron !== schedule.cron) said.push(`${schedule.name} changed`);
  }
  for (const gone of was.values()) said.push(`${gone.name} deleted`);
  return said;
}

// The page's actions share one way of running: the button is disabled meanwhile, a
// refusal goes to the alert region, success is announced (with a link to a new run).
function acting(problem, notice, reload, known) {
  return async (button, label, perform) => {
    // Disabling the button drops the focus (to the body): it goes back to the same
    // button of the re-read table, which may now say Resume where it said Pause.
    const row = button.closest("[data-schedule]")?.dataset.schedule;
    const action = button.dataset.action;
    button.disabled = true;
    problem.textContent = "";
    try {
      const done = await perform();
      const text = done.text;
      if (done.schedule) known(done.schedule);
      if (done.run) {
        replace(
          notice,
          `${text} `,
          h("a", { href: `#/runs/${done.run.id}`, class: "new-run" }, `Open ${done.run.name} #${done.run.counter}`),
        );
      } else {
        replace(notice, text);
      }
      announce(text);
      await reload();
    } catch (failure) {
      problem.textContent = `${label}: ${failure.message}`;
    } finally {
      button.disabled = false;
      const focused = document.activeElement;
      if (!focused || focused === document.body || focused === button || !focused.isConnected) {
        document.querySelector(`[data-schedule="${row}"] [data-action="${action}"]`)?.focus();
      }
    }
  };
}

// Re-reads (on events, after an action) one at a time; an event during a read asks for
// one more afterwards. `show` keeps a focused button focused across the rebuild.
function reader(read, show, onError) {
  let reading = null;
  async function reload() {
    if (reading) {
      reading.again = true;
      return reading.done;
    }
    let finish;
    reading = { again: false, done: new Promise((resolve) => (finish = resolve)) };
    try {
      show(await read());
    } catch (failure) {
      onError(failure);
    } finally {
      const { again } = reading;
      reading = null;
      finish();
      if (again) await reload();
    }
  }
  return reload;
}

function keepFocus(container, rebuild) {
  const focused = document.activeElement;
  const row = focused && container.contains(focused) ? focused.closest("[data-schedule]") : null;
  const action = focused?.dataset?.action;
  rebuild();
  if (row && action) {
    container.querySelector(`[data-schedule="${row.dataset.schedule}"] [data-action="${action}"]`)?.focus();
  }
}

function followed(filters, marker, onEvent) {
  let pending = null;
  const stop = follow(
    { ...filters, types: TYPES },
    (event) => {
      if (!onEvent.wants(event) || pending) return;
      // A burst of events (catch-up after downtime) makes one re-read.
      pending = setTimeout(() => {
        pending = null;
        onEvent.reload();
      }, 250);
    },
    marker.onState,
  );
  return () => {
    clearTimeout(pending);
    stop();
  };
}

// -- the list

function table(schedules, mayAct, act) {
  if (!schedules.length) return h("p", { class: "empty" }, "No schedules.");
  const columns = ["Schedule", "Group", "When", "Next fire", "Policies", "Last run", "Fired", "Skipped"];
  if (mayAct) columns.push("Actions");
  const shown = h(
    "table",
    { class: "schedules" },
    h("caption", { class: "visually-hidden" }, "Schedules, by group and name"),
    h("thead", {}, h("tr", {}, columns.map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      schedules.map((schedule) =>
        h(
          "tr",
          { "data-schedule": schedule.id, "data-paused": String(schedule.paused) },
          h("th", { scope: "row" }, h("a", { href: `#/schedules/${schedule.id}` }, schedule.name)),
          h("td", { class: "group" }, schedule.group),
          h("td", { class: "when" }, when(schedule)),
          h("td", { class: "next" }, next(schedule)),
          h("td", { class: "policies" }, policies(schedule)),
          h("td", { class: "last" }, lastRun(schedule)),
          h("td", { class: "fired num" }, String(schedule.fired)),
          h("td", { class: "skipped num" }, String(schedule.skipped)),
          mayAct ? h("td", { class: "actions" }, h("div", { class: "schedule-actions" }, actionButtons(schedule, act))) : null,
        ),
      ),
    ),
  );
  return h("div", { class: "schedules-scroll" }, shown);
}

async function renderList(main, { query, who }) {
  const group = query.get("group") || "";
  const mayAct = who.permissions.includes("submit");
  const marker = liveMarker();
  const list = h("div", { class: "list" });
  const problem = h("p", { class: "error", role: "alert" });
  const notice = h("p", { class: "notice" });
  replace(
    main,
    h("div", { class: "heading" }, h("h1", {}, "Schedules"), marker.element),
    group
      ? h("nav", { class: "crumbs", "aria-label": "Group" }, "In ", h("code", {}, group), " · ", h("a", { href: "#/schedules" }, "all groups"))
      : null,
    problem,
    notice,
    list,
  );

  let schedules = [];
  const reload = reader(
    async () => (await api.get("/api/v1/schedules", { group })).schedules,
    (next) => {
      const said = changes(schedules, next);
      schedules = next;
      keepFocus(list, () => replace(list, table(schedules, mayAct, act)));
      if (said.length) announce(said.length > 4 ? `${said.length} schedule changes.` : `${said.join("; ")}.`);
    },
    (failure) => {
      problem.textContent = failure.message;
    },
  );
  const act = acting(problem, notice, reload, (changed) => {
    schedules = schedules.map((schedule) => (schedule.id === changed.id ? changed : schedule));
  });

  const from = await head();
  schedules = (await api.get("/api/v1/schedules", { group })).schedules;
  replace(list, table(schedules, mayAct, act));
  return followed({ after: from, group: group || undefined }, marker, { wants: () => true, reload });
}

// -- one schedule

function describe(event) {
  const data = event.data || {};
  switch (event.type) {
    case "schedule_created":
      return `created ${data.spec.name} in ${data.spec.group}: ${data.spec.cron} in ${data.spec.timezone}${data.paused ? ", paused" : ""}`;
    case "schedule_changed":
      return `changed: ${data.spec.cron} in ${data.spec.timezone}, overlap ${data.spec.overlap}, catch-up ${data.spec.catchup}`;
    case "schedule_paused":
      return "paused";
    case "schedule_resumed":
      return "resumed";
    case "schedule_deleted":
      return "deleted";
    case "schedule_fired":
      // The link's text is the fire time, as in the recent runs.
      return [
        data.manual ? "run now, at " : "fired for ",
        h("a", { href: `#/runs/${data.run_id}` }, moment(data.fire_at)),
      ];
    case "schedule_skipped": {
      const span = data.count === 1 ? moment(data.first) : `${moment(data.first)} to ${moment(data.last)}`;
      return `skipped ${data.count} (${data.reason}): ${span}`;
    }
    default:
      return event.type;
  }
}

function eventRow(event) {
  return h(
    "tr",
    { "data-version": event.version },
    h("td", { class: "num" }, String(event.version)),
    h("td", {}, h("time", { datetime: event.recorded_at, title: event.recorded_at }, moment(event.recorded_at))),
    h("td", { class: "actor" }, `${event.actor.kind}:${event.actor.id}`),
    h("td", { class: "type" }, event.type),
    h("td", { class: "what" }, describe(event)),
  );
}

function facts(schedule) {
  const pair = (term, value) => [h("dt", {}, term), h("dd", {}, value)];
  return h(
    "dl",
    { class: "schedule-facts" },
    pair("Group", h("a", { href: `#/schedules?group=${encodeURIComponent(schedule.group)}` }, schedule.group)),
    pair("When", when(schedule)),
    pair("Next fire", next(schedule)),
    pair("Policies", policies(schedule)),
    pair("Fired", String(schedule.fired)),
    pair("Skipped", String(schedule.skipped)),
    pair("Created", [h("time", { datetime: schedule.created_at }, moment(schedule.created_at)), ` by ${schedule.created_by}`]),
  );
}

function recentRuns(schedule) {
  if (!schedule.recent_runs.length) return h("p", { class: "empty" }, "No runs yet.");
  return h(
    "ul",
    { class: "recent-runs", "aria-label": "Recent runs, newest first" },
    schedule.recent_runs.map((fired) => h("li", {}, firing(fired))),
  );
}

async function renderOne(main, { params, who }) {
  const [scheduleId] = params;
  const mayAct = who.permissions.includes("submit");
  const from = await head();
  let schedule = await api.get(`/api/v1/schedules/${scheduleId}`);

  const marker = liveMarker();
  const title = h("h1", {});
  const about = h("div", { "data-schedule": scheduleId });
  const runs = h("div", {});
  const problem = h("p", { class: "error", role: "alert" });
  const notice = h("p", { class: "notice" });
  const rows = h("tbody", {});
  const more = h("button", { type: "button" }, "Load more");
  const status = h("p", { class: "history-status", "aria-live": "polite" });
  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Schedules" }, h("a", { href: "#/schedules" }, "Schedules")),
    h("div", { class: "heading" }, title, marker.element),
    problem,
    notice,
    about,
    h("h2", {}, "Recent runs"),
    runs,
    h("h2", {}, "History"),
    h(
      "table",
      { class: "events" },
      h("caption", { class: "visually-hidden" }, "The schedule's events, oldest first"),
      h("thead", {}, h("tr", {}, ["Version", "Time", "Actor", "Type", "What happened"].map((t) => h("th", { scope: "col" }, t)))),
      rows,
    ),
    status,
    more,
  );

  let after = 0;
  let loading = false;
  async function loadEvents() {
    if (loading) return;
    loading = true;
    more.disabled = true;
    try {
      const page = await api.get(`/api/v1/schedules/${scheduleId}/events`, { after_version: after, limit: PAGE });
      rows.append(...page.events.map(eventRow));
      if (page.events.length) after = page.events.at(-1).version;
      const done = page.next_after_version === undefined;
      status.textContent = done ? `All ${after} events shown.` : `${after} events shown; more follow.`;
      more.hidden = done;
    } catch (failure) {
      problem.textContent = failure.message;
    } finally {
      loading = false;
      more.disabled = false;
    }
  }
  more.addEventListener("click", loadEvents);

  let act = null;
  function show(next, quiet = false) {
    const said = changes([schedule], [next]);
    schedule = next;
    title.textContent = schedule.name;
    keepFocus(about, () =>
      replace(
        about,
        facts(schedule),
        mayAct ? h("div", { class: "schedule-actions", role: "group", "aria-label": "Schedule actions" }, actionButtons(schedule, act)) : null,
      ),
    );
    replace(runs, recentRuns(schedule));
    if (!quiet && said.length) announce(`${said.join("; ")}.`);
  }
  const reload = reader(
    async () => {
      const next = await api.get(`/api/v1/schedules/${scheduleId}`);
      if (more.hidden) await loadEvents();
      return next;
    },
    show,
    (failure) => {
      problem.textContent = failure.message;
    },
  );
  act = acting(problem, notice, reload, (changed) => {
    schedule = changed;
  });
  show(schedule, true);
  await loadEvents();
  const stream = `schedule-${scheduleId}`;
  return followed({ after: from, group: schedule.group }, marker, { wants: (event) => event.stream === stream, reload });
}

export async function render(main, context) {
  stylesheet("pages/schedules.css");
  return context.params.length ? renderOne(main, context) : renderList(main, context);
}

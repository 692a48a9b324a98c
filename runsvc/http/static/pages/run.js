// The run page: the run's tasks by wave, live over the websocket (each event re-reads the
// run: simple, and always the server's own account), and what a submitter may do to it.

import { api, follow } from "../api.js";
import { createDag, pageStyles } from "../dag.js";
import { announce, badge, h, liveMarker, moment, replace, took } from "../dom.js";

const ORDINAL = new Intl.PluralRules("en", { type: "ordinal" });
const SUFFIX = { one: "st", two: "nd", few: "rd", other: "th" };

function ordinal(n) {
  return `${n}${SUFFIX[ORDINAL.select(n)]}`;
}

export function runHeading(run) {
  return [
    h(
      "nav",
      { class: "crumbs", "aria-label": "Group" },
      h("a", { href: `#/runs?group=${encodeURIComponent(run.group)}` }, run.group),
    ),
    `${run.name} #${run.counter}`,
  ];
}

function summary(run) {
  const facts = [
    h("span", {}, "phase ", badge(run.phase)),
    h("span", {}, "result ", badge(run.result)),
    run.created_at ? h("span", {}, "created ", h("time", { datetime: run.created_at }, moment(run.created_at))) : null,
    run.started_at
      ? h(
          "span",
          {},
          "took ",
          h("span", { class: "took", "data-started": run.started_at, "data-running": run.finished_at ? null : "1" }, took(run.started_at, run.finished_at)),
        )
      : null,
  ];
  const notes = [];
  if (run.phase === "queued" && run.queue_position) {
    notes.push(
      h(
        "p",
        { class: "queue", "data-queue-position": run.queue_position },
        `Queued: ${ordinal(run.queue_position)} in line for concurrency key “${run.concurrency_key}”`,
        run.queue_position === 1 ? " (next to start)." : ".",
      ),
    );
  }
  if (run.stop_requested && run.phase === "running") {
    notes.push(h("p", { class: "reason" }, `Stopping${run.stop_reason ? `: ${run.stop_reason}` : ""}.`));
  }
  if (run.recreated_from) {
    notes.push(h("p", {}, "Recreated from ", h("a", { href: `#/runs/${run.recreated_from}` }, "an earlier run"), "."));
  }
  if (run.setup_errors.length) {
    notes.push(h("ul", { class: "error", "aria-label": "Setup errors" }, run.setup_errors.map((e) => h("li", {}, e))));
  }
  return [h("p", { class: "facts" }, facts), notes];
}

// A button that posts and shows the API's refusal next to itself.
function action(label, perform, problem) {
  const button = h("button", { type: "button" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    problem.textContent = "";
    try {
      await perform();
    } catch (failure) {
      problem.textContent = `${label}: ${failure.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function approveForm(runId, task, onDone) {
  const id = `comment-${task.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const comment = h("input", { id, name: "comment", autocomplete: "off", maxlength: 2000 });
  const problem = h("p", { class: "error", role: "alert" });
  const button = h("button", { type: "submit", class: "primary" }, "Approve");
  const form = h(
    "form",
    { class: "approve", "aria-label": `Approve ${task.name}` },
    h("label", { for: id }, "Comment (optional)"),
    comment,
    button,
    problem,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    problem.textContent = "";
    try {
      const text = comment.value.trim();
      await api.post(`/api/v1/runs/${runId}/tasks/${encodeURIComponent(task.name)}/approve`, text ? { comment: text } : {});
      announce(`${task.name} approved.`);
      onDone();
    } catch (failure) {
      problem.textContent = failure.message;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function changes(before, after) {
  if (!before) return [];
  const said = [];
  if (before.phase !== after.phase) said.push(`run ${after.phase}`);
  if (before.result !== after.result) said.push(`result ${after.result}`);
  for (const [name, task] of Object.entries(after.tasks)) {
    if (task.parent) continue;
    const was = before.tasks[name];
    if (!was || was.status !== task.status) said.push(`${name} ${task.status.replace("_", " ")}`);
  }
  return said;
}

export async function render(main, { params, who, go }) {
  const [runId] = params;
  const mayAct = who.permissions.includes("submit");
  await pageStyles();
  let run = await api.get(`/api/v1/runs/${runId}`);

  const marker = liveMarker();
  const live = marker.element;
  const title = h("h1", {});
  const crumbs = h("div", {});
  const about = h("div", { class: "run-summary" });
  const problem = h("p", { class: "error", role: "alert" });
  const buttons = h("div", { class: "run-actions", role: "group", "aria-label": "Run actions" });
  const forms = new Map();
  const dag = createDag({
    runId,
    actions: (task) => {
      if (!mayAct || task.status !== "waiting_approval" || task.approved_by) {
        forms.delete(task.name);
        return null;
      }
      // The same form across updates: a comment being typed survives them.
      if (!forms.has(task.name)) forms.set(task.name, approveForm(runId, task, () => reload()));
      return forms.get(task.name);
    },
  });
  replace(
    main,
    crumbs,
    h("div", { class: "heading" }, title, live),
    about,
    h("div", { class: "run-bar" }, buttons, h("a", { class: "history-link", href: `#/runs/${runId}/history` }, "History")),
    problem,
    h("h2", {}, "Tasks"),
    dag.element,
  );

  function actions() {
    if (!mayAct) return [];
    const post = (path, body) => api.post(`/api/v1/runs/${runId}${path}`, body);
    const shown = [];
    if (run.phase === "running" && !run.stop_requested) {
      shown.push(action("Stop", () => post("/stop").then(reload), problem));
    }
    if (run.phase === "queued") shown.push(action("Cancel", () => post("/cancel").then(reload), problem));
    if (!["running", "queued"].includes(run.phase)) {
      const recreate = (from) => async () => {
        const created = await post("/recreate", { from });
        announce("A new run was created.");
        go(`/runs/${created.id}`);
      };
      shown.push(action("Recreate from scratch", recreate("scratch"), problem));
      if (run.result === "failed" || run.result === "stopped") {
        shown.push(action("Recreate from failed", recreate("failed"), problem));
      }
    }
    return shown;
  }

  function show() {
    const [crumb, text] = runHeading(run);
    replace(crumbs, crumb);
    title.textContent = text;
    replace(about, summary(run));
    // Buttons are rebuilt only when what they can do changed, so a focused one stays.
    const key = `${run.phase}|${run.result}|${run.stop_requested}`;
    if (buttons.dataset.key !== key) {
      buttons.dataset.key = key;
      replace(buttons, actions());
    }
    dag.update(run);
  }

  let reading = null;
  async function reload() {
    // One read at a time; an event during a read asks for one more afterwards.
    if (reading) {
      reading.again = true;
      return;
    }
    reading = { again: false };
    try {
      const next = await api.get(`/api/v1/runs/${runId}`);
      const said = changes(run, next);
      run = next;
      show();
      if (said.length) announce(said.length > 4 ? `${said.length} changes.` : `${said.join("; ")}.`);
    } catch (failure) {
      problem.textContent = failure.message;
    } finally {
      const again = reading.again;
      reading = null;
      if (again) reload();
    }
  }

  show();
  let pending = null;
  const stop = follow(
    { after: run.position, run: runId },
    () => {
      if (pending) return;
      pending = setTimeout(() => {
        pending = null;
        reload();
      }, 150);
    },
    marker.onState,
  );
  // A queued run moves up its queue through other runs' events, which this page does not
  // follow; and running tasks' durations move on by themselves.
  let ticks = 0;
  const clock = setInterval(() => {
    dag.tick(about);
    ticks += 1;
    if (run.phase === "queued" && ticks % 3 === 0) reload();
  }, 1000);
  return () => {
    clearTimeout(pending);
    clearInterval(clock);
    dag.stop();
    stop();
  };
}

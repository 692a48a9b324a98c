// The simulate page: a run file pasted or uploaded (YAML or JSON; the server reads it, as
// the browser has no YAML parser), the environment and each task's outcome, and what
// would run, wave by wave. Nothing is created: a simulation writes nothing.

import { api, ApiError } from "../api.js";
import { announce, badge, h, replace } from "../dom.js";

const OUTCOMES = ["success", "failure", "no_approval"];
const EXAMPLE = `# A whole run document, or a bare config (tasks: [...])
config:
  tasks:
    - name: build
      run: make
    - name: test
      run: make test
      depends: [build]
`;
const MEANING = {
  would_run: "runs",
  requires_approval: "runs once approved",
  skipped: "will not run: its condition or a dependency's end rules it out",
  blocked: "waits for an approval that never comes, or for a blocked task",
};

function stylesheet(href) {
  if (!document.querySelector(`link[href="${href}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href }));
  }
}

function pairs(text, what) {
  // KEY=VALUE, one a line; the first `=` splits, so a value may hold more.
  const found = {};
  for (const [index, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`${what}, line ${index + 1}: "${line}" is not KEY=VALUE`);
    found[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return found;
}

function environmentEditor() {
  const rows = h("div", { class: "env-rows" });
  let count = 0;
  function add(name = "", value = "") {
    count += 1;
    const id = `env-${count}`;
    const row = h(
      "div",
      { class: "env-row" },
      h("label", { for: `${id}-name`, class: "visually-hidden" }, `Variable ${count} name`),
      h("input", { id: `${id}-name`, class: "env-name", placeholder: "NAME", value: name, spellcheck: "false" }),
      h("span", { "aria-hidden": "true" }, "="),
      h("label", { for: `${id}-value`, class: "visually-hidden" }, `Variable ${count} value`),
      h("input", { id: `${id}-value`, class: "env-value", placeholder: "value", value, spellcheck: "false" }),
    );
    row.append(
      h("button", { type: "button", "aria-label": `Remove variable ${count}`, onclick: () => row.remove() }, "Remove"),
    );
    rows.append(row);
    return row;
  }
  const fieldset = h(
    "fieldset",
    {},
    h("legend", {}, "Environment"),
    h("p", { class: "help" }, "Laid over the file's own environment, as `runsvc simulate --env` does."),
    rows,
    h("button", { type: "button", onclick: () => add().querySelector("input").focus() }, "Add variable"),
  );
  function read() {
    const found = {};
    for (const row of rows.querySelectorAll(".env-row")) {
      const name = row.querySelector(".env-name").value.trim();
      if (name) found[name] = row.querySelector(".env-value").value;
    }
    return found;
  }
  return { element: fieldset, read };
}

function outcomesEditor() {
  // What the user chose per task survives re-simulations: a task keeps its outcome while
  // the file still has it.
  const chosen = new Map();
  const list = h("div", { class: "outcome-rows" }, h("p", { class: "help" }, "Simulate once to set each task's outcome; tasks not set succeed."));
  const fieldset = h("fieldset", {}, h("legend", {}, "Outcomes"), list);

  function show(names) {
    for (const name of [...chosen.keys()]) if (!names.includes(name)) chosen.delete(name);
    replace(
      list,
      names.map((name, index) => {
        const current = chosen.get(name) || { status: "success", outputs: "" };
        chosen.set(name, current);
        const select = h(
          "select",
          { id: `outcome-${index}`, onchange: (event) => (current.status = event.target.value) },
          OUTCOMES.map((value) => h("option", { value, selected: value === current.status }, value.replace("_", " "))),
        );
        const outputs = h("textarea", {
          id: `outputs-${index}`,
          rows: 1,
          class: "outputs",
          placeholder: "KEY=VALUE, one a line",
          spellcheck: "false",
          oninput: (event) => (current.outputs = event.target.value),
        });
        outputs.value = current.outputs;
        return h(
          "div",
          { class: "outcome-row", "data-task": name },
          h("label", { for: `outcome-${index}` }, name),
          select,
          h("label", { for: `outputs-${index}`, class: "visually-hidden" }, `Outputs of ${name}`),
          outputs,
        );
      }),
    );
  }

  function read() {
    const found = {};
    for (const [name, { status, outputs }] of chosen) {
      const written = pairs(outputs, `outputs of ${name}`);
      if (Object.keys(written).length) found[name] = { status, outputs: written };
      else if (status !== "success") found[name] = status;
    }
    return found;
  }

  function forget(names) {
    for (const name of names) chosen.delete(name);
    for (const row of list.querySelectorAll(".outcome-row")) {
      if (names.includes(row.dataset.task)) row.remove();
    }
  }

  return { element: fieldset, show, read, forget };
}

function taskLine(task) {
  const item = task.item === null || task.item === undefined ? "" : ` [${JSON.stringify(task.item)}]`;
  return h(
    "li",
    { class: "sim-task", "data-task": task.name },
    h("span", { class: "sim-name" }, `${task.name}${item}`),
    " ",
    badge(task.status),
    h("span", { class: "sim-reason" }, task.reason),
  );
}

function results(answer) {
  const waves = Array.from({ length: answer.waves }, () => []);
  const notRun = [];
  for (const task of answer.tasks) {
    if (task.wave === null || task.wave === undefined) notRun.push(task);
    else waves[task.wave].push(task);
  }
  const seen = new Set(answer.tasks.map((task) => task.status));
  return [
    h(
      "h2",
      { id: "sim-result" },
      "Result: ",
      badge(answer.result === "failed" ? "failed" : answer.result),
      ` — ${answer.tasks.length} task${answer.tasks.length === 1 ? "" : "s"} in ${answer.waves} wave${answer.waves === 1 ? "" : "s"}`,
    ),
    h(
      "div",
      { class: "waves" },
      waves.map((tasks, index) =>
        h(
          "section",
          { class: "wave", "aria-labelledby": `wave-${index}` },
          h("h3", { id: `wave-${index}` }, `Wave ${index}`),
          h("ul", {}, tasks.map(taskLine)),
        ),
      ),
      notRun.length
        ? h(
            "section",
            { class: "wave not-run", "aria-labelledby": "wave-none" },
            h("h3", { id: "wave-none" }, "Not run"),
            h("ul", {}, notRun.map(taskLine)),
          )
        : null,
    ),
    h(
      "dl",
      { class: "legend" },
      Object.entries(MEANING)
        .filter(([status]) => seen.has(status))
        .map(([status, meaning]) => [h("dt", {}, badge(status)), h("dd", {}, meaning)]),
    ),
  ];
}

function problems(failure) {
  const details = failure instanceof ApiError ? failure.details : [];
  return [
    h("p", {}, failure.message),
    details.length
      ? h(
          "ul",
          { class: "problems" },
          details.map((detail) => h("li", {}, h("code", {}, detail.path), " ", detail.message)),
        )
      : null,
  ];
}

export async function render(main) {
  stylesheet("pages/simulate.css");
  const text = h("textarea", {
    id: "run-file",
    rows: 16,
    spellcheck: "false",
    autocomplete: "off",
    "aria-describedby": "run-file-help",
    class: "run-file",
  });
  text.value = EXAMPLE;
  let uploaded = null;
  const upload = h("input", { id: "run-file-upload", type: "file", accept: ".yaml,.yml,.json,application/json,application/yaml,text/yaml" });
  upload.addEventListener("change", async () => {
    const [file] = upload.files;
    if (!file) return;
    text.value = await file.text();
    uploaded = { name: file.name, text: text.value };
    announce(`${file.name} loaded.`);
  });
  const environment = environmentEditor();
  const outcomes = outcomesEditor();
  const error = h("div", { class: "error", role: "alert", id: "sim-error" });
  const output = h("section", { class: "sim-output", "aria-live": "polite", "aria-label": "What would run" });
  const button = h("button", { type: "submit", class: "primary" }, "Simulate");

  const form = h(
    "form",
    { class: "simulate", "aria-label": "Run file to simulate" },
    h(
      "div",
      { class: "sim-file" },
      h("label", { for: "run-file" }, "Run file (YAML or JSON)"),
      text,
      h(
        "p",
        { id: "run-file-help", class: "help" },
        "A whole run document (group, name, environment, config) or a bare config (tasks: [...]).",
      ),
      h("label", { for: "run-file-upload" }, "Or upload a file"),
      upload,
    ),
    h("div", { class: "sim-settings" }, environment.element, outcomes.element, h("div", { class: "sim-go" }, button)),
  );

  async function simulate(retried = false) {
    let body;
    try {
      body = {
        run_file: text.value,
        file_name: uploaded && uploaded.text === text.value ? uploaded.name : "run file",
        environment: environment.read(),
        outcomes: outcomes.read(),
      };
    } catch (failure) {
      replace(error, failure.message);
      return;
    }
    button.disabled = true;
    try {
      const answer = await api.post("/api/v1/simulations/run-file", body);
      replace(error);
      replace(output, results(answer));
      outcomes.show([...new Set(answer.tasks.map((task) => task.expanded_from || task.name))]);
      announce(`Simulated: ${answer.result}, ${answer.waves} waves.`);
    } catch (failure) {
      // Outcomes of tasks the file no longer has: dropped, and asked again.
      const stale = failure instanceof ApiError
        ? failure.details.filter((detail) => detail.path.startsWith("outcomes.")).map((detail) => detail.path.slice(9))
        : [];
      if (stale.length && !retried) {
        outcomes.forget(stale);
        button.disabled = false;
        return simulate(true);
      }
      replace(error, problems(failure));
      replace(output);
      announce("The simulation was refused.");
    } finally {
      button.disabled = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    simulate();
  });

  replace(
    main,
    h("h1", {}, "Simulate"),
    h("p", { class: "help" }, "See what a run file would run, wave by wave, with the outcomes you choose. Nothing is created."),
    form,
    error,
    output,
  );
}

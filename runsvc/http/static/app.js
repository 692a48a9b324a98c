// The dashboard's shell: sign-in, the routes (in the URL's fragment, so a page can be
// shared and the server serves one file), and the page modules they load.

import { api, ApiError, session } from "./api.js";
import { h, replace } from "./dom.js";

// Most specific first. Each module exports `render(main, context)`, which may return a
// function that ends what the page keeps running (its websockets).
const ROUTES = [
  [/^\/runs\/([^/]+)\/tasks\/([^/]+)$/, "./pages/task.js"],
  [/^\/runs\/([^/]+)\/history$/, "./pages/history.js"],
  [/^\/runs\/([^/]+)$/, "./pages/run.js"],
  [/^\/runs$/, "./pages/runs.js"],
  [/^\/schedules\/([^/]+)$/, "./pages/schedules.js"],
  [/^\/schedules$/, "./pages/schedules.js"],
  [/^\/simulate$/, "./pages/simulate.js"],
  [/^\/health$/, "./pages/health.js"],
];

const main = document.getElementById("main");
let leave = null;
let who = null;

function location_() {
  const [path, query = ""] = (window.location.hash.slice(1) || "/runs").split("?");
  return { path, query: new URLSearchParams(query) };
}

export function go(path, query = {}) {
  const search = new URLSearchParams(
    Object.entries(query).filter(([, value]) => value !== null && value !== undefined && value !== ""),
  ).toString();
  window.location.hash = `${path}${search ? `?${search}` : ""}`;
}

async function signIn(problem) {
  const input = h("input", {
    id: "token",
    type: "password",
    name: "token",
    autocomplete: "off",
    required: true,
    "aria-describedby": "token-help",
  });
  const error = h("p", { class: "error", role: "alert" }, problem || "");
  const form = h(
    "form",
    { class: "sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title" }, "Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    h(
      "p",
      { id: "token-help", class: "help" },
      "A token from `runsvc token create`, or the admin token `scripts/serve` printed. ",
      "It is kept for this tab only.",
    ),
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.set(input.value.trim());
    try {
      who = await api.get("/api/v1/whoami");
      show();
    } catch (failure) {
      session.clear();
      error.textContent =
        failure instanceof ApiError && failure.status === 403
          ? "This token may not read runs (an executor's token cannot sign in)."
          : failure.message;
      input.focus();
    }
  });
  stop();
  replace(main, form);
  chrome(false);
  input.focus();
}

function chrome(signedIn) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `${who.name} (${who.role})` : "";
}

function stop() {
  if (leave) leave();
  leave = null;
}

async function show() {
  if (!session.token) return signIn();
  if (!who) {
    try {
      who = await api.get("/api/v1/whoami");
    } catch (failure) {
      return signIn(failure.message);
    }
  }
  chrome(true);
  stop();
  const { path, query } = location_();
  for (const [pattern, module] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    const page = await import(module);
    const context = { params: match.slice(1).map(decodeURIComponent), query, who, go };
    try {
      leave = (await page.render(main, context)) || null;
    } catch (failure) {
      replace(main, h("p", { class: "error", role: "alert" }, failure.message));
    }
    return;
  }
  replace(main, h("h1", {}, "No such page"), h("p", {}, h("a", { href: "#/runs" }, "Runs")));
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.clear();
  who = null;
  signIn();
});
window.addEventListener("runsvc:signed-out", () => {
  who = null;
  signIn("The token was refused; sign in again.");
});
// The address's fragment holds the route: the skip link moves the focus, not the page.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", show);
show();

// The API as the dashboard uses it: the token kept for this tab only (sessionStorage,
// never in a URL), errors as the API's error body, and a websocket follower that resumes
// after the last event it handed over.

const KEY = "runsvc.token";

export const session = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  set(token) {
    sessionStorage.setItem(KEY, token);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    const message = body && typeof body === "object" ? body.message : String(body || "");
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.details = (body && body.details) || [];
  }
}

function url(path, query = {}) {
  const target = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") {
      target.searchParams.set(name, String(value));
    }
  }
  return target;
}

export async function request(method, path, { query, body, signal } = {}) {
  const headers = { Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    if (response.status === 401) {
      session.clear();
      window.dispatchEvent(new Event("runsvc:signed-out"));
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

export const api = {
  get: (path, query, options = {}) => request("GET", path, { query, ...options }),
  post: (path, body) => request("POST", path, { body: body ?? {} }),
  patch: (path, body) => request("PATCH", path, { body }),
};

// The position of the newest event in the log: a follower that wants only what happens
// from now on starts after it.
export async function head() {
  const page = await api.get("/api/v1/events", { after: Number.MAX_SAFE_INTEGER, limit: 1 });
  return page.head;
}

// Follow the log over the websocket: `onEvent` gets each matching event once, in order,
// across reconnects; `onState` hears "live" and "reconnecting". The token travels as a
// subprotocol, not in the URL. Returns a function that stops following.
export function follow(filters, onEvent, onState = () => {}) {
  let after = filters.after ?? 0;
  let socket = null;
  let stopped = false;
  let failures = 0;
  let retry = null;

  function connect() {
    const target = url("/api/v1/events/ws", { ...filters, after });
    target.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(target, ["runsvc", `bearer.${session.token}`]);
    socket.onopen = () => {
      failures = 0;
      onState("live");
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      after = event.position;
      onEvent(event);
    };
    socket.onclose = () => {
      if (stopped) return;
      onState("reconnecting");
      failures += 1;
      retry = setTimeout(connect, Math.min(500 * 2 ** failures, 10000));
    };
  }

  connect();
  return () => {
    stopped = true;
    clearTimeout(retry);
    if (socket) socket.close();
  };
}

// The console's shell: the token form, the tabs, and one view at a time (its calls and streams
// stop when another view opens).

import { admin, explain, setToken, token } from "./api";
import { clear, h, notice } from "./dom";
import * as customer from "./views/customer";
import * as editor from "./views/editor";
import * as live from "./views/live";
import * as overlap from "./views/overlap";
import * as rfm from "./views/rfm";
import * as segmentsView from "./views/segments";

export type View = {
  title: string;
  render(root: HTMLElement, signal: AbortSignal, params: URLSearchParams): void | Promise<void>;
};

const views: Record<string, View> = {
  segments: segmentsView,
  editor,
  overlap,
  rfm,
  customer,
  live,
};

let running: AbortController | undefined;

async function show(): Promise<void> {
  const [name, query] = location.hash.replace(/^#/, "").split("?", 2);
  const key = name && name in views ? name : "segments";
  const view = views[key];
  running?.abort();
  running = new AbortController();
  const root = document.getElementById("view")!;
  clear(root);
  document.title = `${view.title} · segmentd console`;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("#tabs a")) {
    if (a.hash === `#${key}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  root.appendChild(h("h2", {}, view.title));
  try {
    await view.render(root, running.signal, new URLSearchParams(query ?? ""));
  } catch (e) {
    if (!running.signal.aborted) root.appendChild(notice(explain(e)));
  }
}

async function connect(event?: Event): Promise<void> {
  event?.preventDefault();
  const input = document.getElementById("token") as HTMLInputElement;
  const status = document.getElementById("login-status")!;
  setToken(input.value.trim());
  status.textContent = "Connecting…";
  status.className = "";
  try {
    // Any role may read the schema: it checks the token and that the server answers.
    const schema = await admin.getSchema({});
    status.textContent = `Connected (${schema.attributes.length} attributes)`;
    status.className = "ok";
  } catch (e) {
    status.textContent = explain(e);
    status.className = "error";
  }
  await show();
}

function start(): void {
  const input = document.getElementById("token") as HTMLInputElement;
  input.value = token();
  document.getElementById("login")!.addEventListener("submit", (e) => void connect(e));
  window.addEventListener("hashchange", () => void show());
  void connect();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();

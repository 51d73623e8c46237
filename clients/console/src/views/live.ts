// Entries and exits as they happen (WatchMemberships), filtered by segment, resumable from the
// last sequence received.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, explain, segments } from "../api";
import { field, h, notice } from "../dom";
import { MembershipCause, type MembershipEvent } from "../gen/segmentd/v1/segments_pb";

export const title = "Live";

/** Rows kept on screen; older ones drop off the bottom. */
const KEEP = 500;

function cause(c: MembershipCause): string {
  const name = MembershipCause[c] ?? String(c);
  return name.replace(/^MEMBERSHIP_CAUSE_/, "").toLowerCase().replace(/_/g, " ");
}

export async function render(root: HTMLElement, signal: AbortSignal, params: URLSearchParams): Promise<void> {
  const filter = h("input", { spellcheck: "false", placeholder: "every segment" });
  filter.value = params.get("segments") ?? "";
  const from = h("input", { inputmode: "numeric", pattern: "[0-9]*", placeholder: "now" });
  const toggle = h("button", { type: "submit" }, "Watch");
  const status = h("p", { role: "status", class: "muted" });
  const position = h("output", { id: "live-position" });
  const form = h(
    "form",
    { class: "toolbar" },
    field("Segments", filter, "Comma-separated ids; empty for every segment"),
    field("From sequence", from, "Empty: from now on; 0: everything retained; else resume after it"),
    h("div", { class: "actions" }, toggle),
  );
  const body = h("tbody");
  const table = h(
    "table",
    { class: "events" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Sequence", "Time", "Segment", "Customer", "Change", "Cause"].map((t) => h("th", { scope: "col" }, t)),
      ),
    ),
    body,
  );
  root.append(form, status, h("p", {}, "Resume from: ", position), table);

  let stream: AbortController | undefined;
  let last: bigint | undefined;

  function row(e: MembershipEvent): HTMLTableRowElement {
    const change = e.fromSegmentId ? `moved from ${e.fromSegmentId}` : e.entered ? "entered" : "left";
    return h(
      "tr",
      { class: e.entered ? "entered" : "left", "data-segment-id": e.segmentId, "data-customer-id": e.customerId },
      h("td", { class: "num" }, e.sequence.toString()),
      h("td", {}, e.time ? timestampDate(e.time).toLocaleTimeString() : ""),
      h("td", {}, e.segmentId),
      h("td", {}, h("a", { href: `#customer?id=${encodeURIComponent(e.customerId)}` }, e.customerId)),
      h("td", {}, change),
      h("td", {}, cause(e.cause) + (e.activityId ? ` (${e.activityId})` : "")),
    );
  }

  async function watch(): Promise<void> {
    stream?.abort();
    const mine = new AbortController();
    stream = mine;
    signal.addEventListener("abort", () => mine.abort(), { once: true });
    const segmentIds = filter.value
      .split(/[\s,]+/)
      .map((s) => s.trim())
      .filter(Boolean);
    const fromText = from.value.trim();
    let after: bigint | undefined = fromText ? BigInt(fromText) : last;
    toggle.textContent = "Stop";
    let backoff = 500;
    while (!mine.signal.aborted) {
      try {
        status.textContent = after === undefined ? "Watching from now on…" : `Watching after sequence ${after}…`;
        const request =
          after === undefined ? { fromLatest: true, segmentIds } : { fromSequence: after, segmentIds };
        for await (const msg of segments.watchMemberships(request, { signal: mine.signal })) {
          backoff = 500;
          if (msg.events.length) {
            body.prepend(...msg.events.map(row).reverse());
            while (body.rows.length > KEEP) body.deleteRow(body.rows.length - 1);
          }
          after = msg.lastSequence;
          last = after;
          position.textContent = after.toString();
          status.textContent = "Watching: changes appear as they happen.";
        }
      } catch (e) {
        if (mine.signal.aborted) break;
        const err = ConnectError.from(e);
        if (err.code === Code.OutOfRange || err.code === Code.InvalidArgument || err.code === Code.PermissionDenied || err.code === Code.Unauthenticated) {
          status.replaceChildren(notice(explain(e)));
          break;
        }
        // Dropped (a restart, the network): resume after the last sequence received.
        status.textContent = `Connection lost (${explain(e)}); resuming in ${backoff / 1000} s…`;
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 10_000);
      }
    }
    if (stream === mine) {
      toggle.textContent = "Watch";
      if (!status.querySelector(".error")) status.textContent = "Stopped.";
      stream = undefined;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (stream) {
      stream.abort();
      stream = undefined;
      toggle.textContent = "Watch";
      status.textContent = "Stopped.";
      from.value = last?.toString() ?? "";
    } else {
      void watch();
    }
  });
  void watch();
}

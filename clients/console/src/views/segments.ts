// Every segment with its size, its kind and its size over time (sampled by the server), sorted
// and filtered in the page.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { segments } from "../api";
import { count, debounce, field, h, svg } from "../dom";
import type { Segment } from "../gen/segmentd/v1/segments_pb";

export const title = "Segments";

type Row = { id: string; name: string; kind: string; size: bigint; history: bigint[] };
type Key = "id" | "name" | "kind" | "size";

export function kind(s: Segment): string {
  if (s.familyId) return `family member (${s.familyId})`;
  return s.ruleText ? "rule" : "container";
}

/** A sparkline of `values` (sizes, oldest first), described for screen readers. */
export function sparkline(values: bigint[], label: string): Element {
  const width = 120;
  const height = 24;
  if (values.length < 2) {
    return h("span", { class: "muted" }, values.length ? "one sample so far" : "not sampled yet");
  }
  const nums = values.map(Number);
  const lo = Math.min(...nums);
  const hi = Math.max(...nums);
  const span = hi - lo || 1;
  const points = nums
    .map((v, i) => {
      const x = (i / (nums.length - 1)) * (width - 2) + 1;
      const y = height - 2 - ((v - lo) / span) * (height - 4);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
  const line = svg("polyline", { points, fill: "none", stroke: "currentColor", "stroke-width": 1.5 });
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "spark" }, line);
  chart.setAttribute("aria-label", `${label}: from ${count(lo)} to ${count(hi)} over ${nums.length} samples`);
  return chart;
}

export async function render(root: HTMLElement, signal: AbortSignal): Promise<void> {
  const [list, history] = await Promise.all([
    segments.listSegments({}, { signal }),
    segments.getSizeHistory({}, { signal }),
  ]);
  const byId = new Map(history.histories.map((s) => [s.segmentId, s.sizes]));
  const rows: Row[] = list.segments.map((s) => ({
    id: s.segmentId,
    name: s.name,
    kind: kind(s),
    size: s.size,
    history: [...(byId.get(s.segmentId) ?? [])],
  }));
  // The sampled series ends with the size now.
  for (const r of rows) r.history.push(r.size);

  const every = history.interval ? Number(history.interval.seconds) : 0;
  const first = history.sampleTimes[0];
  root.appendChild(
    h(
      "p",
      { class: "muted" },
      `${rows.length} segments. Sizes over time are sampled by the server every ${every} s` +
        (first ? ` since ${timestampDate(first).toLocaleString()}` : "") +
        "; the last point is the size now.",
    ),
  );

  const filter = h("input", { type: "search", placeholder: "id, name or kind" });
  root.appendChild(h("div", { class: "toolbar" }, field("Filter", filter)));

  let sortKey: Key = "id";
  let ascending = true;
  const table = h("table", { class: "segments" });
  const headers: Record<Key, HTMLTableCellElement> = {} as Record<Key, HTMLTableCellElement>;
  const headRow = h("tr");
  for (const [key, label] of [
    ["id", "Segment"],
    ["name", "Name"],
    ["kind", "Kind"],
    ["size", "Size"],
  ] as [Key, string][]) {
    const button = h("button", { type: "button", class: "sort" }, label);
    button.addEventListener("click", () => {
      ascending = sortKey === key ? !ascending : key !== "size";
      sortKey = key;
      draw();
    });
    const th = h("th", { scope: "col" }, button);
    headers[key] = th;
    headRow.appendChild(th);
  }
  headRow.appendChild(h("th", { scope: "col" }, "Size over time"));
  const body = h("tbody");
  table.append(h("thead", {}, headRow), body);
  root.appendChild(table);

  function draw(): void {
    const q = filter.value.trim().toLowerCase();
    const shown = rows
      .filter((r) => !q || `${r.id} ${r.name} ${r.kind}`.toLowerCase().includes(q))
      .sort((a, b) => {
        const c =
          sortKey === "size" ? (a.size < b.size ? -1 : a.size > b.size ? 1 : 0) : a[sortKey].localeCompare(b[sortKey]);
        return ascending ? c : -c;
      });
    for (const [key, th] of Object.entries(headers)) {
      th.setAttribute("aria-sort", key === sortKey ? (ascending ? "ascending" : "descending") : "none");
    }
    body.replaceChildren(
      ...shown.map((r) =>
        h(
          "tr",
          { "data-segment-id": r.id },
          h("th", { scope: "row" }, h("a", { href: `#editor?id=${encodeURIComponent(r.id)}` }, r.id)),
          h("td", {}, r.name),
          h("td", {}, r.kind),
          h("td", { class: "num", "data-size": r.size.toString() }, count(r.size)),
          h("td", {}, sparkline(r.history, `Size of ${r.id}`)),
        ),
      ),
    );
    if (!shown.length) body.appendChild(h("tr", {}, h("td", { colspan: 5 }, "No segment matches.")));
  }
  filter.addEventListener("input", debounce(draw, 100));
  draw();
}

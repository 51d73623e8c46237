// Pick segments, see how they overlap: a heatmap of SegmentOverlap, each cell the customers in
// both, shaded by the share of the smaller segment they make.

import { segments } from "../api";
import { count, debounce, field, h, notice } from "../dom";

export const title = "Overlap";

const MAX = 100;

export async function render(root: HTMLElement, signal: AbortSignal, params: URLSearchParams): Promise<void> {
  const list = await segments.listSegments({}, { signal });
  const chosen = new Set((params.get("ids") ?? "").split(",").filter(Boolean));
  if (!chosen.size) for (const s of list.segments.slice(0, 6)) chosen.add(s.segmentId);

  const filter = h("input", { type: "search", placeholder: "filter the list" });
  const boxes = h("fieldset", { class: "picker" }, h("legend", {}, `Segments (up to ${MAX})`));
  for (const s of list.segments) {
    const box = h("input", { type: "checkbox", id: `ov-${s.segmentId}`, value: s.segmentId, checked: chosen.has(s.segmentId) });
    box.addEventListener("change", () => {
      if (box.checked) chosen.add(s.segmentId);
      else chosen.delete(s.segmentId);
    });
    boxes.appendChild(h("div", { class: "pick", "data-label": `${s.segmentId} ${s.name}`.toLowerCase() }, box, h("label", { for: box.id }, s.name ? `${s.segmentId} (${s.name})` : s.segmentId)));
  }
  filter.addEventListener(
    "input",
    debounce(() => {
      const q = filter.value.trim().toLowerCase();
      for (const el of boxes.querySelectorAll<HTMLElement>(".pick")) el.hidden = Boolean(q) && !el.dataset.label!.includes(q);
    }, 100),
  );
  const go = h("button", { type: "submit" }, "Compare");
  const out = h("div", { class: "heatmap-out", "aria-live": "polite" });
  const form = h("form", { class: "overlap" }, field("Filter", filter), boxes, h("div", { class: "actions" }, go));
  root.append(form, out);

  async function compare(): Promise<void> {
    // In the order picked (the address's first).
    const known = new Set(list.segments.map((s) => s.segmentId));
    const ids = [...chosen].filter((id) => known.has(id));
    out.replaceChildren();
    if (!ids.length) {
      out.appendChild(notice("Pick at least one segment.", "note"));
      return;
    }
    if (ids.length > MAX) {
      out.appendChild(notice(`Pick at most ${MAX} segments.`));
      return;
    }
    history.replaceState(null, "", `#overlap?ids=${ids.map(encodeURIComponent).join(",")}`);
    const r = await segments.segmentOverlap({ segmentIds: ids }, { signal });
    const cell = new Map<string, bigint>();
    for (const o of r.overlaps) {
      cell.set(`${o.segmentA}\u0000${o.segmentB}`, o.count);
      cell.set(`${o.segmentB}\u0000${o.segmentA}`, o.count);
    }
    const size = (id: string) => cell.get(`${id}\u0000${id}`) ?? 0n;
    const table = h("table", { class: "heatmap" });
    table.appendChild(h("caption", {}, "Customers in both segments; the shade is their share of the smaller segment."));
    table.appendChild(h("thead", {}, h("tr", {}, h("td"), ...ids.map((id) => h("th", { scope: "col" }, h("span", {}, id))))));
    const body = h("tbody");
    for (const a of ids) {
      const tr = h("tr", {}, h("th", { scope: "row" }, a));
      for (const b of ids) {
        const n = cell.get(`${a}\u0000${b}`) ?? 0n;
        const smaller = size(a) < size(b) ? size(a) : size(b);
        const share = smaller > 0n ? Number(n) / Number(smaller) : 0;
        const td = h(
          "td",
          {
            class: "num",
            "data-count": n.toString(),
            title: `${a} and ${b}: ${count(n)} (${Math.round(share * 100)}% of the smaller)`,
          },
          count(n),
        );
        td.style.setProperty("--share", share.toFixed(3));
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.appendChild(body);
    out.appendChild(table);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    compare().catch((e) => out.replaceChildren(notice(String(e))));
  });
  await compare();
}
